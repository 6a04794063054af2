//! Copying a regular file's bytes into its blocks, a chunk at a time, leaving blocks that are
//! entirely zero as holes.

use super::extent::Extents;
use super::layout::{Allocator, BLOCK, BLOCK_SIZE};
use crate::region::Region;
use crate::tree::{Content, ContentReader};
use anyhow::{Context, Result};

/// Bytes read from the source per step: large enough for efficient I/O, small enough that
/// memory stays flat whatever the file size.
pub(crate) const CHUNK: usize = 1 << 20;

/// Copies a file of `size` bytes to freshly allocated blocks and returns its extents.
pub(crate) fn copy_file(
    reader: &mut ContentReader,
    content: &Content,
    size: u64,
    alloc: &mut Allocator<'_>,
    region: &Region<'_>,
    buf: &mut Vec<u8>,
) -> Result<Extents> {
    buf.resize(CHUNK, 0);
    let mut extents = Extents::default();
    let mut pos = 0u64;
    while pos < size {
        let len = (size - pos).min(CHUNK as u64) as usize;
        reader
            .read_at(content, size, pos, &mut buf[..len])
            .with_context(|| format!("reading bytes {pos}..{} of the file", pos + len as u64))?;
        let padded = len.next_multiple_of(BLOCK_SIZE);
        buf[len..padded].fill(0);
        // A run of blocks contiguous both here and on disk: (first block, offset in buf, count).
        let mut pending: Option<(u64, usize, usize)> = None;
        let flush = |pending: &mut Option<(u64, usize, usize)>| -> Result<()> {
            if let Some((disk, at, n)) = pending.take() {
                let end = (at + n * BLOCK_SIZE).min(len);
                region.write_at(disk * BLOCK, &buf[at..end])?;
            }
            Ok(())
        };
        for (i, block) in buf[..padded].chunks_exact(BLOCK_SIZE).enumerate() {
            if is_zero(block) {
                flush(&mut pending)?;
                continue;
            }
            let disk = alloc.take(1)?.start;
            let logical = u32::try_from(pos / BLOCK + i as u64).expect("the plan limits files to 2^32 blocks");
            extents.push_block(logical, disk);
            match &mut pending {
                Some((first, _, n)) if *first + *n as u64 == disk => *n += 1,
                _ => {
                    flush(&mut pending)?;
                    pending = Some((disk, i * BLOCK_SIZE, 1));
                }
            }
        }
        flush(&mut pending)?;
        pos += len as u64;
    }
    Ok(extents)
}

fn is_zero(block: &[u8]) -> bool {
    // Word-wise so the compiler can vectorize it.
    block.chunks_exact(16).all(|w| u128::from_ne_bytes(w.try_into().expect("chunks of 16")) == 0)
}
