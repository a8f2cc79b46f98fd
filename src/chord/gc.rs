//! Garbage collection: mark and sweep with a grace period, run by every node over the
//! chunks it holds (as primary or replica alike).
//!
//! Mark: walk the ring along successors and ask every member for the chunks named by
//! the records it holds (every version held, every live inode, linked or not). Any
//! member that fails to answer, or a membership that changes while the mark runs,
//! aborts the sweep: nothing is ever deleted on incomplete knowledge.
//!
//! Sweep: a chunk held here that no record names, and that was last *stored* at least
//! the grace period ago, is deleted — here and, through `DropChunks`, on its other
//! rightful holders (each checks the age of its own copy). A writer's store of a chunk
//! already held refreshes its age under the same lock the delete takes, so a write
//! about to reference an old chunk always finds it kept. Repair copies carry their
//! sender's age (`PutChunkCopy`), so repair cannot make a doomed chunk look young.
//!
//! The invariant this relies on: every chunk a new record version names was named by
//! an earlier version of that record, or was stored by its writer within the grace
//! period. Writers keep it by committing within the grace (the CLI at the end of a
//! `put`, the mount at close/fsync and at least every `WRITEBACK_MAX_SECS`).

use super::core::Core;
use crate::id::Id;
use crate::proto::{GcReport, Peer, Record, Request, Response, KEYS_MAX};
use crate::ring::placement;
use crate::ring::walk::{MemberWalk, Next};
use crate::store::EntryKind;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Records read per `ListChunkRefs` page.
pub const REFS_PAGE_RECORDS: u32 = 1024;
/// A page stops growing once it names this many chunks (one record is never split, so
/// a page may exceed it by one record's chunk list).
const REFS_PAGE_CHUNKS: usize = KEYS_MAX;
/// A record naming more chunks than this (a 256 GiB file at 256 KiB chunks) does not fit
/// a frame: the page fails, and so does the mark (safe: nothing is deleted).
const REFS_RECORD_MAX_CHUNKS: usize = 1 << 20;
/// Most pages one member's listing may take (bounds a mark against a hostile peer).
const REFS_MAX_PAGES: usize = 1 << 20;
/// Chunks deleted here before their other holders are asked to drop them too.
const SWEEP_BATCH: usize = 1024;
/// Chunks freed here that repair copies are refused for (the oldest are forgotten first).
const FREED_MEMORY_MAX: usize = 1 << 18;

/// The chunks garbage collection freed here lately. While the other holders of a
/// chunk are deleting theirs, their repair would otherwise hand it back to this node
/// (measured: 25% of 1 GiB came back in one `chordfs gc`). A writer's store of the
/// chunk forgets it at once, so only repair copies are refused.
#[derive(Default)]
pub struct Freed {
    at: std::collections::HashMap<Id, Instant>,
    order: std::collections::VecDeque<(Id, Instant)>,
}

impl Freed {
    pub fn insert(&mut self, key: Id, now: Instant) {
        while self.order.len() >= FREED_MEMORY_MAX {
            if let Some((old, t)) = self.order.pop_front() {
                if self.at.get(&old) == Some(&t) {
                    self.at.remove(&old);
                }
            }
        }
        self.at.insert(key, now);
        self.order.push_back((key, now));
    }

    pub fn forget(&mut self, key: &Id) {
        self.at.remove(key);
    }

