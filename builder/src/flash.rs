//! `airlock flash`: an image onto a USB stick or disk, safely.
//!
//! 1. open the image once: every later step reads that one open file, whatever its path names
//!    by then;
//! 2. verify the release (signature, checksums, partitions; unless `--no-verify`) and keep the
//!    image's SHA-256 from the signed `SHA256SUMS`;
//! 3. refuse a target that is not a block device or regular file, that is mounted (itself, a
//!    partition, or something stacked on it), that holds the running system, or that is
//!    smaller than the image ([`check_target`]);
//! 4. ask for confirmation unless `--yes` (and refuse without a terminal to ask on);
//! 5. write every byte (holes too: the target's old contents must not show through), with
//!    progress, hashing the image's bytes as they are read (the compressed ones for `.raw.zst`)
//!    and what is written; fsync. The image's hash must equal the signed one before anything
//!    is called a success: a file changed in place after the check, or a source that reads
//!    differently the second time, is caught here, and the error says the target holds
//!    unverified bytes;
//! 6. drop the target's cached pages and read it back, comparing its SHA-256 with what was
//!    written (for a `.raw`, the signed digest itself);
//! 7. with `--install-to DISK`, set `[install] disk = DISK` in the stick's `airlock.toml` (the
//!    one line of the shipped file, uncommented, written onto the ESP by mtools): booted, the
//!    stick installs the appliance onto that disk. Without it, the report says which line to
//!    edit for that.

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
    /// `--install-to`: `auto` or a stable disk path, written into the stick's `airlock.toml`.
    pub install_to: Option<String>,
}

#[derive(Debug)]
pub struct FlashReport {
    pub image: PathBuf,
    pub target: PathBuf,
    pub bytes: u64,
    /// SHA-256 of the bytes on the target (read back).
    pub sha256: String,
    /// The image file's SHA-256 as read while writing, equal to the signed one; `None` with
    /// `--no-verify`.
    pub signed_sha256: Option<String>,
    pub seconds: f64,
    /// The disk the stick installs onto (`--install-to`), as its `airlock.toml` now says.
    pub installs_to: Option<String>,
}

impl fmt::Display for FlashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} ({}) to {} in {:.1}s; ",
            self.image.display(),
            ByteSize(self.bytes),
            self.target.display(),
            self.seconds,
        )?;
        match &self.signed_sha256 {
            Some(signed) if *signed == self.sha256 => {
                write!(f, "the bytes written have the signed sha256 {signed} and read back identical")
            }
            Some(signed) => write!(
                f,
                "the image read had the signed sha256 {signed}; its decompressed bytes read back identical (sha256 {})",
                self.sha256
            ),
            None => write!(f, "NOT verified (--no-verify); read back identical (sha256 {})", self.sha256),
        }?;
        match &self.installs_to {
            Some(disk) => write!(
                f,
                "\n{} is an installer: booted, it installs the appliance onto {disk} (airlock.toml: [install] {})",
                self.target.display(),
                airlock_common::site::install_line(disk)
            ),
            None => write!(
                f,
                "\nto make it an installer, edit airlock.toml on its first partition (FAT): under [install], change `{}` to `{}` (or flash with --install-to auto)",
                airlock_common::site::INSTALL_LINE_COMMENTED,
                airlock_common::site::install_line("auto")
            ),
        }
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

/// How many bytes the image (open as `file`) puts on the target.
pub fn image_size(image: &Path, file: &File) -> Result<u64> {
    if is_zst(image) {
        crate::outputs::zst::content_size_of(file)
            .with_context(|| format!("reading {}", image.display()))?
            .with_context(|| format!("{} does not record its decompressed size", image.display()))
    } else {
        Ok(file.metadata().with_context(|| format!("reading {}", image.display()))?.len())
    }
}

