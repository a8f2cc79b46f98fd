//! Open files: one shared state per open inode (all handles of a file see the same
//! bytes), holding the chunks written since the last commit.
//!
//! A write lands in a chunk-sized buffer (a partial write first reads the chunk: read,
//! modify, write). A buffer that a write fills up to its end starts uploading at once,
//! in the background; uploads hold permits of a per-mount budget of dirty bytes, so
//! writers wait rather than fill memory. `commit` (flush, fsync, release, truncate)
//! uploads what is left, waits for every upload, then writes the inode record (chunk
//! list, size, mtime) with a compare-and-set. An upload that fails leaves its bytes
//! dirty and makes the commit fail with the error: data is never dropped silently.
//!
//! A file created through this mount is *pending* until its first commit: its inode and
//! its name exist only here (see [`Pending`]), and that commit writes the inode, with
//! its content, and the directory entry at once. This mount shows a pending file at
//! once; other mounts see it after the close (close-to-open).

use crate::client::kv::Cas;
use crate::client::tree::{edited, InodeRef};
use crate::client::{Client, ClientError, Result};
use crate::id::Id;
use crate::proto::record::INLINE_MAX_BYTES;
use crate::proto::{DirEntry, Edit, Inode, Kind, Record, Timespec};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

mod alloc;
pub use alloc::FILE_MAX_BYTES;

/// Dirty bytes a mount may hold before writers wait for uploads (in KiB permits).
pub const DIRTY_BUDGET_KIB: usize = 32 * 1024;
/// Dirty (not yet uploading) bytes of one file that trigger uploading them all.
const DIRTY_FILE_MAX_BYTES: usize = 32 * 1024 * 1024;
/// How far ahead of a sequential reader chunks are fetched into the cache, in bytes.
const READAHEAD_BYTES: u64 = 8 * 1024 * 1024;
/// Longest time a chunk uploaded for an open file stays unnamed by the file's record:
/// after this the file is committed (as by fsync), by its next write or by the mount's
/// periodic check. The ring's garbage collection keeps unreferenced chunks for its
/// grace period (default 1 h), which must exceed this.
pub const WRITEBACK_MAX_SECS: u64 = 300;

/// Directory records kept for lookups and creates.
const DIR_CACHE_ENTRIES: u64 = 4096;

/// What the writers of one mount share: the client, the bounds on uploads, the
/// directories read lately and the files created here but not yet on the ring.
pub struct Engine {
    pub client: Arc<Client>,
    /// Dirty bytes in flight, in KiB.
    budget: Arc<Semaphore>,
    /// Concurrent chunk uploads.
    uploads: Arc<Semaphore>,
    /// Directory records read or written in the last `ttl`, each with the instant it
    /// was known current; None when the TTL is 0. A writer uses its copy as the version
    /// to write over (a stale one only costs a conflict and a read); a lookup serves
    /// the names it holds, never its misses (see `Fs::lookup`).
    dirs: Option<moka::sync::Cache<Id, CachedDir>>,
    ttl: Duration,
    // Never held across an await: lookups and inserts only.
    pending: Mutex<PendingFiles>,
}

/// A directory record of the cache and the instant it was known current.
#[derive(Clone)]
pub struct CachedDir {
    dir: Arc<InodeRef>,
    since: Instant,
}

/// A file created through this mount and not yet written to the ring: its parent, its
/// name there, and its inode as created.
#[derive(Clone, Debug)]
pub struct Pending {
    pub parent: Id,
    pub name: String,
    pub inode: Inode,
}

#[derive(Default)]
struct PendingFiles {
    by_id: HashMap<Id, Pending>,
    by_name: HashMap<(Id, String), Id>,
}

