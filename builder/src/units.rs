//! systemd units in the tree: enabling by `[Install]` sections and masking, done natively with
//! the same symlinks `systemctl enable --root` would create.

use crate::tree::{Meta, NodeKind, Tree};
use anyhow::{Result, bail};

pub const SYSTEM_UNIT_DIR: &str = "usr/lib/systemd/system";
const ETC_UNIT_DIR: &str = "etc/systemd/system";

/// The `[Install]` section of a unit file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InstallSection {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub upheld_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

/// One `Key=Value` assignment of a unit (or quadlet) file, with its section and line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// Reads a systemd-style file: `[Section]` headers, `Key=Value` lines, `#`/`;` comments, lines
/// continued by a trailing backslash. Lines outside a section or without `=` are skipped.
pub fn parse_assignments(text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut logical = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if logical.is_empty() {
            start = i + 1;
        }
        if let Some(stripped) = raw.strip_suffix('\\') {
            logical.push_str(stripped);
            logical.push(' ');
            continue;
        }
        logical.push_str(raw);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if section.is_empty() {
            continue;
        }
        out.push(Assignment {
            section: section.clone(),
            key: key.trim().to_string(),
            value: value.trim().to_string(),
            line: start,
        });
    }
    out
}

/// Parses the `[Install]` section (later assignments add to lists; an empty one resets).
pub fn parse_install(text: &str) -> InstallSection {
    let mut s = InstallSection::default();
    for a in parse_assignments(text).into_iter().filter(|a| a.section == "Install") {
        let list = match a.key.as_str() {
            "WantedBy" => &mut s.wanted_by,
            "RequiredBy" => &mut s.required_by,
            "UpheldBy" => &mut s.upheld_by,
            "Alias" => &mut s.alias,
            "Also" => &mut s.also,
            "DefaultInstance" => {
                s.default_instance = Some(a.value).filter(|v| !v.is_empty());
                continue;
            }
            _ => continue,
        };
        if a.value.is_empty() {
            list.clear();
        } else {
            list.extend(a.value.split_whitespace().map(String::from));
        }
    }
    s
}

/// Where a unit's file is: `/etc/systemd/system` wins over `/usr/lib/systemd/system`.
pub fn unit_file(tree: &Tree, unit: &str) -> Result<Option<(String, String)>> {
    for dir in [ETC_UNIT_DIR, SYSTEM_UNIT_DIR] {
        let path = format!("{dir}/{unit}");
        if let Some(text) = tree.read_text(&path)? {
            return Ok(Some((path, text)));
        }
    }
    Ok(None)
}

fn symlink(tree: &mut Tree, at: &str, target: &str) -> Result<()> {
    tree.insert(at.as_bytes(), Meta::root(0o777), NodeKind::Symlink { target: target.as_bytes().to_vec() })
        .map_err(|p| anyhow::anyhow!("creating symlink {at}: {p}"))?;
    Ok(())
}

/// `systemctl enable <unit>`: the `.wants/`, `.requires/` and `.upholds/` symlinks and aliases
/// its `[Install]` section asks for, following `Also=`. A template is enabled with its
/// `DefaultInstance=` unless an instance is named.
pub fn enable(tree: &mut Tree, unit: &str) -> Result<()> {
    let mut seen = Vec::new();
    enable_inner(tree, unit, &mut seen)
}

