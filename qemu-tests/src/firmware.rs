//! Locating the OVMF UEFI firmware: a read-only code image and a template for the
//! variable store, which every VM copies so it can keep its own boot entries.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The code/vars pairs to look for, best first. Debian's `ovmf` package ships the first two.
const CANDIDATES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
];

/// The Secure Boot build of OVMF (it requires SMM) and the empty variable store, which leaves
/// the machine in Setup Mode: no PK, so systemd-boot may enroll the owner's keys.
const SECURE_BOOT_CANDIDATES: &[(&str, &str)] =
    &[("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd")];

fn pairs(candidates: &'static [(&'static str, &'static str)]) -> impl Iterator<Item = (&'static Path, &'static Path)> {
    candidates.iter().map(|&(c, v)| (Path::new(c), Path::new(v)))
}

/// A matching pair of OVMF pflash images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// Mapped read-only as the first pflash device.
    pub code: PathBuf,
    /// Never used directly: each VM boots from its own copy.
    pub vars_template: PathBuf,
}

impl Firmware {
    /// Finds the firmware, honouring `AIRLOCK_OVMF_CODE` and `AIRLOCK_OVMF_VARS` if both are set.
    pub fn locate() -> Result<Firmware> {
        Self::from_env("AIRLOCK_OVMF_CODE")?.map_or_else(|| Self::locate_in(pairs(CANDIDATES)), Ok)
    }

    /// Finds the Secure Boot firmware (`AIRLOCK_OVMF_SECBOOT_CODE` and `AIRLOCK_OVMF_VARS`
    /// if both are set), with variables in Setup Mode.
    pub fn locate_secure_boot() -> Result<Firmware> {
        Self::from_env("AIRLOCK_OVMF_SECBOOT_CODE")?.map_or_else(|| Self::locate_in(pairs(SECURE_BOOT_CANDIDATES)), Ok)
    }

    /// The pair the environment names (`code_var` and `AIRLOCK_OVMF_VARS`), if both are set.
    fn from_env(code_var: &str) -> Result<Option<Firmware>> {
        let (Some(code), Some(vars)) = (std::env::var_os(code_var), std::env::var_os("AIRLOCK_OVMF_VARS")) else {
            return Ok(None);
        };
        let fw = Firmware { code: code.into(), vars_template: vars.into() };
        if !(fw.code.is_file() && fw.vars_template.is_file()) {
            bail!(
                "{code_var}={} / AIRLOCK_OVMF_VARS={} do not both name files",
                fw.code.display(),
                fw.vars_template.display()
            );
        }
        Ok(Some(fw))
    }

    fn locate_in<'a>(candidates: impl Iterator<Item = (&'a Path, &'a Path)>) -> Result<Firmware> {
        let mut tried = Vec::new();
        for (code, vars) in candidates {
            if code.is_file() && vars.is_file() {
                return Ok(Firmware { code: code.to_owned(), vars_template: vars.to_owned() });
            }
            tried.push(format!("{} + {}", code.display(), vars.display()));
        }
        bail!(
            "no OVMF UEFI firmware found (install Debian's `ovmf` package, or set \
             AIRLOCK_OVMF_CODE and AIRLOCK_OVMF_VARS); looked for:\n  {}",
            tried.join("\n  ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_complete_pair_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        for name in ["code2", "vars2", "code3", "vars3", "code1"] {
            std::fs::write(p(name), b"").unwrap();
        }
        let (c1, v1, c2, v2, c3, v3) = (p("code1"), p("vars1"), p("code2"), p("vars2"), p("code3"), p("vars3"));
        let pairs = [(c1.as_path(), v1.as_path()), (c2.as_path(), v2.as_path()), (c3.as_path(), v3.as_path())];
        let fw = Firmware::locate_in(pairs.into_iter()).unwrap();
        assert_eq!(fw.code, c2);
        assert_eq!(fw.vars_template, v2);
    }

    #[test]
    fn missing_firmware_says_what_was_tried() {
        let pairs = [(Path::new("/nonexistent/CODE.fd"), Path::new("/nonexistent/VARS.fd"))];
        let err = Firmware::locate_in(pairs.into_iter()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/CODE.fd + /nonexistent/VARS.fd"), "{err}");
        assert!(err.contains("ovmf"), "{err}");
    }
}
