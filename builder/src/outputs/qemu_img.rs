//! `qcow2` and `vmdk` outputs through `qemu-img convert`, the converter every hypervisor's
//! tooling trusts.
//!
//! Both are deterministic for the same `qemu-img` and input, with one exception handled here:
//! qemu's VMDK writer puts a random content id (`CID=`) into the text descriptor, and names
//! the extent after the file it wrote (our `.partial` name). [`fix_vmdk_descriptor`] rewrites
//! the descriptor in place, inside the space reserved for it, with a CID from the build seed
//! and the final file name. Nothing else in a streamOptimized VMDK refers to the descriptor.
//!
//! `-m 1` and no `-W`: one coroutine writing in order, so clusters are allocated in the same
//! order every time.

use crate::command::Cmd;
use crate::output_file::PartialFile;
use crate::seed::Seed;
use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const QEMU_IMG: &str = "qemu-img";
const SECTOR: u64 = 512;

pub fn to_qcow2(raw: &Path, dest: &Path) -> Result<()> {
    let partial = PartialFile::create(dest)?;
    Cmd::new(QEMU_IMG)
        .args(["convert", "-p", "-m", "1", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1"])
        .arg(raw)
        .arg(partial.partial_path())
        .run_streaming(None, report_percent(raw, "qcow2"))
        .with_context(|| format!("converting {} to qcow2", raw.display()))?;
    partial.commit()?;
    Ok(())
}

/// Turns qemu-img's `-p` meter (`    (12.34/100%)`) into bytes of the raw image converted,
/// added to what the stage had done before.
fn report_percent(raw: &Path, format: &str) -> impl FnMut(&str) {
    let size = std::fs::metadata(raw).map_or(0, |m| m.len());
    let base = crate::progress::done();
    crate::progress::phase(&format!("converting to {format}"));
    move |line: &str| {
        let percent =
            line.trim().strip_prefix('(').and_then(|l| l.split('/').next()).and_then(|p| p.parse::<f64>().ok());
        if let Some(p) = percent {
            crate::progress::set_done(base + (size as f64 * p.clamp(0.0, 100.0) / 100.0) as u64);
        }
    }
}

/// A streamOptimized VMDK (what OVAs carry and vSphere imports), on an LSI Logic SCSI adapter
/// (the controller the OVF describes, driven by Linux's mptspi).
pub fn to_vmdk(raw: &Path, dest: &Path, seed: &Seed) -> Result<()> {
    let partial = PartialFile::create(dest)?;
    Cmd::new(QEMU_IMG)
        .args(["convert", "-m", "1", "-f", "raw", "-O", "vmdk"])
        .args(["-o", "subformat=streamOptimized,adapter_type=lsilogic", "-p"])
        .arg(raw)
        .arg(partial.partial_path())
        .run_streaming(None, report_percent(raw, "vmdk"))
        .with_context(|| format!("converting {} to a streamOptimized VMDK", raw.display()))?;
    let name = dest.file_name().and_then(|n| n.to_str()).context("a VMDK's file name must be UTF-8")?;
    fix_vmdk_descriptor(partial.file(), name, seed.u32("vmdk-cid"))
        .with_context(|| format!("making {}'s descriptor reproducible", partial.partial_path().display()))?;
    partial.commit()?;
    Ok(())
}

/// Where the descriptor lives: (byte offset, reserved length), from the sparse extent header.
fn descriptor_area(file: &File) -> Result<(u64, u64)> {
    let mut header = [0u8; 512];
    file.read_exact_at(&mut header, 0).context("reading the VMDK header")?;
    ensure!(&header[0..4] == b"KDMV", "not a sparse VMDK (no KDMV magic)");
    let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    // VMDK 1.1 sparse extent header: descriptorOffset at byte 28, descriptorSize at 36, in
    // sectors.
    let (offset, size) = (field(28), field(36));
    ensure!(offset > 0 && size > 0, "the VMDK has no embedded descriptor");
    Ok((offset * SECTOR, size * SECTOR))
}

/// Rewrites the embedded descriptor with `CID=<cid>` and the extent named `file_name`.
pub fn fix_vmdk_descriptor(file: &File, file_name: &str, cid: u32) -> Result<()> {
    let (offset, len) = descriptor_area(file)?;
    let mut area = vec![0u8; usize::try_from(len).context("VMDK descriptor area too large")?];
    file.read_exact_at(&mut area, offset).context("reading the VMDK descriptor")?;
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..end]).context("the VMDK descriptor is not UTF-8")?;
    let mut fixed = String::with_capacity(text.len());
    let (mut cid_lines, mut extent_lines) = (0, 0);
    for line in text.lines() {
        if line.starts_with("CID=") {
            fixed.push_str(&format!("CID={cid:08x}"));
            cid_lines += 1;
        } else if line.starts_with("RW ") || line.starts_with("RDONLY ") {
            // `RW <sectors> SPARSE "<file>"`: keep access, size and type, replace the name.
            let Some(quote) = line.find('"') else { bail!("extent line without a file name: {line:?}") };
            fixed.push_str(&line[..quote]);
            fixed.push_str(&format!("\"{file_name}\""));
            extent_lines += 1;
        } else {
            fixed.push_str(line);
        }
        fixed.push('\n');
    }
    ensure!(cid_lines == 1 && extent_lines == 1, "unexpected VMDK descriptor:\n{text}");
    ensure!(
        fixed.len() <= area.len(),
        "the fixed VMDK descriptor ({} bytes) does not fit its {}-byte area",
        fixed.len(),
        area.len()
    );
    let mut new_area = vec![0u8; area.len()];
    new_area[..fixed.len()].copy_from_slice(fixed.as_bytes());
    file.write_all_at(&new_area, offset).context("writing the VMDK descriptor")?;
    Ok(())
}

/// The descriptor text of a VMDK (for tests and `inspect`).
pub fn vmdk_descriptor(file: &File) -> Result<String> {
    let (offset, len) = descriptor_area(file)?;
    let mut area = vec![0u8; usize::try_from(len).context("VMDK descriptor area too large")?];
    file.read_exact_at(&mut area, offset).context("reading the VMDK descriptor")?;
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    Ok(String::from_utf8_lossy(&area[..end]).into_owned())
}
