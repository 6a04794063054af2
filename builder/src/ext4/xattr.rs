//! Extended attributes: stored in the inode's spare space after `i_extra_isize` when they fit,
//! the rest in one external block (refcount 1).

use super::csum::crc32c;
use super::layout::BLOCK_SIZE;
use anyhow::{Context, Result, bail};
use std::borrow::Cow;
use std::collections::BTreeMap;

const MAGIC: u32 = 0xEA02_0000;
const ENTRY_HEADER: usize = 16;
/// Bytes after the in-inode magic: the inode (256) minus the base inode (128), the extra
/// fields (32) and the magic (4).
pub(crate) const INLINE_AREA: usize = 256 - 128 - 32;
const INLINE_SPACE: usize = INLINE_AREA - 4;
const BLOCK_HEADER: usize = 32;
const BLOCK_SPACE: usize = BLOCK_SIZE - BLOCK_HEADER;
/// The all-zero word that ends an entry list.
const END: usize = 4;

const INDEX_USER: u8 = 1;
const INDEX_POSIX_ACL_ACCESS: u8 = 2;
const INDEX_POSIX_ACL_DEFAULT: u8 = 3;
const INDEX_TRUSTED: u8 = 4;
const INDEX_SECURITY: u8 = 6;

/// One attribute as stored: a name index (the namespace), the rest of the name, the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr<'a> {
    index: u8,
    name: &'a [u8],
    value: Cow<'a, [u8]>,
}

impl Attr<'_> {
    fn entry_size(&self) -> usize {
        (ENTRY_HEADER + self.name.len()).next_multiple_of(4)
    }

    fn value_size(&self) -> usize {
        self.value.len().next_multiple_of(4)
    }
}

/// Where an inode's attributes go.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Placement<'a> {
    pub(crate) inline: Vec<Attr<'a>>,
    pub(crate) block: Vec<Attr<'a>>,
}

impl Placement<'_> {
    pub(crate) fn needs_block(&self) -> bool {
        !self.block.is_empty()
    }
}

/// Decides where each attribute goes: `security.*` first (the kernel reads
/// `security.capability` on every exec, and an in-inode hit saves a block read), then in the
/// order the kernel sorts a block's entries (name index, name length, name), each one goes in
/// the inode if it still fits there, else in the block. Both lists come out in the kernel's
/// order.
pub(crate) fn place(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Placement<'_>> {
    let mut attrs = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let shown = String::from_utf8_lossy(full);
        let (index, name) = split_name(full)?;
        let value = if matches!(index, INDEX_POSIX_ACL_ACCESS | INDEX_POSIX_ACL_DEFAULT) {
            Cow::Owned(acl_to_disk(value).with_context(|| format!("xattr `{shown}`"))?)
        } else {
            Cow::Borrowed(value.as_slice())
        };
        attrs.push(Attr { index, name, value });
    }
    let canonical = |a: &Attr<'_>, b: &Attr<'_>| (a.index, a.name.len(), a.name).cmp(&(b.index, b.name.len(), b.name));
    attrs.sort_by(|a, b| (a.index != INDEX_SECURITY).cmp(&(b.index != INDEX_SECURITY)).then_with(|| canonical(a, b)));
    let mut placement = Placement::default();
    let (mut inline_used, mut block_used) = (END, END);
    for attr in attrs {
        let size = attr.entry_size() + attr.value_size();
        if inline_used + size <= INLINE_SPACE {
            inline_used += size;
            placement.inline.push(attr);
        } else if block_used + size <= BLOCK_SPACE {
            block_used += size;
            placement.block.push(attr);
        } else {
            bail!(
                "extended attributes take more than the inode and one {BLOCK_SIZE}-byte block \
                 can hold (ext4 `ea_inode` is not supported)"
            );
        }
    }
    placement.inline.sort_by(canonical);
    placement.block.sort_by(canonical);
    Ok(placement)
}

/// Name index and the rest of the name; ext4 stores nothing else.
fn split_name(full: &[u8]) -> Result<(u8, &[u8])> {
    let shown = String::from_utf8_lossy(full);
    match full {
        b"system.posix_acl_access" => return Ok((INDEX_POSIX_ACL_ACCESS, b"")),
        b"system.posix_acl_default" => return Ok((INDEX_POSIX_ACL_DEFAULT, b"")),
        _ => {}
    }
    let prefixes: [(&[u8], u8); 3] =
        [(b"user.", INDEX_USER), (b"trusted.", INDEX_TRUSTED), (b"security.", INDEX_SECURITY)];
    for (prefix, index) in prefixes {
        if let Some(name) = full.strip_prefix(prefix) {
            if name.is_empty() || name.len() > 255 {
                bail!("xattr `{shown}`: the name after `{}` must be 1 to 255 bytes", {
                    String::from_utf8_lossy(prefix)
                });
            }
            return Ok((index, name));
        }
    }
    bail!(
        "xattr `{shown}` is in no namespace ext4 stores (user., trusted., security., \
         system.posix_acl_access, system.posix_acl_default)"
    )
}

/// Converts a POSIX ACL from the xattr interface format (version 2, 8-byte entries) to the
/// ext4 on-disk format (version 1, 4-byte entries for the owner, group, mask and other).
fn acl_to_disk(value: &[u8]) -> Result<Vec<u8>> {
    const ACL_USER: u16 = 2;
    const ACL_GROUP: u16 = 8;
    const SHORT_TAGS: [u16; 4] = [0x01, 0x04, 0x10, 0x20];
    if value.len() < 4 || (value.len() - 4) % 8 != 0 {
        bail!("POSIX ACL of {} bytes is malformed", value.len());
    }
    let version = u32::from_le_bytes(value[..4].try_into().expect("checked length"));
    if version != 2 {
        bail!("POSIX ACL version {version} is not the xattr format (2)");
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        out.extend_from_slice(&entry[..4]);
        match tag {
            ACL_USER | ACL_GROUP => out.extend_from_slice(&entry[4..8]),
            t if SHORT_TAGS.contains(&t) => {}
            t => bail!("POSIX ACL entry has unknown tag {t:#x}"),
        }
    }
    Ok(out)
}

