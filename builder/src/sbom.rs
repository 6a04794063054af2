//! `<name>.spdx.json`: the manifest as an SPDX 2.3 SBOM, for scanners that read SPDX.
//!
//! One package for the appliance (with the image's partitions as packages carrying their
//! SHA-256) and one per installed OS package with its purl. Deterministic: the document
//! namespace derives from the appliance, version and spec digest, `created` is the build time
//! (`SOURCE_DATE_EPOCH`), and every list is in the manifest's sorted order.

use crate::manifest::Manifest;
use serde_json::{Value, json};

pub fn sbom_file_name(name: &str) -> String {
    format!("{name}.spdx.json")
}

/// SPDX identifiers allow letters, digits, `.` and `-`.
fn spdx_id(kind: &str, parts: &[&str]) -> String {
    let mut id = format!("SPDXRef-{kind}");
    for p in parts {
        id.push('-');
        id.extend(p.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }));
    }
    id
}

/// Percent-encodes a purl component (everything but unreserved characters).
fn purl_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn sbom(m: &Manifest) -> Value {
    let a = &m.appliance;
    let digest = m.inputs.spec_sha256.as_deref().unwrap_or("no-spec");
    let namespace = format!(
        "https://airlock.invalid/spdx/{}/{}/{}-{}",
        purl_escape(&a.name),
        purl_escape(&a.version),
        digest,
        m.build.source_date_epoch
    );
    let appliance_id = spdx_id("Appliance", &[&a.name]);
    let mut packages = vec![json!({
        "SPDXID": appliance_id,
        "name": a.name,
        "versionInfo": a.version,
        "description": a.description,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "supplier": "NOASSERTION",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": appliance_id,
    })];
    let mut contains = |id: &str| {
        relationships.push(json!({
            "spdxElementId": appliance_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    };
    for p in &m.disk.partitions {
        let id = spdx_id("Partition", &[&p.number.to_string(), &p.name]);
        packages.push(json!({
            "SPDXID": id,
            "name": format!("partition {} ({})", p.number, p.name),
            "description": format!(
                "GPT partition, type {}, GUID {}, {} bytes at {}, {:?}",
                p.type_guid, p.guid, p.size, p.start, p.filesystem
            ),
            "primaryPackagePurpose": "ARCHIVE",
            "supplier": "NOASSERTION",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{ "algorithm": "SHA256", "checksumValue": p.sha256 }],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        }));
        contains(&id);
    }
    for p in &m.os_packages {
        let id = spdx_id("deb", &[&p.name, &p.architecture]);
        let distro = p.source.strip_prefix("debian:").map(|s| format!("&distro=debian-{s}")).unwrap_or_default();
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "primaryPackagePurpose": "LIBRARY",
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("installed from {}", p.source),
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:deb/debian/{}@{}?arch={}{distro}",
                    purl_escape(&p.name),
                    purl_escape(&p.version),
                    purl_escape(&p.architecture)
                ),
            }],
        }));
        contains(&id);
    }
    for c in &m.container_images {
        let id = spdx_id("Container", &[&c.reference]);
        packages.push(json!({
            "SPDXID": id, "name": c.reference, "supplier": "NOASSERTION",
            "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
            "sourceInfo": c.source, "primaryPackagePurpose": "CONTAINER",
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
            "checksums": [{ "algorithm": "SHA256", "checksumValue": c.digest.trim_start_matches("sha256:") }],
        }));
        contains(&id);
    }
    let mut creation = json!({
        "created": m.build.time,
        "creators": [format!("Tool: airlock-{}", m.build.airlock_version)],
    });
    if let Some(test) = &m.test_build {
        let replaced: Vec<String> = test.stand_ins.iter().map(|s| format!("{} ({})", s.reference, s.source)).collect();
        creation["comment"] = json!(format!(
            "TEST BUILD, not a release: these container images are TEST STAND-INS: {}",
            replaced.join(", ")
        ));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", a.name, a.version),
        "documentNamespace": namespace,
        "creationInfo": creation,
        "documentDescribes": [appliance_id],
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_purls_are_well_formed() {
        assert_eq!(spdx_id("deb", &["libstdc++6", "amd64"]), "SPDXRef-deb-libstdc--6-amd64");
        assert_eq!(purl_escape("1:2.3+dfsg-1~deb13u1"), "1%3A2.3%2Bdfsg-1~deb13u1");
    }
}
