//! The 32-byte directory entries: short (8.3) entries and the VFAT long-name entries before them.

use super::names::UNITS_PER_LONG_ENTRY;
use super::timestamp::FatTime;

pub(super) const ENTRY_SIZE: usize = 32;

pub(super) const ATTR_VOLUME_ID: u8 = 0x08;
pub(super) const ATTR_DIRECTORY: u8 = 0x10;
pub(super) const ATTR_ARCHIVE: u8 = 0x20;
/// Read-only, hidden, system and volume-id together: old drivers skip such entries, which is
/// how long names stay invisible to them.
const ATTR_LONG_NAME: u8 = 0x0F;
/// Set on the ordinal of the last long-name entry of a name (stored first).
const LAST_LONG_ENTRY: u8 = 0x40;

pub(super) const DOT_NAME: [u8; 11] = *b".          ";
pub(super) const DOTDOT_NAME: [u8; 11] = *b"..         ";

/// A short directory entry: a file, a directory, `.`/`..`, or the volume label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ShortEntry {
    pub name: [u8; 11],
    pub attr: u8,
    pub first_cluster: u32,
    pub size: u32,
    pub time: FatTime,
}

impl ShortEntry {
    pub fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut e = [0u8; ENTRY_SIZE];
        e[0..11].copy_from_slice(&self.name);
        e[11] = self.attr;
        // Byte 12 (Windows NT's lower-case flags) stays 0: names that need case get long names.
        e[13] = self.time.hundredths;
        e[14..16].copy_from_slice(&self.time.time.to_le_bytes());
        e[16..18].copy_from_slice(&self.time.date.to_le_bytes());
        // Last access date: the build has one notion of time, so the same date.
        e[18..20].copy_from_slice(&self.time.date.to_le_bytes());
        e[20..22].copy_from_slice(&((self.first_cluster >> 16) as u16).to_le_bytes());
        e[22..24].copy_from_slice(&self.time.time.to_le_bytes());
        e[24..26].copy_from_slice(&self.time.date.to_le_bytes());
        e[26..28].copy_from_slice(&(self.first_cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&self.size.to_le_bytes());
        e
    }
}

/// The long-name entries for `long` in on-disk order (highest ordinal first), each carrying
/// `checksum` of the short name that follows them.
pub(super) fn long_name_entries(long: &[u16], checksum: u8) -> Vec<[u8; ENTRY_SIZE]> {
    let chunks: Vec<&[u16]> = long.chunks(UNITS_PER_LONG_ENTRY).collect();
    let count = chunks.len();
    chunks
        .iter()
        .enumerate()
        .rev()
        .map(|(i, chunk)| {
            // A name shorter than its last entry ends with one 0x0000, then 0xFFFF fill.
            let mut units = [0xFFFFu16; UNITS_PER_LONG_ENTRY];
            units[..chunk.len()].copy_from_slice(chunk);
            if chunk.len() < UNITS_PER_LONG_ENTRY {
                units[chunk.len()] = 0;
            }
            // At most 255 units, so at most 20 entries: the ordinal fits below 0x40.
            let mut ordinal = (i + 1) as u8;
            if i + 1 == count {
                ordinal |= LAST_LONG_ENTRY;
            }
            let mut e = [0u8; ENTRY_SIZE];
            e[0] = ordinal;
            e[11] = ATTR_LONG_NAME;
            e[13] = checksum;
            let offsets = (1..11).step_by(2).chain((14..26).step_by(2)).chain((28..32).step_by(2));
            for (offset, unit) in offsets.zip(units) {
                e[offset..offset + 2].copy_from_slice(&unit.to_le_bytes());
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time() -> FatTime {
        FatTime { date: 0x5765, time: 0xB1AA, hundredths: 123 }
    }

    #[test]
    fn short_entry_layout() {
        let e = ShortEntry {
            name: *b"BOOTX64 EFI",
            attr: ATTR_ARCHIVE,
            first_cluster: 0x0012_3456,
            size: 0xDEAD_BEEF,
            time: time(),
        }
        .encode();
        assert_eq!(&e[..11], b"BOOTX64 EFI");
        assert_eq!(e[11], 0x20);
        assert_eq!(e[12], 0);
        assert_eq!(e[13], 123);
        assert_eq!(&e[14..16], &[0xAA, 0xB1]);
        assert_eq!(&e[16..18], &[0x65, 0x57]);
        assert_eq!(&e[18..20], &[0x65, 0x57]);
        assert_eq!(&e[20..22], &[0x12, 0x00]);
        assert_eq!(&e[22..24], &[0xAA, 0xB1]);
        assert_eq!(&e[24..26], &[0x65, 0x57]);
        assert_eq!(&e[26..28], &[0x56, 0x34]);
        assert_eq!(&e[28..32], &[0xEF, 0xBE, 0xAD, 0xDE]);
    }

    fn units_of(e: &[u8; ENTRY_SIZE]) -> Vec<u16> {
        let mut out = Vec::new();
        for range in [1..11, 14..26, 28..32] {
            for pair in e[range].chunks(2) {
                out.push(u16::from_le_bytes([pair[0], pair[1]]));
            }
        }
        out
    }

    #[test]
    fn long_entries_order_padding_and_checksum() {
        let name: Vec<u16> = "MixedCase Name.txt".encode_utf16().collect();
        let entries = long_name_entries(&name, 0xA5);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert_eq!(entries[1][0], 0x01);
        for e in &entries {
            assert_eq!(e[11], 0x0F);
            assert_eq!(e[12], 0);
            assert_eq!(e[13], 0xA5);
            assert_eq!(&e[26..28], &[0, 0]);
        }
        assert_eq!(units_of(&entries[1]), name[..13]);
        let tail = units_of(&entries[0]);
        assert_eq!(tail[..5], name[13..]);
        assert_eq!(tail[5], 0);
        assert!(tail[6..].iter().all(|&u| u == 0xFFFF));
    }

    #[test]
    fn name_filling_its_last_entry_has_no_terminator() {
        let name: Vec<u16> = "x".repeat(26).encode_utf16().collect();
        let entries = long_name_entries(&name, 0);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0], 0x42);
        assert!(units_of(&entries[0]).iter().all(|&u| u == u16::from(b'x')));
    }
}
