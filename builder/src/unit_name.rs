//! systemd unit names, checked as systemd checks them (`unit_name_is_valid()` in
//! `src/basic/unit-name.c`): at most 255 bytes; a prefix of `A-Z a-z 0-9 : - _ . \`, not
//! empty; optionally `@` and an instance (the same characters and `@`, empty only for a
//! template); a dot and one of the unit types. A name that passes cannot carry a newline, a
//! space or a `=` into the unit files airlock writes (`Requires=<name>`), nor a `/` into a path.

/// The longest unit name systemd accepts (`UNIT_NAME_MAX` less the NUL).
pub const MAX_LEN: usize = 255;

/// The unit types systemd knows, as suffixes without the dot.
pub const TYPES: &[&str] =
    &["service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer", "slice", "scope"];

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b":-_.\\".contains(&b)
}

/// Why `name` is not a unit name systemd would accept; `None` when it is one. Templates
/// (`getty@.service`) are accepted only when `allow_template`.
pub fn problem(name: &str, allow_template: bool) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_LEN {
        return Some(format!("it is {} bytes long; systemd allows {MAX_LEN}", name.len()));
    }
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return Some(format!("it has no type suffix (one of .{})", TYPES.join(", .")));
    };
    if !TYPES.contains(&suffix) {
        return Some(format!("`.{suffix}` is not a unit type (one of .{})", TYPES.join(", .")));
    }
    let (prefix, instance) = match stem.split_once('@') {
        Some((p, i)) => (p, Some(i)),
        None => (stem, None),
    };
    if prefix.is_empty() {
        return Some("the part before the type (or before `@`) is empty".into());
    }
    if let Some(bad) = prefix.bytes().find(|&b| !valid_char(b)) {
        return Some(format!("it contains {:?}; unit names hold only A-Z a-z 0-9 : - _ . \\ (and @)", bad as char));
    }
    if let Some(instance) = instance {
        if instance.is_empty() && !allow_template {
            return Some("it is a template (nothing after `@`), not a unit that can run".into());
        }
        if let Some(bad) = instance.bytes().find(|&b| !valid_char(b) && b != b'@') {
            return Some(format!("it contains {:?}; unit names hold only A-Z a-z 0-9 : - _ . \\ (and @)", bad as char));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_what_systemd_accepts() {
        for ok in [
            "nginx.service",
            "getty@tty1.service",
            "docker-registry.service",
            "a.b.c.target",
            "x\\x2d.mount",
            "a@b@c.service",
        ] {
            assert_eq!(problem(ok, false), None, "{ok}");
        }
        assert_eq!(problem("getty@.service", true), None);
    }

    #[test]
    fn refuses_what_systemd_refuses() {
        for (bad, why) in [
            ("", "empty"),
            ("nginx", "no type suffix"),
            ("nginx.serv", "`.serv` is not a unit type"),
            (".service", "is empty"),
            ("@x.service", "is empty"),
            ("getty@.service", "is a template"),
            ("a b.service", "' '"),
            ("db.service\nExecStartPre=/bin/sh", "is not a unit type"),
            ("x\n.service", "'\\n'"),
            ("db.service\nRequires=evil.service", "'\\n'"),
            ("a/b.service", "'/'"),
            ("a=b.service", "'='"),
        ] {
            let got = problem(bad, false).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(got.contains(why), "{bad:?}: {got}");
        }
        assert!(problem(&format!("{}.service", "a".repeat(248)), false).unwrap().contains("256 bytes long"));
    }

    proptest! {
        /// Whatever passes can go into `Requires=<name>` and a path: no whitespace, control
        /// character, `=`, `/` or NUL, and a known suffix.
        #[test]
        fn accepted_names_are_safe_in_unit_files(name in "\\PC{0,40}\\.(service|target|nope)|[a-z@\\n =/]{0,20}") {
            if problem(&name, false).is_none() {
                prop_assert!(!name.chars().any(|c| c.is_whitespace() || c.is_control() || "=/\0".contains(c)));
                let typed = TYPES.iter().any(|t| name.ends_with(&format!(".{}", t)));
                prop_assert!(typed, "{name}");
            }
        }
    }
}