/// Refuses unsafe targets; returns the target's capacity. `image` is the open image.
pub fn check_target(
    target: &Path,
    image: &File,
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
        let img = image.metadata().context("reading the image's metadata")?;
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
    if let Some(disk) = &opts.install_to {
        check_install_to(disk)?;
    }
    let image = resolve_image(image_arg)?;
    let source = crate::input_file::open_regular(&image, "image")?;
    let signed = match &opts.pubkey {
        None => None,
        Some(key) => {
            let report = crate::verify::verify(&image, key, &crate::verify::VerifyOptions::default())
                .with_context(|| format!("refusing to flash {}: it does not verify", image.display()))?;
            log::info!("{}: verified ({})", image.display(), report.trusted_comment.replace('\t', " "));
            let name = crate::manifest::file_name(&image);
            // verify() succeeds for a single image only when SHA256SUMS lists it.
            Some(report.signed_digest(&name).with_context(|| format!("SHA256SUMS does not list {name}"))?)
        }
    };
    let size = image_size(&image, &source)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = block_device::parse_mountinfo(&mountinfo)?;
    let capacity = check_target(target, &source, size, &mounts, &Sysfs::system())?;
    if !opts.assume_yes {
        confirm(target, capacity, &image, size)?;
    }
    let start = Instant::now();
    let written = write(source, is_zst(&image), &image, target, size)?;
    if let Some(signed) = signed
        && written.source != signed
    {
        bail!(
            "{} changed after it was verified: the bytes just written have sha256 {}, the signed SHA256SUMS lists {}. \
             {} now holds an image that nothing vouches for: do not use it; flash again from a release that verifies",
            image.display(),
            hex::encode(written.source),
            hex::encode(signed),
            target.display()
        );
    }
    let back = read_back(target, size)?;
    let sha256 = hex::encode(written.target);
    if back != sha256 {
        bail!(
            "{} reads back differently from what was written (sha256 {back}, written {sha256}): the medium may be failing",
            target.display()
        );
    }
    if let Some(disk) = &opts.install_to {
        set_install_to(target, disk)?;
    }
    Ok(FlashReport {
        image,
        target: target.to_path_buf(),
        bytes: size,
        sha256,
        signed_sha256: signed.map(hex::encode),
        seconds: start.elapsed().as_secs_f64(),
        installs_to: opts.install_to.clone(),
    })
}

/// `--install-to`'s value, checked as the appliance will read it, before anything is written.
fn check_install_to(disk: &str) -> Result<()> {
    let text = format!("[install]\n{}\n", airlock_common::site::install_line(disk));
    airlock_common::site::parse(&text, Path::new("/efi")).map(drop).context("--install-to")
}

/// Uncomments the shipped `airlock.toml`'s install line on `target`'s ESP, set to `disk`: read
/// and written back with mtools (`mtype`, `mcopy`), then read again to check.
pub fn set_install_to(target: &Path, disk: &str) -> Result<()> {
    use airlock_common::site::{INSTALL_LINE_COMMENTED, SITE_FILE, install_line};
    let file = File::open(target).with_context(|| format!("opening {}", target.display()))?;
    let layout = airlock_common::gpt::GptLayout::read(&file)
        .with_context(|| format!("reading the partition table {} now holds", target.display()))?;
    let esp = layout
        .partitions
        .iter()
        .find(|p| p.type_guid == airlock_common::gpt::types::ESP)
        .with_context(|| format!("{} has no ESP", target.display()))?;
    let volume = format!("{}@@{}", target.display(), esp.start);
    let site = format!("::{SITE_FILE}");
    let text = crate::command::Cmd::new("mtype")
        .args(["-i", &volume, &site])
        .output_text()
        .with_context(|| format!("reading {SITE_FILE} on {}'s ESP (mtools)", target.display()))?;
    if text.matches(INSTALL_LINE_COMMENTED).count() != 1 {
        bail!(
            "{SITE_FILE} on {} has no line `{INSTALL_LINE_COMMENTED}` under [install] to change (was it edited?): \
             set `{}` under [install] by hand",
            target.display(),
            install_line(disk)
        );
    }
    let edited = text.replacen(INSTALL_LINE_COMMENTED, &install_line(disk), 1);
    airlock_common::site::parse(&edited, Path::new("/efi")).context("the edited airlock.toml")?;
    let tmp = tempfile::Builder::new().prefix("airlock-site-").tempfile().context("a temporary file")?;
    std::fs::write(tmp.path(), &edited).context("writing the edited airlock.toml")?;
    crate::command::Cmd::new("mcopy")
        .args(["-o", "-i", &volume])
        .arg(tmp.path())
        .arg(&site)
        .run()
        .with_context(|| format!("writing {SITE_FILE} onto {}'s ESP (mtools)", target.display()))?;
    File::open(target).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", target.display()))?;
    let back = crate::command::Cmd::new("mtype").args(["-i", &volume, &site]).output_text()?;
    if back != edited {
        bail!("{SITE_FILE} on {} reads back differently from what was written", target.display());
    }
    Ok(())
}

