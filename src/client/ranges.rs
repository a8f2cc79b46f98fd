//! Byte ranges over a chunk map, decided by pure functions: which chunks of a copy can
//! be shared, which bytes of a punched or zeroed range are whole chunks (made holes)
//! and which are edges (zeroed in place), how a collapse or an insert shifts the map,
//! and where SEEK_DATA and SEEK_HOLE land. The mount executes these plans on an open
//! file (`src/fs/handles/alloc.rs`); they speak of chunk indices and offsets only, so
//! they hold for a map kept in one record as for one split into pages (docs/metadata.md
//! §3, where an absent entry is a hole as `Id::ZERO` is here).

use crate::id::Id;
use std::ops::Range;

/// One piece of a copy of a byte range from one file (or place) to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyPiece {
    /// `count` whole chunks, source chunk `src` on to destination chunk `dst` on: the
    /// destination names the source's chunk keys (content addressing makes them equal).
    Share {
        src: usize,
        dst: usize,
        count: usize,
    },
    /// Bytes moved: `len` bytes from source offset `src` to destination offset `dst`.
    Bytes { src: u64, dst: u64, len: u64 },
}

/// How to copy `len` bytes from offset `src` to offset `dst` with chunks of `cb` bytes.
/// When both offsets sit at the same place within a chunk, every destination chunk the
/// copy covers whole is shared, and only the edges move bytes; otherwise every byte
/// moves. Each whole destination chunk covered comes from one whole source chunk (the
/// caller has clamped the range to the source's size, so those source chunks are whole
/// too, or end at the source's end with the range).
pub fn plan_copy(src: u64, dst: u64, len: u64, cb: u64) -> Vec<CopyPiece> {
    let mut out = Vec::new();
    if len == 0 {
        return out;
    }
    let cb = cb.max(1);
    if src % cb != dst % cb {
        out.push(CopyPiece::Bytes { src, dst, len });
        return out;
    }
    let end = dst + len;
    let first = dst.div_ceil(cb);
    let last = end / cb; // chunks first..last are covered whole
    if first >= last {
        out.push(CopyPiece::Bytes { src, dst, len });
        return out;
    }
    let head = first * cb - dst;
    if head > 0 {
        out.push(CopyPiece::Bytes {
            src,
            dst,
            len: head,
        });
    }
    out.push(CopyPiece::Share {
        src: ((src + head) / cb) as usize,
        dst: first as usize,
        count: (last - first) as usize,
    });
    let tail_at = last * cb;
    if tail_at < end {
        out.push(CopyPiece::Bytes {
            src: src + (tail_at - dst),
            dst: tail_at,
            len: end - tail_at,
        });
    }
    out
}

/// A byte range to read as zeros (punch hole, zero range), cut at chunk edges: the
/// chunks it covers whole become holes, the partial ones are zeroed from..to within.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZeroPlan {
    pub holes: Range<usize>,
    /// (chunk, from, to): bytes of that chunk to zero.
    pub edges: Vec<(usize, usize, usize)>,
}

/// The plan that zeroes `[off, end)` of a file of chunks of `cb` bytes.
pub fn plan_zero(off: u64, end: u64, cb: u64) -> ZeroPlan {
    let cb = cb.max(1);
    let mut edges = Vec::new();
    if off >= end {
        return ZeroPlan { holes: 0..0, edges };
    }
    let first = off.div_ceil(cb);
    let last = end / cb;
    if first > last {
        // Within one chunk.
        let i = off / cb;
        edges.push((i as usize, (off - i * cb) as usize, (end - i * cb) as usize));
        return ZeroPlan { holes: 0..0, edges };
    }
    if off < first * cb {
        let i = off / cb;
        edges.push((i as usize, (off - i * cb) as usize, cb as usize));
    }
    if end > last * cb {
        edges.push((last as usize, 0, (end - last * cb) as usize));
    }
    ZeroPlan {
        holes: first as usize..last as usize,
        edges,
    }
}

/// Why a collapse or an insert is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftRefusal {
    /// Offset or length not a multiple of the chunk size, or a zero length (EINVAL).
    Unaligned,
    /// Collapse reaching the end of the file, insert starting at or past it (EINVAL).
    PastEnd,
    /// The file would grow past the largest size (EFBIG).
    TooBig,
}

