//! USB stick images for [`Vm::plug_usb_drive`](crate::Vm::plug_usb_drive): FAT32 with no
//! partition table (as many sticks come), made by mkfs.vfat and filled by mtools, checked by
//! `fsck.vfat -n`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::command;

/// Makes `<dir>/<label>.img` (lower case), a FAT32 filesystem labelled `label` holding `files`
/// (`(path on the stick, source file)`; folders are made as needed), 64 MiB larger than they
/// are.
pub fn fat_stick(dir: &Path, label: &str, files: &[(&str, &Path)]) -> Result<PathBuf> {
    let image = dir.join(format!("{}.img", label.to_lowercase()));
    let img = image.to_str().with_context(|| format!("{} is not UTF-8", image.display()))?;
    let mut bytes = 0;
    for (_, src) in files {
        bytes += std::fs::metadata(src).with_context(|| format!("reading the size of {}", src.display()))?.len();
    }
    let kib = (bytes + (64 << 20)) / 1024;
    command::run(Command::new("mkfs.vfat").args(["-C", "-F", "32", "-n", label, img, &kib.to_string()]))?;
    let mut made: Vec<&str> = Vec::new();
    for (dest, src) in files {
        if let Some((folder, _)) = dest.rsplit_once('/')
            && !made.contains(&folder)
        {
            command::run(Command::new("mmd").args(["-i", img, &format!("::/{folder}")]))?;
            made.push(folder);
        }
        command::run(Command::new("mcopy").args(["-i", img]).arg(src).arg(format!("::/{dest}")))?;
    }
    command::run(Command::new("fsck.vfat").args(["-n", img]))?;
    Ok(image)
}