/// The kernel's `ext4_xattr_hash_entry` over the name and the value padded to whole words.
fn entry_hash(attr: &Attr<'_>) -> u32 {
    let mut hash = 0u32;
    for &c in attr.name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    let mut padded = [0u8; 4];
    for word in attr.value.chunks(4) {
        padded.fill(0);
        padded[..word.len()].copy_from_slice(word);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(padded);
    }
    hash
}

/// Writes entries at the start of `area` and values from its end down; value offsets are
/// positions in `area` plus `offset_shift`. Entry hashes are kept only in blocks, as the kernel
/// does.
fn write_entries(area: &mut [u8], attrs: &[Attr<'_>], offset_shift: usize, hashed: bool) -> u32 {
    let mut at = 0;
    let mut value_end = area.len();
    let mut block_hash = 0u32;
    for attr in attrs {
        let offs = if attr.value.is_empty() {
            0
        } else {
            value_end -= attr.value_size();
            area[value_end..value_end + attr.value.len()].copy_from_slice(&attr.value);
            value_end + offset_shift
        };
        let hash = if hashed { entry_hash(attr) } else { 0 };
        block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ hash;
        let e = &mut area[at..];
        e[0] = attr.name.len() as u8;
        e[1] = attr.index;
        e[2..4].copy_from_slice(&(offs as u16).to_le_bytes());
        e[8..12].copy_from_slice(&(attr.value.len() as u32).to_le_bytes());
        e[12..16].copy_from_slice(&hash.to_le_bytes());
        e[16..16 + attr.name.len()].copy_from_slice(attr.name);
        at += attr.entry_size();
    }
    debug_assert!(at + END <= value_end, "place() checked the sizes");
    block_hash
}

/// Fills the inode's attribute area (the [`INLINE_AREA`] bytes after the extra fields).
pub(crate) fn encode_inline(attrs: &[Attr<'_>], area: &mut [u8]) {
    if attrs.is_empty() {
        return;
    }
    area[..4].copy_from_slice(&MAGIC.to_le_bytes());
    // In-inode value offsets count from the first entry, just after the magic.
    write_entries(&mut area[4..], attrs, 0, false);
}

/// The external attribute block, stored at block `nr`.
pub(crate) fn encode_block(attrs: &[Attr<'_>], nr: u64, fs_seed: u32) -> Box<[u8; BLOCK_SIZE]> {
    let mut block = Box::new([0u8; BLOCK_SIZE]);
    block[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    block[4..8].copy_from_slice(&1u32.to_le_bytes()); // h_refcount
    block[8..12].copy_from_slice(&1u32.to_le_bytes()); // h_blocks
    // Block value offsets count from the start of the block.
    let hash = write_entries(&mut block[BLOCK_HEADER..], attrs, BLOCK_HEADER, true);
    block[12..16].copy_from_slice(&hash.to_le_bytes());
    let csum = crc32c(fs_seed, &nr.to_le_bytes());
    let csum = crc32c(csum, &block[..]);
    block[16..20].copy_from_slice(&csum.to_le_bytes());
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        items.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn small_attributes_stay_in_the_inode() {
        let xattrs = map(&[("security.capability", &[1; 20]), ("user.a", b"1"), ("trusted.b", b"")]);
        let p = place(&xattrs).unwrap();
        // 48 + 24 bytes and the end marker fit the 92 bytes; 20 more do not.
        assert_eq!(p.inline.len(), 2);
        let order: Vec<u8> = p.inline.iter().map(|a| a.index).collect();
        assert_eq!(order, [INDEX_USER, INDEX_SECURITY], "the capability stays in the inode");
        assert_eq!(p.block.len(), 1);
        let two = map(&[("user.a", b"1"), ("trusted.b", b"")]);
        assert!(!place(&two).unwrap().needs_block());
    }

    #[test]
    fn big_attributes_go_to_the_block_and_too_big_fails() {
        let big = vec![7u8; 1000];
        let xattrs = map(&[("user.big", &big), ("user.s", b"x")]);
        let p = place(&xattrs).unwrap();
        assert_eq!(p.inline.len(), 1);
        assert_eq!(p.block.len(), 1);
        let huge = vec![7u8; 5000];
        assert!(place(&map(&[("user.huge", &huge)])).is_err());
        assert!(place(&map(&[("com.apple.quarantine", b"x")])).is_err());
        assert!(place(&map(&[("user.", b"x")])).is_err());
    }

    #[test]
    fn acls_are_converted_to_the_disk_format() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 7u16, u32::MAX), (2, 5, 1000), (4, 5, u32::MAX), (0x10, 5, u32::MAX), (0x20, 4, u32::MAX)]
        {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk(&acl).unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&disk[..4], &1u32.to_le_bytes());
        assert!(acl_to_disk(&acl[..7]).is_err());
    }

    #[test]
    fn block_layout() {
        let xattrs = map(&[("user.k", b"value")]);
        let attrs = place(&xattrs).unwrap().inline;
        let block = encode_block(&attrs, 1234, 0);
        let offs = u16::from_le_bytes([block[34], block[35]]) as usize;
        assert_eq!(offs, BLOCK_SIZE - 8);
        assert_eq!(&block[offs..offs + 5], b"value");
        assert_eq!(&block[48..49], b"k");
    }
}