/// A stage of the flash, shown by [`crate::progress`] as bytes of `size`.
fn progress(size: u64, what: &str) -> crate::progress::Stage {
    let stage = crate::progress::stage(what);
    crate::progress::measure(crate::progress::Unit::Bytes, Some(size));
    stage
}

/// The digests of one write.
struct Written {
    /// Of the image file's bytes as they were read (compressed, for `.raw.zst`).
    source: [u8; 32],
    /// Of the bytes written to the target.
    target: [u8; 32],
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes the image's bytes from the open `source` (decompressing a `.raw.zst`), exactly `size`
/// of them; returns the digests of what was read and what was written.
fn write(source: File, zst: bool, image: &Path, target: &Path, size: u64) -> Result<Written> {
    let mut source = source;
    source.seek(SeekFrom::Start(0)).with_context(|| format!("reading {}", image.display()))?;
    let mut hashing = HashingReader { inner: source, hasher: Sha256::new() };
    let is_block = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    let mut options = OpenOptions::new();
    options.write(true);
    if is_block {
        // O_EXCL on a block device: the kernel refuses it while anything has it mounted or
        // claimed, a second line of defence behind the mountinfo check.
        options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let mut out = options.open(target).with_context(|| format!("opening {} for writing", target.display()))?;
    let stage = progress(size, "writing");
    let mut written = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    {
        // At most one byte more than the image's size is taken: enough to tell that the source
        // is longer than the size the target was checked for, never written past it.
        let mut decoded: Box<dyn Read + '_> = if zst {
            // The decoder's read-ahead goes through the hasher too: every byte of the file is
            // hashed exactly once, here or in the copy after the loop.
            Box::new(zstd::stream::read::Decoder::new(&mut hashing).context("starting zstd")?)
        } else {
            Box::new(&mut hashing)
        };
        let mut limited = (&mut decoded).take(size.saturating_add(1));
        loop {
            let n = crate::verify::read_full(&mut limited, &mut buf)
                .with_context(|| format!("reading {}", image.display()))?;
            if n == 0 {
                break;
            }
            if done + n as u64 > size {
                bail!(
                    "{} gives more than the {size} bytes it announced; {} holds a partial write",
                    image.display(),
                    target.display()
                );
            }
            written.update(&buf[..n]);
            out.write_all(&buf[..n]).with_context(|| format!("writing {} at byte {done}", target.display()))?;
            done += n as u64;
            crate::progress::bytes(n as u64);
        }
    }
    stage.finish(done == size);
    if done != size {
        bail!("{} gave {done} bytes, expected {size}", image.display());
    }
    // The rest of the file (past a zstd frame, if anything) counts for its digest too.
    std::io::copy(&mut hashing, &mut std::io::sink()).with_context(|| format!("reading {}", image.display()))?;
    out.sync_all().with_context(|| format!("syncing {}", target.display()))?;
    Ok(Written { source: hashing.hasher.finalize().into(), target: written.finalize().into() })
}

/// Reads the first `size` bytes of the target back, past the page cache where the kernel
/// allows, and returns their SHA-256.
fn read_back(target: &Path, size: u64) -> Result<String> {
    let mut f = File::open(target).with_context(|| format!("opening {} to read back", target.display()))?;
    // Written pages are clean after fsync; dropping them makes the read come from the medium.
    if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed) {
        log::warn!("cannot drop cached pages of {} ({e}); reading back through the cache", target.display());
    }
    let stage = progress(size, "reading back");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = usize::try_from((size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        f.read_exact(&mut buf[..n]).with_context(|| format!("reading {} back at byte {done}", target.display()))?;
        hasher.update(&buf[..n]);
        done += n as u64;
        crate::progress::bytes(n as u64);
    }
    stage.finish(true);
    Ok(hex::encode(hasher.finalize()))
}
