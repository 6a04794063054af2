//! Does the appliance hang together? The spec's services, the units it enables and the quadlet
//! files its overlays carry must name things that exist, and every container image a quadlet
//! runs must be one the spec preloads — otherwise podman on the appliance would reach for a
//! registry it cannot reach, and the failure would show only at first boot, offline.
//!
//! [`check`] runs twice: by `airlock build --check` on the overlays alone (units that would come
//! from Debian packages cannot be seen yet, and are listed as notes), and by `airlock build` on
//! the whole root tree (where every unit must be found).

use crate::oci::ImageReference;
use crate::plan::BuildPlan;
use crate::tree::{Content, NodeKind, Tree};
use crate::units::{self, Assignment};
use anyhow::{Result, bail};
use std::collections::BTreeSet;

/// Where quadlet reads system units from (later directories lose to earlier ones).
const QUADLET_DIRS: &[&str] = &["etc/containers/systemd", "usr/share/containers/systemd"];

/// `[Unit]` keys whose values are unit names.
const DEPENDENCY_KEYS: &[&str] =
    &["Requires", "Wants", "After", "Before", "BindsTo", "Requisite", "PartOf", "Upholds", "Conflicts", "OnFailure"];

/// Unit types whose files a tree holds; the others (mounts from fstab, devices, slices, scopes)
/// are made at run time.
const FILE_UNIT_SUFFIXES: &[&str] = &[".service", ".target", ".socket", ".timer", ".path"];

/// How complete the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// airlock's and the spec's overlays only: units from packages cannot be checked.
    OverlaysOnly,
    /// The whole root filesystem: every unit must be there.
    WholeRoot,
}

/// One quadlet file: where it is, what kind, and its assignments.
struct Quadlet {
    path: String,
    origin: String,
    stem: String,
    kind: String,
    assignments: Vec<Assignment>,
}

impl Quadlet {
    /// The systemd unit quadlet generates from it.
    fn unit(&self) -> String {
        match self.kind.as_str() {
            "container" | "kube" => format!("{}.service", self.stem),
            kind => format!("{}-{kind}.service", self.stem),
        }
    }

    fn values<'a>(&'a self, section: &'a str, key: &'a str) -> impl Iterator<Item = &'a Assignment> + 'a {
        self.assignments.iter().filter(move |a| a.section == section && a.key == key)
    }
}

