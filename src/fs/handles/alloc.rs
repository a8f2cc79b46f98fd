//! Open files' chunk-map operations: sharing chunks into a file (server-side copies),
//! zeroing ranges (punch hole, zero range), shifting the map (collapse, insert range)
//! and finding data and holes (SEEK_DATA, SEEK_HOLE). The plans are the pure ones of
//! `client::ranges`; this module applies them to the state of an open file, whose
//! slots (this mount's changes) lie over its base record.
//!
//! A chunk is a hole when its key is `Id::ZERO` (in a slot or the base); a slot
//! `Stored(key)` names a chunk without holding its bytes, so sharing a chunk or
//! punching one out costs no chunk I/O, and the next commit writes the map.

use super::{Engine, FileState, OpenFile, Slot, Source};
use crate::client::ranges::{
    collapse_chunks, collapse_map, insert_chunks, insert_map, plan_zero, seek, ShiftRefusal,
};
use crate::client::{ClientError, Result};
use crate::id::Id;
use crate::proto::{Inode, Kind, Timespec};

/// The largest file size (as the kernel's `MAX_LFS_FILESIZE` on 64-bit).
pub const FILE_MAX_BYTES: u64 = i64::MAX as u64;

fn refused(r: ShiftRefusal) -> ClientError {
    ClientError::Invalid(
        match r {
            ShiftRefusal::Unaligned => "range not aligned to the chunk size",
            ShiftRefusal::PastEnd => "range reaches the end of the file",
            ShiftRefusal::TooBig => "file would grow past the largest size",
        }
        .into(),
    )
}

impl OpenFile {
    /// The file's size and chunk size, with every change of this mount applied.
    pub async fn layout(&self) -> (u64, u64) {
        let s = self.state.lock().await;
        (s.size, s.cb())
    }

    /// The keys of chunks `first..first + count`, where a chunk's content is a stored
    /// key (a hole is `Id::ZERO`); None for a chunk whose bytes are in memory here.
    pub async fn chunk_keys(&self, first: usize, count: usize) -> Vec<Option<Id>> {
        let s = self.state.lock().await;
        (first..first + count).map(|i| s.chunk_key(i)).collect()
    }

    /// Makes chunk `i` name `key` for each `(i, key)`, and the file at least `end`
    /// bytes long: a server-side copy's shared chunks.
    pub async fn share_in(&self, chunks: &[(usize, Id)], end: u64) {
        let mut s = self.state.lock().await;
        for (i, key) in chunks {
            s.set_key(*i, *key);
        }
        s.size = s.size.max(end);
        s.touched();
        self.set_overlay(&s);
    }

    /// Makes `[off, end)` read as zeros (clipped to the file's size): whole chunks
    /// become holes, the edges are zeroed in place. With `grow`, the file is then at
    /// least `end` bytes long (zero range without KEEP_SIZE).
    pub async fn zero_range(&self, e: &Engine, off: u64, end: u64, grow: bool) -> Result<()> {
        let mut s = self.state.lock().await;
        let r = s.zero_range(e, off, end, grow).await;
        self.set_overlay(&s);
        r
    }

    /// FALLOC_FL_COLLAPSE_RANGE: removes `[off, off + len)`; the rest moves down.
    pub async fn collapse(&self, e: &Engine, off: u64, len: u64) -> Result<()> {
        let mut s = self.state.lock().await;
        let r = s.shift(e, off, len, false).await;
        self.set_overlay(&s);
        r
    }

