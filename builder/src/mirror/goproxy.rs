//! Go modules: a client of the module proxy protocol (`go help goproxy`) and the static tree
//! that serves it back.
//!
//! For every `module@version` of the spec, and then for every requirement its `go.mod` lists
//! (transitively), airlock fetches `@v/<version>.info`, `.mod` and `.zip` from the proxy: an
//! http(s) URL, a folder in the same layout, or the first proxy of the build host's
//! `go env GOPROXY` when the spec says `proxy = "host"`. Every module of the requirement graph
//! is mirrored with its zip, which is more than `go mod download` of one module needs but never
//! less than a build of it. Paths and versions are case-escaped (`!` + lower case) as the
//! protocol says.
//!
//! Served: `go/<escaped module>/@v/{list,<v>.info,<v>.mod,<v>.zip}`. Clients use
//! `GOPROXY=<mirror>/go,off GOSUMDB=off` (the checksum database is not mirrored).

use super::download::{Downloader, Expect};
use super::plan::{GoPlan, GoProxy, Source, is_module_path, is_module_version};
use crate::command::Cmd;
use crate::lock::LockedFile;
use crate::oci::BlobStore;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};

/// The protocol's case escaping: every upper-case letter becomes `!` and its lower case.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the lock's inputs digest covers.
pub fn inputs(p: &GoPlan) -> String {
    format!("{:?} {}", p.modules, p.proxy)
}

/// The `require`d (module, version) pairs of a `go.mod`.
pub fn requirements(go_mod: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    // Inside `require (` ... `)`, or inside another directive's block.
    let (mut in_require, mut in_other) = (false, false);
    for raw in go_mod.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if in_require || in_other {
            if line == ")" {
                (in_require, in_other) = (false, false);
                continue;
            }
            if in_other {
                continue;
            }
        }
        let spec = if in_require {
            line
        } else {
            let (directive, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            if directive != "require" {
                in_other = rest == "(";
                continue;
            }
            if rest == "(" {
                in_require = true;
                continue;
            }
            rest
        };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [path, version] = fields[..] else { bail!("go.mod: cannot read requirement `{spec}`") };
        let path = path.trim_matches('"');
        if !is_module_path(path) || !is_module_version(version) {
            bail!("go.mod: `{path} {version}` is not a module path and version");
        }
        out.push((path.to_string(), version.to_string()));
    }
    Ok(out)
}

/// The first proxy URL of `go env GOPROXY` on the build host.
fn host_proxy() -> Result<String> {
    let value = Cmd::new("go").args(["env", "GOPROXY"]).output_text().context("asking the host's Go for GOPROXY")?;
    value
        .trim()
        .split([',', '|'])
        .find(|p| p.starts_with("http://") || p.starts_with("https://"))
        .map(|p| p.trim_end_matches('/').to_string())
        .with_context(|| format!("the host's GOPROXY `{}` names no http(s) proxy", value.trim()))
}

/// Fetches every module of the requirement graph.
pub fn resolve(p: &GoPlan, dl: &mut Downloader, store: &BlobStore) -> Result<Vec<LockedFile>> {
    let base = match &p.proxy {
        GoProxy::Source(s) => s.clone(),
        GoProxy::Host => Source::Url(host_proxy()?),
    };
    let mut todo: Vec<(String, String)> = p.modules.iter().rev().cloned().collect();
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    let mut files = Vec::new();
    while let Some((module, version)) = todo.pop() {
        if !done.insert((module.clone(), version.clone())) {
            continue;
        }
        let dir = format!("{}/@v", escape(&module));
        let what = format!("{module}@{version}");
        let ver = escape(&version);
        let info_src = base.join(&format!("{dir}/{ver}.info"));
        let info = dl.get(info_src.origin()).with_context(|| format!("{what}: .info"))?;
        #[derive(serde::Deserialize)]
        struct Info {
            #[serde(rename = "Version")]
            version: String,
        }
        let parsed: Info = serde_json::from_slice(&info).with_context(|| format!("{what}: .info is not JSON"))?;
        if parsed.version != version {
            bail!("{what}: the proxy's .info says version {}", parsed.version);
        }
        for ext in ["info", "mod", "zip"] {
            let src = base.join(&format!("{dir}/{ver}.{ext}"));
            let fetched =
                dl.fetch(src.origin(), &Expect::default(), store).with_context(|| format!("{what}: .{ext}"))?;
            if ext == "mod" {
                let text =
                    std::fs::read_to_string(&fetched.path).with_context(|| format!("{what}: go.mod is not UTF-8"))?;
                for req in requirements(&text).with_context(|| what.clone())? {
                    if !done.contains(&req) {
                        todo.push(req);
                    }
                }
            }
            files.push(super::locked(format!("go/{dir}/{ver}.{ext}"), src.origin(), &fetched));
        }
    }
    Ok(files)
}