impl Engine {
    pub fn new(client: Arc<Client>, ttl: Duration) -> Engine {
        let parallel = client.cfg.parallel_chunks.max(1) * 2;
        let dirs = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(DIR_CACHE_ENTRIES)
                .time_to_live(ttl)
                .build()
        });
        Engine {
            client,
            budget: Arc::new(Semaphore::new(DIRTY_BUDGET_KIB)),
            uploads: Arc::new(Semaphore::new(parallel)),
            dirs,
            ttl,
            pending: Mutex::new(PendingFiles::default()),
        }
    }

    pub fn cached_dir(&self, id: &Id) -> Option<Arc<InodeRef>> {
        self.cached_dir_left(id).map(|(d, _)| d)
    }

    /// A cached directory and how much of its `ttl` is left: names served from it
    /// are given to the kernel for that long only, so a name removed elsewhere is
    /// served at most `ttl` after this mount last knew the directory current.
    pub fn cached_dir_left(&self, id: &Id) -> Option<(Arc<InodeRef>, Duration)> {
        let c = self.dirs.as_ref()?.get(id)?;
        let left = self.ttl.checked_sub(c.since.elapsed())?;
        Some((c.dir, left))
    }

    /// Caches a directory record known current at `since` (when its read or the
    /// write that made it started).
    pub fn cache_dir(&self, dir: InodeRef, since: Instant) {
        if let Some(c) = &self.dirs {
            if dir.inode.kind == Kind::Dir {
                let dir = Arc::new(dir);
                c.insert(dir.id, CachedDir { dir, since });
            }
        }
    }

    pub fn forget_all_dirs(&self) {
        if let Some(c) = &self.dirs {
            c.invalidate_all();
        }
    }

    pub fn forget_dir(&self, id: &Id) {
        if let Some(c) = &self.dirs {
            c.invalidate(id);
        }
    }

    /// Registers a file created here; false when its name is already pending.
    pub fn add_pending(&self, id: Id, p: Pending) -> bool {
        let mut m = self.pending.lock().expect("pending");
        let key = (p.parent, p.name.clone());
        if m.by_name.contains_key(&key) {
            return false;
        }
        m.by_name.insert(key, id);
        m.by_id.insert(id, p);
        true
    }

    pub fn remove_pending(&self, id: &Id) {
        let mut m = self.pending.lock().expect("pending");
        if let Some(p) = m.by_id.remove(id) {
            m.by_name.remove(&(p.parent, p.name));
        }
    }

    pub fn pending(&self, id: &Id) -> Option<Pending> {
        self.pending.lock().expect("pending").by_id.get(id).cloned()
    }

    /// The pending file named `parent/name`.
    pub fn pending_named(&self, parent: &Id, name: &str) -> Option<Id> {
        let m = self.pending.lock().expect("pending");
        m.by_name.get(&(*parent, name.to_string())).copied()
    }

    /// The pending files of a directory: (name, id).
    pub fn pending_in(&self, parent: &Id) -> Vec<(String, Id)> {
        let m = self.pending.lock().expect("pending");
        m.by_id
            .iter()
            .filter(|(_, p)| p.parent == *parent)
            .map(|(id, p)| (p.name.clone(), *id))
            .collect()
    }

    pub fn pending_ids(&self) -> Vec<Id> {
        let m = self.pending.lock().expect("pending");
        m.by_id.keys().copied().collect()
    }
}

enum Slot {
    /// Modified in memory, not yet uploading.
    Dirty(Vec<u8>),
    /// Uploading in the background; the bytes stay readable meanwhile.
    Uploading(Bytes, JoinHandle<Result<Id>>),
    /// Uploaded; the key goes into the record at the next commit.
    Stored(Id),
}

/// A read decided under the lock: each chunk's source and length, the end of the
/// range, and the chunks to fetch ahead.
struct ReadPlan {
    pieces: Vec<(Source, usize)>,
    first: usize,
    end: u64,
    cb: u64,
    prefetch: Vec<Id>,
}

/// Where the bytes of one chunk come from, decided under the lock, fetched after it.
enum Source {
    Mem(Bytes),
    Key(Id),
}

pub struct FileState {
    id: Id,
    /// The record as last read or written: chunk list and chunk size.
    base: Inode,
    /// Its version (0: unknown), so a commit can write without reading it first.
    base_version: u64,
    /// The file's size, with every write and truncate applied.
    size: u64,
    slots: BTreeMap<usize, Slot>,
    /// Smallest size the file had since the last commit: base chunks past it are gone.
    truncated_to: Option<u64>,
    /// New mtime (and ctime) of written content, not yet committed.
    mtime: Option<Timespec>,
    dirty: bool,
    /// Set by a background upload that failed: writes fail fast until a commit succeeds.
    failed: Arc<AtomicBool>,
    /// When the first chunk uploaded since the last commit started uploading.
    first_upload: Option<std::time::Instant>,
    last_read_end: u64,
    prefetched_to: usize,
    /// A pending file whose name was taken (or whose directory went) before its first
    /// commit: nothing of it is on the ring, and every later commit fails.
    lost: bool,
}