/// The chunks `[first, first + count)` that a collapse of `[off, off + len)` removes
/// from a file of `size` bytes, checked as ext4 checks it: aligned to the block size
/// (here the chunk size) and ending before the end of the file.
pub fn collapse_chunks(
    off: u64,
    len: u64,
    size: u64,
    cb: u64,
) -> Result<Range<usize>, ShiftRefusal> {
    let cb = cb.max(1);
    if len == 0 || off % cb != 0 || len % cb != 0 {
        return Err(ShiftRefusal::Unaligned);
    }
    match off.checked_add(len) {
        Some(end) if end < size => Ok((off / cb) as usize..(end / cb) as usize),
        _ => Err(ShiftRefusal::PastEnd),
    }
}

/// The chunks `[first, first + count)` that an insert of `len` bytes at `off` opens (as
/// holes) in a file of `size` bytes: aligned, and starting inside the file.
pub fn insert_chunks(
    off: u64,
    len: u64,
    size: u64,
    cb: u64,
    max: u64,
) -> Result<Range<usize>, ShiftRefusal> {
    let cb = cb.max(1);
    if len == 0 || off % cb != 0 || len % cb != 0 {
        return Err(ShiftRefusal::Unaligned);
    }
    if off >= size {
        return Err(ShiftRefusal::PastEnd);
    }
    match size.checked_add(len) {
        Some(s) if s <= max => Ok((off / cb) as usize..((off + len) / cb) as usize),
        _ => Err(ShiftRefusal::TooBig),
    }
}

/// Removes chunks `r` from a map (entries past them move down).
pub fn collapse_map(map: &mut Vec<Id>, r: Range<usize>) {
    let from = r.start.min(map.len());
    let to = r.end.min(map.len());
    map.drain(from..to);
}

/// Opens holes at chunks `r` of a map (entries from `r.start` on move up).
pub fn insert_map(map: &mut Vec<Id>, r: Range<usize>) {
    if r.start >= map.len() {
        return; // past the stored entries: all holes already
    }
    let n = r.end - r.start;
    map.splice(r.start..r.start, std::iter::repeat_n(Id::ZERO, n));
}

