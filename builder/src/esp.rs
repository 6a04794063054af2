//! The EFI system partition: systemd-boot and one unified kernel image (UKI) in
//! `/EFI/Linux/`, made from the root filesystem's own stub, kernel and initrd, with the kernel
//! command line fixed inside it (with verity, `roothash=`). With the owner's Secure Boot keys,
//! systemd-boot and the UKI are signed with the db key and the keys' `.auth` files wait in
//! `loader/keys/auto/` for systemd-boot to enroll them on a machine in Setup Mode.
//!
//! systemd-boot is not copied: the ESP tree's nodes point at the same bytes as the root tree's
//! (the base OS tarball), and the FAT writer reads them from there. The UKI is assembled in
//! memory (kernel and initrd are tens of MiB).

use crate::secure_boot::{OwnerKeys, sign_pe};
use crate::tree::{Content, Meta, NodeKind, Tree};
use crate::uki::{self, UkiInputs};
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;

const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Where Debian's systemd-boot-update.service looks for a signed loader to install instead of
/// the unsigned one: the image ships the one airlock signed, so an update of the loader on the
/// appliance keeps the signature (reference: systemd-boot(7), `.efi.signed`).
const SYSTEMD_BOOT_SIGNED: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi.signed";
const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const OS_RELEASE: &str = "usr/lib/os-release";

/// A kernel found in the root filesystem, with its initrd.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    kernel_path: String,
    initrd_path: String,
}

/// What the boot chain is made of, besides the root filesystem's files.
#[derive(Debug)]
pub struct BootSetup<'a> {
    /// IMAGE_ID and IMAGE_VERSION of the UKI's os-release, and its file name.
    pub name: &'a str,
    pub version: &'a str,
    /// The complete kernel command line, fixed in the UKI.
    pub cmdline: Vec<String>,
    /// The owner's Secure Boot keys: sign the loader and the UKI, enroll in Setup Mode.
    pub secure_boot: Option<&'a OwnerKeys>,
    /// A cpio archive laid after the distribution's initrd (`configure::initrd_additions`).
    pub initrd_additions: &'a [u8],
}

/// What the ESP's boot chain is, for the manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootRecord {
    /// The UKI's path on the ESP.
    pub uki: String,
    pub uki_sha256: String,
    pub uki_size: u64,
    pub cmdline: String,
    /// Signed with the owner's db key, keys ready for enrollment.
    pub secure_boot: bool,
}

fn file_of(tree: &Tree, path: &str) -> Result<(Content, u64)> {
    let id = tree.lookup(path).with_context(|| format!("the root filesystem has no {path}"))?;
    match &tree.node(id).kind {
        NodeKind::File { size, content } => Ok((content.clone(), *size)),
        other => bail!("{path} in the root filesystem is a {}, not a regular file", other.describe()),
    }
}

/// Compares versions the way people read them: runs of digits as numbers.
fn cmp_version(a: &str, b: &str) -> Ordering {
    let split = |s: &str| -> Vec<(bool, String)> {
        let mut parts: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match parts.last_mut() {
                Some((d, p)) if *d == digit => p.push(c),
                _ => parts.push((digit, c.to_string())),
            }
        }
        parts
    };
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (xs, ys) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys))
            }
            _ => x.1.cmp(&y.1),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The newest `boot/vmlinuz-<version>` that has a `boot/initrd.img-<version>`.
pub fn find_kernel(root: &Tree) -> Result<Kernel> {
    let boot = root.lookup("boot").unwrap_or(root.root());
    let mut versions: Vec<String> = root
        .entries(boot)
        .filter_map(|(name, _)| name.strip_prefix(b"vmlinuz-"))
        .filter_map(|v| std::str::from_utf8(v).ok().map(String::from))
        .collect();
    versions.sort_by(|a, b| cmp_version(a, b));
    let Some(version) = versions.pop() else {
        bail!("the root filesystem has no kernel (/boot/vmlinuz-*): is linux-image-amd64 installed?");
    };
    let kernel_path = format!("boot/vmlinuz-{version}");
    let initrd_path = format!("boot/initrd.img-{version}");
    file_of(root, &kernel_path)?;
    file_of(root, &initrd_path).with_context(|| format!("kernel {version} has no initrd (is dracut installed?)"))?;
    Ok(Kernel { version, kernel_path, initrd_path })
}

fn add(tree: &mut Tree, path: &str, (content, size): (Content, u64)) -> Result<()> {
    tree.insert(path.as_bytes(), Meta::root(0o644), NodeKind::File { size, content })
        .map_err(|p| anyhow::anyhow!("ESP file {path}: {p}"))?;
    Ok(())
}

