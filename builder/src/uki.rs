//! The unified kernel image: systemd's EFI stub with the kernel, initrd, command line and
//! os-release as PE sections, one file that systemd-boot lists and Secure Boot verifies whole.
//!
//! Assembled natively, the way ukify 257 (the image's own systemd) does, so the result is what
//! systemd-stub 257 expects and the same inputs always give the same bytes:
//! - the stub is the image's own `linuxx64.efi.stub` (package systemd-boot-efi), unsigned: a
//!   signed stub is refused, as ukify refuses it, since adding sections would break its
//!   signature;
//! - sections are added in ukify's order `.osrel .cmdline .uname .linux .initrd`: each header
//!   in the stub's free header space, each section's data at the next FileAlignment (512)
//!   boundary of the file and zero-padded to a multiple of it (raw data contiguous, no gaps,
//!   as Authenticode verifiers want), each address at the next SectionAlignment (4096)
//!   boundary after the previous section's end; VirtualSize is the exact content length;
//!   `.linux` is marked code, the others initialized data, all readable;
//! - `.sbat` is not added but replaced in place in the stub's own section (raw size 512 in
//!   257.13): ukify's merge of the stub's and the kernel's SBAT entries behind one `sbat,1`
//!   header, plus the `uki,1` entry, ending in a newline and a NUL;
//! - then CheckSum 0 (signing sets it), SizeOfImage from the last section's end rounded to
//!   SectionAlignment, and NX_COMPAT cleared if the kernel lacks it (the UKI cannot promise
//!   more than the kernel it runs).

use crate::pe::{DLL_NX_COMPAT, PeImage, SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA, SCN_MEM_READ};
use anyhow::{Context, Result, bail, ensure};

/// The SBAT header every merged `.sbat` starts with.
const SBAT_HEADER: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md";
/// The UKI's own SBAT entry, ukify's default.
const UKI_SBAT: &str = "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/";

/// What goes into one unified kernel image. Paths are for error messages only.
#[derive(Debug, Clone, Copy)]
pub struct UkiInputs<'a> {
    /// `usr/lib/systemd/boot/efi/linuxx64.efi.stub` from the image's systemd-boot-efi.
    pub stub: &'a [u8],
    pub stub_path: &'a str,
    /// The kernel (`boot/vmlinuz-*`, an EFI-stub PE image).
    pub kernel: &'a [u8],
    pub kernel_path: &'a str,
    pub initrd: &'a [u8],
    /// The kernel command line, fixed in the image (with Secure Boot, systemd-stub ignores
    /// command lines passed from the boot menu when `.cmdline` exists).
    pub cmdline: &'a str,
    /// os-release text for `.osrel` (see [`os_release`]); systemd-boot lists a UKI only if it
    /// has one.
    pub os_release: &'a str,
    /// `uname -r` of the kernel, e.g. `6.12.117+deb13-amd64`.
    pub uname: &'a str,
}

/// Assembles the UKI. Deterministic: no timestamps, no randomness.
pub fn assemble(inputs: &UkiInputs) -> Result<Vec<u8>> {
    check_text("the kernel command line", inputs.cmdline)?;
    check_text("the os-release text", inputs.os_release)?;
    ensure!(
        !inputs.uname.is_empty() && !inputs.uname.contains(|c: char| c.is_whitespace() || c.is_control()),
        "the kernel release `{}` is not one word",
        inputs.uname
    );
    let mut uki = PeImage::parse(inputs.stub.to_vec(), inputs.stub_path)?;
    check_stub(&uki, inputs.stub_path)?;
    let kernel = PeImage::parse(inputs.kernel.to_vec(), inputs.kernel_path)
        .context("the kernel must be an EFI-stub kernel (a PE image)")?;

    let sbat = merge_sbat(&uki, inputs.stub_path, &kernel, inputs.kernel_path)?;

    // Some stubs' SizeOfHeaders is not a FileAlignment multiple; the space up to the first
    // section's data (which is aligned) is free either way.
    let fa = u64::from(uki.file_alignment());
    let headers = crate::pe::round_up(u64::from(uki.size_of_headers()), fa);
    uki.set_size_of_headers(u32::try_from(headers).context("SizeOfHeaders overflows")?);

    let data = SCN_MEM_READ | SCN_CNT_INITIALIZED_DATA;
    let added: [(&str, &[u8], u32); 5] = [
        (".osrel", inputs.os_release.as_bytes(), data),
        (".cmdline", inputs.cmdline.as_bytes(), data),
        (".uname", inputs.uname.as_bytes(), data),
        (".linux", inputs.kernel, SCN_MEM_READ | SCN_CNT_CODE),
        (".initrd", inputs.initrd, data),
    ];
    for (name, bytes, flags) in added {
        uki.append_section(name, bytes, flags).with_context(|| format!("adding {name} to {}", inputs.stub_path))?;
    }
    uki.replace_section(".sbat", sbat.as_bytes())
        .with_context(|| format!("the merged SBAT does not fit in the .sbat section of {}", inputs.stub_path))?;

    uki.set_checksum(0);
    uki.update_size_of_image()?;
    if kernel.dll_characteristics() & DLL_NX_COMPAT == 0 {
        uki.set_dll_characteristics(uki.dll_characteristics() & !DLL_NX_COMPAT);
    }
    Ok(uki.into_bytes())
}