/// The attributes an open file shows before its commit.
#[derive(Clone, Copy, Debug)]
pub struct Overlay {
    pub size: u64,
    pub mtime: Option<Timespec>,
}

pub struct OpenFile {
    pub id: Id,
    pub state: tokio::sync::Mutex<FileState>,
    /// Set by unlink of the last name: the inode is deleted when the last handle closes.
    pub unlinked: AtomicBool,
    // Never held across an await: copied in and out.
    overlay: Mutex<Option<Overlay>>,
}

impl OpenFile {
    pub fn overlay(&self) -> Option<Overlay> {
        *self.overlay.lock().expect("overlay")
    }

    fn set_overlay(&self, s: &FileState) {
        let o = s.dirty.then_some(Overlay {
            size: s.size,
            mtime: s.mtime,
        });
        *self.overlay.lock().expect("overlay") = o;
    }

    /// Writes `data` at `offset`, or at the file's end as this mount knows it when
    /// `offset` is None (O_APPEND); returns the offset written at.
    pub async fn write(&self, e: &Engine, offset: Option<u64>, data: &[u8]) -> Result<u64> {
        let mut s = self.state.lock().await;
        let at = offset.unwrap_or(s.size);
        let mut r = s.write(e, at, data).await;
        if r.is_ok() && s.writeback_overdue() {
            r = s.commit(e).await;
        }
        self.set_overlay(&s);
        r.map(|()| at)
    }

    /// Commits the file when chunks it uploaded have waited for their record longer
    /// than `WRITEBACK_MAX_SECS`; skips a file busy with another operation (its next
    /// write checks again). Returns false when a commit failed.
    pub async fn commit_if_overdue(&self, e: &Engine) -> bool {
        let Ok(mut s) = self.state.try_lock() else {
            return true;
        };
        if !s.writeback_overdue() {
            return true;
        }
        let r = s.commit(e).await;
        self.set_overlay(&s);
        if let Err(err) = &r {
            tracing::warn!("periodic commit of inode {} failed: {err}", self.id.short());
        }
        r.is_ok()
    }

    pub async fn read(&self, e: &Engine, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut plan = {
            let mut s = self.state.lock().await;
            s.plan_read(offset, len)
        };
        for key in std::mem::take(&mut plan.prefetch) {
            let c = e.client.clone();
            tokio::spawn(async move {
                let _ = c.get_chunk(&key).await;
            });
        }
        assemble(e, plan, offset).await
    }

    pub async fn truncate(&self, e: &Engine, size: u64) -> Result<()> {
        let mut s = self.state.lock().await;
        let r = s.truncate(e, size).await;
        self.set_overlay(&s);
        r
    }

    /// Grows the file to `size` (never shrinks it).
    pub async fn extend(&self, e: &Engine, size: u64) -> Result<()> {
        let mut s = self.state.lock().await;
        if size <= s.size {
            return Ok(());
        }
        let r = s.truncate(e, size).await;
        self.set_overlay(&s);
        r
    }

    /// Makes everything written durable and writes the record.
    pub async fn commit(&self, e: &Engine) -> Result<()> {
        let mut s = self.state.lock().await;
        let r = s.commit(e).await;
        self.set_overlay(&s);
        r
    }

    /// Takes a freshly read record as the base, unless local changes are pending
    /// (close-to-open: a new open sees what others committed).
    pub async fn refresh(&self, inode: Inode, version: u64) {
        let mut s = self.state.lock().await;
        if !s.dirty {
            s.size = inode.size;
            s.base = inode;
            s.base_version = version;
            s.prefetched_to = 0;
        } else {
            s.base.xattrs = inode.xattrs;
            // The base's chunks are still the ones the pending writes apply to; its
            // version no longer describes it.
            s.base_version = 0;
        }
    }

    /// Drops every change not yet committed (writes, truncates, uploads in flight):
    /// the file is back to its last record. For a lock holder that lost its lock: what
    /// it wrote under the lock must not reach the ring once another may hold it.
    pub async fn discard(&self) {
        let mut s = self.state.lock().await;
        for (_, slot) in std::mem::take(&mut s.slots) {
            if let Slot::Uploading(_, handle) = slot {
                handle.abort();
            }
        }
        s.size = s.base.size;
        s.truncated_to = None;
        s.mtime = None;
        s.dirty = false;
        s.first_upload = None;
        s.failed.store(false, Ordering::Release);
        self.set_overlay(&s);
    }