/// Checks `tree` against `plan`; returns notes (things that could not be checked yet) or fails
/// listing every problem, each naming its file (and line) or spec key.
pub fn check(plan: &BuildPlan, tree: &Tree, scope: Scope) -> Result<Vec<String>> {
    let quadlets = read_quadlets(tree)?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let generated: BTreeSet<String> = quadlets.iter().map(Quadlet::unit).collect();
    let files: BTreeSet<String> = quadlets.iter().map(|q| format!("{}.{}", q.stem, q.kind)).collect();
    let mut unseen = BTreeSet::new();
    let mut unit_exists = |unit: &str, context: String, problems: &mut Vec<String>| -> Result<()> {
        if !FILE_UNIT_SUFFIXES.iter().any(|s| unit.ends_with(s)) || generated.contains(unit) {
            return Ok(());
        }
        let template = unit.split_once('@').map(|(head, tail)| {
            let suffix = tail.rsplit_once('.').map_or("", |(_, s)| s);
            format!("{head}@.{suffix}")
        });
        if units::unit_file(tree, unit)?.is_some()
            || template.is_some_and(|t| units::unit_file(tree, &t).is_ok_and(|f| f.is_some()))
        {
            return Ok(());
        }
        match scope {
            Scope::WholeRoot => problems.push(format!("{context}: no unit `{unit}` in the image")),
            Scope::OverlaysOnly => {
                unseen.insert(unit.to_string());
            }
        }
        Ok(())
    };

    let preloaded: BTreeSet<String> = plan.containers.iter().map(|c| c.reference.to_string()).collect();
    let mut used = BTreeSet::new();
    for q in &quadlets {
        let at = |a: &Assignment| format!("{} line {}", q.origin, a.line);
        for key in DEPENDENCY_KEYS {
            for a in q.values("Unit", key) {
                for unit in a.value.split_whitespace() {
                    unit_exists(unit, format!("{} ({key}=)", at(a)), &mut problems)?;
                }
            }
        }
        if q.kind != "container" {
            continue;
        }
        let images: Vec<&Assignment> = q.values("Container", "Image").collect();
        if images.is_empty() && q.values("Container", "Rootfs").next().is_none() {
            problems.push(format!("{}: a .container needs Image= (or Rootfs=)", q.origin));
        }
        for a in images {
            if a.value.ends_with(".image") || a.value.ends_with(".build") {
                if !files.contains(&a.value) {
                    problems.push(format!("{}: Image={} names no quadlet file", at(a), a.value));
                }
                continue;
            }
            match ImageReference::parse(&a.value) {
                Err(e) => problems.push(format!("{}: Image={}: {e}", at(a), a.value)),
                Ok(r) if preloaded.contains(&r.to_string()) => {
                    used.insert(r.to_string());
                }
                Ok(r) => problems.push(format!(
                    "{}: Image={} ({r}) is not one of the spec's [[containers]], so the appliance does not carry it \
                     and the unit would fail at boot (podman never pulls on the appliance)",
                    at(a),
                    a.value
                )),
            }
        }
        for (key, suffix) in [("Network", ".network"), ("Pod", ".pod")] {
            for a in q.values("Container", key) {
                for v in a.value.split(',').filter(|v| v.ends_with(suffix)) {
                    if !files.contains(v) {
                        problems.push(format!("{}: {key}={v} names no quadlet file", at(a)));
                    }
                }
            }
        }
        for a in q.values("Container", "Volume") {
            let source = a.value.split(':').next().unwrap_or_default();
            if source.ends_with(".volume") && !files.contains(source) {
                problems.push(format!("{}: Volume={} names no quadlet file {source}", at(a), a.value));
            }
        }
    }

    for (i, s) in plan.services.iter().enumerate() {
        unit_exists(&s.unit, format!("services[{i}].unit"), &mut problems)?;
    }
    for (i, u) in plan.enable.iter().enumerate() {
        unit_exists(u, format!("units.enable[{i}]"), &mut problems)?;
    }
    if !unseen.is_empty() {
        let list: Vec<&str> = unseen.iter().map(String::as_str).collect();
        notes.push(format!("units from Debian packages, checked when the image is built: {}", list.join(", ")));
    }
    for c in &plan.containers {
        if !used.contains(&c.reference.to_string()) {
            notes
                .push(format!("container `{}` ({}) is served by the registry but run by no unit", c.name, c.reference));
        }
    }
    if !problems.is_empty() {
        bail!("{} is not coherent:\n  - {}", plan.spec_path.display(), problems.join("\n  - "));
    }
    Ok(notes)
}

