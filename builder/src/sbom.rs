//! `<name>.spdx.json`: the manifest as an SPDX 2.3 SBOM, for scanners that read SPDX.
//!
//! The document DESCRIBES the appliance, which CONTAINS one package for each of: its
//! partitions (with their SHA-256), every installed OS package, every container image, every
//! mirrored artifact (one per file a client installs: each wheel, npm tarball, Go module zip,
//! NuGet package, Pulumi CLI archive and plugin archive), each with its version, supplier,
//! SHA-256, download location and purl. A mirror's protocol documents (Go's `.info` and `.mod`,
//! the CLI's checksums file) are in the manifest but are no packages.
//!
//! Suppliers: Debian for the packages Debian built and airlock installed from its archive; for
//! the appliance, its partitions and everything it redistributes as fetched bytes (images,
//! mirrored files, the CLI), the spec's `supplier`, who chose, pinned and ships those bytes
//! (SPDX 2.3 §7.5: "the actual distribution source"); the purl names the upstream. Without a
//! `supplier` these say `NOASSERTION`, which SPDX allows and NTIA's minimum elements do not.
//!
//! Deterministic: the document namespace derives from the appliance, version and spec digest,
//! `created` is the build time (`SOURCE_DATE_EPOCH`), and every list is in the manifest's
//! sorted order.

use crate::manifest::{ContainerImage, Manifest, MirroredPackage};
use crate::mirror::ecosystem::purl_escape;
use serde_json::{Value, json};
use std::collections::BTreeSet;

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

/// The fields every package shares: what airlock does not assert (licenses, copyright) and
/// does not analyse (files).
fn package(id: &str, name: &str, version: &str, supplier: &str, purpose: &str) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "SPDXID": id,
        "name": name,
        "versionInfo": version,
        "supplier": supplier,
        "primaryPackagePurpose": purpose,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

fn sha256(hex: &str) -> Value {
    json!([{ "algorithm": "SHA256", "checksumValue": hex }])
}

fn purl_ref(purl: &str) -> Value {
    json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl }])
}

/// `pkg:oci/<name>@sha256:<hex>?arch=..&repository_url=<domain>/<path>&tag=..`: the image the
/// appliance carries is the platform's manifest, whose digest is the purl's version.
fn oci_purl(c: &ContainerImage) -> String {
    let reference = c.reference.split('@').next().unwrap_or(&c.reference);
    // The tag follows the last `:` after the last `/` (a registry's port has a `/` after it).
    let (repository, tag) = match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (reference, None),
    };
    let name = repository.rsplit('/').next().unwrap_or(repository);
    let arch = c.platform.split_once('/').map_or(c.platform.as_str(), |(_, a)| a);
    let mut purl = format!(
        "pkg:oci/{}@{}?arch={}&repository_url={}",
        purl_escape(&name.to_lowercase()),
        purl_escape(&c.manifest.digest),
        purl_escape(arch),
        // `/` separates a repository's parts; qualifier values keep it (the purl spec's own
        // examples: `repository_url=docker.io/library/debian`).
        repository.split('/').map(purl_escape).collect::<Vec<_>>().join("/")
    );
    if let Some(tag) = tag {
        purl.push_str(&format!("&tag={}", purl_escape(tag)));
    }
    purl
}