    /// An extended attribute as of the last record read or written (the kernel asks
    /// for `security.capability` before every write; this spares the ring a read).
    pub async fn xattr(&self, name: &str) -> Option<Vec<u8>> {
        self.state
            .lock()
            .await
            .base
            .xattrs
            .get(name)
            .map(|v| v.to_vec())
    }
}

impl FileState {
    fn new(id: Id, base: Inode, base_version: u64) -> FileState {
        FileState {
            id,
            size: base.size,
            base,
            base_version,
            slots: BTreeMap::new(),
            truncated_to: None,
            mtime: None,
            dirty: false,
            failed: Arc::new(AtomicBool::new(false)),
            first_upload: None,
            last_read_end: u64::MAX,
            prefetched_to: 0,
            lost: false,
        }
    }

    /// The file's chunk size (never 0).
    pub fn cb(&self) -> u64 {
        self.base.chunk_bytes.max(1) as u64
    }

    fn writeback_overdue(&self) -> bool {
        self.first_upload
            .is_some_and(|t| t.elapsed().as_secs() >= WRITEBACK_MAX_SECS)
    }

    /// Length of chunk `i` at the current size.
    fn chunk_len(&self, i: usize) -> usize {
        let cb = self.cb();
        self.size.saturating_sub(i as u64 * cb).min(cb) as usize
    }

    /// The committed key of chunk `i`, or a hole where a truncate cut it off.
    fn base_key(&self, i: usize) -> Id {
        if let Some(t) = self.truncated_to {
            if i as u64 * self.cb() >= t {
                return Id::ZERO;
            }
        }
        self.base.chunks.get(i).copied().unwrap_or(Id::ZERO)
    }

    /// The committed content of a small file kept in its record, as chunk 0, cut where
    /// a truncate cut it (`None` when the base keeps its content in chunks).
    fn base_inline(&self) -> Option<Bytes> {
        let data = self.base.inline.as_ref()?;
        let keep = self
            .truncated_to
            .unwrap_or(u64::MAX)
            .min(self.chunk_len(0) as u64)
            .min(data.len() as u64) as usize;
        Some(Bytes::copy_from_slice(&data[..keep]))
    }

    /// Where the committed bytes of chunk `i` come from.
    fn base_source(&self, i: usize) -> Source {
        match self.base_inline() {
            Some(b) if i == 0 => Source::Mem(b),
            Some(_) => Source::Key(Id::ZERO),
            None => Source::Key(self.base_key(i)),
        }
    }

    /// Takes chunk `i` out as a buffer of its current content.
    async fn take_chunk(&mut self, e: &Engine, i: usize) -> Result<Vec<u8>> {
        let key = match self.slots.remove(&i) {
            Some(Slot::Dirty(v)) => return Ok(v),
            Some(Slot::Uploading(b, _abandoned)) => return Ok(b.to_vec()),
            Some(Slot::Stored(k)) => k,
            None => match self.base_source(i) {
                Source::Mem(b) => return Ok(b.to_vec()),
                Source::Key(k) => k,
            },
        };
        if key == Id::ZERO {
            return Ok(Vec::new());
        }
        match e.client.get_chunk(&key).await {
            Ok(b) => {
                let mut v = b.to_vec();
                v.truncate(self.chunk_len(i));
                Ok(v)
            }
            Err(err) => {
                // Put back what was taken: a failed read must not lose a pending chunk.
                if self.base_key(i) != key {
                    self.slots.insert(i, Slot::Stored(key));
                }
                Err(err)
            }
        }
    }

