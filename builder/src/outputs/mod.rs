//! The formats one raw image is released in, each derived from the same raw image in the same
//! build, each byte-for-byte reproducible:
//! - [`Format::Raw`]: the sparse raw image itself, for `dd` to a USB stick;
//! - [`Format::RawZst`]: zstd, always in multithreaded mode ([`zst`]);
//! - [`Format::Qcow2`], [`Format::Vmdk`]: `qemu-img convert` ([`qemu_img`]), with the VMDK
//!   descriptor's random CID replaced by a seeded one;
//! - [`Format::Ova`]: a ustar tar of an OVF, its manifest and the VMDK ([`ova`]).

pub mod ova;
pub mod qemu_img;
pub mod zst;

use crate::clock::BuildClock;
use crate::seed::Seed;
use anyhow::{Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    Raw,
    RawZst,
    Qcow2,
    Vmdk,
    Ova,
}

impl Format {
    pub const ALL: [Format; 5] = [Format::Raw, Format::RawZst, Format::Qcow2, Format::Vmdk, Format::Ova];

    /// The file name suffix, which is also the name users write.
    pub fn suffix(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Ova => "ova",
        }
    }

    /// `<name>.<suffix>`.
    pub fn file_name(self, name: &str) -> String {
        format!("{name}.{}", self.suffix())
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL.into_iter().find(|f| f.suffix() == s).ok_or_else(|| {
            let known: Vec<_> = Format::ALL.iter().map(|f| f.suffix()).collect();
            format!("unknown output format `{s}` (known: {})", known.join(", "))
        })
    }
}

/// The virtual machine an OVA describes (and a VM template should get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmHardware {
    pub cpus: u32,
    pub memory_mib: u64,
}

/// What [`derive`] needs besides the raw image.
#[derive(Debug, Clone)]
pub struct DeriveOptions<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub formats: &'a [Format],
    pub vm: VmHardware,
    pub seed: &'a Seed,
    pub clock: BuildClock,
}

/// Writes every requested format next to `raw` (`<out_dir>/<name>.raw`), in a fixed order, and
/// returns the files that are outputs (the raw image only if it was asked for; the VMDK only if
/// asked for, although an OVA needs one). Each file appears only once complete.
pub fn derive(raw: &Path, out_dir: &Path, opts: &DeriveOptions<'_>) -> Result<Vec<(Format, PathBuf)>> {
    let path = |f: Format| out_dir.join(f.file_name(opts.name));
    let wants = |f: Format| opts.formats.contains(&f);
    let mut outputs = Vec::new();
    // Each derived format reads the whole raw image once: that is the stage's measure.
    let conversions = [wants(Format::RawZst), wants(Format::Qcow2), wants(Format::Vmdk) || wants(Format::Ova)];
    let raw_size = std::fs::metadata(raw).with_context(|| format!("reading {}", raw.display()))?.len();
    let total = raw_size * conversions.iter().filter(|c| **c).count() as u64;
    crate::progress::measure(crate::progress::Unit::Bytes, Some(total));
    if wants(Format::Raw) {
        outputs.push((Format::Raw, raw.to_path_buf()));
    }
    if wants(Format::RawZst) {
        zst::compress(raw, &path(Format::RawZst))?;
        outputs.push((Format::RawZst, path(Format::RawZst)));
    }
    if wants(Format::Qcow2) {
        qemu_img::to_qcow2(raw, &path(Format::Qcow2))?;
        outputs.push((Format::Qcow2, path(Format::Qcow2)));
    }
    if wants(Format::Vmdk) || wants(Format::Ova) {
        qemu_img::to_vmdk(raw, &path(Format::Vmdk), opts.seed)?;
        if wants(Format::Vmdk) {
            outputs.push((Format::Vmdk, path(Format::Vmdk)));
        }
    }
    if wants(Format::Ova) {
        let capacity = std::fs::metadata(raw).with_context(|| format!("reading {}", raw.display()))?.len();
        let ovf = ova::Ovf {
            name: opts.name,
            version: opts.version,
            description: opts.description,
            vm: opts.vm,
            capacity,
            vmdk: &path(Format::Vmdk),
        };
        ova::write(&ovf, &path(Format::Ova), opts.clock.epoch)?;
        outputs.push((Format::Ova, path(Format::Ova)));
        if !wants(Format::Vmdk) {
            remove_if_present(&path(Format::Vmdk))?;
        }
    }
    Ok(outputs)
}

/// Removes `<name>.<format>` files of formats this build does not write, so that a directory
/// never mixes this build's outputs with an older build's.
pub fn remove_stale(out_dir: &Path, name: &str, formats: &[Format]) -> Result<()> {
    for f in Format::ALL {
        // The raw image is always written (everything derives from it); it is removed at the
        // end when not wanted.
        if f != Format::Raw && !formats.contains(&f) {
            remove_if_present(&out_dir.join(f.file_name(name)))?;
        }
    }
    Ok(())
}

pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Parses a list of format names (from the spec or `--format`): known, at least one, no repeats.
pub fn parse_formats(names: &[String]) -> Result<Vec<Format>, String> {
    if names.is_empty() {
        return Err("at least one output format is needed".to_string());
    }
    let mut out = Vec::new();
    for n in names {
        let f: Format = n.parse()?;
        if out.contains(&f) {
            return Err(format!("`{n}` is listed twice"));
        }
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        for f in Format::ALL {
            assert_eq!(f.suffix().parse::<Format>().unwrap(), f);
        }
        assert_eq!(Format::RawZst.file_name("demo"), "demo.raw.zst");
        assert!("iso".parse::<Format>().unwrap_err().contains("known: raw, raw.zst"));
        assert!(parse_formats(&["raw".into(), "raw".into()]).unwrap_err().contains("twice"));
        assert!(parse_formats(&[]).is_err());
    }
}