fn enable_inner(tree: &mut Tree, unit: &str, seen: &mut Vec<String>) -> Result<()> {
    if seen.iter().any(|u| u == unit) {
        return Ok(());
    }
    seen.push(unit.to_string());
    // `foo@bar.service` lives in `foo@.service`.
    let template = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            rest.rsplit_once('.').map(|(_, suffix)| format!("{prefix}@.{suffix}"))
        }
        _ => None,
    };
    let file_name = template.as_deref().unwrap_or(unit);
    let Some((path, text)) = unit_file(tree, file_name)? else {
        bail!("cannot enable {unit}: no unit file {file_name} in /etc/systemd/system or /usr/lib/systemd/system");
    };
    let install = parse_install(&text);
    let instance_name = if unit.contains("@.") {
        install.default_instance.as_ref().map(|inst| unit.replacen("@.", &format!("@{inst}."), 1))
    } else {
        Some(unit.to_string())
    };
    let target_path = format!("/{path}");
    if let Some(name) = &instance_name {
        for (list, suffix) in
            [(&install.wanted_by, "wants"), (&install.required_by, "requires"), (&install.upheld_by, "upholds")]
        {
            for by in list {
                symlink(tree, &format!("{ETC_UNIT_DIR}/{by}.{suffix}/{name}"), &target_path)?;
            }
        }
    }
    for alias in &install.alias {
        symlink(tree, &format!("{ETC_UNIT_DIR}/{alias}"), &target_path)?;
    }
    for also in install.also.clone() {
        enable_inner(tree, &also, seen)?;
    }
    Ok(())
}

/// `systemctl mask <unit>`: a symlink to /dev/null in /etc.
pub fn mask(tree: &mut Tree, unit: &str) -> Result<()> {
    symlink(tree, &format!("{ETC_UNIT_DIR}/{unit}"), "/dev/null")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    fn add(tree: &mut Tree, path: &str, text: &str) {
        tree.insert(
            path.as_bytes(),
            Meta::root(0o644),
            NodeKind::File { size: text.len() as u64, content: Content::Bytes(text.as_bytes().into()) },
        )
        .unwrap();
    }

    fn link(tree: &Tree, path: &str) -> Option<String> {
        match &tree.node(tree.lookup(path)?).kind {
            NodeKind::Symlink { target } => Some(String::from_utf8(target.clone()).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn parses_install_sections() {
        let s = parse_install(
            "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target \\\n  graphical.target\nAlias=x.service\nRequiredBy=\nRequiredBy=a.target\n# c\n",
        );
        assert_eq!(s.wanted_by, ["multi-user.target", "graphical.target"]);
        assert_eq!(s.alias, ["x.service"]);
        assert_eq!(s.required_by, ["a.target"]);
    }

    #[test]
    fn enables_like_systemctl() {
        let mut t = Tree::new();
        add(
            &mut t,
            "usr/lib/systemd/system/a.service",
            "[Install]\nWantedBy=multi-user.target\nAlso=b.socket\nAlias=aa.service\n",
        );
        add(&mut t, "usr/lib/systemd/system/b.socket", "[Install]\nWantedBy=sockets.target\n");
        add(
            &mut t,
            "usr/lib/systemd/system/getty@.service",
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        );
        enable(&mut t, "a.service").unwrap();
        enable(&mut t, "getty@.service").unwrap();
        enable(&mut t, "getty@ttyS0.service").unwrap();
        assert_eq!(
            link(&t, "etc/systemd/system/multi-user.target.wants/a.service").as_deref(),
            Some("/usr/lib/systemd/system/a.service")
        );
        assert_eq!(
            link(&t, "etc/systemd/system/sockets.target.wants/b.socket").as_deref(),
            Some("/usr/lib/systemd/system/b.socket")
        );
        assert_eq!(link(&t, "etc/systemd/system/aa.service").as_deref(), Some("/usr/lib/systemd/system/a.service"));
        assert!(link(&t, "etc/systemd/system/getty.target.wants/getty@tty1.service").is_some());
        assert!(link(&t, "etc/systemd/system/getty.target.wants/getty@ttyS0.service").is_some());
        mask(&mut t, "e2scrub_reap.service").unwrap();
        assert_eq!(link(&t, "etc/systemd/system/e2scrub_reap.service").as_deref(), Some("/dev/null"));
        let err = enable(&mut t, "missing.service").unwrap_err().to_string();
        assert!(err.contains("no unit file missing.service"), "{err}");
    }
}