    /// Turns finished uploads into their keys, so their bytes are freed: without this a
    /// long sequential write would keep every chunk in memory until close. A failed
    /// upload becomes dirty again (the failure flag makes writes fail fast until the
    /// next commit retries it).
    async fn reap(&mut self) {
        let done: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Uploading(_, h) if h.is_finished()))
            .map(|(i, _)| *i)
            .collect();
        for i in done {
            if let Some(Slot::Uploading(data, handle)) = self.slots.remove(&i) {
                let slot = match handle.await {
                    Ok(Ok(k)) => Slot::Stored(k),
                    _ => Slot::Dirty(data.to_vec()),
                };
                self.slots.insert(i, slot);
            }
        }
    }

    async fn upload(&mut self, e: &Engine, i: usize, v: Vec<u8>) {
        let data = Bytes::from(v);
        let kib = (data.len().div_ceil(1024) as u32).clamp(1, DIRTY_BUDGET_KIB as u32);
        let permit = e
            .budget
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("budget never closed");
        let (client, uploads, d) = (e.client.clone(), e.uploads.clone(), data.clone());
        let failed = self.failed.clone();
        self.first_upload
            .get_or_insert_with(std::time::Instant::now);
        let handle = tokio::spawn(async move {
            let _held = permit;
            let _slot = uploads.acquire_owned().await.expect("never closed");
            if failed.load(Ordering::Acquire) {
                // An upload of this file failed: leave the rest to the next commit.
                return Err(ClientError::Invalid("skipped after a failed upload".into()));
            }
            let r = client.put_block(d).await;
            if let Err(err) = &r {
                tracing::warn!("uploading chunk {i} failed: {err}");
                failed.store(true, Ordering::Release);
            }
            r
        });
        self.slots.insert(i, Slot::Uploading(data, handle));
    }

    async fn write(&mut self, e: &Engine, offset: u64, data: &[u8]) -> Result<()> {
        self.reap().await;
        if self.failed.load(Ordering::Acquire) {
            return Err(ClientError::Unavailable {
                what: format!("inode {}", self.id.short()),
                last: "an earlier chunk upload failed; fsync or close to retry".into(),
            });
        }
        let cb = self.cb();
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let i = (pos / cb) as usize;
            let within = (pos - i as u64 * cb) as usize;
            let n = ((cb as usize) - within).min((end - pos) as usize);
            let mut v = if within == 0 && n == cb as usize {
                self.slots.remove(&i);
                Vec::with_capacity(n)
            } else {
                self.take_chunk(e, i).await?
            };
            if v.len() < within + n {
                v.resize(within + n, 0);
            }
            let from = (pos - offset) as usize;
            v[within..within + n].copy_from_slice(&data[from..from + n]);
            self.size = self.size.max(pos + n as u64);
            self.dirty = true;
            if within + n == cb as usize {
                // A writer that reached the chunk's end: stream it out now.
                self.upload(e, i, v).await;
            } else {
                self.slots.insert(i, Slot::Dirty(v));
            }
            pos += n as u64;
        }
        self.mtime = Some(Timespec::now());
        let dirty: usize = self
            .slots
            .values()
            .map(|s| if let Slot::Dirty(v) = s { v.len() } else { 0 })
            .sum();
        if dirty > DIRTY_FILE_MAX_BYTES {
            self.upload_dirty(e).await;
        }
        Ok(())
    }

    async fn upload_dirty(&mut self, e: &Engine) {
        let dirty: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Dirty(_)))
            .map(|(i, _)| *i)
            .collect();
        for i in dirty {
            if let Some(Slot::Dirty(v)) = self.slots.remove(&i) {
                self.upload(e, i, v).await;
            }
        }
    }

    fn plan_read(&mut self, offset: u64, len: usize) -> ReadPlan {
        let cb = self.cb();
        if offset >= self.size || len == 0 {
            return ReadPlan {
                pieces: Vec::new(),
                first: 0,
                end: offset,
                cb,
                prefetch: Vec::new(),
            };
        }
        let end = (offset + len as u64).min(self.size);
        let (first, last) = ((offset / cb) as usize, ((end - 1) / cb) as usize);
        let pieces = (first..=last)
            .map(|i| {
                let src = match self.slots.get(&i) {
                    Some(Slot::Dirty(v)) => Source::Mem(Bytes::copy_from_slice(v)),
                    Some(Slot::Uploading(b, _)) => Source::Mem(b.clone()),
                    Some(Slot::Stored(k)) => Source::Key(*k),
                    None => self.base_source(i),
                };
                (src, self.chunk_len(i))
            })
            .collect();
        let mut prefetch = Vec::new();
        if offset == self.last_read_end || offset == 0 {
            let ahead = (READAHEAD_BYTES / cb).max(1) as usize;
            let count = self.size.div_ceil(cb) as usize;
            let from = self.prefetched_to.max(last + 1);
            let to = (last + 1 + ahead).min(count);
            for i in from..to {
                if !self.slots.contains_key(&i) {
                    let k = self.base_key(i);
                    if k != Id::ZERO {
                        prefetch.push(k);
                    }
                }
            }
            self.prefetched_to = self.prefetched_to.max(to);
        }
        self.last_read_end = end;
        ReadPlan {
            pieces,
            first,
            end,
            cb,
            prefetch,
        }
    }

    async fn truncate(&mut self, e: &Engine, size: u64) -> Result<()> {
        let cb = self.cb();
        if size < self.size {
            let i = (size / cb) as usize;
            let within = (size % cb) as usize;
            let partial = if within > 0 {
                let mut v = self.take_chunk(e, i).await?;
                v.truncate(within);
                Some(v)
            } else {
                None
            };
            self.slots.retain(|k, _| (*k as u64) * cb < size);
            if let Some(v) = partial {
                self.slots.insert(i, Slot::Dirty(v));
            }
            self.truncated_to = Some(self.truncated_to.map_or(size, |t| t.min(size)));
            self.prefetched_to = 0;
        }
        if size != self.size {
            self.mtime = Some(Timespec::now());
        }
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    async fn commit(&mut self, e: &Engine) -> Result<()> {
        if self.lost {
            return Err(ClientError::Unavailable {
                what: format!("inode {}", self.id.short()),
                last: "its name was taken or its directory removed before it was stored".into(),
            });
        }
        let pending = e.pending(&self.id);
        if !self.dirty && pending.is_none() {
            return Ok(());
        }
        // A retry after a failure starts the failed uploads over.
        self.failed.store(false, Ordering::Release);
        // A small file goes into its record whole: one replicated write, no chunk.
        let inline = if self.size <= INLINE_MAX_BYTES && self.size <= self.cb() {
            let mut v = self.take_chunk(e, 0).await?;
            v.truncate(self.size as usize);
            // Anything else pending lies past the end (a shorter chunk size): drop it.
            for (_, slot) in std::mem::take(&mut self.slots) {
                if let Slot::Uploading(_, handle) = slot {
                    handle.abort();
                }
            }
            Some(v)
        } else {
            if self.base.inline.is_some() && !self.slots.contains_key(&0) {
                // The file outgrew its record: its first chunk is stored like the rest.
                let v = self.take_chunk(e, 0).await?;
                self.slots.insert(0, Slot::Dirty(v));
            }
            None
        };
        self.upload_dirty(e).await;
        let mut failed: Option<ClientError> = None;
        let indices: Vec<usize> = self.slots.keys().copied().collect();
        for i in indices {
            // Only uploads in flight are taken out here; stored and dirty slots stay.
            if !matches!(self.slots.get(&i), Some(Slot::Uploading(..))) {
                continue;
            }
            if let Some(Slot::Uploading(data, handle)) = self.slots.remove(&i) {
                if failed.is_some() {
                    // Fail fast: the rest stays dirty for the next commit.
                    handle.abort();
                    let _ = handle.await;
                    self.slots.insert(i, Slot::Dirty(data.to_vec()));
                    continue;
                }
                let res = match handle.await {
                    Ok(r) => r,
                    Err(join) => Err(ClientError::Io(std::io::Error::other(join.to_string()))),
                };
                match res {
                    Ok(k) => {
                        self.slots.insert(i, Slot::Stored(k));
                    }
                    Err(err) => {
                        self.slots.insert(i, Slot::Dirty(data.to_vec()));
                        failed.get_or_insert(err);
                    }
                }
            }
        }
        if let Some(err) = failed {
            self.failed.store(true, Ordering::Release);
            return Err(err);
        }
        let stored: Vec<(usize, Id)> = self
            .slots
            .iter()
            .filter_map(|(i, s)| {
                if let Slot::Stored(k) = s {
                    Some((*i, *k))
                } else {
                    None
                }
            })
            .collect();
        let (size, trunc, mtime, cb) = (self.size, self.truncated_to, self.mtime, self.cb());
        // The record this file's state was built on, when its version is known: the write
        // then needs no read first (a conflict falls back to reading it).
        let known = (self.base_version > 0).then(|| InodeRef {
            id: self.id,
            version: self.base_version,
            inode: self.base.clone(),
        });
        let change = |ino: &mut Inode| {
            if ino.kind != Kind::File {
                return Err(ClientError::Invalid("not a regular file".into()));
            }
            if let Some(data) = &inline {
                ino.chunks.clear();
                ino.inline = Some(serde_bytes::ByteBuf::from(data.clone()));
                ino.size = size;
                if let Some(m) = mtime {
                    ino.mtime = m;
                    ino.ctime = m;
                }
                return Ok(());
            }
            if ino.inline.take().is_some() {
                // Was small; chunk 0 was stored above with the rest.
                ino.chunks.clear();
            }
            if let Some(t) = trunc {
                ino.chunks.truncate(t.div_ceil(cb) as usize);
            }
            let n = size.div_ceil(cb) as usize;
            ino.chunks.resize(n, Id::ZERO);
            for (i, k) in &stored {
                if *i < n {
                    ino.chunks[*i] = *k;
                }
            }
            ino.size = size;
            if let Some(m) = mtime {
                ino.mtime = m;
                ino.ctime = m;
            }
            Ok(())
        };
        let written = match pending {
            Some(p) => {
                let mut ino = self.base.clone();
                let changed = change(&mut ino);
                match changed {
                    Ok(()) => self.store_pending(e, p, ino).await,
                    Err(err) => Err(err),
                }
            }
            None => e
                .client
                .update_inode_from(known, &self.id, change)
                .await
                .map(|(_, r)| r),
        };
        let r = written.inspect_err(|_| {
            if let Some(v) = &inline {
                // Kept for the next commit to try again.
                self.slots.insert(0, Slot::Dirty(v.clone()));
            }
        })?;
        self.base = r.inode;
        self.base_version = r.version;
        self.slots.clear();
        self.truncated_to = None;
        self.mtime = None;
        self.dirty = false;
        self.first_upload = None;
        Ok(())
    }
}

