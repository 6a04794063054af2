//! `airlock flash`: an image onto a USB stick or disk, safely.
//!
//! 1. verify the release (signature, checksums, partitions; unless `--no-verify`);
//! 2. refuse a target that is not a block device or regular file, that is mounted (itself, a
//!    partition, or something stacked on it), that holds the running system, or that is
//!    smaller than the image ([`check_target`]);
//! 3. ask for confirmation unless `--yes` (and refuse without a terminal to ask on);
//! 4. write every byte (holes too: the target's old contents must not show through), with
//!    progress, hashing as it goes; fsync;
//! 5. drop the target's cached pages and read it back, comparing the SHA-256.

use crate::block_device::{self, DevNum, Sysfs};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::signing::PublicKey;
use crate::size::ByteSize;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHUNK: usize = 4 << 20;

#[derive(Debug)]
pub struct FlashOptions {
    /// `None`: do not verify (`--no-verify`).
    pub pubkey: Option<PublicKey>,
    pub assume_yes: bool,
}

#[derive(Debug)]
pub struct FlashReport {
    pub image: PathBuf,
    pub target: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub seconds: f64,
}

impl fmt::Display for FlashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} ({}) to {} in {:.1}s; read back identical (sha256 {})",
            self.image.display(),
            ByteSize(self.bytes),
            self.target.display(),
            self.seconds,
            self.sha256
        )
    }
}

/// Why a target is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refusing to write {target}: it does not exist (to flash into a file, create it at the image's size first)"
    )]
    Missing { target: PathBuf },
    #[error("refusing to write {target}: it is neither a block device nor a regular file")]
    NotADevice { target: PathBuf },
    #[error("refusing to write {target}: it is the image itself")]
    IsTheImage { target: PathBuf },
    #[error("refusing to write {target}: it {why}")]
    InUse { target: PathBuf, why: block_device::InUse },
    #[error("refusing to write {target}: it is too small ({} for an image of {})", ByteSize(*capacity), ByteSize(*needed))]
    TooSmall { target: PathBuf, capacity: u64, needed: u64 },
}

/// The image file to write: the argument itself, or in an output directory the appliance's
/// `.raw` (else `.raw.zst`).
pub fn resolve_image(arg: &Path) -> Result<PathBuf> {
    if !arg.is_dir() {
        return Ok(arg.to_path_buf());
    }
    let manifest = Manifest::read(&arg.join(MANIFEST_FILE))
        .with_context(|| format!("{} is a directory; its manifest names the image", arg.display()))?;
    for suffix in ["raw", "raw.zst"] {
        let p = arg.join(format!("{}.{suffix}", manifest.appliance.name));
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{} holds no {}.raw or {}.raw.zst", arg.display(), manifest.appliance.name, manifest.appliance.name)
}

fn is_zst(image: &Path) -> bool {
    image.extension().is_some_and(|e| e == "zst")
}

/// How many bytes the image puts on the target.
pub fn image_size(image: &Path) -> Result<u64> {
    if is_zst(image) {
        crate::outputs::zst::content_size(image)?
            .with_context(|| format!("{} does not record its decompressed size", image.display()))
    } else {
        Ok(std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?.len())
    }
}

/// Refuses unsafe targets; returns the target's capacity.
pub fn check_target(
    target: &Path,
    image: &Path,
    needed: u64,
    mounts: &[block_device::Mount],
    sysfs: &Sysfs,
) -> Result<u64> {
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refusal::Missing { target: target.to_path_buf() }.into());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    let capacity = if meta.file_type().is_block_device() {
        let dev = DevNum::from_rdev(meta.rdev());
        if let Some(why) = block_device::in_use(dev, mounts, sysfs) {
            return Err(Refusal::InUse { target: target.to_path_buf(), why }.into());
        }
        // Seeking to the end is how a block device tells its size without an ioctl.
        let mut f = File::open(target).with_context(|| format!("opening {}", target.display()))?;
        f.seek(SeekFrom::End(0)).with_context(|| format!("finding the size of {}", target.display()))?
    } else if meta.file_type().is_file() {
        let img = std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?;
        if img.dev() == meta.dev() && img.ino() == meta.ino() {
            return Err(Refusal::IsTheImage { target: target.to_path_buf() }.into());
        }
        meta.len()
    } else {
        return Err(Refusal::NotADevice { target: target.to_path_buf() }.into());
    };
    if capacity < needed {
        return Err(Refusal::TooSmall { target: target.to_path_buf(), capacity, needed }.into());
    }
    Ok(capacity)
}