fn check_text(what: &str, text: &str) -> Result<()> {
    ensure!(!text.contains('\0'), "{what} contains a NUL byte");
    Ok(())
}

fn check_stub(stub: &PeImage, path: &str) -> Result<()> {
    if stub.certificate_table() != (0, 0) {
        bail!("{path} is signed; a UKI is built from the unsigned stub and signed as a whole");
    }
    if stub.pointer_to_symbol_table() != 0 {
        bail!("{path} carries a COFF symbol table; use the stripped stub of the systemd-boot-efi package");
    }
    for s in stub.sections() {
        if s.pointer_to_raw_data % stub.file_alignment() != 0 || s.size_of_raw_data % stub.file_alignment() != 0 {
            bail!("section {} of {path} is not aligned to the file alignment", s.name);
        }
        if [".osrel", ".cmdline", ".uname", ".linux", ".initrd"].contains(&s.name.as_str()) {
            bail!("{path} already has a {} section: it is a UKI, not a stub", s.name);
        }
    }
    Ok(())
}

/// The SBAT entries of one PE section, without its `sbat,` header line; empty without .sbat.
fn sbat_entries(pe: &PeImage, path: &str) -> Result<Vec<String>> {
    let Some(section) = pe.section(".sbat") else { return Ok(Vec::new()) };
    // ukify reads the whole raw data and strips the NUL padding.
    let start = section.pointer_to_raw_data as usize;
    let raw = &pe.bytes()[start..start + section.size_of_raw_data as usize];
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&raw[..end]).with_context(|| format!("the .sbat section of {path} is not UTF-8"))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(first) if first.starts_with("sbat,") => Ok(lines.map(str::to_string).collect()),
        _ => bail!("the .sbat section of {path} does not start with an `sbat,` line"),
    }
}

/// ukify's `merge_sbat`: one header line, the stub's and the kernel's entries, the UKI's.
fn merge_sbat(stub: &PeImage, stub_path: &str, kernel: &PeImage, kernel_path: &str) -> Result<String> {
    if stub.section(".sbat").is_none() {
        bail!("{stub_path} has no .sbat section (systemd 250 or later has one)");
    }
    let mut entries = sbat_entries(stub, stub_path)?;
    entries.extend(sbat_entries(kernel, kernel_path)?);
    entries.push(UKI_SBAT.to_string());
    Ok(format!("{SBAT_HEADER}\n{}\n\0", entries.join("\n")))
}