impl FileState {
    /// The first commit of a file created here: its inode (`inode`, with content) and
    /// its name in `p.parent` are written at once, so a small file costs one round of
    /// writes. A name that someone else took meanwhile is never overwritten: the file
    /// is then lost (the commit fails, so close or fsync reports EIO) and the inode
    /// written for it removed again. Other failures leave it pending for the next try.
    async fn store_pending(&mut self, e: &Engine, p: Pending, inode: Inode) -> Result<InodeRef> {
        let id = self.id;
        // 0 unless an earlier try stored the inode but not the name.
        let expect = self.base_version;
        // The directory changed when the file was created, not now.
        let created = p.inode.ctime;
        let write_inode = async {
            match e
                .client
                .cas_record(&id, expect, Record::Inode(Box::new(inode.clone())))
                .await?
            {
                Cas::Done(v) => Ok(v),
                Cas::Conflict(v) => Err(ClientError::Contended(format!(
                    "inode {} is at version {v}, not {expect}",
                    id.short()
                ))),
            }
        };
        // A name already ours comes from an earlier try whose inode write failed: the
        // edit writes it again rather than refusing it.
        let edit = Edit::Link {
            name: p.name.clone(),
            entry: DirEntry {
                id,
                kind: Kind::File,
            },
            time: created,
        };
        let since = Instant::now();
        let link = e.client.edit_dir(&p.parent, edit.clone());
        let (written, linked) = tokio::join!(write_inode, link);
        if let Ok(v) = written {
            // The next try (if any) writes over this version.
            self.base = inode.clone();
            self.base_version = v;
        }
        match linked {
            Ok((dir_version, _)) => {
                // The directory as written, from the cached version before it.
                let known = e.cached_dir(&p.parent);
                match edited(known.as_deref(), &edit, dir_version) {
                    Some(dir) => e.cache_dir(dir, since),
                    None => e.forget_dir(&p.parent),
                }
                let version = written?;
                e.remove_pending(&id);
                Ok(InodeRef { id, version, inode })
            }
            Err(err) => {
                e.forget_dir(&p.parent);
                let gone = matches!(
                    err,
                    ClientError::Exists(_) | ClientError::NotDir(_) | ClientError::NotFound(_)
                );
                if gone {
                    tracing::warn!(
                        "created file {} could not be linked into directory {}: {err}",
                        p.name,
                        p.parent.short()
                    );
                    self.lost = true;
                    e.remove_pending(&id);
                    if self.base_version > 0 {
                        let _ = e.client.delete_inode(&id).await;
                    }
                    return Err(ClientError::Unavailable {
                        what: format!("new file {}", p.name),
                        last: err.to_string(),
                    });
                }
                Err(err)
            }
        }
    }
}

