//! NuGet: a client of the v3 protocol's service index and flat container
//! (`PackageBaseAddress/3.0.0`), and the static feed that serves the packages back.
//!
//! The spec's `source` is a service index URL (its `PackageBaseAddress` resource is where the
//! packages are) or a folder in the flat container layout. Each `Id@Version` is downloaded as
//! `<base>/<id>/<version>/<id>.<version>.nupkg` (lower case). Dependencies are not resolved:
//! the spec lists every package the enclave needs (reading each `.nuspec` is still to do).
//!
//! Served: `nuget/v3/index.json` (the service index, with absolute URLs through
//! [`super::PLACEHOLDER`]), `nuget/v3/flat/<id>/index.json` (`{"versions": [...]}`) and the
//! packages under `nuget/v3/flat/`.

use super::download::{Downloader, Expect};
use super::plan::{NugetPlan, Source};
use crate::lock::LockedFile;
use crate::oci::BlobStore;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The resource type of the flat container.
pub const PACKAGE_BASE_ADDRESS: &str = "PackageBaseAddress/3.0.0";

/// What the lock's inputs digest covers.
pub fn inputs(p: &NugetPlan) -> String {
    format!("{:?} {}", p.packages, p.source)
}

/// The flat container's URL from a service index document.
pub fn package_base_address(index: &[u8], origin: &str) -> Result<String> {
    let doc: Value =
        serde_json::from_slice(index).with_context(|| format!("{origin}: the service index is not JSON"))?;
    let version = doc.get("version").and_then(Value::as_str).unwrap_or_default();
    if !version.starts_with("3.") {
        bail!("{origin}: service index version `{version}` is not 3.x");
    }
    let resources =
        doc.get("resources").and_then(Value::as_array).with_context(|| format!("{origin}: no resources"))?;
    for r in resources {
        if r.get("@type").and_then(Value::as_str) == Some(PACKAGE_BASE_ADDRESS) {
            let id = r.get("@id").and_then(Value::as_str).unwrap_or_default();
            if !(id.starts_with("http://") || id.starts_with("https://")) {
                bail!("{origin}: {PACKAGE_BASE_ADDRESS} `{id}` is not an http(s) URL");
            }
            return Ok(id.trim_end_matches('/').to_string());
        }
    }
    bail!("{origin}: the service index has no {PACKAGE_BASE_ADDRESS} resource")
}

/// The path of a package inside a flat container.
pub fn package_path(id: &str, version: &str) -> String {
    let (id, version) = (id.to_lowercase(), version.to_lowercase());
    format!("{id}/{version}/{id}.{version}.nupkg")
}

/// Downloads every listed package.
pub fn resolve(p: &NugetPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let base = match &p.source {
        Source::Url(index) => {
            let doc = dl.get(index)?;
            Source::Url(package_base_address(&doc, index)?)
        }
        folder @ Source::Path { .. } => folder.clone(),
    };
    let mut files = Vec::new();
    for (id, version) in &p.packages {
        let rel = package_path(id, version);
        let src = base.join(&rel);
        let fetched = dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("{id} {version}"))?;
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(&fetched.path)?, &mut magic).ok();
        if &magic != b"PK\x03\x04" {
            bail!("{id} {version} from {}: not a .nupkg (zip) file", src.origin());
        }
        files.push(super::locked(format!("nuget/v3/flat/{rel}"), src.origin(), &fetched));
    }
    Ok(files)
}

/// The service index and each package's version list.
pub fn render(files: &[LockedFile]) -> Result<Vec<(String, String)>> {
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let rel = f.path.strip_prefix("nuget/v3/flat/").context("NuGet packages live in nuget/v3/flat/")?;
        let parts: Vec<&str> = rel.split('/').collect();
        let [id, version, _] = parts[..] else { bail!("{}: not <id>/<version>/<file>", f.path) };
        versions.entry(id.to_string()).or_default().push(version.to_string());
    }
    let mut out = Vec::new();
    let index = json!({
        "version": "3.0.0",
        "resources": [
            { "@id": format!("{}/nuget/v3/flat/", super::PLACEHOLDER), "@type": PACKAGE_BASE_ADDRESS,
              "comment": "Base URL of where NuGet packages are stored, in the format https://{host}/{id}/{version}/{id}.{version}.nupkg" }
        ]
    });
    out.push(("nuget/v3/index.json".to_string(), serde_json::to_string_pretty(&index)? + "\n"));
    for (id, list) in versions {
        out.push((
            format!("nuget/v3/flat/{id}/index.json"),
            serde_json::to_string(&json!({ "versions": list }))? + "\n",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_flat_container_from_a_service_index() {
        let doc = br#"{"version": "3.0.0", "resources": [
            {"@id": "https://n.example.test/query", "@type": "SearchQueryService"},
            {"@id": "https://n.example.test/flat/", "@type": "PackageBaseAddress/3.0.0"}]}"#;
        assert_eq!(package_base_address(doc, "t").unwrap(), "https://n.example.test/flat");
        assert!(package_base_address(br#"{"version": "2.0.0", "resources": []}"#, "t").is_err());
        assert!(package_base_address(br#"{"version": "3.0.0", "resources": []}"#, "t").is_err());
        let file =
            br#"{"version": "3.0.0", "resources": [{"@id": "file:///etc", "@type": "PackageBaseAddress/3.0.0"}]}"#;
        assert!(package_base_address(file, "t").is_err());
    }

    #[test]
    fn fetches_from_a_fake_feed_and_renders_the_protocol() {
        let (base, _) = crate::mirror::download::tests::serve(move |path| match path {
            "/v3/index.json" => (200, Vec::new(), Some(0)),
            "/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg" => (200, b"PK\x03\x04fixture".to_vec(), None),
            "/flat/not.zip/1.0.0/not.zip.1.0.0.nupkg" => (200, b"<html>".to_vec(), None),
            _ => (404, Vec::new(), None),
        });
        // The index must name the server's own address, so it is served from a second server.
        let flat = format!("{base}/flat/");
        let (index, _) = crate::mirror::download::tests::serve(move |_| {
            let doc = format!(
                r#"{{"version": "3.0.0", "resources": [{{"@id": "{flat}", "@type": "PackageBaseAddress/3.0.0"}}]}}"#
            );
            (200, doc.into_bytes(), None)
        });
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let mut dl = Downloader::new(tmp.path());
        let plan = NugetPlan {
            packages: vec![("Airlock.Fixture".into(), "1.0.0".into())],
            source: Source::Url(format!("{index}/v3/index.json")),
        };
        let files = resolve(&plan, &mut dl, &store).unwrap();
        assert_eq!(files[0].path, "nuget/v3/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg");
        assert_eq!(files[0].origin, format!("{base}/flat/airlock.fixture/1.0.0/airlock.fixture.1.0.0.nupkg"));
        let pages = render(&files).unwrap();
        let service: Value = serde_json::from_str(&pages[0].1).unwrap();
        assert_eq!(service["resources"][0]["@type"], PACKAGE_BASE_ADDRESS);
        assert_eq!(
            pages[1],
            ("nuget/v3/flat/airlock.fixture/index.json".to_string(), "{\"versions\":[\"1.0.0\"]}\n".to_string())
        );

        let bad = NugetPlan { packages: vec![("Not.Zip".into(), "1.0.0".into())], ..plan };
        assert!(format!("{:#}", resolve(&bad, &mut dl, &store).unwrap_err()).contains("not a .nupkg"));
    }
}