/// The image's os-release with `IMAGE_ID` and `IMAGE_VERSION` set (replacing any the base OS
/// has), which systemd-boot shows and orders UKIs by.
pub fn os_release(base: &str, image_id: &str, image_version: &str) -> Result<String> {
    let valid_id = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) || extra.contains(c))
    };
    ensure!(valid_id(image_id, ""), "IMAGE_ID `{image_id}` is not lower-case letters, digits, `.`, `_`, `-`");
    ensure!(
        valid_id(&image_version.to_ascii_lowercase(), "~+"),
        "IMAGE_VERSION `{image_version}` is not letters, digits, `.`, `_`, `-`, `~`, `+`"
    );
    let mut out = String::new();
    for line in base.lines() {
        if line.starts_with("IMAGE_ID=") || line.starts_with("IMAGE_VERSION=") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("IMAGE_ID={image_id}\nIMAGE_VERSION={image_version}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pe::tests::fixture_stub;

    const STUB_SBAT: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nsystemd-stub,1,The systemd Developers,systemd,257,https://systemd.io/\n";

    fn inputs<'a>(stub: &'a [u8], kernel: &'a [u8]) -> UkiInputs<'a> {
        UkiInputs {
            stub,
            stub_path: "stub.efi",
            kernel,
            kernel_path: "vmlinuz",
            initrd: b"070701initrd",
            cmdline: "roothash=00ff ro console=ttyS0",
            os_release: "ID=debian\nIMAGE_ID=demo\n",
            uname: "6.12.0-test",
        }
    }

    #[test]
    fn sections_sbat_and_reproducibility() {
        let stub = fixture_stub(STUB_SBAT);
        // TEST FIXTURE kernel: the fixture PE without NX_COMPAT and with its own SBAT entry.
        let mut kernel = fixture_stub("sbat,1,SBAT Version,sbat,1,x\nlinux,1,Linux,linux,6.12,x\n");
        kernel[0x98 + 71] = 0x00; // DllCharacteristics 0x160 → 0x060
        let uki = assemble(&inputs(&stub, &kernel)).unwrap();
        assert_eq!(uki, assemble(&inputs(&stub, &kernel)).unwrap(), "same inputs, same bytes");
        let pe = PeImage::parse(uki, "uki").unwrap();
        let names: Vec<_> = pe.sections().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".sbat", ".reloc", ".osrel", ".cmdline", ".uname", ".linux", ".initrd"]);
        let cmdline = pe.section(".cmdline").unwrap();
        assert_eq!(pe.section_data(cmdline), b"roothash=00ff ro console=ttyS0");
        assert_eq!(pe.section(".linux").unwrap().characteristics, SCN_MEM_READ | SCN_CNT_CODE);
        let sbat = pe.section_data(pe.section(".sbat").unwrap());
        assert_eq!(
            std::str::from_utf8(sbat).unwrap(),
            format!(
                "{SBAT_HEADER}\nsystemd-stub,1,The systemd Developers,systemd,257,https://systemd.io/\n\
                 linux,1,Linux,linux,6.12,x\n{UKI_SBAT}\n\0"
            )
        );
        assert_eq!(pe.dll_characteristics() & DLL_NX_COMPAT, 0, "kernel without NX: UKI without NX");
        assert_eq!(pe.checksum(), 0);
        // Raw data is contiguous: each section starts where the previous one's raw data ends.
        let mut by_file: Vec<_> = pe.sections().to_vec();
        by_file.sort_by_key(|s| s.pointer_to_raw_data);
        for w in by_file.windows(2) {
            assert_eq!(w[0].pointer_to_raw_data + w[0].size_of_raw_data, w[1].pointer_to_raw_data, "{w:?}");
        }
        let last = by_file.last().unwrap();
        assert_eq!((last.pointer_to_raw_data + last.size_of_raw_data) as usize, pe.bytes().len());
    }

    #[test]
    fn refuses_bad_inputs() {
        let stub = fixture_stub(STUB_SBAT);
        let kernel = fixture_stub(STUB_SBAT);
        let err = |i: UkiInputs| format!("{:#}", assemble(&i).unwrap_err());
        assert!(err(UkiInputs { cmdline: "a\0b", ..inputs(&stub, &kernel) }).contains("command line contains a NUL"));
        assert!(err(UkiInputs { uname: "6.1 x", ..inputs(&stub, &kernel) }).contains("not one word"));
        assert!(
            err(UkiInputs { kernel: b"not a kernel", ..inputs(&stub, &kernel) })
                .contains("vmlinuz is not a valid PE32+")
        );
        let mut signed = stub.clone();
        signed[0x98 + 144..0x98 + 148].copy_from_slice(&1024u32.to_le_bytes());
        signed[0x98 + 148..0x98 + 152].copy_from_slice(&8u32.to_le_bytes());
        assert!(err(UkiInputs { stub: &signed, ..inputs(&stub, &kernel) }).contains("stub.efi is signed"));
        let long = "x".repeat(600);
        let big_sbat = fixture_stub(&format!("sbat,1\n{}\n", &long[..400]));
        let kernel_sbat = fixture_stub(&format!("sbat,1\n{}\n", &long[..100]));
        let e = err(UkiInputs { stub: &big_sbat, kernel: &kernel_sbat, ..inputs(&stub, &kernel) });
        assert!(e.contains("merged SBAT does not fit"), "{e}");
        let uki = assemble(&inputs(&stub, &kernel)).unwrap();
        assert!(err(UkiInputs { stub: &uki, ..inputs(&stub, &kernel) }).contains("it is a UKI, not a stub"));
    }

    #[test]
    fn os_release_sets_image_id_and_version() {
        let text = os_release("PRETTY_NAME=\"Debian\"\nIMAGE_ID=old\nID=debian\n", "demo", "1.2.0").unwrap();
        assert_eq!(text, "PRETTY_NAME=\"Debian\"\nID=debian\nIMAGE_ID=demo\nIMAGE_VERSION=1.2.0\n");
        assert!(os_release("", "Demo", "1").is_err());
        assert!(os_release("", "demo", "1 2").is_err());
    }
}