/// Fetches the chunks of a read in parallel and cuts out the range.
async fn assemble(e: &Engine, plan: ReadPlan, offset: u64) -> Result<Vec<u8>> {
    let ReadPlan {
        pieces,
        first,
        end,
        cb,
        ..
    } = plan;
    if pieces.is_empty() {
        return Ok(Vec::new());
    }
    let blocks = futures::future::try_join_all(pieces.into_iter().map(|(src, len)| async move {
        let b = match src {
            Source::Mem(b) => b,
            Source::Key(k) if k == Id::ZERO => Bytes::new(),
            Source::Key(k) => e.client.get_chunk(&k).await?,
        };
        Ok::<_, ClientError>((b, len))
    }))
    .await?;
    let mut out = Vec::with_capacity((end - offset) as usize);
    for (n, (b, len)) in blocks.iter().enumerate() {
        let start = (first + n) as u64 * cb;
        let from = offset.saturating_sub(start) as usize;
        let to = ((end - start) as usize).min(*len);
        if from < to {
            // Bytes past a short stored chunk read as zeros.
            let have = b.len().min(to);
            if from < have {
                out.extend_from_slice(&b[from..have]);
            }
            let pad = to - have.max(from);
            out.resize(out.len() + pad, 0);
        }
    }
    Ok(out)
}