    /// FALLOC_FL_INSERT_RANGE: opens a hole of `len` bytes at `off`; the rest moves up.
    pub async fn insert(&self, e: &Engine, off: u64, len: u64) -> Result<()> {
        let mut s = self.state.lock().await;
        let r = s.shift(e, off, len, true).await;
        self.set_overlay(&s);
        r
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset`; None: ENXIO.
    pub async fn seek(&self, offset: u64, data: bool) -> Option<u64> {
        let s = self.state.lock().await;
        seek(offset, s.size, s.cb(), data, |i| s.holds_data(i))
    }
}

impl FileState {
    /// Chunk `i`'s content as a stored key, when it is one (see [`OpenFile::chunk_keys`]).
    fn chunk_key(&self, i: usize) -> Option<Id> {
        match self.slots.get(&i) {
            Some(Slot::Stored(k)) => Some(*k),
            Some(_) => None,
            None => match self.base_source(i) {
                Source::Key(k) => Some(k),
                Source::Mem(_) => None,
            },
        }
    }

    /// Whether chunk `i` holds data (anything but a hole). Bytes in memory count as
    /// data even when they are zeros: SEEK_HOLE may report data where zeros are.
    fn holds_data(&self, i: usize) -> bool {
        match self.chunk_key(i) {
            Some(k) => k != Id::ZERO,
            None => match self.base_source(i) {
                Source::Mem(b) if !self.slots.contains_key(&i) => !b.is_empty(),
                _ => true,
            },
        }
    }

    /// Names `key` as chunk `i` (an upload in flight for it finishes unused).
    fn set_key(&mut self, i: usize, key: Id) {
        self.slots.insert(i, Slot::Stored(key));
        self.dirty = true;
    }

    /// The content changed: a new mtime, and read-ahead starts over.
    fn touched(&mut self) {
        self.dirty = true;
        self.mtime = Some(Timespec::now());
        self.prefetched_to = 0;
    }

    async fn zero_range(&mut self, e: &Engine, off: u64, end: u64, grow: bool) -> Result<()> {
        let cb = self.cb();
        let to = end.min(self.size);
        if off >= to && !(grow && end > self.size) {
            return Ok(()); // nothing in the file to zero, nothing to grow
        }
        if off < to {
            let plan = plan_zero(off, to, cb);
            for i in plan.holes {
                self.set_key(i, Id::ZERO);
            }
            for (i, from, upto) in plan.edges {
                let mut v = self.take_chunk(e, i).await?;
                if v.len() > from {
                    let upto = upto.min(v.len());
                    v[from..upto].fill(0);
                }
                self.slots.insert(i, Slot::Dirty(v));
            }
        }
        if grow && end > self.size {
            self.size = end;
        }
        self.touched();
        Ok(())
    }

    /// Collapse (`insert` false) or insert `len` bytes at `off`. The file is committed
    /// first, so the shift is one edit of the record's chunk map (applied to the newest
    /// version, as any commit is); a file kept in its record moves its bytes instead.
    async fn shift(&mut self, e: &Engine, off: u64, len: u64, insert: bool) -> Result<()> {
        let cb = self.cb();
        let range = if insert {
            insert_chunks(off, len, self.size, cb, FILE_MAX_BYTES)
        } else {
            collapse_chunks(off, len, self.size, cb)
        }
        .map_err(refused)?;
        self.commit(e).await?;
        if self.base.inline.is_some() {
            return self.shift_bytes(e, off, len, insert).await;
        }
        let (now, id) = (Timespec::now(), self.id);
        let known = (self.base_version > 0).then(|| crate::client::tree::InodeRef {
            id: self.id,
            version: self.base_version,
            inode: self.base.clone(),
        });
        let change = |ino: &mut Inode| {
            if ino.kind != Kind::File || ino.inline.is_some() || ino.chunk_bytes as u64 != cb {
                return Err(ClientError::Contended(format!(
                    "inode {} changed under a range shift",
                    id.short()
                )));
            }
            let n = ino.size.div_ceil(cb) as usize;
            ino.chunks.resize(n, Id::ZERO);
            if insert {
                insert_map(&mut ino.chunks, range.clone());
                ino.size = ino.size.saturating_add(len);
            } else {
                if off + len >= ino.size {
                    return Err(refused(ShiftRefusal::PastEnd));
                }
                collapse_map(&mut ino.chunks, range.clone());
                ino.size -= len;
            }
            ino.mtime = now;
            ino.ctime = now;
            Ok(())
        };
        let (_, r) = e.client.update_inode_from(known, &id, change).await?;
        self.size = r.inode.size;
        self.base = r.inode;
        self.base_version = r.version;
        self.prefetched_to = 0;
        Ok(())
    }

    /// A shift of a small file kept in its record: its bytes, moved, written back.
    async fn shift_bytes(&mut self, e: &Engine, off: u64, len: u64, insert: bool) -> Result<()> {
        let mut v = self.take_chunk(e, 0).await?;
        v.resize(self.size as usize, 0);
        let (off, len) = (off as usize, len as usize);
        if insert {
            v.splice(off..off, std::iter::repeat_n(0, len));
        } else {
            v.drain(off..off + len);
        }
        self.slots.clear();
        self.truncated_to = Some(0);
        self.size = 0;
        self.write(e, 0, &v).await?;
        self.touched();
        self.commit(e).await
    }
}