fn purpose(m: &MirroredPackage) -> &'static str {
    match m.kind.as_str() {
        "cli-archive" | "plugin" => "APPLICATION",
        _ => "LIBRARY",
    }
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
    let supplier = a.supplier.clone().unwrap_or_else(|| "NOASSERTION".to_string());
    let appliance_id = spdx_id("Appliance", &[&a.name]);
    let mut root = package(&appliance_id, &a.name, &a.version, &supplier, "OPERATING-SYSTEM");
    root.insert("description".into(), json!(a.description));
    let mut packages = vec![Value::Object(root)];
    let mut ids = BTreeSet::from([appliance_id.clone()]);
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": appliance_id,
    })];
    // Every package is contained in the appliance, under an id no other package has.
    let mut add = |mut p: serde_json::Map<String, Value>| {
        let base = p["SPDXID"].as_str().unwrap_or_default().to_string();
        let mut id = base.clone();
        let mut n = 1;
        while !ids.insert(id.clone()) {
            n += 1;
            id = format!("{base}-{n}");
        }
        p.insert("SPDXID".into(), json!(id));
        packages.push(Value::Object(p));
        relationships.push(json!({
            "spdxElementId": appliance_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    };
    for p in &m.disk.partitions {
        let id = spdx_id("Partition", &[&p.number.to_string(), &p.name]);
        let name = format!("{} partition {} ({})", a.name, p.number, p.name);
        let mut pkg = package(&id, &name, &a.version, &supplier, "ARCHIVE");
        // A root under dm-verity says so, with the hash that pins it (the UKI's roothash=).
        let verity = m.boot.as_ref().and_then(|b| b.verity.as_ref());
        let pinned = match verity {
            Some(v) if p.role == Some(v.data_partition) => format!(
                "; read-only under dm-verity, root hash {} ({}, {}-byte blocks, salt {})",
                v.root_hash, v.hash_algorithm, v.data_block_size, v.salt
            ),
            Some(v) if p.role == Some(v.hash_partition) => {
                format!("; the dm-verity hash tree of root hash {}", v.root_hash)
            }
            _ => String::new(),
        };
        pkg.insert(
            "description".into(),
            json!(format!(
                "GPT partition, type {}, GUID {}, {} bytes at {}, {:?}{pinned}",
                p.type_guid, p.guid, p.size, p.start, p.filesystem
            )),
        );
        pkg.insert("checksums".into(), sha256(&p.sha256));
        add(pkg);
    }
    for p in &m.os_packages {
        let id = spdx_id("deb", &[&p.name, &p.architecture]);
        let distro = p.source.strip_prefix("debian:").map(|s| format!("&distro=debian-{s}")).unwrap_or_default();
        let mut pkg = package(&id, &p.name, &p.version, "Organization: Debian", "LIBRARY");
        pkg.insert("sourceInfo".into(), json!(format!("installed from {}", p.source)));
        pkg.insert(
            "externalRefs".into(),
            purl_ref(&format!(
                "pkg:deb/debian/{}@{}?arch={}{distro}",
                purl_escape(&p.name),
                purl_escape(&p.version),
                purl_escape(&p.architecture)
            )),
        );
        add(pkg);
    }
    for c in &m.container_images {
        let id = spdx_id("Container", &[&c.name]);
        // A normalized reference ends in a digest (`@sha256:…`) or a tag.
        let version = match c.reference.split_once('@') {
            Some((_, digest)) => digest,
            None => c.reference.rsplit_once(':').map_or(c.manifest.digest.as_str(), |(_, tag)| tag),
        };
        let mut pkg = package(&id, &c.reference, version, &supplier, "CONTAINER");
        // Where the appliance runs it from: the root's image store, unpacked.
        let stored = m.image_store.as_ref().and_then(|s| s.images.iter().find(|e| e.name == c.name).map(|e| (s, e)));
        let stored = stored.map_or(String::new(), |(s, e)| {
            format!(
                "; unpacked in the root filesystem's podman image store {} as {} (image ID {})",
                s.path, e.listed_as, e.id
            )
        });
        pkg.insert(
            "sourceInfo".into(),
            json!(format!("container `{}` ({}), from {}, {}{stored}", c.name, c.image, c.source, c.platform)),
        );
        pkg.insert("checksums".into(), sha256(c.manifest.digest.trim_start_matches("sha256:")));
        pkg.insert("externalRefs".into(), purl_ref(&oci_purl(c)));
        add(pkg);
    }
    for f in &m.mirrored_packages {
        let Some(purl) = &f.purl else { continue };
        // The served path starts with the ecosystem's folder and is unique.
        let id = spdx_id("Mirrored", &[&f.path]);
        let mut pkg = package(&id, &f.name, &f.version, &supplier, purpose(f));
        if f.origin.starts_with("https://") || f.origin.starts_with("http://") {
            pkg.insert("downloadLocation".into(), json!(f.origin));
        }
        pkg.insert("packageFileName".into(), json!(f.path.rsplit('/').next().unwrap_or(&f.path)));
        pkg.insert(
            "sourceInfo".into(),
            json!(format!(
                "served by the appliance's {} mirror at /{}, fetched from {}",
                f.ecosystem, f.path, f.origin
            )),
        );
        pkg.insert("checksums".into(), sha256(&f.sha256));
        pkg.insert("externalRefs".into(), purl_ref(purl));
        add(pkg);
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

    fn blob(digest: &str) -> crate::manifest::Blob {
        crate::manifest::Blob { digest: digest.into(), size: 1, media_type: String::new() }
    }

    #[test]
    fn container_purls_name_the_manifest_the_appliance_carries() {
        let image = |reference: &str| ContainerImage {
            name: "db".into(),
            reference: reference.into(),
            image: reference.into(),
            source: "registry".into(),
            platform: "linux/amd64".into(),
            index: Some(blob("sha256:99")),
            manifest: blob("sha256:ab"),
            config: blob("sha256:cd"),
            layers: Vec::new(),
            size: 3,
        };
        assert_eq!(
            oci_purl(&image("docker.io/library/MySQL:8.0")),
            "pkg:oci/mysql@sha256%3Aab?arch=amd64&repository_url=docker.io/library/MySQL&tag=8.0"
        );
        assert_eq!(
            oci_purl(&image("registry.example.test:5000/team/api@sha256:ab")),
            "pkg:oci/api@sha256%3Aab?arch=amd64&repository_url=registry.example.test%3A5000/team/api"
        );
    }

    #[test]
    fn ids_and_purls_are_well_formed() {
        assert_eq!(spdx_id("deb", &["libstdc++6", "amd64"]), "SPDXRef-deb-libstdc--6-amd64");
    }
}
