//! The copy-on-write qcow2 overlay each VM writes to, so the built raw image stays untouched.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::command;

/// Creates `overlay` on top of `image` (raw, or qcow2 when its name ends in `.qcow2`: the
/// build's VM-template output), optionally enlarged to `size` bytes.
///
/// The image is referenced by its absolute path, so the overlay works from any directory
/// and the image must stay where it is while the VM lives.
pub fn create_overlay(image: &Path, overlay: &Path, size: Option<u64>) -> Result<()> {
    let image = image.canonicalize().with_context(|| format!("finding the disk image {}", image.display()))?;
    let image_len =
        std::fs::metadata(&image).with_context(|| format!("reading the size of {}", image.display()))?.len();
    if let Some(size) = size.filter(|&size| backing_format(&image) == "raw" && size < image_len) {
        bail!("disk_size {size} is smaller than the image {} ({image_len} bytes)", image.display());
    }
    command::run(Command::new("qemu-img").args(overlay_args(&image, overlay, size)))
        .with_context(|| format!("creating the disk overlay for {}", image.display()))?;
    Ok(())
}

fn backing_format(image: &Path) -> &'static str {
    if image.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" }
}

/// `qemu-img` arguments that create `overlay` backed by `image` (absolute path).
pub fn overlay_args(image: &Path, overlay: &Path, size: Option<u64>) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["create", "-f", "qcow2", "-F", backing_format(image), "-b"].iter().map(OsString::from).collect();
    args.push(image.into());
    args.push(overlay.into());
    if let Some(size) = size {
        args.push(size.to_string().into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_images_are_backed_as_qcow2() {
        let args = overlay_args(Path::new("/out/web.qcow2"), Path::new("/tmp/o.qcow2"), None);
        assert_eq!(args, ["create", "-f", "qcow2", "-F", "qcow2", "-b", "/out/web.qcow2", "/tmp/o.qcow2"]);
    }

    #[test]
    fn args_without_a_size_keep_the_image_size() {
        let args = overlay_args(Path::new("/out/web.raw"), Path::new("/tmp/vm/overlay.qcow2"), None);
        assert_eq!(args, ["create", "-f", "qcow2", "-F", "raw", "-b", "/out/web.raw", "/tmp/vm/overlay.qcow2"]);
    }

    #[test]
    fn args_with_a_size_enlarge_the_disk() {
        let args = overlay_args(Path::new("/out/web.raw"), Path::new("/tmp/o.qcow2"), Some(8 << 30));
        assert_eq!(args.last().unwrap(), "8589934592");
    }

    #[test]
    fn a_size_below_the_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.raw");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let err = create_overlay(&image, &dir.path().join("o.qcow2"), Some(512)).unwrap_err().to_string();
        assert!(err.contains("smaller than the image"), "{err}");
    }

    #[test]
    fn a_missing_image_is_named() {
        let err =
            create_overlay(Path::new("/nonexistent/web.raw"), Path::new("/tmp/x.qcow2"), None).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/web.raw"), "{err}");
    }

    /// Needs qemu-img (Debian's qemu-utils), like every VM test.
    #[test]
    fn qemu_img_creates_a_larger_overlay_and_leaves_the_image_alone() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.raw");
        std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("o.qcow2");
        create_overlay(&image, &overlay, Some(64 << 20)).unwrap();
        let info = command::run(Command::new("qemu-img").args(["info", "--output=json"]).arg(&overlay)).unwrap();
        assert!(info.contains("\"virtual-size\": 67108864"), "{info}");
        assert!(info.contains("\"backing-filename-format\": \"raw\""), "{info}");
        assert!(info.contains(image.to_str().unwrap()), "{info}");
        assert_eq!(std::fs::read(&image).unwrap(), vec![7u8; 1 << 20]);
    }
}