/// Every quadlet file in the tree; for a name in both directories, `/etc`'s.
fn read_quadlets(tree: &Tree) -> Result<Vec<Quadlet>> {
    let mut out: Vec<Quadlet> = Vec::new();
    for dir in QUADLET_DIRS {
        let Some(id) = tree.lookup(dir) else { continue };
        let names: Vec<String> = tree.entries(id).map(|(name, _)| String::from_utf8_lossy(name).into_owned()).collect();
        for name in names {
            let Some((stem, kind)) = name.rsplit_once('.') else { continue };
            if !["container", "volume", "network", "pod", "kube", "image", "build"].contains(&kind)
                || out.iter().any(|q| q.stem == stem && q.kind == kind)
            {
                continue;
            }
            let path = format!("{dir}/{name}");
            let Some(text) = tree.read_text(&path)? else { continue };
            out.push(Quadlet {
                origin: origin(tree, &path),
                path,
                stem: stem.to_string(),
                kind: kind.to_string(),
                assignments: units::parse_assignments(&text),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Names a file for a person: its host path when it came from a folder, else its image path.
fn origin(tree: &Tree, path: &str) -> String {
    match tree.lookup(path).map(|id| &tree.node(id).kind) {
        Some(NodeKind::File { content: Content::Host(host), .. }) => host.display().to_string(),
        _ => format!("/{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    fn plan(containers: &[&str], services: &[&str]) -> BuildPlan {
        let mut text = String::from(
            "name = \"t\"\nversion = \"1\"\n[os]\nsuite = \"trixie\"\nmirror = \"http://m.example/debian\"\nhostname = \"t\"\n\
             [disk]\nsize = \"2GiB\"\ndata_size = \"256MiB\"\n",
        );
        for s in services {
            text.push_str(&format!("[[services]]\nname = \"{}\"\nunit = \"{s}\"\n", s.split('.').next().unwrap()));
        }
        for (i, c) in containers.iter().enumerate() {
            text.push_str(&format!("[[containers]]\nname = \"c{i}\"\nimage = \"{c}\"\n"));
        }
        let spec = crate::spec::Spec::parse(&text, "t.toml").unwrap();
        crate::plan::validate(spec, std::path::Path::new("."), "t.toml", &Default::default()).unwrap()
    }

    fn add(tree: &mut Tree, path: &str, text: &str) {
        let bytes: std::sync::Arc<[u8]> = text.as_bytes().into();
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: bytes.len() as u64, content: Content::Bytes(bytes) },
        )
        .unwrap();
    }

    fn stack() -> Tree {
        let mut t = Tree::new();
        add(&mut t, "etc/containers/systemd/net.network", "[Network]\n");
        add(
            &mut t,
            "etc/containers/systemd/db.container",
            "[Unit]\nRequires=docker-registry.service\n[Container]\nImage=mysql:8.0\nNetwork=net.network\n",
        );
        add(
            &mut t,
            "etc/containers/systemd/api.container",
            "# the API\n[Unit]\nRequires=db.service\nAfter=db.service \\\n  net-network.service\n\
             [Container]\nImage=docker.io/pulumi/service:1\nNetwork=net.network\n",
        );
        t
    }

    #[test]
    fn a_coherent_stack_passes_with_package_units_as_notes() {
        let p = plan(&["mysql:8.0", "pulumi/service:1", "docker.io/library/redis:7"], &["api.service"]);
        let notes = check(&p, &stack(), Scope::OverlaysOnly).unwrap();
        assert!(notes.iter().any(|n| n.contains("docker-registry.service")), "{notes:?}");
        assert!(notes.iter().any(|n| n.contains("`c2`") && n.contains("run by no unit")), "{notes:?}");
        // With the whole root, a unit nobody provides is a problem.
        let err = check(&p, &stack(), Scope::WholeRoot).unwrap_err().to_string();
        assert!(err.contains("no unit `docker-registry.service` in the image"), "{err}");
    }

    #[test]
    fn images_not_preloaded_and_missing_files_are_named() {
        let p = plan(&["mysql:8.0"], &["console.service"]);
        let mut t = stack();
        add(&mut t, "etc/containers/systemd/bad.container", "[Container]\nImage=web.image\nVolume=data.volume:/d\n");
        add(&mut t, "usr/lib/systemd/system/docker-registry.service", "[Service]\n");
        let err = check(&p, &t, Scope::WholeRoot).unwrap_err().to_string();
        assert!(
            err.contains("/etc/containers/systemd/api.container line 7: Image=docker.io/pulumi/service:1"),
            "{err}"
        );
        assert!(err.contains("not one of the spec's [[containers]]"), "{err}");
        assert!(err.contains("Image=web.image names no quadlet file"), "{err}");
        assert!(err.contains("names no quadlet file data.volume"), "{err}");
        assert!(err.contains("services[0].unit: no unit `console.service`"), "{err}");
        assert!(!err.contains("db.container"), "db is coherent: {err}");
    }

    #[test]
    fn assignments_keep_sections_lines_and_continuations() {
        let a = units::parse_assignments("# c\n[Unit]\nAfter=a \\\n b\n\n[X]\nK = v\nstray\n");
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].section.as_str(), a[0].key.as_str(), a[0].line), ("Unit", "After", 3));
        assert_eq!(a[0].value.split_whitespace().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((a[1].section.as_str(), a[1].key.as_str(), a[1].value.as_str(), a[1].line), ("X", "K", "v", 7));
    }
}
