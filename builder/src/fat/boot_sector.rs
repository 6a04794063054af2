//! The FAT32 boot sector (with its BIOS parameter block) and the FSInfo sector.

use super::layout::{
    BACKUP_BOOT_SECTOR, FAT_COUNT, FIRST_DATA_CLUSTER, FSINFO_SECTOR, Geometry, RESERVED_SECTORS, SECTOR_SIZE,
};

const SECTOR: usize = SECTOR_SIZE as usize;
/// A fixed disk, the value every FAT32 volume on a hard disk carries (and FAT entry 0 repeats).
pub(super) const MEDIA_FIXED_DISK: u8 = 0xF8;
/// What the boot sector says when there is no label.
const NO_LABEL: [u8; 11] = *b"NO NAME    ";

/// What the boot sector records besides the layout.
#[derive(Debug, Clone, Copy)]
pub(super) struct VolumeIdentity {
    pub volume_id: u32,
    pub label: Option<[u8; 11]>,
    /// LBA of the partition on its disk.
    pub hidden_sectors: u32,
}

pub(super) fn boot_sector(g: &Geometry, id: &VolumeIdentity) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    // A jump over the BPB to the boot code; Windows checks for this opcode pattern.
    s[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    // The OEM name Microsoft recommends: some drivers special-case other values.
    s[3..11].copy_from_slice(b"MSWIN4.1");
    s[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    // Cluster sizes come from `layout`, which keeps them at or below 64 sectors.
    s[13] = g.sectors_per_cluster as u8;
    s[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    s[16] = FAT_COUNT as u8;
    // Bytes 17..21 (root entry count, 16-bit sector count) stay 0, as FAT32 requires.
    s[21] = MEDIA_FIXED_DISK;
    // Bytes 22..24 (16-bit FAT size) stay 0 on FAT32.
    // CHS geometry nobody uses any more; 63 sectors x 255 heads is what LBA-era disks report.
    s[24..26].copy_from_slice(&63u16.to_le_bytes());
    s[26..28].copy_from_slice(&255u16.to_le_bytes());
    s[28..32].copy_from_slice(&id.hidden_sectors.to_le_bytes());
    s[32..36].copy_from_slice(&g.total_sectors.to_le_bytes());
    s[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    // Bytes 40..44: extended flags 0 (both FATs mirrored and active), version 0.0.
    s[44..48].copy_from_slice(&FIRST_DATA_CLUSTER.to_le_bytes());
    s[48..50].copy_from_slice(&(FSINFO_SECTOR as u16).to_le_bytes());
    s[50..52].copy_from_slice(&(BACKUP_BOOT_SECTOR as u16).to_le_bytes());
    // Drive number: the first hard disk.
    s[64] = 0x80;
    // Extended boot signature: the volume id, label and type fields below are valid.
    s[66] = 0x29;
    s[67..71].copy_from_slice(&id.volume_id.to_le_bytes());
    s[71..82].copy_from_slice(&id.label.unwrap_or(NO_LABEL));
    s[82..90].copy_from_slice(b"FAT32   ");
    // Boot code at the jump target: a BIOS that ever boots this partition gets `int 0x18`
    // ("no bootable disk, try the next device") and a halt loop instead of running zeros.
    s[90..95].copy_from_slice(&[0xCD, 0x18, 0xF4, 0xEB, 0xFD]);
    s[510..512].copy_from_slice(&[0x55, 0xAA]);
    s
}

/// The FSInfo sector: a hint of how many clusters are free and where to look for the next one.
pub(super) fn fsinfo_sector(free_clusters: u32, next_free: Option<u32>) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free_clusters.to_le_bytes());
    // 0xFFFFFFFF is "unknown", the only honest value when nothing is free.
    s[492..496].copy_from_slice(&next_free.unwrap_or(u32::MAX).to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(s: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([s[at], s[at + 1]])
    }

    fn u32_at(s: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]])
    }

    #[test]
    fn boot_sector_fields() {
        let g = Geometry::new(600_000, 8).unwrap();
        let s = boot_sector(
            &g,
            &VolumeIdentity { volume_id: 0x1234_5678, label: Some(*b"ESP        "), hidden_sectors: 2048 },
        );
        assert_eq!(&s[..3], &[0xEB, 0x58, 0x90]);
        assert_eq!(&s[3..11], b"MSWIN4.1");
        assert_eq!(u16_at(&s, 11), 512);
        assert_eq!(s[13], 8);
        assert_eq!(u16_at(&s, 14), 32);
        assert_eq!(s[16], 2);
        assert_eq!(u16_at(&s, 17), 0);
        assert_eq!(u16_at(&s, 19), 0);
        assert_eq!(s[21], 0xF8);
        assert_eq!(u16_at(&s, 22), 0);
        assert_eq!(u32_at(&s, 28), 2048);
        assert_eq!(u32_at(&s, 32), 600_000);
        assert_eq!(u32_at(&s, 36), g.fat_sectors);
        assert_eq!(u32_at(&s, 44), 2);
        assert_eq!(u16_at(&s, 48), 1);
        assert_eq!(u16_at(&s, 50), 6);
        assert_eq!(s[66], 0x29);
        assert_eq!(u32_at(&s, 67), 0x1234_5678);
        assert_eq!(&s[71..82], b"ESP        ");
        assert_eq!(&s[82..90], b"FAT32   ");
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn unlabelled_volume_says_no_name() {
        let g = Geometry::new(600_000, 8).unwrap();
        let id = VolumeIdentity { volume_id: 0, label: None, hidden_sectors: 0 };
        assert_eq!(&boot_sector(&g, &id)[71..82], b"NO NAME    ");
    }

    #[test]
    fn fsinfo_fields() {
        let s = fsinfo_sector(1000, Some(77));
        assert_eq!(u32_at(&s, 0), 0x4161_5252);
        assert_eq!(u32_at(&s, 484), 0x6141_7272);
        assert_eq!(u32_at(&s, 488), 1000);
        assert_eq!(u32_at(&s, 492), 77);
        assert_eq!(&s[508..], &[0, 0, 0x55, 0xAA]);
        assert_eq!(u32_at(&fsinfo_sector(0, None), 492), u32::MAX);
    }
}