fn text(s: String) -> (Content, u64) {
    bytes(s.into_bytes())
}

fn bytes(b: Vec<u8>) -> (Content, u64) {
    let size = b.len() as u64;
    (Content::Bytes(b.into()), size)
}

/// The loader's configuration: no menu (one UKI), no editing of the command line, and — with
/// the owner's keys on the ESP — enrollment of the `auto` set on a machine in Setup Mode, on
/// metal too (`force`: systemd-boot's default `if-safe` enrolls only in VMs; a host is in Setup
/// Mode only when its owner put it there, and systemd-boot counts down 15 s so a person at the
/// console can stop it).
fn loader_conf(secure_boot: bool) -> String {
    let mut conf = String::from("timeout 0\neditor no\n");
    if secure_boot {
        conf.push_str("secure-boot-enroll force\n");
    }
    conf
}

/// Builds the ESP tree: systemd-boot as `\EFI\BOOT\BOOTX64.EFI` and
/// `\EFI\systemd\systemd-bootx64.efi`, the UKI as `\EFI\Linux\<name>_<version>.efi`,
/// `loader/loader.conf`, and with Secure Boot keys `loader/keys/auto/{PK,KEK,db}.auth`.
/// With Secure Boot keys, [`install_signed_loader`] must have run on `root`.
pub fn make_esp(root: &Tree, kernel: &Kernel, setup: &BootSetup) -> Result<(Tree, BootRecord)> {
    let mut esp = Tree::new();
    let cmdline = setup.cmdline.join(" ");
    let os_release = uki::os_release(&root.read_required_text(OS_RELEASE)?, setup.name, setup.version)?;
    let stub = root.read_required_bytes(STUB).context("systemd-boot-efi must be installed")?;
    let linux = root.read_required_bytes(&kernel.kernel_path)?;
    let initrd = crate::cpio::append(&root.read_required_bytes(&kernel.initrd_path)?, setup.initrd_additions);
    let image = uki::assemble(&UkiInputs {
        stub: &stub,
        stub_path: STUB,
        kernel: &linux,
        kernel_path: &kernel.kernel_path,
        initrd: &initrd,
        cmdline: &cmdline,
        os_release: &os_release,
        uname: &kernel.version,
    })?;
    let uki_path = format!("EFI/Linux/{}_{}.efi", setup.name, setup.version);
    let (boot, image) = match setup.secure_boot {
        Some(keys) => (
            file_of(root, SYSTEMD_BOOT_SIGNED).context("the signed loader must be installed first")?,
            sign_pe(&image, &uki_path, &keys.db)?,
        ),
        None => (file_of(root, SYSTEMD_BOOT).context("systemd-boot-efi must be installed")?, image),
    };
    add(&mut esp, "EFI/BOOT/BOOTX64.EFI", boot.clone())?;
    add(&mut esp, "EFI/systemd/systemd-bootx64.efi", boot)?;
    let record = BootRecord {
        uki: format!("/{uki_path}"),
        uki_sha256: hex::encode(Sha256::digest(&image)),
        uki_size: image.len() as u64,
        cmdline,
        secure_boot: setup.secure_boot.is_some(),
    };
    add(&mut esp, &uki_path, bytes(image))?;
    add(&mut esp, "loader/loader.conf", text(loader_conf(setup.secure_boot.is_some())))?;
    if let Some(keys) = setup.secure_boot {
        for (variable, auth) in &keys.auth {
            add(&mut esp, &format!("loader/keys/auto/{}.auth", variable.name()), bytes(auth.clone()))?;
        }
    }
    Ok((esp, record))
}

/// Signs the root filesystem's systemd-boot with the db key into [`SYSTEMD_BOOT_SIGNED`],
/// which the ESP then carries (and the root keeps, for systemd-boot-update).
pub fn install_signed_loader(root: &mut Tree, keys: &OwnerKeys) -> Result<()> {
    let loader = root.read_required_bytes(SYSTEMD_BOOT).context("systemd-boot-efi must be installed")?;
    let signed = sign_pe(&loader, SYSTEMD_BOOT, &keys.db)?;
    root.put_file(SYSTEMD_BOOT_SIGNED, 0o644, signed)?;
    Ok(())
}

/// `airlock.toml`, the site configuration an operator edits after flashing (read on every
/// boot by `airlock firstboot`), at the root of the ESP.
pub fn add_site_config(esp: &mut Tree, text: &str) -> Result<()> {
    add(esp, airlock_common::site::SITE_FILE, self::text(text.to_string()))
}