/// SEEK_DATA (`data`) or SEEK_HOLE from `offset` in a file of `size` bytes whose chunk
/// `i` holds data when `is_data(i)`. A hole is a chunk that holds none; the end of the
/// file is a hole. None: ENXIO (offset at or past the end, or no data after it).
pub fn seek(
    offset: u64,
    size: u64,
    cb: u64,
    data: bool,
    is_data: impl Fn(usize) -> bool,
) -> Option<u64> {
    let cb = cb.max(1);
    if offset >= size {
        return None;
    }
    let count = size.div_ceil(cb) as usize;
    let start = (offset / cb) as usize;
    for i in start..count {
        if is_data(i) == data {
            return Some(offset.max(i as u64 * cb));
        }
    }
    if data {
        None
    } else {
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CopyPiece::*;

    #[test]
    fn aligned_copies_share_whole_chunks_and_move_only_edges() {
        assert_eq!(
            plan_copy(0, 0, 300, 100),
            [Share {
                src: 0,
                dst: 0,
                count: 3
            }]
        );
        assert_eq!(
            plan_copy(150, 50, 270, 100),
            [
                Bytes {
                    src: 150,
                    dst: 50,
                    len: 50
                },
                Share {
                    src: 2,
                    dst: 1,
                    count: 2
                },
                Bytes {
                    src: 400,
                    dst: 300,
                    len: 20
                },
            ]
        );
        // Same place within chunks, but no chunk covered whole.
        assert_eq!(
            plan_copy(10, 110, 50, 100),
            [Bytes {
                src: 10,
                dst: 110,
                len: 50
            }]
        );
        // Offsets at different places in their chunks: bytes only.
        assert_eq!(
            plan_copy(0, 1, 1000, 100),
            [Bytes {
                src: 0,
                dst: 1,
                len: 1000
            }]
        );
        assert!(plan_copy(0, 0, 0, 100).is_empty());
    }

    #[test]
    fn a_copy_plan_covers_every_byte_once() {
        for (src, dst, len) in [
            (0, 0, 1),
            (7, 107, 999),
            (99, 199, 1),
            (100, 0, 250),
            (3, 4, 77),
        ] {
            let mut next = dst;
            for p in plan_copy(src, dst, len, 100) {
                match p {
                    Bytes {
                        src: s,
                        dst: d,
                        len: l,
                    } => {
                        assert_eq!(d, next);
                        assert_eq!(s - src, d - dst, "source and destination move together");
                        next += l;
                    }
                    Share {
                        src: s,
                        dst: d,
                        count,
                    } => {
                        assert_eq!(d as u64 * 100, next);
                        assert_eq!(s as u64 * 100 - src, d as u64 * 100 - dst);
                        next += count as u64 * 100;
                    }
                }
            }
            assert_eq!(next, dst + len);
        }
    }

    #[test]
    fn zeroing_makes_whole_chunks_holes_and_zeroes_edges() {
        assert_eq!(
            plan_zero(50, 320, 100),
            ZeroPlan {
                holes: 1..3,
                edges: vec![(0, 50, 100), (3, 0, 20)]
            }
        );
        assert_eq!(
            plan_zero(100, 300, 100),
            ZeroPlan {
                holes: 1..3,
                edges: vec![]
            }
        );
        assert_eq!(
            plan_zero(120, 180, 100),
            ZeroPlan {
                holes: 0..0,
                edges: vec![(1, 20, 80)]
            }
        );
        assert_eq!(
            plan_zero(120, 200, 100),
            ZeroPlan {
                holes: 2..2,
                edges: vec![(1, 20, 100)]
            }
        );
        assert_eq!(plan_zero(5, 5, 100).edges, vec![]);
    }

    #[test]
    fn collapse_and_insert_are_chunk_aligned_as_ext4_is_block_aligned() {
        assert_eq!(collapse_chunks(100, 200, 500, 100), Ok(1..3));
        assert_eq!(
            collapse_chunks(100, 50, 500, 100),
            Err(ShiftRefusal::Unaligned)
        );
        assert_eq!(
            collapse_chunks(100, 0, 500, 100),
            Err(ShiftRefusal::Unaligned)
        );
        assert_eq!(
            collapse_chunks(300, 200, 500, 100),
            Err(ShiftRefusal::PastEnd)
        );
        assert_eq!(insert_chunks(100, 200, 500, 100, u64::MAX), Ok(1..3));
        assert_eq!(
            insert_chunks(500, 100, 500, 100, u64::MAX),
            Err(ShiftRefusal::PastEnd)
        );
        assert_eq!(
            insert_chunks(0, 100, 500, 100, 550),
            Err(ShiftRefusal::TooBig)
        );
        let (a, b, c) = (Id::hash(b"a"), Id::hash(b"b"), Id::hash(b"c"));
        let mut map = vec![a, b, c];
        collapse_map(&mut map, 1..2);
        assert_eq!(map, [a, c]);
        insert_map(&mut map, 1..3);
        assert_eq!(map, [a, Id::ZERO, Id::ZERO, c]);
        insert_map(&mut map, 9..10);
        assert_eq!(map.len(), 4, "past the entries nothing moves");
    }

    #[test]
    fn seeks_find_data_and_holes_by_chunk() {
        // Chunks: data, hole, data; size 250 (last chunk short).
        let data = |i: usize| i != 1;
        assert_eq!(seek(0, 250, 100, true, data), Some(0));
        assert_eq!(seek(120, 250, 100, true, data), Some(200));
        assert_eq!(seek(210, 250, 100, true, data), Some(210));
        assert_eq!(seek(0, 250, 100, false, data), Some(100));
        assert_eq!(seek(150, 250, 100, false, data), Some(150));
        assert_eq!(
            seek(220, 250, 100, false, data),
            Some(250),
            "the end is a hole"
        );
        assert_eq!(seek(250, 250, 100, true, data), None);
        assert_eq!(seek(250, 250, 100, false, data), None);
        assert_eq!(
            seek(0, 250, 100, true, |_| false),
            None,
            "all holes: no data"
        );
    }
}