/// `@v/list` for every module: its versions, one a line, in semantic version order.
pub fn render(files: &[LockedFile]) -> Vec<(String, String)> {
    let mut lists: BTreeMap<String, BTreeSet<(Vec<u64>, String)>> = BTreeMap::new();
    for f in files {
        let Some(stem) = f.path.strip_suffix(".info") else { continue };
        let Some((dir, version)) = stem.rsplit_once('/') else { continue };
        let core = version.trim_start_matches('v').split(['-', '+']).next().unwrap_or("");
        let key: Vec<u64> = core.split('.').map(|n| n.parse().unwrap_or(0)).collect();
        lists.entry(dir.to_string()).or_default().insert((key, version.to_string()));
    }
    lists
        .into_iter()
        .map(|(dir, versions)| {
            let text: String = versions.into_iter().map(|(_, v)| unescape_version(&v) + "\n").collect();
            (format!("{dir}/list"), text)
        })
        .collect()
}

fn unescape_version(v: &str) -> String {
    let mut out = String::new();
    let mut bang = false;
    for c in v.chars() {
        if c == '!' {
            bang = true;
        } else if bang {
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_upper_case() {
        assert_eq!(escape("github.com/Azure/azure-sdk"), "github.com/!azure/azure-sdk");
        assert_eq!(unescape_version("v1.0.0-!r!c1"), "v1.0.0-RC1");
    }

    #[test]
    fn reads_requirements() {
        let m = "module example.test/a\n\ngo 1.21\n\nrequire example.test/b v1.0.0\n\nrequire (\n\texample.test/C v0.2.0 // indirect\n\t\"example.test/d\" v1.1.0\n)\n\nreplace example.test/x => ../x\n";
        assert_eq!(
            requirements(m).unwrap(),
            [
                ("example.test/b".to_string(), "v1.0.0".to_string()),
                ("example.test/C".to_string(), "v0.2.0".to_string()),
                ("example.test/d".to_string(), "v1.1.0".to_string())
            ]
        );
        assert!(requirements("require ../../etc v1.0.0\n").is_err());
        assert!(requirements("require example.test/b\n").is_err());
    }

    #[test]
    fn lists_versions_in_order() {
        let f = |p: &str| LockedFile {
            path: p.into(),
            origin: String::new(),
            sha256: "00".repeat(32),
            size: 1,
            requires_python: None,
        };
        let files = [
            f("go/example.test/!a/@v/v1.10.0.info"),
            f("go/example.test/!a/@v/v1.9.0.info"),
            f("go/example.test/!a/@v/v1.9.0.zip"),
        ];
        assert_eq!(render(&files), [("go/example.test/!a/@v/list".to_string(), "v1.9.0\nv1.10.0\n".to_string())]);
    }

    #[test]
    fn fetches_the_requirement_graph_from_a_proxy() {
        // A fake proxy on 127.0.0.1: module A requires B; B requires nothing.
        let (base, seen) = crate::mirror::download::tests::serve(|path| {
            let body: &[u8] = match path {
                "/example.test/!a/@v/v1.0.0.info" => br#"{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}"#,
                "/example.test/!a/@v/v1.0.0.mod" => b"module example.test/A\n\nrequire example.test/b v0.1.0\n",
                "/example.test/!a/@v/v1.0.0.zip" => b"PK-zip-of-A",
                "/example.test/b/@v/v0.1.0.info" => br#"{"Version":"v0.1.0","Time":"2024-01-01T00:00:00Z"}"#,
                "/example.test/b/@v/v0.1.0.mod" => b"module example.test/b\n",
                "/example.test/b/@v/v0.1.0.zip" => b"PK-zip-of-b",
                _ => return (404, Vec::new(), None),
            };
            (200, body.to_vec(), None)
        });
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::new(tmp.path()).unwrap();
        let mut dl = Downloader::new(tmp.path());
        let plan = GoPlan {
            modules: vec![("example.test/A".into(), "v1.0.0".into())],
            proxy: GoProxy::Source(Source::Url(base.clone())),
        };
        let files = resolve(&plan, &mut dl, &store).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths.len(), 6, "{paths:?}");
        assert!(
            paths.contains(&"go/example.test/!a/@v/v1.0.0.zip") && paths.contains(&"go/example.test/b/@v/v0.1.0.mod")
        );
        assert!(seen.lock().unwrap().iter().all(|p| !p.contains('A')), "paths are case-escaped");
        let zip = files.iter().find(|f| f.path.ends_with("b/@v/v0.1.0.zip")).unwrap();
        assert_eq!(zip.origin, format!("{base}/example.test/b/@v/v0.1.0.zip"));

        // A proxy that lies about the version is refused.
        let (liar, _) = crate::mirror::download::tests::serve(|_| (200, br#"{"Version":"v9.9.9"}"#.to_vec(), None));
        let plan = GoPlan { proxy: GoProxy::Source(Source::Url(liar)), ..plan };
        let e = resolve(&plan, &mut dl, &store).unwrap_err();
        assert!(format!("{e:#}").contains("v9.9.9"), "{e:#}");
    }
}
