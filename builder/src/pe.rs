//! PE32+ images (UEFI executables): reading the headers airlock needs, adding and replacing
//! sections, and the regions Authenticode hashes.
//!
//! Only what the unified kernel image ([`crate::uki`]) and Secure Boot signing
//! ([`crate::secure_boot`]) need: the COFF header, the optional header's sizes, alignments,
//! checksum and certificate-table entry, and the section table. Every offset read from the file
//! is checked against its length before use: a truncated or hostile file is an error naming
//! it, never a panic.

use anyhow::{Context, Result, bail, ensure};

/// Optional-header magic of a PE32+ (64-bit) image.
const PE32_PLUS: u16 = 0x20b;
/// Size of one section header.
pub const SECTION_HEADER_LEN: usize = 40;
/// Index of the certificate table (Authenticode signatures) in the data directory.
const CERTIFICATE_TABLE: usize = 4;

pub const SCN_CNT_CODE: u32 = 0x0000_0020;
pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
pub const SCN_MEM_READ: u32 = 0x4000_0000;
/// DllCharacteristics: the image runs with non-executable data pages.
pub const DLL_NX_COMPAT: u16 = 0x0100;

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
}

/// A parsed PE32+ image that owns its bytes; header edits are written straight into them.
#[derive(Debug, Clone)]
pub struct PeImage {
    bytes: Vec<u8>,
    /// Offset of the optional header.
    opt: usize,
    /// Offset of the section table.
    section_table: usize,
    sections: Vec<Section>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).with_context(|| format!("the file ends before offset {}", at + 2))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).with_context(|| format!("the file ends before offset {}", at + 4))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

impl PeImage {
    /// Parses `bytes` as a PE32+ image; `what` names it in errors (e.g. the stub's path).
    pub fn parse(bytes: Vec<u8>, what: &str) -> Result<Self> {
        Self::parse_inner(bytes).with_context(|| format!("{what} is not a valid PE32+ image"))
    }