/// The open files of a mount, by inode id, each with its count of users (handles, and
/// operations such as a truncate of a file nobody has open).
#[derive(Default)]
pub struct OpenFiles {
    // Never held across an await: lookups and counter updates only.
    map: Mutex<HashMap<Id, (Arc<OpenFile>, usize)>>,
}

impl OpenFiles {
    pub fn get(&self, id: &Id) -> Option<Arc<OpenFile>> {
        self.map
            .lock()
            .expect("open files")
            .get(id)
            .map(|(f, _)| f.clone())
    }

    /// One more user of the file; its state starts from `base` when it was not open.
    /// Returns the file and whether it was already open.
    pub fn open(&self, id: Id, base: Inode, version: u64) -> (Arc<OpenFile>, bool) {
        let mut map = self.map.lock().expect("open files");
        if let Some((f, n)) = map.get_mut(&id) {
            *n += 1;
            return (f.clone(), true);
        }
        let f = Arc::new(OpenFile {
            id,
            state: tokio::sync::Mutex::new(FileState::new(id, base, version)),
            unlinked: AtomicBool::new(false),
            overlay: Mutex::new(None),
        });
        map.insert(id, (f.clone(), 1));
        (f, false)
    }

    /// One user fewer; returns the file when that was the last one.
    pub fn close(&self, id: &Id) -> Option<Arc<OpenFile>> {
        let mut map = self.map.lock().expect("open files");
        let (f, n) = map.get_mut(id)?;
        *n -= 1;
        if *n == 0 {
            let f = f.clone();
            map.remove(id);
            return Some(f);
        }
        None
    }

    /// Whether a handle of this mount has the file open.
    pub fn is_open(&self, id: &Id) -> bool {
        self.map.lock().expect("open files").contains_key(id)
    }

    /// Marks an unlinked file for deletion at its last close. False when not open.
    pub fn defer_delete(&self, id: &Id) -> bool {
        match self.map.lock().expect("open files").get(id) {
            Some((f, _)) => {
                f.unlinked.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    pub fn all(&self) -> Vec<Arc<OpenFile>> {
        self.map
            .lock()
            .expect("open files")
            .values()
            .map(|(f, _)| f.clone())
            .collect()
    }
}

/// Numbered handles (file handles, directory listings) handed to the kernel.
pub struct Handles<T> {
    // Never held across an await.
    map: Mutex<HashMap<u64, T>>,
    next: std::sync::atomic::AtomicU64,
}

impl<T: Clone> Handles<T> {
    pub fn new() -> Handles<T> {
        Handles {
            map: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn insert(&self, v: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().expect("handles").insert(fh, v);
        fh
    }

    pub fn get(&self, fh: u64) -> Option<T> {
        self.map.lock().expect("handles").get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<T> {
        self.map.lock().expect("handles").remove(&fh)
    }
}

impl<T: Clone> Default for Handles<T> {
    fn default() -> Self {
        Self::new()
    }
}
