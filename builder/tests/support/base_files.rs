//! Files from the demo's cached base OS tarball (Debian trixie, built by mmdebstrap when the
//! cache lacks it): the real systemd-boot, EFI stub, kernel and initrd for image tests.

use super::{is_network_failure, repo_root};
use std::io::Read;

/// The boot files of the image's own packages.
pub struct BootFiles {
    pub stub: Vec<u8>,
    pub systemd_boot: Vec<u8>,
    pub kernel: Vec<u8>,
    pub kernel_path: String,
    pub initrd: Vec<u8>,
    pub os_release: String,
    /// `uname -r`, from the kernel's file name.
    pub uname: String,
}

/// Reads the boot files from the demo's base OS; `None` (the caller prints SKIPPED) only when
/// the Debian archive cannot be reached to build a missing base OS.
pub fn boot_files() -> Option<BootFiles> {
    let plan = airlock::plan::plan(&repo_root().join("images/demo/appliance.toml"), &Default::default())
        .expect("planning the demo spec");
    let cache = airlock::cache::cache_dir().expect("the cache directory");
    let tar_path = match plan.base.ensure_tarball(&cache, 1_700_000_000) {
        Ok(p) => p,
        Err(e) if is_network_failure(&format!("{e:#}")) => {
            eprintln!("SKIPPED: the Debian archive cannot be reached to build the base OS: {e:#}");
            return None;
        }
        Err(e) => panic!("building the demo's base OS: {e:#}"),
    };
    let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).expect("opening the base OS tarball"));
    let (mut stub, mut systemd_boot, mut kernel, mut initrd, mut os_release) = (None, None, None, None, None);
    for entry in archive.entries().expect("reading the base OS tarball") {
        let mut entry = entry.expect("a tar entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().expect("a tar path").to_string_lossy().trim_start_matches("./").to_string();
        let mut read = || {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).expect("reading a tar entry");
            buf
        };
        match path.as_str() {
            "usr/lib/systemd/boot/efi/linuxx64.efi.stub" => stub = Some(read()),
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi" => systemd_boot = Some(read()),
            "usr/lib/os-release" => os_release = Some(String::from_utf8(read()).expect("os-release is text")),
            p if p.starts_with("boot/vmlinuz-") => kernel = Some((p.to_string(), read())),
            p if p.starts_with("boot/initrd.img-") => initrd = Some(read()),
            _ => {}
        }
    }
    let missing = |what: &str| format!("the base OS {} has no {what}", tar_path.display());
    let (kernel_path, kernel) = kernel.unwrap_or_else(|| panic!("{}", missing("boot/vmlinuz-*")));
    Some(BootFiles {
        stub: stub.unwrap_or_else(|| panic!("{}", missing("linuxx64.efi.stub (package systemd-boot-efi)"))),
        systemd_boot: systemd_boot.unwrap_or_else(|| panic!("{}", missing("systemd-bootx64.efi"))),
        uname: kernel_path.trim_start_matches("boot/vmlinuz-").to_string(),
        kernel,
        kernel_path,
        initrd: initrd.unwrap_or_else(|| panic!("{}", missing("boot/initrd.img-*"))),
        os_release: os_release.unwrap_or_else(|| panic!("{}", missing("usr/lib/os-release"))),
    })
}
