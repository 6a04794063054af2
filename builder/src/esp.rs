//! The EFI system partition: systemd-boot, the kernel and initrd taken from the root filesystem,
//! and one loader entry that boots the root partition by its (seeded) PARTUUID.
//!
//! Files are not copied: the ESP tree's nodes point at the same bytes as the root tree's (the
//! base OS tarball), and the FAT writer reads them from there.

use crate::tree::{Content, Meta, NodeKind, Tree};
use anyhow::{Context, Result, bail};
use std::cmp::Ordering;

const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// A kernel found in the root filesystem, with its initrd.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    kernel: (Content, u64),
    initrd: (Content, u64),
}

/// What the loader entry says.
#[derive(Debug, Clone)]
pub struct LoaderEntry {
    pub title: String,
    pub version: String,
    /// The complete kernel command line.
    pub options: Vec<String>,
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
    Ok(Kernel {
        kernel: file_of(root, &format!("boot/vmlinuz-{version}"))?,
        initrd: file_of(root, &format!("boot/initrd.img-{version}"))
            .with_context(|| format!("kernel {version} has no initrd (is initramfs-tools installed?)"))?,
        version,
    })
}

fn add(tree: &mut Tree, path: &str, (content, size): (Content, u64)) -> Result<()> {
    tree.insert(path.as_bytes(), Meta::root(0o644), NodeKind::File { size, content })
        .map_err(|p| anyhow::anyhow!("ESP file {path}: {p}"))?;
    Ok(())
}

fn text(s: String) -> (Content, u64) {
    let size = s.len() as u64;
    (Content::Bytes(s.into_bytes().into()), size)
}

/// Builds the ESP tree: `\EFI\BOOT\BOOTX64.EFI` and `\EFI\systemd\systemd-bootx64.efi`
/// (systemd-boot from the root filesystem), the kernel and initrd under `\airlock\`, and
/// `loader/entries/airlock.conf`.
pub fn make_esp(root: &Tree, kernel: &Kernel, entry: &LoaderEntry) -> Result<Tree> {
    let mut esp = Tree::new();
    let boot = file_of(root, SYSTEMD_BOOT).context("systemd-boot-efi must be installed")?;
    add(&mut esp, "EFI/BOOT/BOOTX64.EFI", boot.clone())?;
    add(&mut esp, "EFI/systemd/systemd-bootx64.efi", boot)?;
    let linux = format!("airlock/vmlinuz-{}", kernel.version);
    let initrd = format!("airlock/initrd.img-{}", kernel.version);
    add(&mut esp, &linux, kernel.kernel.clone())?;
    add(&mut esp, &initrd, kernel.initrd.clone())?;
    add(&mut esp, "loader/loader.conf", text("timeout 0\ndefault airlock.conf\neditor no\n".into()))?;
    let conf = format!(
        "title {}\nversion {}\nlinux /{linux}\ninitrd /{initrd}\noptions {}\n",
        entry.title,
        entry.version,
        entry.options.join(" ")
    );
    add(&mut esp, "loader/entries/airlock.conf", text(conf))?;
    Ok(esp)
}

/// `airlock.toml`, the site configuration an operator edits after flashing (read on every
/// boot by `airlock firstboot`), at the root of the ESP.
pub fn add_site_config(esp: &mut Tree, text: &str) -> Result<()> {
    add(esp, airlock_common::site::SITE_FILE, self::text(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(cmp_version("6.12.9-amd64", "6.12.10-amd64"), Ordering::Less);
        assert_eq!(cmp_version("6.12.117+deb13-amd64", "6.1.0-amd64"), Ordering::Greater);
        assert_eq!(cmp_version("1.0", "1.0"), Ordering::Equal);
    }

    fn rootfs(kernels: &[&str]) -> Tree {
        let mut t = Tree::new();
        let f = |s: &str| NodeKind::File { size: s.len() as u64, content: Content::Bytes(s.as_bytes().into()) };
        t.insert(SYSTEMD_BOOT.as_bytes(), Meta::root(0o644), f("MZ-boot")).unwrap();
        for v in kernels {
            t.insert(format!("boot/vmlinuz-{v}").as_bytes(), Meta::root(0o644), f("kernel")).unwrap();
            t.insert(format!("boot/initrd.img-{v}").as_bytes(), Meta::root(0o644), f("initrd")).unwrap();
        }
        t
    }

    #[test]
    fn picks_the_newest_kernel_and_writes_the_entry() {
        let root = rootfs(&["6.12.9-amd64", "6.12.10-amd64"]);
        let k = find_kernel(&root).unwrap();
        assert_eq!(k.version, "6.12.10-amd64");
        let entry = LoaderEntry {
            title: "demo".into(),
            version: "1".into(),
            options: vec!["root=PARTUUID=x".into(), "rw".into()],
        };
        let esp = make_esp(&root, &k, &entry).unwrap();
        for p in [
            "EFI/BOOT/BOOTX64.EFI",
            "EFI/systemd/systemd-bootx64.efi",
            "airlock/vmlinuz-6.12.10-amd64",
            "loader/loader.conf",
        ] {
            assert!(esp.lookup(p).is_some(), "{p}");
        }
        let id = esp.lookup("loader/entries/airlock.conf").unwrap();
        let NodeKind::File { content: Content::Bytes(b), .. } = &esp.node(id).kind else { panic!() };
        let s = std::str::from_utf8(b).unwrap();
        assert!(
            s.contains("linux /airlock/vmlinuz-6.12.10-amd64\n") && s.contains("options root=PARTUUID=x rw\n"),
            "{s}"
        );
    }

    #[test]
    fn missing_kernel_or_initrd_is_explained() {
        let err = find_kernel(&rootfs(&[])).unwrap_err().to_string();
        assert!(err.contains("no kernel"), "{err}");
        let mut t = rootfs(&[]);
        let f = NodeKind::File { size: 1, content: Content::Bytes(b"k"[..].into()) };
        t.insert(b"boot/vmlinuz-1", Meta::root(0o644), f).unwrap();
        assert!(format!("{:#}", find_kernel(&t).unwrap_err()).contains("initrd"));
    }
}