    /// True when `key` was freed within `window` of `now`.
    pub fn recent(&mut self, key: &Id, now: Instant, window: Duration) -> bool {
        match self.at.get(key) {
            Some(t) if now.duration_since(*t) < window => true,
            Some(_) => {
                self.at.remove(key);
                false
            }
            None => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("node is leaving or joining")]
    NotReady,
    #[error("mark incomplete: {0}")]
    Mark(String),
    #[error("ring membership changed during the mark")]
    MembershipChanged,
    #[error("disk error: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Garbage collection on this node, for the sidecar.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcStatus {
    pub running: bool,
    pub runs: u64,
    /// Sweeps abandoned because the mark was incomplete.
    pub aborted: u64,
    /// Unix seconds when the last sweep (done or aborted) ended.
    pub last_run: Option<u64>,
    pub last_error: Option<String>,
    pub last: Option<GcReport>,
    /// Since start: chunks and bytes freed here (by this node's sweeps and at the
    /// request of other holders' sweeps).
    pub chunks_freed: u64,
    pub bytes_freed: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The rightful holders of each key among `sorted` member ids (the first `r` at or
/// after it), other than `me`: who else to ask to drop it. Pure, for tests.
pub fn drops_by_holder(sorted: &[Id], keys: &[Id], r: usize, me: &Id) -> BTreeMap<Id, Vec<Id>> {
    let mut out: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
    for key in keys {
        for holder in placement::holders(sorted, key, r) {
            if holder != me {
                out.entry(*holder).or_default().push(*key);
            }
        }
    }
    out
}

/// The garbage-collection subsystem: its status, the lock that keeps sweeps apart, and
/// the chunks it freed lately.
pub struct Gc {
    pub core: Arc<Core>,
    // Never held across an await: read or updated in one go.
    pub status: Mutex<GcStatus>,
    /// Held for the whole of a sweep, so sweeps on one node never overlap.
    pub lock: tokio::sync::Mutex<()>,
    /// Chunks garbage collection freed here lately, refused as repair copies.
    // Never held across an await: one map operation at a time.
    pub freed: Mutex<Freed>,
}

impl Gc {
    pub fn new(core: Arc<Core>) -> Gc {
        Gc {
            core,
            status: Mutex::new(GcStatus::default()),
            lock: tokio::sync::Mutex::new(()),
            freed: Mutex::new(Freed::default()),
        }
    }

    pub fn status(&self) -> GcStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_freed(&self, key: Id) {
        self.freed
            .lock()
            .expect("freed lock")
            .insert(key, Instant::now());
    }

    /// True when a repair copy of `key` must be refused: it was freed here lately.
    pub fn recently_freed(&self, key: &Id) -> bool {
        let window = self.core.cfg.gc_grace;
        self.freed
            .lock()
            .expect("freed lock")
            .recent(key, Instant::now(), window)
    }

    /// A writer stores `key`: it is live again.
    pub fn forget_freed(&self, key: &Id) {
        self.freed.lock().expect("freed lock").forget(key);
    }

    fn update(&self, f: impl FnOnce(&mut GcStatus)) {
        f(&mut self.status.lock().expect("gc lock"));
    }

    /// One page of the chunks named by the records held here (see `ListChunkRefs`).
    pub async fn chunk_refs_page(
        &self,
        after: Option<Id>,
        limit: u32,
    ) -> Result<(Vec<Id>, Option<Id>), String> {
        let limit = (limit as usize).clamp(1, REFS_PAGE_RECORDS as usize);
        let mut chunks: Vec<Id> = Vec::new();
        let mut cursor = after;
        let mut records = 0usize;
        // Keys come in batches from the index; a batch may hold chunks too.
        for _ in 0..REFS_MAX_PAGES {
            let batch = self.core.store.keys_after(cursor, limit);
            if batch.is_empty() {
                return Ok((chunks, None));
            }
            for (key, meta) in batch {
                cursor = Some(key);
                if meta.kind != EntryKind::Record {
                    continue;
                }
                match self.core.store.get_record(key).await {
                    Ok(Some((_, Record::Inode(ino)))) => {
                        if ino.chunks.len() > REFS_RECORD_MAX_CHUNKS {
                            return Err(format!(
                                "record {} names {} chunks, more than a page holds",
                                key.short(),
                                ino.chunks.len()
                            ));
                        }
                        chunks.extend(ino.chunks.iter().filter(|c| **c != Id::ZERO));
                    }
                    // A tombstone names nothing; a bad copy was dropped by the read
                    // (its other holders answer for it).
                    Ok(Some((_, Record::Deleted))) | Ok(None) => {}
                    Err(e) => return Err(format!("record {}: {e}", key.short())),
                }
                records += 1;
                if records >= limit || chunks.len() >= REFS_PAGE_CHUNKS {
                    let more = !self.core.store.keys_after(Some(key), 1).is_empty();
                    return Ok((chunks, more.then_some(key)));
                }
            }
        }
        Err("too many keys to list".into())
    }

    /// The ring's members, walking successors from this node. Fails when any member on
    /// the way does not answer, or names a predecessor the walk does not know (a join in
    /// progress): the mark must see every holder (see [`MemberWalk::strict`]).
    async fn members(&self) -> Result<Vec<Peer>, GcError> {
        let core = &self.core;
        let mut walk = MemberWalk::strict(&core.me, core.successor());
        loop {
            match walk.next_action() {
                Next::Ask(peer) => match core.call(&peer, Request::GetState).await {
                    Ok(Response::State(st)) => walk.answered(st),
                    Ok(other) => walk.silent(format!("{} answered {other:?}", peer.addr)),
                    Err(e) => walk.silent(e.to_string()),
                },
                Next::Home => {
                    walk.close(core.predecessor());
                }
                Next::Done(members) => return Ok(members),
                Next::Failed(why) => return Err(GcError::Mark(why)),
            }
        }
    }

    /// Every chunk named by any record any member holds.
    async fn mark(&self, members: &[Peer]) -> Result<HashSet<Id>, GcError> {
        let core = &self.core;
        let mut referenced: HashSet<Id> = HashSet::new();
        for peer in members {
            let mut after = None;
            let mut complete = false;
            for _ in 0..REFS_MAX_PAGES {
                if core.shutdown.is_cancelled() || core.is_leaving() {
                    return Err(GcError::NotReady);
                }
                let (chunks, next) = if peer.id == core.me.id {
                    self.chunk_refs_page(after, REFS_PAGE_RECORDS)
                        .await
                        .map_err(GcError::Mark)?
                } else {
                    let req = Request::ListChunkRefs {
                        after,
                        limit: REFS_PAGE_RECORDS,
                    };
                    match core.call(peer, req).await {
                        Ok(Response::ChunkRefs { chunks, next }) => (chunks, next),
                        Ok(other) => {
                            return Err(GcError::Mark(format!("{} answered {other:?}", peer.addr)))
                        }
                        Err(e) => return Err(GcError::Mark(e.to_string())),
                    }
                };
                referenced.extend(chunks);
                match next {
                    Some(n) if Some(n) != after => after = Some(n),
                    Some(_) => return Err(GcError::Mark(format!("{} repeats a page", peer.addr))),
                    None => {
                        complete = true;
                        break;
                    }
                }
            }
            if !complete {
                return Err(GcError::Mark(format!(
                    "{} listed too many pages",
                    peer.addr
                )));
            }
        }
        Ok(referenced)
    }

    /// Deletes the listed chunks held here that were last stored at least `grace` ago.
    /// Returns (chunks, bytes) freed.
    pub async fn drop_chunks(&self, keys: &[Id], grace: Duration) -> (u64, u64) {
        let grace = grace.max(self.core.cfg.gc_grace);
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for key in keys {
            match self.core.store.delete_chunk_if_older(*key, grace).await {
                Ok(Some(size)) => {
                    chunks += 1;
                    bytes += size;
                    self.note_freed(*key);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("gc: cannot delete chunk {}: {e}", key.short()),
            }
        }
        self.update(|s| {
            s.chunks_freed += chunks;
            s.bytes_freed += bytes;
        });
        (chunks, bytes)
    }

    /// One mark-and-sweep. Sweeps on one node never overlap.
    pub async fn sweep(&self) -> Result<GcReport, GcError> {
        let _one = self.lock.lock().await;
        if self.core.is_leaving() || self.core.is_joining() {
            return Err(GcError::NotReady);
        }
        self.update(|s| s.running = true);
        let res = self.sweep_inner().await;
        self.update(|s| {
            s.running = false;
            s.last_run = Some(unix_now());
            match &res {
                Ok(r) => {
                    s.runs += 1;
                    s.last_error = None;
                    s.last = Some(r.clone());
                }
                Err(e) => {
                    s.aborted += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        res
    }

    async fn sweep_inner(&self) -> Result<GcReport, GcError> {
        let core = &self.core;
        let started = Instant::now();
        let grace = core.cfg.gc_grace;
        // Candidates are chosen before the mark: a chunk stored after this point is not
        // one of them, whatever the mark finds.
        let held: Vec<Id> = core
            .store
            .keys()
            .into_iter()
            .filter(|(_, m)| m.kind == EntryKind::Chunk)
            .map(|(k, _)| k)
            .collect();
        let members = self.members().await?;
        let referenced = self.mark(&members).await?;
        let after: BTreeSet<Id> = self.members().await?.iter().map(|p| p.id).collect();
        let before: BTreeSet<Id> = members.iter().map(|p| p.id).collect();
        if before != after {
            return Err(GcError::MembershipChanged);
        }
        let mut report = GcReport {
            nodes: members.len() as u32,
            referenced: referenced.len() as u64,
            chunks_held: held.len() as u64,
            ..GcReport::default()
        };
        let sorted: Vec<Id> = members.iter().map(|p| p.id).collect();
        let unreferenced: Vec<Id> = held
            .into_iter()
            .filter(|k| !referenced.contains(k))
            .collect();
        // In batches: each batch freed here, then at once on its other holders, so that
        // their repair has little time to hand a freed chunk back (and is refused if it
        // tries; see `Freed`).
        for batch in unreferenced.chunks(SWEEP_BATCH) {
            if core.shutdown.is_cancelled() || core.is_leaving() {
                return Err(GcError::NotReady);
            }
            let mut freed: Vec<Id> = Vec::new();
            let mut batch_bytes = 0u64;
            for key in batch {
                match core.store.delete_chunk_if_older(*key, grace).await? {
                    Some(size) => {
                        report.chunks_freed += 1;
                        report.bytes_freed += size;
                        batch_bytes += size;
                        self.note_freed(*key);
                        freed.push(*key);
                    }
                    None if core.store.meta(key).is_some() => report.kept_young += 1,
                    None => {}
                }
            }
            self.update(|s| {
                s.chunks_freed += freed.len() as u64;
                s.bytes_freed += batch_bytes;
            });
            let by_holder = drops_by_holder(&sorted, &freed, core.cfg.replicas, &core.me.id);
            for (holder, keys) in by_holder {
                let Some(peer) = members.iter().find(|p| p.id == holder) else {
                    continue;
                };
                let req = Request::DropChunks {
                    keys,
                    grace_ms: grace.as_millis() as u64,
                };
                match core.call(peer, req).await {
                    Ok(Response::Dropped { chunks, bytes }) => {
                        report.peer_chunks_freed += chunks;
                        report.peer_bytes_freed += bytes;
                    }
                    Ok(other) => tracing::debug!("gc: {} answered {other:?}", peer.addr),
                    // Its own sweep will free them.
                    Err(e) => tracing::debug!("gc: drop on {} failed: {e}", peer.addr),
                }
            }
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            "gc: freed {} chunks ({} bytes) here and {} on other holders; {} kept (younger than {:?})",
            report.chunks_freed,
            report.bytes_freed,
            report.peer_chunks_freed,
            report.kept_young,
            grace
        );
        Ok(report)
    }

    /// Runs a sweep every `gc_every` until shutdown (none when it is zero).
    pub async fn run(&self) {
        let core = &self.core;
        if core.cfg.gc_every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                biased;
                _ = core.shutdown.cancelled() => return,
                _ = tokio::time::sleep(core.cfg.gc_every) => {}
            }
            if core.is_leaving() {
                return;
            }
            if let Err(e) = self.sweep().await {
                tracing::info!("gc sweep skipped: {e}");
            }
        }
    }

    /// Answers `CollectGarbage`.
    pub async fn collect_garbage(&self) -> Response {
        match self.sweep().await {
            Ok(r) => Response::Collected(r),
            Err(GcError::Store(e)) => {
                Response::error(crate::proto::ErrorKind::Storage, e.to_string())
            }
            Err(e) => Response::error(crate::proto::ErrorKind::Unavailable, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::id;

    #[test]
    fn drops_go_to_the_other_rightful_holders() {
        let sorted = [id(10), id(20), id(30), id(40)];
        let got = drops_by_holder(&sorted, &[id(15), id(35)], 3, &id(20));
        // 15 -> 20, 30, 40 ; 35 -> 40, 10, 20
        assert_eq!(got.get(&id(30)), Some(&vec![id(15)]));
        assert_eq!(got.get(&id(40)), Some(&vec![id(15), id(35)]));
        assert_eq!(got.get(&id(10)), Some(&vec![id(35)]));
        assert!(!got.contains_key(&id(20)), "never asks itself");
        // A ring smaller than R: everyone else holds everything.
        let got = drops_by_holder(&sorted[..2], &[id(99)], 3, &id(10));
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [id(20)]);
        assert!(drops_by_holder(&[], &[id(1)], 3, &id(1)).is_empty());
    }
}
