//! The node's store: content-addressed chunks and versioned records in a plain data dir.
//!
//! ```text
//! DIR/node.id                  this node's ring id, 40 hex digits
//! DIR/chunks/ab/abcdef...      a chunk, named by the SHA-1 of its bytes
//! DIR/records/ab/abcdef...     a record: SHA-1 of the body, then the MessagePack body
//! DIR/journal/<gen>.log        record writes not yet checkpointed (see [`journal`])
//! DIR/tmp/                     writes in progress; emptied at start
//! ```
//! Chunk writes are atomic and durable (temp file, fsync, rename, fsync of the directory).
//! A record write is made durable by the record journal instead (one appended entry,
//! synced with the writes beside it); its file is written at the journal's next
//! checkpoint, atomically. Every read is
//! verified against its hash; a bad copy is removed and reported as missing, so repair
//! fetches a good one. The in-memory index mirrors the directory and is rebuilt at start.
//!
//! [`Store::memory`] keeps the same files in a map instead of a directory (tests and the
//! simulation): no disk I/O and no blocking threads, so runs stay deterministic. A write
//! there is "durable" once it returns; keep the `Arc` to model a restart on the same disk.

pub mod journal;

use crate::id::Id;
use crate::proto::Record;
pub use crate::sys::disk_space;
use crate::sys::drop_cached_pages;
use bytes::Bytes;
use journal::{Entry, Journal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// Encoded bytes of the records written lately that are kept decoded in memory (see
/// `Store::get_record_cached`).
const RECORD_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Size of the record lock map at which entries nobody holds are dropped.
const RECORD_LOCKS_SWEEP_AT: usize = 1024;
/// Chunk stores and garbage-collection deletes are serialized per stripe, so a store
/// that finds a chunk held (and refreshes its age) and a delete of that chunk never
/// interleave: either the delete sees the fresh age, or the store writes the chunk anew.
const CHUNK_LOCK_STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk bytes hash to {actual}, not to the key {key}")]
    HashMismatch { key: Id, actual: Id },
    #[error("disk error at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("record does not encode: {0}")]
    Encode(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EntryKind {
    Chunk,
    Record,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub size: u64,
    /// Record version; 0 for chunks.
    pub version: u64,
    /// A chunk whose bytes this process wrote after checking them, or read back and
    /// checked: ordinary reads of it skip the hash (the reader checks it again anyway,
    /// and reports a bad copy; the scrubber re-checks everything).
    pub verified: bool,
}

#[derive(Deserialize)]
struct StoredRecord {
    version: u64,
    record: Record,
}

pub struct Store {
    dir: PathBuf,
    /// The in-memory backend: file contents and modification time by path. `None` for
    /// a real data dir.
    // Never held across an await: every access is one map operation.
    mem: Option<Mutex<BTreeMap<PathBuf, (Bytes, SystemTime)>>>,
    // Never held across an await: every access is a short map operation.
    index: Mutex<BTreeMap<Id, Meta>>,
    /// One lock per record key being written (not stripes: a primary holds its key's
    /// lock while its replicas take theirs, and two primaries replicating two keys that
    /// shared a stripe to each other would wait on each other until their calls timed
    /// out). Entries nobody holds are swept as the map grows.
    record_locks: Mutex<HashMap<Id, Weak<tokio::sync::Mutex<()>>>>,
    // Held only inside blocking store code (never across an await); see CHUNK_LOCK_STRIPES.
    chunk_locks: Vec<Mutex<()>>,
    tmp_seq: AtomicU64,
    /// Bad copies found and dropped since start.
    pub corrupt_found: AtomicU64,
    /// The records this store wrote lately, decoded, as they are on disk: filled only by
    /// writes (made under the key's lock, which also orders them), dropped with the key.
    /// A primary updating a directory reads it here instead of decoding it again.
    recent: moka::sync::Cache<Id, Arc<(u64, Record)>>,
    /// What makes record writes durable; `None` for the memory backend.
    journal: Option<Arc<Journal>>,
}

fn record_cache() -> moka::sync::Cache<Id, Arc<(u64, Record)>> {
    moka::sync::Cache::builder()
        .max_capacity(RECORD_CACHE_BYTES)
        .weigher(|_, v: &Arc<(u64, Record)>| match &v.1 {
            Record::Inode(ino) => (256
                + 64 * ino.entries.len()
                + ino.inline.as_ref().map_or(0, |b| b.len())
                + 24 * ino.chunks.len())
            .min(u32::MAX as usize) as u32,
            Record::Deleted => 64,
        })
        .build()
}

impl Store {
    /// Opens (or creates) a data dir: empties `tmp/`, drops half-written or corrupt
    /// files, and indexes the rest.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
        Store::open_with(dir, journal::CHECKPOINT_BYTES)
    }

    /// [`Store::open`] with the journal size at which a checkpoint starts (tests).
    pub fn open_with(dir: &Path, checkpoint_bytes: u64) -> Result<Arc<Store>, StoreError> {
        for sub in ["chunks", "records", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let tmp = dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        // Record writes the journal holds go onto the record files before anything is
        // read from them.
        let journal =
            Journal::open(dir, checkpoint_bytes, |_| {}).map_err(io_err(&dir.join("journal")))?;
        let store = Store {
            dir: dir.to_path_buf(),
            mem: None,
            index: Mutex::new(BTreeMap::new()),
            record_locks: Mutex::new(HashMap::new()),
            chunk_locks: (0..CHUNK_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_seq: AtomicU64::new(0),
            corrupt_found: AtomicU64::new(0),
            recent: record_cache(),
            journal: Some(journal),
        };
        store.scan(EntryKind::Chunk)?;
        store.scan(EntryKind::Record)?;
        Ok(Arc::new(store))
    }

    /// A store that keeps its files in memory (tests and the simulation).
    pub fn memory() -> Arc<Store> {
        Arc::new(Store {
            dir: PathBuf::from("/nonexistent/chordfs-memory-store"),
            mem: Some(Mutex::new(BTreeMap::new())),
            index: Mutex::new(BTreeMap::new()),
            record_locks: Mutex::new(HashMap::new()),
            chunk_locks: (0..CHUNK_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_seq: AtomicU64::new(0),
            corrupt_found: AtomicU64::new(0),
            recent: record_cache(),
            journal: None,
        })
    }

    pub fn is_memory(&self) -> bool {
        self.mem.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        match &self.mem {
            None => fs::read(path),
            Some(m) => match m.lock().expect("mem lock").get(path) {
                Some((b, _)) => Ok(b.to_vec()),
                None => Err(std::io::ErrorKind::NotFound.into()),
            },
        }
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        match &self.mem {
            None => fs::remove_file(path),
            Some(m) => match m.lock().expect("mem lock").remove(path) {
                Some(_) => Ok(()),
                None => Err(std::io::ErrorKind::NotFound.into()),
            },
        }
    }

    /// Runs a store operation off the async threads, or inline for the memory backend.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> T {
        if self.is_memory() {
            return f(self);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .expect("store task panicked")
    }

    fn scan(&self, kind: EntryKind) -> Result<(), StoreError> {
        let root = self.dir.join(match kind {
            EntryKind::Chunk => "chunks",
            EntryKind::Record => "records",
        });
        let mut index = self.index.lock().expect("index lock");
        for sub in fs::read_dir(&root).map_err(io_err(&root))?.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(key) = name.to_str().and_then(|n| n.parse::<Id>().ok()) else {
                    continue;
                };
                let meta = match kind {
                    EntryKind::Chunk => match f.metadata() {
                        Ok(m) => Meta {
                            kind,
                            size: m.len(),
                            version: 0,
                            verified: false,
                        },
                        Err(_) => continue,
                    },
                    // A record must read back whole; one that doesn't is dropped here
                    // and fetched again by repair.
                    EntryKind::Record => match read_record_file(&f.path()) {
                        Ok(Some((version, _))) => Meta {
                            kind,
                            size: f.metadata().map(|m| m.len()).unwrap_or(0),
                            version,
                            verified: false,
                        },
                        _ => {
                            tracing::warn!("dropping unreadable record {}", f.path().display());
                            let _ = fs::remove_file(f.path());
                            continue;
                        }
                    },
                };
                index.insert(key, meta);
            }
        }
        Ok(())
    }

    fn path_of(&self, kind: EntryKind, key: &Id) -> PathBuf {
        entry_path(&self.dir, kind, key)
    }

    /// Writes `bytes` to `path` atomically and durably; with `mtime`, the file carries
    /// that modification time (a chunk copy keeps its sender's age).
    fn write_atomic(
        &self,
        path: &Path,
        bytes: &[u8],
        mtime: Option<SystemTime>,
        keep_cached: bool,
    ) -> Result<(), StoreError> {
        if let Some(m) = &self.mem {
            m.lock().expect("mem lock").insert(
                path.to_path_buf(),
                (
                    Bytes::copy_from_slice(bytes),
                    mtime.unwrap_or_else(SystemTime::now),
                ),
            );
            return Ok(());
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.{}", std::process::id(), seq));
        let parent = path.parent().expect("store paths have a parent");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let result = (|| {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(bytes).map_err(io_err(&tmp))?;
            if let Some(t) = mtime {
                f.set_modified(t).map_err(io_err(&tmp))?;
            }
            f.sync_all().map_err(io_err(&tmp))?;
            if !keep_cached {
                drop_cached_pages(&f);
            }
            fs::rename(&tmp, path).map_err(io_err(path))?;
            sync_dir(parent).map_err(io_err(parent))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn meta(&self, key: &Id) -> Option<Meta> {
        self.index.lock().expect("index lock").get(key).copied()
    }

    /// Every key held, in ring order.
    pub fn keys(&self) -> Vec<(Id, Meta)> {
        self.index
            .lock()
            .expect("index lock")
            .iter()
            .map(|(k, m)| (*k, *m))
            .collect()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.index.lock().expect("index lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At most `limit` keys after `after` (from the start when `None`), in ring order.
    pub fn keys_after(&self, after: Option<Id>, limit: usize) -> Vec<(Id, Meta)> {
        use std::ops::Bound;
        let index = self.index.lock().expect("index lock");
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        index
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(k, m)| (*k, *m))
            .collect()
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        let index = self.index.lock().expect("index lock");
        let (mut chunks, mut records, mut bytes) = (0, 0, 0);
        for m in index.values() {
            match m.kind {
                EntryKind::Chunk => chunks += 1,
                EntryKind::Record => records += 1,
            }
            bytes += m.size;
        }
        (chunks, records, bytes)
    }

    /// Stores a chunk after checking its hash. Returns false when it was already held
    /// (its age is then refreshed: a writer is about to reference it).
    pub async fn put_chunk(self: &Arc<Self>, key: Id, data: Bytes) -> Result<bool, StoreError> {
        self.blocking(move |s| s.put_chunk_blocking(key, &data))
            .await
    }

    pub fn put_chunk_blocking(&self, key: Id, data: &[u8]) -> Result<bool, StoreError> {
        let actual = Id::hash(data);
        if actual != key {
            return Err(StoreError::HashMismatch { key, actual });
        }
        self.store_chunk_blocking(key, data, None)
    }

    /// Stores a chunk whose bytes the caller has just checked against `key` (a primary
    /// checks once, before it forwards the chunk, and need not hash it again here).
    pub async fn put_checked_chunk(
        self: &Arc<Self>,
        key: Id,
        data: Bytes,
    ) -> Result<bool, StoreError> {
        self.blocking(move |s| s.store_chunk_blocking(key, &data, None))
            .await
    }

    /// Stores a copy of a chunk that another holder has kept for `age` (repair): a new
    /// copy is as old as the sender's, and a copy held already keeps its own age, so
    /// repair never makes an unreferenced chunk look freshly written.
    pub async fn put_chunk_copy(
        self: &Arc<Self>,
        key: Id,
        data: Bytes,
        age: Duration,
    ) -> Result<bool, StoreError> {
        self.blocking(move |s| {
            let actual = Id::hash(&data);
            if actual != key {
                return Err(StoreError::HashMismatch { key, actual });
            }
            s.store_chunk_blocking(key, &data, Some(age))
        })
        .await
    }

    fn chunk_lock(&self, key: &Id) -> std::sync::MutexGuard<'_, ()> {
        let stripe = key.0[19] as usize % CHUNK_LOCK_STRIPES;
        self.chunk_locks[stripe].lock().expect("chunk lock")
    }

    /// `age`: None for a writer's store (a held chunk's age is refreshed), Some for a
    /// repair copy (written that old; a held chunk is left alone).
    fn store_chunk_blocking(
        &self,
        key: Id,
        data: &[u8],
        age: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let _stripe = self.chunk_lock(&key);
        let path = self.path_of(EntryKind::Chunk, &key);
        if self.meta(&key).is_some() {
            if age.is_some() {
                return Ok(false);
            }
            match self.set_mtime(&path, SystemTime::now()) {
                Ok(()) => return Ok(false),
                // Gone from disk behind the index's back: write it again below.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.forget(&key),
                Err(e) => return Err(StoreError::Io { path, source: e }),
            }
        }
        let mtime = age.map(|a| {
            SystemTime::now()
                .checked_sub(a)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        // Chunk bytes are not kept in the page cache once durable: readers have their own
        // cache, and on this kind of VM filling the page cache with new pages costs more
        // than the write (a 256 KiB fsync'ed write ran at 316 MB/s, 647 MB/s with this).
        self.write_atomic(&path, data, mtime, false)?;
        self.index.lock().expect("index lock").insert(
            key,
            Meta {
                kind: EntryKind::Chunk,
                size: data.len() as u64,
                version: 0,
                verified: true,
            },
        );
        Ok(true)
    }

    /// Makes the held chunks among `keys` young again, as a writer's store of them
    /// would (under the same stripe lock a delete takes, so a delete either finds the
    /// fresh age or ran before); true for each key held and touched. A server-side copy
    /// does this before its record names chunks it did not store (see `TouchChunks`).
    pub async fn touch_chunks(self: &Arc<Self>, keys: Vec<Id>) -> Vec<bool> {
        self.blocking(move |s| {
            keys.iter()
                .map(|key| {
                    let _stripe = s.chunk_lock(key);
                    if !s.meta(key).is_some_and(|m| m.kind == EntryKind::Chunk) {
                        return false;
                    }
                    let path = s.path_of(EntryKind::Chunk, key);
                    match s.set_mtime(&path, SystemTime::now()) {
                        Ok(()) => true,
                        Err(e) => {
                            if e.kind() == std::io::ErrorKind::NotFound {
                                s.forget(key);
                            }
                            false
                        }
                    }
                })
                .collect()
        })
        .await
    }

    fn set_mtime(&self, path: &Path, t: SystemTime) -> std::io::Result<()> {
        match &self.mem {
            None => fs::File::open(path)?.set_modified(t),
            Some(m) => match m.lock().expect("mem lock").get_mut(path) {
                Some((_, mtime)) => {
                    *mtime = t;
                    Ok(())
                }
                None => Err(std::io::ErrorKind::NotFound.into()),
            },
        }
    }

    fn mtime_of(&self, path: &Path) -> std::io::Result<SystemTime> {
        match &self.mem {
            None => fs::metadata(path)?.modified(),
            Some(m) => match m.lock().expect("mem lock").get(path) {
                Some((_, t)) => Ok(*t),
                None => Err(std::io::ErrorKind::NotFound.into()),
            },
        }
    }

    /// How long ago a held chunk was last stored (written, or found held by a writer's
    /// store). None when not held. A modification time in the future counts as now.
    pub fn chunk_age(&self, key: &Id) -> Option<Duration> {
        match self.meta(key) {
            Some(m) if m.kind == EntryKind::Chunk => {}
            _ => return None,
        }
        let t = self.mtime_of(&self.path_of(EntryKind::Chunk, key)).ok()?;
        Some(
            SystemTime::now()
                .duration_since(t)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Deletes a held chunk when it was last stored at least `grace` ago, checked under
    /// its stripe lock (so no writer's store slips in between). Returns the bytes freed,
    /// or None when the chunk is not held or too young.
    pub async fn delete_chunk_if_older(
        self: &Arc<Self>,
        key: Id,
        grace: Duration,
    ) -> Result<Option<u64>, StoreError> {
        self.blocking(move |s| {
            let _stripe = s.chunk_lock(&key);
            let Some(meta) = s.meta(&key).filter(|m| m.kind == EntryKind::Chunk) else {
                return Ok(None);
            };
            match s.chunk_age(&key) {
                Some(age) if age >= grace => {}
                _ => return Ok(None),
            }
            s.delete(&key)?;
            Ok(Some(meta.size))
        })
        .await
    }

    /// Reads a chunk, checking its hash unless this process already has (see
    /// [`Meta::verified`]). A copy whose bytes don't match is deleted and read as missing.
    pub async fn get_chunk(self: &Arc<Self>, key: Id) -> Result<Option<Bytes>, StoreError> {
        self.blocking(move |s| s.read_chunk_blocking(key, false))
            .await
    }

    /// Reads a chunk and always checks its hash (the scrubber; a reader's report of a bad
    /// copy).
    pub async fn check_chunk(self: &Arc<Self>, key: Id) -> Result<Option<Bytes>, StoreError> {
        self.blocking(move |s| s.read_chunk_blocking(key, true))
            .await
    }

    fn read_chunk_blocking(
        &self,
        key: Id,
        always_check: bool,
    ) -> Result<Option<Bytes>, StoreError> {
        let verified = match self.meta(&key) {
            Some(m) if m.kind == EntryKind::Chunk => m.verified,
            _ => return Ok(None),
        };
        let path = self.path_of(EntryKind::Chunk, &key);
        let data = match self.read_file(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(&key);
                return Ok(None);
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        if verified && !always_check {
            return Ok(Some(Bytes::from(data)));
        }
        if Id::hash(&data) != key {
            tracing::warn!(
                "chunk {} is corrupt on disk; dropping it for repair",
                key.short()
            );
            self.corrupt_found.fetch_add(1, Ordering::Relaxed);
            let _ = self.remove_file(&path);
            self.forget(&key);
            return Ok(None);
        }
        if let Some(m) = self.index.lock().expect("index lock").get_mut(&key) {
            m.verified = true;
        }
        Ok(Some(Bytes::from(data)))
    }

    fn forget(&self, key: &Id) {
        let mut index = self.index.lock().expect("index lock");
        index.remove(key);
        self.recent.invalidate(key);
    }

    /// Removes a key's file and index entry.
    pub fn delete(&self, key: &Id) -> Result<(), StoreError> {
        let Some(meta) = self.meta(key) else {
            return Ok(());
        };
        let path = self.path_of(meta.kind, key);
        self.forget(key);
        match self.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        }
        match (&self.journal, meta.kind) {
            // Not waited for (see the journal's notes): a removed file was never synced.
            (Some(j), EntryKind::Record) => j
                .append(Entry::Delete(*key), false)
                .map_err(io_err(&self.dir.join("journal"))),
            _ => Ok(()),
        }
    }

    pub async fn get_record(
        self: &Arc<Self>,
        key: Id,
    ) -> Result<Option<(u64, Record)>, StoreError> {
        self.blocking(move |s| s.get_record_blocking(&key)).await
    }

    /// A record as [`Store::get_record`] reads it, from memory when this store wrote it
    /// lately (no read, checksum or decoding of the file). For the hot paths only (a
    /// primary's writes, plain reads): the scrubber and repair read the disk.
    pub async fn get_record_cached(
        self: &Arc<Self>,
        key: Id,
    ) -> Result<Option<(u64, Record)>, StoreError> {
        // Still the version the index holds (nothing dropped it meanwhile).
        if let Some(r) = self.recent_record(&key) {
            return Ok(Some((r.0, r.1.clone())));
        }
        self.get_record(key).await
    }

    /// The record under `key` when this store wrote it lately and still holds that
    /// version, shared rather than copied (see [`Store::get_record_cached`]).
    pub fn recent_record(&self, key: &Id) -> Option<Arc<(u64, Record)>> {
        self.recent
            .get(key)
            .filter(|r| self.record_version(key) == r.0)
    }

    pub fn get_record_blocking(&self, key: &Id) -> Result<Option<(u64, Record)>, StoreError> {
        match self.meta(key) {
            Some(m) if m.kind == EntryKind::Record => {}
            _ => return Ok(None),
        }
        let held = self.journal.as_ref().and_then(|j| j.lookup(key));
        match held {
            // Written since the journal's last checkpoint: its file may be older.
            Some(Some(bytes)) => {
                if let Some(r) = parse_record(&bytes) {
                    return Ok(Some(r));
                }
            }
            Some(None) => return Ok(None),
            None => {}
        }
        let path = self.path_of(EntryKind::Record, key);
        match self.read_file(&path).map(|b| parse_record(&b)) {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => {
                tracing::warn!(
                    "record {} is corrupt on disk; dropping it for repair",
                    key.short()
                );
                self.corrupt_found.fetch_add(1, Ordering::Relaxed);
                let _ = self.remove_file(&path);
                self.forget(key);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(key);
                Ok(None)
            }
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Holds the record stripe of `key`: no other record write to it happens meanwhile.
    /// A primary keeps it across its compare-and-set and the copies it sends, so that
    /// replicas never receive two different bodies under one version.
    pub async fn lock_record(&self, key: &Id) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.record_locks.lock().expect("record locks");
            match locks.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    if locks.len() >= RECORD_LOCKS_SWEEP_AT {
                        locks.retain(|_, l| l.strong_count() > 0);
                    }
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    locks.insert(*key, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }

    /// Starts a checkpoint of the record journal when one is due on a quiet node (see
    /// [`Journal::checkpoint_if_older`]); the memory backend has no journal.
    pub fn checkpoint_journal_if_older(&self, age: Duration) {
        if let Some(j) = &self.journal {
            j.checkpoint_if_older(age);
        }
    }

    /// The version of the record held under `key` (0: none).
    pub fn record_version(&self, key: &Id) -> u64 {
        match self.meta(key) {
            Some(m) if m.kind == EntryKind::Record => m.version,
            _ => 0,
        }
    }

    /// Writes a record durably; the caller holds its stripe (see `lock_record`).
    pub async fn write_record(
        self: &Arc<Self>,
        key: Id,
        version: u64,
        record: Record,
    ) -> Result<(), StoreError> {
        self.write_record_shared(key, Arc::new((version, record)))
            .await
    }

    /// [`Store::write_record`] of a (version, record) the caller shares: kept as it is
    /// in the store's memory of recent writes, not copied.
    pub async fn write_record_shared(
        self: &Arc<Self>,
        key: Id,
        record: Arc<(u64, Record)>,
    ) -> Result<(), StoreError> {
        self.blocking(move |s| s.write_record_blocking(key, record))
            .await
    }

    /// A record as [`Store::get_record_cached`] reads it, shared when it comes from
    /// memory.
    pub async fn get_record_shared(
        self: &Arc<Self>,
        key: Id,
    ) -> Result<Option<Arc<(u64, Record)>>, StoreError> {
        if let Some(r) = self.recent_record(&key) {
            return Ok(Some(r));
        }
        Ok(self.get_record(key).await?.map(Arc::new))
    }

    /// Writes a record when `decide(current_version)` allows it, with no other record
    /// write to the same stripe in between. Returns the version held afterwards and
    /// whether this write happened.
    pub async fn put_record_if(
        self: &Arc<Self>,
        key: Id,
        version: u64,
        record: Record,
        decide: impl FnOnce(u64) -> bool,
    ) -> Result<(u64, bool), StoreError> {
        let _guard = self.lock_record(&key).await;
        let current = self.record_version(&key);
        if !decide(current) {
            return Ok((current, false));
        }
        self.write_record(key, version, record).await?;
        Ok((version, true))
    }

    fn write_record_blocking(&self, key: Id, record: Arc<(u64, Record)>) -> Result<(), StoreError> {
        let version = record.0;
        let bytes = encode_record_file(version, &record.1)?;
        let size = bytes.len() as u64;
        let written = match &self.journal {
            Some(j) => j
                .append(Entry::Write(key, bytes), true)
                .map_err(io_err(&self.dir.join("journal"))),
            None => {
                let path = self.path_of(EntryKind::Record, &key);
                self.write_atomic(&path, &bytes, None, true)
            }
        };
        if let Err(e) = written {
            self.recent.invalidate(&key);
            return Err(e);
        }
        let mut index = self.index.lock().expect("index lock");
        index.insert(
            key,
            Meta {
                kind: EntryKind::Record,
                size,
                version,
                verified: false,
            },
        );
        self.recent.insert(key, record);
        Ok(())
    }
}

/// Makes a directory's entries (a rename into it, a new file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Where a data dir keeps a chunk's or a record's file.
fn entry_path(dir: &Path, kind: EntryKind, key: &Id) -> PathBuf {
    let hex = key.to_hex();
    let top = match kind {
        EntryKind::Chunk => "chunks",
        EntryKind::Record => "records",
    };
    dir.join(top).join(&hex[..2]).join(hex)
}

/// Reads a record file: `Ok(None)` when its checksum or body is bad.
fn read_record_file(path: &Path) -> std::io::Result<Option<(u64, Record)>> {
    Ok(parse_record(&fs::read(path)?))
}

/// The bytes of a record file: the SHA-1 of the body, then the MessagePack body
/// (version and record).
pub fn encode_record_file(version: u64, record: &Record) -> Result<Vec<u8>, StoreError> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        version: u64,
        record: &'a Record,
    }
    let body = rmp_serde::to_vec(&Borrowed { version, record })
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(20 + body.len());
    bytes.extend_from_slice(&Id::hash(&body).0);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Decodes a record file's bytes (see [`encode_record_file`]): `None` when its checksum
/// or body is bad. Never panics, whatever the bytes.
pub fn decode_record_file(bytes: &[u8]) -> Option<(u64, Record)> {
    parse_record(bytes)
}

fn parse_record(bytes: &[u8]) -> Option<(u64, Record)> {
    if bytes.len() < 20 || Id::hash(&bytes[20..]).0[..] != bytes[..20] {
        return None;
    }
    rmp_serde::from_slice::<StoredRecord>(&bytes[20..])
        .ok()
        .map(|s| (s.version, s.record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever bytes a record file holds (torn write, bit rot, hostile disk), reading
        /// it gives a record or "bad copy", never a panic.
        #[test]
        fn any_record_file_bytes_read_safely(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rec");
            fs::write(&path, &bytes).unwrap();
            let _ = read_record_file(&path);
            // With a valid checksum over garbage, the body must still be refused safely.
            let mut framed = Id::hash(&bytes).0.to_vec();
            framed.extend_from_slice(&bytes);
            fs::write(&path, &framed).unwrap();
            let _ = read_record_file(&path);
        }
    }
    use crate::proto::{Inode, Kind};

    #[tokio::test]
    async fn chunks_survive_a_reopen_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Bytes::from_static(b"some chunk bytes");
        let key = Id::hash(&data);
        assert!(store.put_chunk(key, data.clone()).await.unwrap());
        assert!(
            !store.put_chunk(key, data.clone()).await.unwrap(),
            "stored once"
        );
        let wrong = Id::hash(b"other");
        assert!(matches!(
            store.put_chunk(wrong, data.clone()).await,
            Err(StoreError::HashMismatch { .. })
        ));
        drop(store);

        // Flip a byte on disk while no store is open: the first read after opening
        // checks the hash, drops the copy and reports it missing.
        let path = dir
            .path()
            .join("chunks")
            .join(&key.to_hex()[..2])
            .join(key.to_hex());
        let flip = |path: &Path| {
            let mut bytes = fs::read(path).unwrap();
            bytes[0] ^= 1;
            fs::write(path, bytes).unwrap();
        };
        flip(&path);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_chunk(key).await.unwrap(), None);
        assert_eq!(store.corrupt_found.load(Ordering::Relaxed), 1);
        assert!(store.meta(&key).is_none());

        // Stored again, then it goes bad under a running store: ordinary reads serve it
        // unhashed (their reader checks), a check finds it and drops it.
        assert!(store.put_chunk(key, data.clone()).await.unwrap());
        assert_eq!(store.get_chunk(key).await.unwrap(), Some(data.clone()));
        flip(&path);
        assert_eq!(store.check_chunk(key).await.unwrap(), None);
        assert_eq!(store.corrupt_found.load(Ordering::Relaxed), 2);
        assert!(store.meta(&key).is_none());
        assert_eq!(store.get_chunk(key).await.unwrap(), None);
    }

    fn file_record(size: u64) -> Record {
        let mut ino = Inode::new(Kind::File, 0o644, 0, 0, Id::ZERO, 1 << 20);
        ino.size = size;
        Record::Inode(Box::new(ino))
    }

    /// (version, size) of a file record read back.
    fn version_size(r: Option<(u64, Record)>) -> Option<(u64, u64)> {
        match r? {
            (v, Record::Inode(ino)) => Some((v, ino.size)),
            (_, Record::Deleted) => None,
        }
    }

    /// Record files are written only at a checkpoint; the journal makes the write
    /// durable. A power loss that takes every record file written since the last
    /// checkpoint (the worst it can do to them) loses no acknowledged write, and a
    /// delete stays a delete.
    #[tokio::test]
    async fn acknowledged_record_writes_survive_losing_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b, c) = (Id::hash(b"a"), Id::hash(b"b"), Id::hash(b"c"));
        store.write_record(a, 1, file_record(1)).await.unwrap();
        store.write_record(b, 1, file_record(2)).await.unwrap();
        store.write_record(a, 3, file_record(3)).await.unwrap();
        store.write_record(c, 2, file_record(4)).await.unwrap();
        store.delete(&b).unwrap();
        drop(store);
        // None of the record files reached the disk; `b`'s file did (its delete was lost).
        let b_bytes = encode_record_file(1, &file_record(2)).unwrap();
        fs::remove_dir_all(dir.path().join("records")).unwrap();
        fs::create_dir_all(dir.path().join("records")).unwrap();
        let bp = dir.path().join("records").join(&b.to_hex()[..2]);
        fs::create_dir_all(&bp).unwrap();
        fs::write(bp.join(b.to_hex()), &b_bytes).unwrap();

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            version_size(store.get_record(a).await.unwrap()),
            Some((3, 3))
        );
        assert_eq!(
            version_size(store.get_record(c).await.unwrap()),
            Some((2, 4))
        );
        assert_eq!(store.get_record(b).await.unwrap(), None, "deleted");
        assert_eq!(store.record_version(&a), 3);
        // Replayed and flushed: the journal starts empty, and a second start finds the
        // same records without it.
        assert!(store.journal.as_ref().unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            version_size(store.get_record(a).await.unwrap()),
            Some((3, 3))
        );
        assert_eq!(store.get_record(b).await.unwrap(), None);
    }

    /// Many writers at once with a journal small enough that checkpoints retire it while
    /// they write: after a restart every record reads back at its last version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_written_across_checkpoints_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 8 * 1024).unwrap();
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40u64 {
                    let key = Id::hash(format!("{w}/{i}").as_bytes());
                    for v in 1..=2 {
                        store
                            .write_record(key, v, file_record(w * 1000 + i + v))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // A process that stops ends its checkpoint thread with it; here the thread
        // outlives the store, so let it finish before the data dir is opened again.
        let journal = store.journal.clone().unwrap();
        drop(store);
        for _ in 0..1000 {
            if !journal.checkpoint_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !journal.checkpoint_running(),
            "checkpoint still running after 10 s"
        );
        let store = Store::open_with(dir.path(), 8 * 1024).unwrap();
        for w in 0..8u64 {
            for i in 0..40u64 {
                let key = Id::hash(format!("{w}/{i}").as_bytes());
                assert_eq!(
                    version_size(store.get_record(key).await.unwrap()),
                    Some((2, w * 1000 + i + 2)),
                    "record {w}/{i}"
                );
            }
        }
        let journals = fs::read_dir(dir.path().join("journal")).unwrap().count();
        assert_eq!(journals, 1, "replayed journals are removed");
    }

    #[tokio::test]
    async fn record_locks_are_per_key() {
        use futures::FutureExt;
        let store = Store::memory();
        // Two keys that shared a lock stripe before (same last byte): holding one must
        // not hold the other, or two primaries replicating them to each other deadlock.
        let mut a = [7u8; 20];
        let mut b = [9u8; 20];
        a[19] = 3;
        b[19] = 3;
        let (a, b) = (Id(a), Id(b));
        let held = store.lock_record(&a).await;
        assert!(
            store.lock_record(&b).now_or_never().is_some(),
            "b waited on a"
        );
        assert!(
            store.lock_record(&a).now_or_never().is_none(),
            "a taken twice"
        );
        drop(held);
        assert!(
            store.lock_record(&a).now_or_never().is_some(),
            "a not released"
        );
    }

    /// A touch makes an old held chunk young (so a delete spares it), without its bytes,
    /// and says which keys it did not hold.
    #[tokio::test]
    async fn a_touch_makes_held_chunks_young() {
        let dir = tempfile::tempdir().unwrap();
        for store in [Store::open(dir.path()).unwrap(), Store::memory()] {
            let hour = Duration::from_secs(3600);
            let data = Bytes::from_static(b"shared chunk");
            let key = Id::hash(&data);
            store.put_chunk_copy(key, data, 2 * hour).await.unwrap();
            let absent = Id::hash(b"never stored");
            assert_eq!(store.touch_chunks(vec![key, absent]).await, [true, false]);
            assert!(store.chunk_age(&key).unwrap() < hour);
            assert_eq!(store.delete_chunk_if_older(key, hour).await.unwrap(), None);
            assert!(store.meta(&absent).is_none(), "a touch stores nothing");
        }
    }

    /// The ages garbage collection relies on, on disk and in memory: a writer's store
    /// refreshes a held chunk's age; a repair copy is written as old as its sender's and
    /// leaves a held copy's age alone; a delete spares young chunks.
    #[tokio::test]
    async fn chunk_ages_follow_writers_not_repair() {
        let dir = tempfile::tempdir().unwrap();
        for store in [Store::open(dir.path()).unwrap(), Store::memory()] {
            let hour = Duration::from_secs(3600);
            let data = Bytes::from_static(b"aged chunk");
            let key = Id::hash(&data);
            assert!(store
                .put_chunk_copy(key, data.clone(), 2 * hour)
                .await
                .unwrap());
            assert!(store.chunk_age(&key).unwrap() >= 2 * hour - Duration::from_secs(5));
            // A writer storing it again: young again, so a delete spares it.
            assert!(!store.put_chunk(key, data.clone()).await.unwrap());
            assert!(store.chunk_age(&key).unwrap() < hour);
            assert_eq!(store.delete_chunk_if_older(key, hour).await.unwrap(), None);
            // A repair copy of a held chunk leaves its (young) age alone.
            assert!(!store
                .put_chunk_copy(key, data.clone(), 2 * hour)
                .await
                .unwrap());
            assert_eq!(store.delete_chunk_if_older(key, hour).await.unwrap(), None);
            assert!(store.meta(&key).is_some());
            // Old and unreferenced: freed, with its size.
            let other = Bytes::from_static(b"old chunk");
            let okey = Id::hash(&other);
            store.put_chunk_copy(okey, other, 2 * hour).await.unwrap();
            assert_eq!(
                store.delete_chunk_if_older(okey, hour).await.unwrap(),
                Some(9)
            );
            assert!(store.meta(&okey).is_none() && store.chunk_age(&okey).is_none());
            // A copy whose bytes do not match its key is refused.
            assert!(matches!(
                store.put_chunk_copy(okey, data.clone(), hour).await,
                Err(StoreError::HashMismatch { .. })
            ));
        }
    }

    #[tokio::test]
    async fn the_memory_store_keeps_chunks_and_records() {
        let store = Store::memory();
        let data = Bytes::from_static(b"in memory");
        let key = Id::hash(&data);
        assert!(store.put_chunk(key, data.clone()).await.unwrap());
        assert_eq!(store.get_chunk(key).await.unwrap(), Some(data));
        let rkey = Id::hash(b"inode");
        let (v, wrote) = store
            .put_record_if(rkey, 1, Record::Deleted, |cur| cur == 0)
            .await
            .unwrap();
        assert_eq!((v, wrote), (1, true));
        assert_eq!(
            store.get_record(rkey).await.unwrap(),
            Some((1, Record::Deleted))
        );
        assert_eq!(store.counts().0, 1);
        store.delete(&key).unwrap();
        assert_eq!(store.get_chunk(key).await.unwrap(), None);
        assert!(store.dir().read_dir().is_err(), "nothing on disk");
    }

    #[tokio::test]
    async fn records_compare_and_set_and_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Id::hash(b"inode");
        let rec = Record::Inode(Box::new(Inode::new(
            Kind::File,
            0o644,
            0,
            0,
            Id::ZERO,
            4096,
        )));
        let (v, wrote) = store
            .put_record_if(key, 1, rec.clone(), |cur| cur == 0)
            .await
            .unwrap();
        assert_eq!((v, wrote), (1, true));
        let (v, wrote) = store
            .put_record_if(key, 1, rec.clone(), |cur| cur == 0)
            .await
            .unwrap();
        assert_eq!((v, wrote), (1, false), "a stale compare-and-set fails");
        fs::write(dir.path().join("tmp/123.4"), b"half a write").unwrap();
        // A record file with a broken checksum is dropped at start.
        let bad = Id::hash(b"bad");
        let p = store.path_of(EntryKind::Record, &bad);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"not a record at all, long enough to have a checksum").unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_record(key).await.unwrap(), Some((1, rec)));
        assert!(store.meta(&bad).is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
