//! A `newc` cpio archive (the kernel's initramfs format), for the few files airlock adds to
//! the distribution's initrd: the kernel unpacks archives laid end to end, compressed or not,
//! each over the last (init/initramfs.c; systemd-stub appends its credentials the same way).
//! Entries are directories and regular files owned by root, with the build's mtime, in the
//! order given: the same inputs give the same bytes.

use anyhow::{Result, bail};

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, content: Vec<u8> },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// The archive of `entries`, ending with the `TRAILER!!!` entry and padded to 4 bytes.
pub fn archive(entries: &[Entry], mtime: i64) -> Result<Vec<u8>> {
    let mtime = u32::try_from(mtime).map_err(|_| anyhow::anyhow!("mtime {mtime} does not fit a cpio header"))?;
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (path, mode, content) = match entry {
            Entry::Dir { path, mode } => (path, S_IFDIR | mode, &[][..]),
            Entry::File { path, mode, content } => (path, S_IFREG | mode, content.as_slice()),
        };
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("cpio entry `{path}`: a relative path without empty, `.` or `..` components");
        }
        let nlink = if matches!(entry, Entry::Dir { .. }) { 2 } else { 1 };
        put(&mut out, (i + 1) as u32, mode, nlink, mtime, path, content)?;
    }
    put(&mut out, 0, 0, 1, 0, "TRAILER!!!", &[])?;
    Ok(out)
}

fn put(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, mtime: u32, name: &str, content: &[u8]) -> Result<()> {
    let size = u32::try_from(content.len()).map_err(|_| anyhow::anyhow!("cpio entry `{name}` is over 4 GiB"))?;
    let name_size = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    out.extend_from_slice(b"070701");
    for field in [ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, name_size, 0] {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(content);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// `base` (an initrd as the distribution made it) with `extra` laid after it, `base` padded
/// with zeros to 4 bytes first (the kernel skips zeros between archives).
pub fn append(base: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(base.len() + 4 + extra.len());
    out.extend_from_slice(base);
    pad4(&mut out);
    out.extend_from_slice(extra);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry::Dir { path: "usr".into(), mode: 0o755 },
            Entry::File { path: "usr/hello.rules".into(), mode: 0o644, content: b"hello\n".to_vec() },
        ]
    }

    #[test]
    fn cpio_itself_lists_and_extracts_the_archive() {
        let bytes = archive(&entries(), 1_700_000_000).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(bytes, archive(&entries(), 1_700_000_000).unwrap(), "reproducible");
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idmv", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cpio (GNU cpio) is installed");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cpio: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().collect::<Vec<_>>(), ["usr", "usr/hello.rules"]);
        assert_eq!(std::fs::read(dir.path().join("usr/hello.rules")).unwrap(), b"hello\n");
        let meta = std::fs::metadata(dir.path().join("usr/hello.rules")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_700_000_000);
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777, 0o644);
    }

    #[test]
    fn paths_that_could_leave_the_archive_are_refused() {
        for bad in ["/etc/passwd", "usr/../../etc", "", "usr//x", "./x"] {
            let e = Entry::File { path: bad.into(), mode: 0o644, content: Vec::new() };
            assert!(archive(&[e], 0).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn appending_pads_the_base_to_four_bytes() {
        assert_eq!(append(b"abcde", b"XY"), b"abcde\0\0\0XY");
        assert_eq!(append(b"abcd", b"XY"), b"abcdXY");
    }
}