fn confirm(target: &Path, capacity: u64, image: &Path, size: u64) -> Result<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "refusing to overwrite {} without confirmation: there is no terminal to ask on; pass --yes",
            target.display()
        );
    }
    eprint!(
        "This overwrites {} ({}) with {} ({}); everything on it is lost. Type `yes` to go on: ",
        target.display(),
        ByteSize(capacity),
        image.display(),
        ByteSize(size)
    );
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was written to {}", target.display());
    }
    Ok(())
}

pub fn flash(image_arg: &Path, target: &Path, opts: &FlashOptions) -> Result<FlashReport> {
    let image = resolve_image(image_arg)?;
    if let Some(key) = &opts.pubkey {
        let report = crate::verify::verify(&image, key)
            .with_context(|| format!("refusing to flash {}: it does not verify", image.display()))?;
        log::info!("{}: verified ({})", image.display(), report.trusted_comment.replace('\t', " "));
    }
    let size = image_size(&image)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = block_device::parse_mountinfo(&mountinfo)?;
    let capacity = check_target(target, &image, size, &mounts, &Sysfs::system())?;
    if !opts.assume_yes {
        confirm(target, capacity, &image, size)?;
    }
    let start = Instant::now();
    let sha256 = write(&image, target, size)?;
    let back = read_back(target, size)?;
    if back != sha256 {
        bail!(
            "{} reads back differently from what was written (sha256 {back}, written {sha256}): the medium may be failing",
            target.display()
        );
    }
    Ok(FlashReport { image, target: target.to_path_buf(), bytes: size, sha256, seconds: start.elapsed().as_secs_f64() })
}

fn progress(size: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// Writes the image's bytes; returns their SHA-256.
fn write(image: &Path, target: &Path, size: u64) -> Result<String> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut source: Box<dyn Read> = if is_zst(image) {
        Box::new(zstd::stream::read::Decoder::new(file).context("starting zstd")?)
    } else {
        Box::new(file)
    };
    let is_block = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    let mut options = OpenOptions::new();
    options.write(true);
    if is_block {
        // O_EXCL on a block device: the kernel refuses it while anything has it mounted or
        // claimed, a second line of defence behind the mountinfo check.
        options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let mut out = options.open(target).with_context(|| format!("opening {} for writing", target.display()))?;
    let bar = progress(size, "writing");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n =
            crate::verify::read_full(&mut source, &mut buf).with_context(|| format!("reading {}", image.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("writing {} at byte {done}", target.display()))?;
        done += n as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    if done != size {
        bail!("{} gave {done} bytes, expected {size}", image.display());
    }
    out.sync_all().with_context(|| format!("syncing {}", target.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Reads the first `size` bytes of the target back, past the page cache where the kernel
/// allows, and returns their SHA-256.
fn read_back(target: &Path, size: u64) -> Result<String> {
    let mut f = File::open(target).with_context(|| format!("opening {} to read back", target.display()))?;
    // Written pages are clean after fsync; dropping them makes the read come from the medium.
    if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed) {
        log::warn!("cannot drop cached pages of {} ({e}); reading back through the cache", target.display());
    }
    let bar = progress(size, "reading back");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        f.read_exact(&mut buf[..n]).with_context(|| format!("reading {} back at byte {done}", target.display()))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}