    fn parse_inner(bytes: Vec<u8>) -> Result<Self> {
        ensure!(bytes.get(..2) == Some(b"MZ"), "no MZ signature");
        let pe = u32_at(&bytes, 0x3c)? as usize;
        ensure!(bytes.get(pe..pe + 4) == Some(b"PE\0\0"), "no PE signature at offset {pe}");
        let coff = pe + 4;
        let sections = u16_at(&bytes, coff + 2)? as usize;
        let opt_len = u16_at(&bytes, coff + 16)? as usize;
        let opt = coff + 20;
        ensure!(u16_at(&bytes, opt)? == PE32_PLUS, "not PE32+ (64-bit)");
        ensure!(opt_len >= 112 + 8 * (CERTIFICATE_TABLE + 1), "the optional header has no certificate table entry");
        let dirs = u32_at(&bytes, opt + 108)? as usize;
        ensure!(dirs > CERTIFICATE_TABLE, "the optional header has only {dirs} data directories");
        let section_table = opt + opt_len;
        let mut image = Self { bytes, opt, section_table, sections: Vec::new() };
        let headers = image.size_of_headers() as usize;
        ensure!(headers <= image.bytes.len(), "SizeOfHeaders {headers} is past the end of the file");
        ensure!(
            section_table + sections * SECTION_HEADER_LEN <= headers,
            "the section table does not fit in SizeOfHeaders"
        );
        ensure!(
            image.file_alignment().is_power_of_two(),
            "FileAlignment {} is not a power of two",
            image.file_alignment()
        );
        ensure!(
            image.section_alignment().is_power_of_two(),
            "SectionAlignment {} is not a power of two",
            image.section_alignment()
        );
        for i in 0..sections {
            let at = section_table + i * SECTION_HEADER_LEN;
            let raw_name = &image.bytes[at..at + 8];
            let name_len = raw_name.iter().position(|&c| c == 0).unwrap_or(8);
            let name = String::from_utf8_lossy(&raw_name[..name_len]).into_owned();
            let s = Section {
                name,
                virtual_size: u32_at(&image.bytes, at + 8)?,
                virtual_address: u32_at(&image.bytes, at + 12)?,
                size_of_raw_data: u32_at(&image.bytes, at + 16)?,
                pointer_to_raw_data: u32_at(&image.bytes, at + 20)?,
                characteristics: u32_at(&image.bytes, at + 36)?,
            };
            let end = s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64;
            ensure!(end <= image.bytes.len() as u64, "section {} ends at {end}, past the end of the file", s.name);
            image.sections.push(s);
        }
        let (cert_at, cert_len) = image.certificate_table();
        if cert_len != 0 {
            let end = cert_at as u64 + cert_len as u64;
            ensure!(end <= image.bytes.len() as u64, "the certificate table ends at {end}, past the end of the file");
        }
        Ok(image)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// A section's contents: its first VirtualSize bytes (what is loaded), at most its raw size.
    pub fn section_data(&self, section: &Section) -> &[u8] {
        let start = section.pointer_to_raw_data as usize;
        let len = section.virtual_size.min(section.size_of_raw_data) as usize;
        &self.bytes[start..start + len]
    }

    fn u32_field(&self, offset: usize) -> u32 {
        u32_at(&self.bytes, self.opt + offset).expect("optional header fields were bounds-checked by parse")
    }

    fn set_u32_field(&mut self, offset: usize, value: u32) {
        self.bytes[self.opt + offset..self.opt + offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    pub fn section_alignment(&self) -> u32 {
        self.u32_field(32)
    }

    pub fn file_alignment(&self) -> u32 {
        self.u32_field(36)
    }

    pub fn image_base(&self) -> u64 {
        u64::from(self.u32_field(24)) | (u64::from(self.u32_field(28)) << 32)
    }

    pub fn size_of_image(&self) -> u32 {
        self.u32_field(56)
    }

    pub fn size_of_headers(&self) -> u32 {
        self.u32_field(60)
    }

    pub fn set_size_of_headers(&mut self, value: u32) {
        self.set_u32_field(60, value);
    }

    pub fn size_of_initialized_data(&self) -> u32 {
        self.u32_field(8)
    }

    pub fn pointer_to_symbol_table(&self) -> u32 {
        let coff = self.opt - 20;
        u32_at(&self.bytes, coff + 8).expect("the COFF header was bounds-checked by parse")
    }

    /// Byte offset of the CheckSum field (excluded from the Authenticode hash).
    pub fn checksum_offset(&self) -> usize {
        self.opt + 64
    }

    pub fn checksum(&self) -> u32 {
        self.u32_field(64)
    }

    pub fn dll_characteristics(&self) -> u16 {
        u16_at(&self.bytes, self.opt + 70).expect("bounds-checked by parse")
    }

    pub fn set_dll_characteristics(&mut self, value: u16) {
        self.bytes[self.opt + 70..self.opt + 72].copy_from_slice(&value.to_le_bytes());
    }

    /// Byte offset of the certificate-table data directory entry (excluded from the hash).
    pub fn certificate_entry_offset(&self) -> usize {
        self.opt + 112 + 8 * CERTIFICATE_TABLE
    }

    /// (file offset, size) of the attribute certificate table; (0, 0) when unsigned.
    pub fn certificate_table(&self) -> (u32, u32) {
        let at = self.certificate_entry_offset() - self.opt;
        (self.u32_field(at), self.u32_field(at + 4))
    }

    pub fn set_certificate_table(&mut self, offset: u32, size: u32) {
        let at = self.certificate_entry_offset() - self.opt;
        self.set_u32_field(at, offset);
        self.set_u32_field(at + 4, size);
    }

    fn write_section_header(&mut self, index: usize) {
        let s = &self.sections[index];
        let mut h = [0u8; SECTION_HEADER_LEN];
        h[..s.name.len()].copy_from_slice(s.name.as_bytes());
        h[8..12].copy_from_slice(&s.virtual_size.to_le_bytes());
        h[12..16].copy_from_slice(&s.virtual_address.to_le_bytes());
        h[16..20].copy_from_slice(&s.size_of_raw_data.to_le_bytes());
        h[20..24].copy_from_slice(&s.pointer_to_raw_data.to_le_bytes());
        h[36..40].copy_from_slice(&s.characteristics.to_le_bytes());
        let at = self.section_table + index * SECTION_HEADER_LEN;
        self.bytes[at..at + SECTION_HEADER_LEN].copy_from_slice(&h);
    }

    /// Appends a section after the last one, the way ukify does: its header in the free header
    /// space, its data at the next FileAlignment boundary of the file, zero-padded to a multiple
    /// of FileAlignment, its address at the next SectionAlignment boundary after the last
    /// section. SizeOfInitializedData grows by its size (for every added section, as ukify's).
    pub fn append_section(&mut self, name: &str, data: &[u8], characteristics: u32) -> Result<()> {
        ensure!(name.len() <= 8 && name.is_ascii(), "section name `{name}` is not 1-8 ASCII characters");
        let index = self.sections.len();
        let header_end = self.section_table + (index + 1) * SECTION_HEADER_LEN;
        if header_end > self.size_of_headers() as usize {
            bail!("no room in the headers for section {name}");
        }
        let len = u32::try_from(data.len()).with_context(|| format!("section {name} is larger than 4 GiB"))?;
        let fa = u64::from(self.file_alignment());
        let raw_at = round_up(self.bytes.len() as u64, fa);
        let raw_len = round_up(u64::from(len), fa);
        let last = self.sections.last().context("the image has no sections")?;
        let va = round_up(
            u64::from(last.virtual_address) + u64::from(last.virtual_size),
            u64::from(self.section_alignment()),
        );
        let fits = |v: u64| u32::try_from(v).with_context(|| format!("section {name} would end beyond 4 GiB"));
        let section = Section {
            name: name.to_string(),
            virtual_size: len,
            virtual_address: fits(va)?,
            size_of_raw_data: fits(raw_len)?,
            pointer_to_raw_data: fits(raw_at)?,
            characteristics,
        };
        fits(va + u64::from(len))?;
        fits(raw_at + raw_len)?;
        self.bytes.resize(raw_at as usize, 0);
        self.bytes.extend_from_slice(data);
        self.bytes.resize((raw_at + raw_len) as usize, 0);
        self.sections.push(section);
        self.write_section_header(index);
        let coff = self.opt - 20;
        self.bytes[coff + 2..coff + 4].copy_from_slice(&(self.sections.len() as u16).to_le_bytes());
        let initialized = self.size_of_initialized_data().wrapping_add(len);
        self.set_u32_field(8, initialized);
        Ok(())
    }

    /// Replaces an existing section's contents in place; the new data must fit in its raw
    /// size (the file layout does not move). VirtualSize becomes the new length.
    pub fn replace_section(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let index = self
            .sections
            .iter()
            .position(|s| s.name == name)
            .with_context(|| format!("the image has no {name} section"))?;
        let s = &self.sections[index];
        if data.len() > s.size_of_raw_data as usize {
            bail!("{} bytes do not fit in the {}-byte section {name}", data.len(), s.size_of_raw_data);
        }
        let start = s.pointer_to_raw_data as usize;
        let raw = &mut self.bytes[start..start + s.size_of_raw_data as usize];
        raw.fill(0);
        raw[..data.len()].copy_from_slice(data);
        self.sections[index].virtual_size = data.len() as u32;
        self.write_section_header(index);
        Ok(())
    }

    /// SizeOfImage from the last section's end, rounded up to SectionAlignment.
    pub fn update_size_of_image(&mut self) -> Result<()> {
        let end = self
            .sections
            .iter()
            .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
            .max()
            .context("the image has no sections")?;
        let size = round_up(end, u64::from(self.section_alignment()));
        self.set_u32_field(56, u32::try_from(size).context("the image would be larger than 4 GiB")?);
        Ok(())
    }

    pub fn set_checksum(&mut self, value: u32) {
        self.set_u32_field(64, value);
    }

    /// Appends bytes at the end of the file (the certificate table).
    pub fn append_raw(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    pub fn pad_to(&mut self, align: usize) {
        let len = round_up(self.bytes.len() as u64, align as u64) as usize;
        self.bytes.resize(len, 0);
    }

    /// The PE checksum (the algorithm of Windows' `CheckSumMappedFile`, which sbsign also uses):
    /// 16-bit one's-complement-style sum of the file with the CheckSum field taken as zero,
    /// folded, plus the file length.
    pub fn compute_checksum(&self) -> u32 {
        let skip = self.checksum_offset();
        let mut sum: u64 = 0;
        for (i, pair) in self.bytes.chunks(2).enumerate() {
            let at = i * 2;
            if at == skip || at == skip + 2 {
                continue;
            }
            let word = u64::from(pair[0]) | pair.get(1).map_or(0, |&b| u64::from(b) << 8);
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        (sum as u32).wrapping_add(self.bytes.len() as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// TEST FIXTURE: a minimal PE32+ EFI application shaped like systemd's stub (FileAlignment
    /// 512, SectionAlignment 4096, SizeOfHeaders 1024, sections .text, .sbat with a 512-byte raw
    /// size, .reloc), built here so unit tests need no Debian package.
    pub(crate) fn fixture_stub(sbat: &str) -> Vec<u8> {
        let mut b = vec![0u8; 1024];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&3u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        b[coff + 18..coff + 20].copy_from_slice(&0x22eu16.to_le_bytes());
        let opt = coff + 20;
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b[opt..opt + 2].copy_from_slice(&PE32_PLUS.to_le_bytes());
        put32(&mut b, opt + 24, 0x4000_0000); // ImageBase (low)
        put32(&mut b, opt + 32, 4096);
        put32(&mut b, opt + 36, 512);
        put32(&mut b, opt + 56, 0x4000);
        put32(&mut b, opt + 60, 1024);
        b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes());
        b[opt + 70..opt + 72].copy_from_slice(&0x160u16.to_le_bytes());
        put32(&mut b, opt + 108, 16);
        let table = opt + 240;
        let sections: [(&str, u32, u32, u32, u32); 3] = [
            (".text", 0x10, 0x1000, 512, 1024),
            (".sbat", sbat.len() as u32, 0x2000, 512, 1536),
            (".reloc", 0x8, 0x3000, 512, 2048),
        ];
        for (i, (name, vs, va, raw, ptr)) in sections.iter().enumerate() {
            let at = table + i * 40;
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
            put32(&mut b, at + 8, *vs);
            put32(&mut b, at + 12, *va);
            put32(&mut b, at + 16, *raw);
            put32(&mut b, at + 20, *ptr);
            put32(&mut b, at + 36, SCN_MEM_READ | SCN_CNT_INITIALIZED_DATA);
        }
        b.resize(2560, 0);
        b[1024..1040].copy_from_slice(&[0xcc; 16]);
        b[1536..1536 + sbat.len()].copy_from_slice(sbat.as_bytes());
        b
    }

    #[test]
    fn parses_the_fixture() {
        let pe = PeImage::parse(fixture_stub("sbat,1\n"), "fixture").unwrap();
        assert_eq!(pe.sections().len(), 3);
        assert_eq!(pe.section(".sbat").unwrap().virtual_address, 0x2000);
        assert_eq!(pe.section_data(pe.section(".sbat").unwrap()), b"sbat,1\n");
        assert_eq!(pe.certificate_table(), (0, 0));
        assert_eq!(pe.image_base(), 0x4000_0000);
    }

    #[test]
    fn append_places_data_and_address_like_ukify() {
        let mut pe = PeImage::parse(fixture_stub("sbat,1\n"), "fixture").unwrap();
        pe.append_section(".osrel", b"ID=test\n", SCN_MEM_READ | SCN_CNT_INITIALIZED_DATA).unwrap();
        pe.append_section(".linux", &[0x90; 700], SCN_MEM_READ | SCN_CNT_CODE).unwrap();
        pe.update_size_of_image().unwrap();
        let again = PeImage::parse(pe.bytes().to_vec(), "appended").unwrap();
        let osrel = again.section(".osrel").unwrap();
        assert_eq!((osrel.virtual_address, osrel.pointer_to_raw_data, osrel.size_of_raw_data), (0x4000, 2560, 512));
        let linux = again.section(".linux").unwrap();
        assert_eq!((linux.virtual_address, linux.pointer_to_raw_data, linux.size_of_raw_data), (0x5000, 3072, 1024));
        assert_eq!(again.size_of_image(), 0x6000);
        assert_eq!(again.bytes().len(), 4096);
        assert_eq!(again.size_of_initialized_data(), 8 + 700);
    }

    #[test]
    fn header_space_and_replacement_limits() {
        let mut pe = PeImage::parse(fixture_stub("sbat,1\n"), "fixture").unwrap();
        assert!(pe.replace_section(".sbat", &[b'x'; 513]).unwrap_err().to_string().contains("do not fit"));
        // 1024-byte headers with the table at 392: room for 15 headers, 12 after the stub's 3.
        for i in 0..12 {
            pe.append_section(&format!(".s{i}"), b"x", SCN_MEM_READ).unwrap();
        }
        let err = pe.append_section(".full", b"x", SCN_MEM_READ).unwrap_err();
        assert!(err.to_string().contains("no room in the headers"), "{err}");
    }

    #[test]
    fn hostile_headers_are_errors() {
        let mut b = fixture_stub("sbat,1\n");
        b[0x3c..0x40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let err = format!("{:#}", PeImage::parse(b, "x.efi").unwrap_err());
        assert!(err.contains("x.efi is not a valid PE32+ image"), "{err}");
        let mut b = fixture_stub("sbat,1\n");
        b.truncate(2300); // .reloc's data is cut off
        let err = format!("{:#}", PeImage::parse(b, "cut.efi").unwrap_err());
        assert!(err.contains("section .reloc ends at 2560"), "{err}");
        assert!(PeImage::parse(b"MZ".to_vec(), "tiny").is_err());
    }
}
