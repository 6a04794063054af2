//! The unified kernel image built from the image's own Debian trixie stub, kernel and initrd,
//! judged by GNU binutils: `objdump -h` must show every section at the address and file offset
//! ukify's rules give (computed here from objdump's view of the stub, not from airlock's PE
//! code), `objcopy --only-section` must give back exactly what went in, and `objdump -p` the
//! header fields. Same inputs, same bytes.

#![allow(clippy::unwrap_used, reason = "a test should stop at the first unexpected error")]

mod support;

use airlock::uki::{self, UkiInputs};
use std::fs;
use std::path::Path;
use support::base_files::boot_files;
use support::tool_ok;

/// One line pair of `objdump -h`: name, size, VMA, file offset.
#[derive(Debug, Clone, PartialEq)]
struct ObjSection {
    name: String,
    size: u64,
    vma: u64,
    file_off: u64,
}

fn objdump_sections(path: &Path) -> Vec<ObjSection> {
    let out = tool_ok("objdump", &["-h", path.to_str().unwrap()]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "  0 .text  0001080e  000000014df91000  000000014df91000  00000600  2**4"
            if f.len() == 7 && f[0].parse::<u32>().is_ok() {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
                Some(ObjSection { name: f[1].to_string(), size: hex(f[2]), vma: hex(f[3]), file_off: hex(f[5]) })
            } else {
                None
            }
        })
        .collect()
}

fn objdump_field(private: &str, name: &str) -> String {
    private
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in objdump -p:\n{private}"))
}

fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

#[test]
fn uki_from_the_images_own_stub_reads_back_with_binutils() {
    let Some(files) = boot_files() else { return };
    let dir = tempfile::tempdir().unwrap();
    let os_release = uki::os_release(&files.os_release, "demo", "1.0.0").unwrap();
    let cmdline = "roothash=954172dfee9aaab2d90a0ab162ee6bc5a6a77ede951fad19f0f94df0d7266a93 ro console=ttyS0,115200";
    let inputs = UkiInputs {
        stub: &files.stub,
        stub_path: "linuxx64.efi.stub",
        kernel: &files.kernel,
        kernel_path: &files.kernel_path,
        initrd: &files.initrd,
        cmdline,
        os_release: &os_release,
        uname: &files.uname,
    };
    let bytes = uki::assemble(&inputs).unwrap();
    assert_eq!(bytes, uki::assemble(&inputs).unwrap(), "same inputs, same bytes");
    let path = dir.path().join("demo_1.0.0.efi");
    fs::write(&path, &bytes).unwrap();
    let stub_path = dir.path().join("stub.efi");
    fs::write(&stub_path, &files.stub).unwrap();

    // Where ukify's rules put each added section, from objdump's view of the stub alone.
    let stub = objdump_sections(&stub_path);
    let stub_private = tool_ok("objdump", &["-p", stub_path.to_str().unwrap()]);
    let image_base = u64::from_str_radix(&objdump_field(&stub_private, "ImageBase"), 16).unwrap();
    let last = stub.last().unwrap();
    let mut vma = last.vma + last.size;
    let mut file_off = round_up(files.stub.len() as u64, 512);
    let added: [(&str, &[u8]); 5] = [
        (".osrel", os_release.as_bytes()),
        (".cmdline", cmdline.as_bytes()),
        (".uname", files.uname.as_bytes()),
        (".linux", &files.kernel),
        (".initrd", &files.initrd),
    ];
    let mut expected = stub.clone();
    for (name, content) in added {
        vma = round_up(vma, 4096);
        expected.push(ObjSection { name: name.to_string(), size: content.len() as u64, vma, file_off });
        vma += content.len() as u64;
        file_off += round_up(content.len() as u64, 512);
    }
    let got = objdump_sections(&path);
    // .sbat grew in place; everything else of the stub is where it was.
    let sbat = got.iter().find(|s| s.name == ".sbat").unwrap().clone();
    for e in expected.iter_mut().filter(|s| s.name == ".sbat") {
        assert_eq!((e.vma, e.file_off), (sbat.vma, sbat.file_off), ".sbat stays in place");
        e.size = sbat.size;
    }
    assert_eq!(got, expected, "section table as objdump reads it");
    assert_eq!(bytes.len() as u64, file_off, "raw data ends the file, no gap, no tail");

    // Every section's contents come back exactly, through objcopy.
    let extract = |name: &str| {
        let out = dir.path().join(format!("section{name}"));
        tool_ok(
            "objcopy",
            &["-O", "binary", &format!("--only-section={name}"), path.to_str().unwrap(), out.to_str().unwrap()],
        );
        fs::read(&out).unwrap()
    };
    for (name, content) in added {
        assert!(extract(name) == content, "objcopy --only-section={name} differs from the input");
    }
    let sbat_text = String::from_utf8(extract(".sbat")).unwrap();
    let stub_sbat = String::from_utf8(extract_from(&stub_path, ".sbat", dir.path())).unwrap();
    let mut want = stub_sbat.trim_end_matches('\0').to_string();
    want.push_str("uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n\0");
    assert_eq!(sbat_text, want, "merged SBAT: the stub's entries, then the UKI's");
    assert!(sbat_text.len() <= 512, "fits the stub's 512-byte .sbat");

    let private = tool_ok("objdump", &["-p", path.to_str().unwrap()]);
    assert_eq!(objdump_field(&private, "CheckSum"), "00000000");
    assert_eq!(
        u64::from_str_radix(&objdump_field(&private, "SizeOfImage"), 16).unwrap(),
        round_up(vma - image_base, 4096)
    );
    assert_eq!(u64::from_str_radix(&objdump_field(&private, "ImageBase"), 16).unwrap(), image_base);
    assert_eq!(objdump_field(&private, "Subsystem"), "0000000a\t(EFI application)");
    // Debian's kernel is NX_COMPAT, so the UKI keeps the stub's flags.
    assert_eq!(objdump_field(&private, "DllCharacteristics"), objdump_field(&stub_private, "DllCharacteristics"));
    assert!(private.contains("NX_COMPAT"), "{private}");
    let listed = support::tool("sbverify", &["--list", path.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(said.contains("No signature table present"), "an unsigned UKI: {listed:?}");
}

fn extract_from(pe: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("stub-section{name}"));
    tool_ok(
        "objcopy",
        &["-O", "binary", &format!("--only-section={name}"), pe.to_str().unwrap(), out.to_str().unwrap()],
    );
    fs::read(&out).unwrap()
}
