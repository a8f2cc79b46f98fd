//! A ring member: its routing table, its store, and the answers to every request.

use super::repair::RepairStatus;
use super::routing::{Routing, Step};
use crate::id::Id;
use crate::net::{RpcError, Transport};
use crate::proto::{ErrorKind, Held, NodeState, NodeStats, Peer, Record, Request, Response};
use crate::store::{self, Store};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Longest lookup path before giving up (a converged ring of a million nodes needs ~20).
pub const MAX_LOOKUP_HOPS: usize = 64;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The address peers reach this node at.
    pub addr: String,
    pub data_dir: PathBuf,
    pub replicas: usize,
    pub successor_list_len: usize,
    pub stabilize_every: Duration,
    pub fix_fingers_every: Duration,
    pub check_predecessor_every: Duration,
    pub repair_every: Duration,
    pub rpc_timeout: Duration,
    /// Repair's bandwidth cap, so foreground I/O keeps going while data moves.
    pub repair_bytes_per_sec: u64,
    /// The cluster secret every connection must prove (None: no secret).
    pub secret: Option<Arc<[u8]>>,
    /// Interval of garbage-collection sweeps (zero: only when asked).
    pub gc_every: Duration,
    /// Unreferenced chunks younger than this are kept: it must exceed the longest time
    /// a writer holds stored chunks before its record names them (README).
    pub gc_grace: Duration,
}

impl NodeConfig {
    pub fn new(addr: String, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            addr,
            data_dir,
            replicas: 3,
            successor_list_len: 8,
            stabilize_every: Duration::from_millis(500),
            fix_fingers_every: Duration::from_millis(1000),
            check_predecessor_every: Duration::from_millis(1000),
            repair_every: Duration::from_secs(5),
            rpc_timeout: Duration::from_millis(crate::net::RPC_TIMEOUT_MS),
            repair_bytes_per_sec: 256 * 1024 * 1024,
            secret: None,
            gc_every: Duration::from_secs(600),
            gc_grace: Duration::from_secs(3600),
        }
    }
}

/// Counters for the metrics page.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub chunk_puts: AtomicU64,
    pub chunk_gets: AtomicU64,
    pub record_puts: AtomicU64,
    pub bad_requests: AtomicU64,
    pub lookups: AtomicU64,
    pub lookup_hops: AtomicU64,
}

pub struct Node {
    pub me: Peer,
    pub cfg: NodeConfig,
    // Never held across an await: read as a snapshot, decided on, then acted on.
    pub routing: RwLock<Routing>,
    pub store: Arc<Store>,
    pub net: Arc<dyn Transport>,
    pub repair: Mutex<RepairStatus>,
    pub counters: Counters,
    /// Wakes repair early (a new predecessor, a leave).
    pub repair_wake: Notify,
    pub leaving: AtomicBool,
    /// Set while `join` runs: the node knows nothing of the ring yet, so it must not act
    /// as anyone's primary (it would take writes with one copy, read keys as absent).
    pub joining: AtomicBool,
    pub shutdown: CancellationToken,
    /// Peers dropped as unreachable, probed again by `reconcile`.
    // Never held across an await: taken, updated, released.
    pub lost: Mutex<Vec<super::reconcile::Lost>>,
    /// The address this node joined through: where it rejoins if it ends up alone
    /// with no lost peer to probe.
    pub joined_via: Mutex<Option<String>>,
    /// Peers met in successor lists lately (most recent last): where a node left alone
    /// looks for its ring again.
    // Never held across an await: one update at a time.
    pub seen: Mutex<Vec<Peer>>,
    /// Reconcile ticks so far (see `reconcile`).
    pub reconcile_ticks: AtomicU64,
    // Never held across an await: read or updated in one go.
    pub gc: Mutex<super::gc::GcStatus>,
    /// Held for the whole of a sweep, so sweeps on one node never overlap.
    pub gc_lock: tokio::sync::Mutex<()>,
    /// Chunks garbage collection freed here lately, refused as repair copies.
    // Never held across an await: one map operation at a time.
    pub freed: Mutex<super::gc::Freed>,
    /// Records this node holds outside its range, since when (see `repair_group`).
    // Never held across an await: one map operation at a time.
    pub strays: Mutex<HashMap<Id, tokio::time::Instant>>,
    /// Keys this node holds but found outside its range in its last repair pass: it
    /// answers them as [`Held::Stray`] (see `repair_group`).
    // Never held across an await: one set operation at a time.
    pub handing_off: Mutex<std::collections::HashSet<Id>>,
    /// Peers that announced their leave lately, and when (see `note_departed`).
    // Never held across an await: one update at a time.
    pub departed: Mutex<Vec<(Id, tokio::time::Instant)>>,
    /// Record copies stored here lately for a primary's write: key -> (version, write
    /// id), so a `RevertRecordCopy` undoes that write's copy and no other.
    pub record_writes: moka::sync::Cache<Id, (u64, u64)>,
    /// Take-backs of failed record writes that a replica has not confirmed yet, with
    /// the time they were first sent: resent before each repair pass until confirmed
    /// or [`TAKE_BACK_PATIENCE`] runs out (see `retry_take_backs`).
    // Never held across an await: taken out, then put back.
    pub pending_take_backs: Mutex<Vec<PendingTakeBack>>,
}

/// How long a take-back that a replica has not confirmed is retried.
pub const TAKE_BACK_PATIENCE: Duration = Duration::from_secs(60);
/// At most this many unconfirmed take-backs are kept; the oldest go first.
pub const TAKE_BACKS_PENDING_MAX: usize = 4096;

/// Keeps the newest [`TAKE_BACKS_PENDING_MAX`] of `pending` (oldest first).
fn drop_oldest_take_backs(pending: &mut Vec<PendingTakeBack>) {
    let over = pending.len().saturating_sub(TAKE_BACKS_PENDING_MAX);
    pending.drain(..over);
}

/// A `RevertRecordCopy` still to be confirmed by `peer`.
#[derive(Clone, Debug)]
pub struct PendingTakeBack {
    pub peer: Peer,
    pub request: Request,
    pub since: tokio::time::Instant,
}

/// Reads this node's id from the data dir, or makes and saves one.
pub fn load_or_create_id(dir: &std::path::Path, addr: &str) -> std::io::Result<Id> {
    let path = dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let nonce: [u8; 16] = rand::random();
            let id = Id::hash(&[addr.as_bytes(), &nonce].concat());
            let tmp = dir.join("node.id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

impl Node {
    pub fn new(cfg: NodeConfig, id: Id, store: Arc<Store>, net: Arc<dyn Transport>) -> Arc<Node> {
        let me = Peer {
            id,
            addr: cfg.addr.clone(),
        };
        let list_len = cfg.successor_list_len.max(cfg.replicas + 1);
        Arc::new(Node {
            routing: RwLock::new(Routing::new(me.clone(), list_len)),
            me,
            cfg,
            store,
            net,
            repair: Mutex::new(RepairStatus::default()),
            counters: Counters::default(),
            repair_wake: Notify::new(),
            leaving: AtomicBool::new(false),
            joining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            lost: Mutex::new(Vec::new()),
            joined_via: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            reconcile_ticks: AtomicU64::new(0),
            gc: Mutex::new(super::gc::GcStatus::default()),
            gc_lock: tokio::sync::Mutex::new(()),
            freed: Mutex::new(super::gc::Freed::default()),
            strays: Mutex::new(HashMap::new()),
            handing_off: Mutex::new(std::collections::HashSet::new()),
            departed: Mutex::new(Vec::new()),
            record_writes: moka::sync::Cache::builder()
                .max_capacity(65_536)
                .time_to_live(Duration::from_secs(600))
                .build(),
            pending_take_backs: Mutex::new(Vec::new()),
        })
    }

    pub fn snapshot(&self) -> Routing {
        self.routing.read().expect("routing lock").clone()
    }

    pub fn state(&self) -> NodeState {
        let r = self.routing.read().expect("routing lock");
        NodeState {
            me: self.me.clone(),
            predecessor: r.predecessor.clone(),
            successors: r.successors.clone(),
            replicas: self.cfg.replicas as u32,
            lost: self
                .lost
                .lock()
                .expect("lost lock")
                .iter()
                .map(|l| l.peer.clone())
                .collect(),
        }
    }

    pub fn stats(&self) -> NodeStats {
        let (chunks, records, bytes) = self.store.counts();
        let (disk_total, disk_free) = store::disk_space(self.store.dir());
        NodeStats {
            chunks,
            records,
            bytes,
            disk_total,
            disk_free,
        }
    }

    pub async fn call(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        self.net.call(&peer.addr, req, self.cfg.rpc_timeout).await
    }

    /// Iterative lookup, starting from this node's own table. Peers that fail to answer
    /// are avoided and the lookup backs up, so it stays right while the ring settles.
    /// With `avoid_self`, this node is treated as gone (a graceful leave).
    pub async fn lookup(
        &self,
        key: &Id,
        avoid_self: bool,
    ) -> Result<(Peer, Vec<Peer>, u32), RpcError> {
        let mut avoid: Vec<Id> = if avoid_self { vec![self.me.id] } else { vec![] };
        let mut path: Vec<Peer> = Vec::new();
        let mut hops = 0u32;
        for _ in 0..MAX_LOOKUP_HOPS * 2 {
            let step = match path.last() {
                None => self.routing.read().expect("routing lock").step(key, &avoid),
                Some(p) => {
                    hops += 1;
                    match self
                        .call(
                            p,
                            Request::FindSuccessor {
                                key: *key,
                                avoid: avoid.clone(),
                            },
                        )
                        .await
                    {
                        Ok(Response::Found { from, successors }) => {
                            Step::Found { from, successors }
                        }
                        Ok(Response::Next { peer }) => Step::Next(peer),
                        Ok(other) => return Err(RpcError::unexpected(&p.addr, &other)),
                        Err(e) if e.is_unreachable() => {
                            let dead = path.pop().expect("path is not empty");
                            avoid.push(dead.id);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match step {
                Step::Found { from, successors } => {
                    let live: Vec<Peer> = successors
                        .into_iter()
                        .filter(|p| !avoid.contains(&p.id))
                        .collect();
                    if live.is_empty() {
                        return Err(RpcError::Unexpected {
                            addr: from.addr,
                            detail: "no live successor".into(),
                        });
                    }
                    self.counters.lookups.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .lookup_hops
                        .fetch_add(hops as u64, Ordering::Relaxed);
                    return Ok((from, live, hops));
                }
                Step::Next(p) if p.id == self.me.id => path.clear(),
                Step::Next(p) => {
                    if path.len() >= MAX_LOOKUP_HOPS {
                        break;
                    }
                    path.push(p)
                }
            }
        }
        Err(RpcError::Unexpected {
            addr: self.me.addr.clone(),
            detail: format!("lookup of {key:?} did not converge"),
        })
    }

    /// True when this node is the primary for `key` as far as it knows. Without a
    /// predecessor (it just joined, or its predecessor died) it does not know its range:
    /// only a node alone on its ring claims every key.
    pub fn is_primary(&self, key: &Id) -> bool {
        if self.joining.load(Ordering::Acquire) {
            return false;
        }
        let r = self.routing.read().expect("routing lock");
        match &r.predecessor {
            Some(p) => key.in_open_closed(&p.id, &self.me.id),
            None => {
                r.successor().id == self.me.id && self.lost.lock().expect("lost lock").is_empty()
            }
        }
    }

    /// The peers after this node that hold its replicas: up to R-1 distinct successors.
    pub fn replica_targets(&self) -> Vec<Peer> {
        let r = self.routing.read().expect("routing lock");
        r.successors
            .iter()
            .filter(|p| p.id != self.me.id)
            .cloned()
            .collect()
    }

    /// Sends `req` (built per target) to successors until `want` of them acknowledge.
    /// Returns how many did.
    async fn replicate(&self, want: usize, make: impl Fn() -> Request) -> usize {
        self.replicate_to(want, make).await.acked.len()
    }

    /// Sends `req` (built per target) to successors until `want` of them acknowledge.
    /// Returns who acknowledged and who was asked but did not (refused, or silent: a
    /// timed-out copy may still have been stored).
    async fn replicate_to(&self, want: usize, make: impl Fn() -> Request) -> Replicated {
        let mut out = Replicated::default();
        if want == 0 {
            return out;
        }
        let targets = self.replica_targets();
        let mut next = 0;
        while out.acked.len() < want && next < targets.len() && out.newer.is_none() {
            let batch: Vec<Peer> =
                targets[next..(next + want - out.acked.len()).min(targets.len())].to_vec();
            next += batch.len();
            let results =
                futures::future::join_all(batch.iter().map(|p| self.call(p, make()))).await;
            for (p, res) in batch.into_iter().zip(results) {
                match res {
                    Ok(Response::Ok) | Ok(Response::Stored { .. }) => out.acked.push(p),
                    Ok(Response::Conflict { current }) => {
                        tracing::debug!("replica {} holds version {current} already", p.addr);
                        if out.newer.as_ref().is_none_or(|(v, _)| current > *v) {
                            out.newer = Some((current, p.clone()));
                        }
                        out.missed.push(p);
                    }
                    Ok(other) => {
                        tracing::warn!("replica {} answered {other:?}", p.addr);
                        out.missed.push(p);
                    }
                    Err(e) => {
                        tracing::debug!("replica {} failed: {e}", p.addr);
                        out.missed.push(p);
                    }
                }
            }
        }
        out
    }

    /// Copies required for a write to succeed: R, or every live node when fewer. Peers
    /// lost to timeouts count as live (they may only be cut off), so a node split from
    /// its ring does not take writes with fewer than R copies.
    fn required_copies(&self) -> usize {
        let others = self.replica_targets().len();
        let lost = self.lost.lock().expect("lost lock").len();
        self.cfg.replicas.min(1 + others + lost)
    }

    async fn put_chunk(&self, key: Id, data: Bytes, replicate: bool) -> Response {
        self.counters.chunk_puts.fetch_add(1, Ordering::Relaxed);
        // A writer's store: the chunk is live again, whatever gc freed lately.
        self.forget_freed(&key);
        if !replicate {
            return match self.store.put_chunk(key, data).await {
                Ok(_) => Response::Stored { copies: 1 },
                Err(e) => store_error(e),
            };
        }
        // A bad hash must not travel: check it before forwarding anything.
        let actual = Id::hash(&data);
        if actual != key {
            return store_error(store::StoreError::HashMismatch { key, actual });
        }
        let required = self.required_copies();
        // The local copy and the replicas' are written at once: one fsync latency, not two.
        let (local, more) = tokio::join!(
            self.store.put_checked_chunk(key, data.clone()),
            self.replicate(required - 1, || Request::PutChunk {
                key,
                data: data.clone(),
                replicate: false,
            })
        );
        if let Err(e) = local {
            return store_error(e);
        }
        let copies = 1 + more;
        if copies < required {
            return Response::error(
                ErrorKind::Unavailable,
                format!("only {copies} of {required} copies durable"),
            );
        }
        self.note_short_write(&key, copies);
        Response::Stored {
            copies: copies as u32,
        }
    }

    /// Logs a write acknowledged with fewer than R copies (the ring has fewer live nodes
    /// than R, as far as this node knows): an operator's sign of a shrunk ring, and of a
    /// split one if it happens while the ring is whole.
    fn note_short_write(&self, key: &Id, copies: usize) {
        if copies < self.cfg.replicas {
            let lost = self.lost.lock().expect("lost lock").len();
            tracing::warn!(
                "{key} acknowledged with {copies} of {} copies ({} successors reachable, {lost} peers lost)",
                self.cfg.replicas,
                self.replica_targets().len()
            );
        }
    }

    /// The newest copy of a record among this node and its replicas, stored here if newer.
    /// Two different bodies under one version (a write that failed and could not be
    /// taken back everywhere, next to an acknowledged one) go to the body more of them
    /// hold: an acknowledged write reached R nodes, a failed one fewer.
    async fn pull_record(&self, key: Id) -> Option<(u64, Record)> {
        let local = self.store.get_record_cached(key).await.ok().flatten();
        let targets = self.replica_targets();
        let want = self.cfg.replicas.saturating_sub(1).min(targets.len());
        let calls = targets[..want]
            .iter()
            .map(|p| self.call(p, Request::GetRecord { key, pull: false }));
        let mut copies: Vec<(u64, Record)> = local.iter().cloned().collect();
        for res in futures::future::join_all(calls).await {
            if let Ok(Response::Record { version, record }) = res {
                copies.push((version, record));
            }
        }
        let best = newest_copy(&copies, local.as_ref())?;
        if local.as_ref() != Some(&best) {
            let (v, rec) = best.clone();
            let _guard = self.store.lock_record(&key).await;
            let current = self.store.get_record(key).await.ok().flatten();
            // Unchanged since read, or older: replace it.
            let replace = match &current {
                None => true,
                Some((cv, _)) if *cv < v => true,
                Some(c) => c.0 == v && Some(c) == local.as_ref(),
            };
            if replace {
                let _ = self.store.write_record(key, v, rec).await;
            }
        }
        Some(best)
    }

    async fn cas_record(&self, key: Id, expect: u64, record: Record) -> Response {
        let written = self
            .write_as_primary(key, |current, _| {
                if current != expect {
                    // Behind or ahead of the client: either way it reads again (a read
                    // through the primary catches the primary up from its replicas first).
                    return Err(Box::new(Response::Conflict { current }));
                }
                Ok((record, ()))
            })
            .await;
        match written {
            Ok((_, copies, ())) => Response::Stored { copies },
            Err(answer) => answer,
        }
    }

    /// One name of a directory as held here (see `Request::LookupName`).
    async fn lookup_name(&self, key: Id, name: &str) -> Response {
        let held = match self.store.recent_record(&key) {
            Some(r) => r,
            None => match self.store.get_record(key).await {
                Ok(Some(r)) => Arc::new(r),
                Ok(None) => return Response::NotFound,
                Err(e) => return store_error(e),
            },
        };
        match &held.1 {
            Record::Inode(dir) if dir.kind == crate::proto::Kind::Dir => Response::Entry {
                version: held.0,
                entry: dir.entries.get(name).copied(),
            },
            Record::Inode(_) => Response::EditRefused(crate::proto::EditRefusal::NotDir),
            Record::Deleted => Response::NotFound,
        }
    }

    /// Applies a directory edit to the version held here, as a compare-and-set made by
    /// the primary itself (see [`crate::proto::Edit`]).
    async fn edit_record(&self, key: Id, edit: crate::proto::Edit) -> Response {
        let written = self
            .write_as_primary(key, |_, previous| {
                edit.apply(previous.map(|(_, r)| r))
                    .map_err(|why| Box::new(Response::EditRefused(why)))
            })
            .await;
        match written {
            Ok((version, _, removed)) => Response::Edited { version, removed },
            Err(answer) => answer,
        }
    }

    /// A record write at its primary: under the key's lock, `decide` sees the version
    /// held (0: none) and the record, and returns the next version's body (or the
    /// answer to give instead, boxed); the body goes to this node and its replicas at
    /// once and is acknowledged when min(R, live) copies are durable. Returns the
    /// version written, the copies made and what `decide` returned with the body.
    async fn write_as_primary<T>(
        &self,
        key: Id,
        decide: impl FnOnce(u64, Option<&(u64, Record)>) -> Result<(Record, T), Box<Response>>,
    ) -> Result<(u64, u32, T), Response> {
        self.counters.record_puts.fetch_add(1, Ordering::Relaxed);
        if !self.is_primary(&key) {
            return Err(Response::error(
                ErrorKind::WrongNode,
                format!("{} is not the primary of {key}", self.me.addr),
            ));
        }
        // Refuse before writing anything when R copies are out of reach (this node is
        // cut off from its ring): a write that fails after its local step stays behind
        // and, once the ring heals, can shadow an acknowledged write of the same version
        // made on the other side (found by the simulation: CHORDFS_SIM_FAULTS=partitions
        // CHORDFS_SIM_SEED=36).
        let required = self.required_copies();
        let reachable = 1 + self.replica_targets().len();
        if reachable < required {
            return Err(Response::error(
                ErrorKind::Unavailable,
                format!("only {reachable} of {required} copies reachable"),
            ));
        }
        // The stripe stays locked until the replicas have answered: no other write to
        // this record can send them a different body under the same version.
        let _guard = self.store.lock_record(&key).await;
        let current = self.store.record_version(&key);
        // Shared, not copied: it is only needed again if the write is taken back.
        let held = match self.store.get_record_shared(key).await {
            Ok(p) => p,
            Err(e) => return Err(store_error(e)),
        };
        let (record, out) = decide(current, held.as_deref()).map_err(|answer| *answer)?;
        let previous = || held.as_deref().cloned();
        let version = current + 1;
        let new = Arc::new((version, record));
        let required = self.required_copies();
        let write = rand::random::<u64>() | 1;
        // One round: the local copy, the replicas' copies and the check that this node
        // is still the primary go out at once (one fsync latency, not two). A write
        // that turns out not to be this node's to make is taken back like any write
        // that missed its copies. A replica holding a newer version, or another body
        // of this one, answers Conflict (see `PutRecordCopy`), which is how a primary
        // that is behind its replicas (back from a restart, or new to the range) learns
        // it; it used to catch up before every write, a round of its own.
        let (local, sent, doubt) = tokio::join!(
            self.store.write_record_shared(key, new.clone()),
            self.replicate_to(required - 1, || Request::PutRecordCopy {
                key,
                version,
                record: new.1.clone(),
                write,
            }),
            self.primacy_doubt(&key)
        );
        if let Some(why) = doubt {
            self.revert_record(key, version, write, previous(), local.is_ok(), sent)
                .await;
            return Err(Response::error(
                ErrorKind::WrongNode,
                format!("{} is not the primary of {key} now: {why}", self.me.addr),
            ));
        }
        let copies = usize::from(local.is_ok()) + sent.acked.len();
        if let Some((current, holder)) = sent.newer.clone() {
            // A replica is ahead of this primary: the version read here was stale (a
            // primary back from a restart whose successor list still misses the node
            // that served its range meanwhile; CHORDFS_SIM_SEED=464). Take the write
            // back, learn the newer record, and let the client read again.
            self.revert_record(key, version, write, previous(), local.is_ok(), sent)
                .await;
            if let Ok(Response::Record {
                version: v,
                record: r,
            }) = self
                .call(&holder, Request::GetRecord { key, pull: false })
                .await
            {
                if v > self.store.record_version(&key) {
                    if let Err(e) = self.store.write_record(key, v, r).await {
                        return Err(store_error(e));
                    }
                }
            }
            return Err(Response::Conflict {
                current: current.max(self.store.record_version(&key)),
            });
        }
        if copies < required {
            // Not acknowledged: take the write back everywhere it may have landed.
            // Left in place, this version could later meet an acknowledged write of the
            // same number made elsewhere (the other side of a partition) and win, as
            // the holder's own copy, over it (found by tests/netns.rs: a directory entry
            // acknowledged by the majority vanished after the heal).
            self.revert_record(key, version, write, previous(), local.is_ok(), sent)
                .await;
            return Err(match local {
                Err(e) => store_error(e),
                Ok(()) => Response::error(
                    ErrorKind::Unavailable,
                    format!("only {copies} of {required} copies durable"),
                ),
            });
        }
        self.note_short_write(&key, copies);
        Ok((version, copies as u32, out))
    }

    /// Undoes a record write that did not reach enough copies, with the record's lock
    /// held by the caller: here, and on every replica asked (those that did not answer
    /// too, with a shorter wait: a timed-out copy may have landed). A replica reverts
    /// only the copy this very write stored (see `revert_record_copy`).
    async fn revert_record(
        &self,
        key: Id,
        version: u64,
        write: u64,
        previous: Option<(u64, Record)>,
        local_written: bool,
        sent: Replicated,
    ) {
        if local_written {
            if let Err(e) = self.restore_record(key, previous.clone()).await {
                tracing::warn!("could not take back failed write of {key} v{version}: {e}");
            }
        }
        let undo = || Request::RevertRecordCopy {
            key,
            version,
            write,
            previous: previous.clone(),
        };
        // Those that did not answer get a short wait only: this is a failed write's path
        // already, and a copy that did land there loses to an acknowledged one anyway
        // when versions tie (see `pull_record`).
        let short = self.cfg.rpc_timeout.min(Duration::from_secs(1));
        let calls = sent
            .acked
            .iter()
            .map(|p| (p, self.cfg.rpc_timeout))
            .chain(sent.missed.iter().map(|p| (p, short)))
            .map(|(p, t)| async move { (p, self.net.call(&p.addr, undo(), t).await) });
        let mut unconfirmed = Vec::new();
        for (p, res) in futures::future::join_all(calls).await {
            if !matches!(res, Ok(Response::Ok)) {
                tracing::debug!(
                    "replica {} did not take back {key} v{version}: {res:?}",
                    p.addr
                );
                unconfirmed.push(p.clone());
            }
        }
        // One try is not enough under loss: a copy left in place may be spread by the
        // replica's repair once it becomes a holder, and win over an acknowledged write
        // of the same version (CHORDFS_SIM_SEED=18408: the take-back was lost, the
        // replica later pushed the failed body to two new holders).
        if !unconfirmed.is_empty() {
            let since = tokio::time::Instant::now();
            let mut pending = self.pending_take_backs.lock().expect("take-backs lock");
            for peer in unconfirmed {
                pending.push(PendingTakeBack {
                    peer,
                    request: undo(),
                    since,
                });
            }
            drop_oldest_take_backs(&mut pending);
        }
    }

    /// Resends the take-backs that replicas have not confirmed (see `revert_record`),
    /// dropping those confirmed now or older than [`TAKE_BACK_PATIENCE`]. A take-back
    /// is harmless to repeat: a replica undoes only the copy that very write stored,
    /// and only while it still holds it.
    pub async fn retry_take_backs(&self) {
        let now = tokio::time::Instant::now();
        let due: Vec<PendingTakeBack> = {
            let mut pending = self.pending_take_backs.lock().expect("take-backs lock");
            pending.retain(|t| now.duration_since(t.since) < TAKE_BACK_PATIENCE);
            std::mem::take(&mut *pending)
        };
        if due.is_empty() {
            return;
        }
        let calls = due.into_iter().map(|t| async move {
            let res = self
                .net
                .call(&t.peer.addr, t.request.clone(), self.cfg.rpc_timeout)
                .await;
            (t, res)
        });
        let mut still = Vec::new();
        for (t, res) in futures::future::join_all(calls).await {
            match res {
                Ok(Response::Ok) => {}
                _ => still.push(t),
            }
        }
        if still.is_empty() {
            return;
        }
        let mut pending = self.pending_take_backs.lock().expect("take-backs lock");
        still.append(&mut pending);
        *pending = still;
        drop_oldest_take_backs(&mut pending);
    }

    /// Checks, with this node's neighbours, that it may act as the primary of `key`
    /// with its current successors as replicas. Returns why not, if not:
    /// - the predecessor's successor is a node between the two, whose range holds the
    ///   key: two nodes acting as primary of one key would each acknowledge a write of
    ///   the same version with their own replicas (simulation seed 371, while two leaves
    ///   overlapped);
    /// - the successor's predecessor is a node between the two: this node's successor
    ///   list is stale, so its replicas are not the key's (seed 160: a node just back
    ///   from a restart took a list from the far side of the ring and wrote over an
    ///   acknowledged version its true successors held).
    ///
    /// A neighbour that does not answer is a doubt too: a predecessor that missed the
    /// question may be the one that knows better (CHORDFS_SIM_SEED=1349: a node just
    /// back from a partition wrote as primary while its predecessor's answer was lost),
    /// and the write waits until check_predecessor has settled who it is.
    async fn primacy_doubt(&self, key: &Id) -> Option<String> {
        if let Some((live, lost)) = self.outnumbered() {
            return Some(format!(
                "it sees {live} live nodes and has lost {lost}: it may be cut off from most of the ring"
            ));
        }
        let (pred, succ) = {
            let r = self.routing.read().expect("routing lock");
            (r.predecessor.clone(), r.successor().clone())
        };
        let ask = |p: Option<Peer>| async move {
            match p {
                Some(p) if p.id != self.me.id => match self.call(&p, Request::GetState).await {
                    Ok(Response::State(st)) => Ok(Some((p, st))),
                    _ => Err(p.addr),
                },
                _ => Ok(None),
            }
        };
        let (from_pred, from_succ, inside) =
            tokio::join!(ask(pred), ask(Some(succ)), self.live_peer_before(key));
        if let Some(peer) = inside {
            return Some(format!(
                "{} answers, and its id lies between the key and this node",
                peer.addr
            ));
        }
        let (from_pred, from_succ) = match (from_pred, from_succ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(addr), _) | (_, Err(addr)) => {
                return Some(format!("its neighbour {addr} did not answer"))
            }
        };
        if let Some((pred, st)) = from_pred {
            if let Some(next) = st.successors.first() {
                if next.id != self.me.id
                    && next.id.in_open(&pred.id, &self.me.id)
                    && key.in_open_closed(&pred.id, &next.id)
                {
                    return Some(format!("{} is, says the predecessor", next.addr));
                }
                // The predecessor's successor lies beyond this node: it does not know
                // this node (yet, or any more), so lookups through it reach a node that
                // takes itself for the primary of this very range (CHORDFS_SIM_SEED=1331:
                // a node cut out of its neighbours' view, and a newcomer behind it,
                // each acknowledged the same version of one record).
                if next.id != self.me.id && !next.id.in_open(&pred.id, &self.me.id) {
                    return Some(format!(
                        "the predecessor {} takes {} for its successor",
                        pred.addr, next.addr
                    ));
                }
            }
        }
        if let Some((succ, st)) = from_succ {
            if let Some(prev) = st.predecessor {
                if prev.id != self.me.id && prev.id.in_open(&self.me.id, &succ.id) {
                    return Some(format!(
                        "its successor list is settling ({} lies before {})",
                        prev.addr, succ.addr
                    ));
                }
            }
            // The replicas this write goes to must be the ones the successor's own list
            // names next: a list copied from a stale view (a node that joined through a
            // member just back from a partition) skips the nodes that hold the record,
            // and the write would start a second history of it (CHORDFS_SIM_SEED=3673).
            let want = self.cfg.replicas.saturating_sub(1);
            let mine: Vec<Id> = self
                .replica_targets()
                .iter()
                .map(|p| p.id)
                .take(want)
                .collect();
            let mut theirs: Vec<Id> = vec![succ.id];
            for p in &st.successors {
                if p.id != self.me.id && !theirs.contains(&p.id) {
                    theirs.push(p.id);
                }
            }
            theirs.truncate(want);
            if mine != theirs {
                return Some(format!(
                    "its successor list is settling ({} names other successors)",
                    succ.addr
                ));
            }
        }
        None
    }

    /// A peer met lately (not lost) whose id lies between `key` and this node, and that
    /// answers a ping: the key is then not in this node's range, whatever its neighbours
    /// say. A few nodes can share a view that skips live ones, and each neighbour check
    /// passes inside it (simulation seed 17830: a node whose view skipped four live
    /// nodes acknowledged version 1 of a record the true primary held at version 3).
    /// Peers that do not answer leave the list of peers met, so that a dead one costs
    /// one short wait, not one per write.
    async fn live_peer_before(&self, key: &Id) -> Option<Peer> {
        let inside: Vec<Peer> = {
            let lost = self.lost.lock().expect("lost lock");
            let seen = self.seen.lock().expect("seen lock");
            seen.iter()
                .filter(|p| p.id != self.me.id && (p.id == *key || p.id.in_open(key, &self.me.id)))
                .filter(|p| !lost.iter().any(|l| l.peer.id == p.id))
                .take(4)
                .cloned()
                .collect()
        };
        if inside.is_empty() {
            return None;
        }
        let wait = self.cfg.rpc_timeout.min(Duration::from_millis(500));
        let pings = inside
            .iter()
            .map(|p| async move { (p, self.net.call(&p.addr, Request::Ping, wait).await) });
        let mut live = None;
        for (p, res) in futures::future::join_all(pings).await {
            match res {
                Ok(Response::Pong { id }) if id == p.id => live = live.or(Some(p.clone())),
                Ok(_) => {}
                Err(_) => self
                    .seen
                    .lock()
                    .expect("seen lock")
                    .retain(|q| q.id != p.id),
            }
        }
        live
    }

    /// A replica's side of [`Node::revert_record`].
    async fn revert_record_copy(
        &self,
        key: Id,
        version: u64,
        write: u64,
        previous: Option<(u64, Record)>,
    ) -> Response {
        let _guard = self.store.lock_record(&key).await;
        if self.store.record_version(&key) != version
            || self.record_writes.get(&key) != Some((version, write))
        {
            return Response::Ok;
        }
        self.record_writes.invalidate(&key);
        match self.restore_record(key, previous).await {
            Ok(()) => Response::Ok,
            Err(e) => store_error(e),
        }
    }

    /// Puts back the record a taken-back write replaced (none: removes the key). The
    /// caller holds the record's lock.
    async fn restore_record(
        &self,
        key: Id,
        previous: Option<(u64, Record)>,
    ) -> Result<(), store::StoreError> {
        match previous {
            Some((v, r)) => self.store.write_record(key, v, r).await,
            None => self.store.delete(&key),
        }
    }

    async fn dispatch(self: Arc<Self>, req: Request) -> Response {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.leaving.load(Ordering::Acquire) && refused_while_leaving(&req) {
            return Response::error(ErrorKind::ShuttingDown, "node is leaving");
        }
        match req {
            Request::Ping => Response::Pong { id: self.me.id },
            // A node still joining knows no ring but itself: its state and lookups would
            // lead others astray. A node restarted while its old neighbours still listed
            // it answered their stabilize with "I am alone", they copied that, and its
            // join then found no successor but itself, until it gave up.
            Request::GetState | Request::FindSuccessor { .. }
                if self.joining.load(Ordering::Acquire) =>
            {
                Response::error(ErrorKind::Unavailable, "node is joining")
            }
            Request::GetState => Response::State(self.state()),
            Request::FindSuccessor { key, mut avoid } => {
                if self.leaving.load(Ordering::Acquire) {
                    // Answer as the ring will be once this node is gone.
                    avoid.push(self.me.id);
                }
                match self
                    .routing
                    .read()
                    .expect("routing lock")
                    .step(&key, &avoid)
                {
                    Step::Found { from, successors } => Response::Found { from, successors },
                    Step::Next(peer) => Response::Next { peer },
                }
            }
            Request::Notify { candidate } => {
                let changed = self
                    .routing
                    .write()
                    .expect("routing lock")
                    .notify(&candidate);
                if changed {
                    // A new predecessor takes over part of our range: hand it its keys.
                    self.repair_wake.notify_one();
                }
                Response::Ok
            }
            Request::Leave {
                peer,
                predecessor,
                successors,
                known,
            } => {
                let known: Vec<Peer> = known
                    .into_iter()
                    .filter(|p| p.id != peer.id)
                    .take(super::reconcile::LOST_MAX)
                    .collect();
                self.note_seen(&known);
                let mut r = self.routing.write().expect("routing lock");
                if r.successor().id == peer.id {
                    // The leaver's successors, then ours: its list may be short, or name
                    // only us (found by the simulation: CHORDFS_SIM_SEED=450, where n10
                    // took n08's one-entry list [n10] and was left alone, unknown to all).
                    r.remove(&peer.id);
                    let tail: Vec<Peer> = successors
                        .into_iter()
                        .chain(r.successors.iter().cloned())
                        .filter(|p| p.id != peer.id && p.id != self.me.id)
                        .collect();
                    if let Some(first) = tail.first().cloned() {
                        r.set_successors(first, &tail[1..]);
                    }
                } else if r.predecessor.as_ref().is_some_and(|p| p.id == peer.id) {
                    r.remove(&peer.id);
                    r.predecessor = predecessor.filter(|p| p.id != self.me.id && p.id != peer.id);
                } else {
                    r.remove(&peer.id);
                }
                drop(r);
                self.note_departed(&peer);
                self.repair_wake.notify_one();
                Response::Ok
            }
            Request::PutChunk {
                key,
                data,
                replicate,
            } => {
                if self.joining.load(Ordering::Acquire) && replicate {
                    return Response::error(ErrorKind::Unavailable, "node is joining");
                }
                self.put_chunk(key, data, replicate).await
            }
            Request::GetChunk { key } => {
                self.counters.chunk_gets.fetch_add(1, Ordering::Relaxed);
                match self.store.get_chunk(key).await {
                    Ok(Some(d)) => Response::Chunk(d),
                    Ok(None) => Response::NotFound,
                    Err(e) => store_error(e),
                }
            }
            Request::CheckChunk { key } => {
                let held = self.store.meta(&key).is_some();
                match self.store.check_chunk(key).await {
                    Ok(Some(_)) => Response::Ok,
                    Ok(None) => {
                        if held {
                            // It was bad and is gone: bring a good copy back.
                            self.repair_wake.notify_one();
                        }
                        Response::NotFound
                    }
                    Err(e) => store_error(e),
                }
            }
            Request::CasRecord {
                key,
                expect,
                record,
            } => self.cas_record(key, expect, record).await,
            Request::EditRecord { key, edit } => self.edit_record(key, edit).await,
            Request::LookupName { key, name } => self.lookup_name(key, &name).await,
            Request::PutRecordCopy {
                key,
                version,
                record,
                write,
            } => {
                let _guard = self.store.lock_record(&key).await;
                let current = self.store.record_version(&key);
                let stored = if version > current {
                    self.store
                        .write_record(key, version, record)
                        .await
                        .map(|()| CopyFate::Stored)
                } else {
                    match self.store.get_record_shared(key).await {
                        Ok(Some(held)) if held.0 == version && held.1 == record => {
                            Ok(CopyFate::Held)
                        }
                        _ => Ok(CopyFate::Other(current)),
                    }
                };
                // The copy held now belongs to this write (a retry that meets its
                // earlier attempt's copy adopts it), or to none (repair).
                let adopt = || {
                    if write != 0 {
                        self.record_writes.insert(key, (version, write));
                    } else {
                        self.record_writes.invalidate(&key);
                    }
                };
                match stored {
                    Ok(CopyFate::Stored) | Ok(CopyFate::Held) => {
                        adopt();
                        Response::Ok
                    }
                    // Held already (`Held`): fine if it is this very write (a repeat,
                    // or repair). Otherwise another write took this version or a later
                    // one, and this is no copy of it: say so, so the primary does not
                    // count it towards an acknowledgement (found by the simulation: a
                    // restarted primary with a stale version had its CAS "replicated" to
                    // replicas holding another write of that version; CHORDFS_SIM_SEED=100).
                    Ok(CopyFate::Other(current)) => Response::Conflict { current },
                    Err(e) => store_error(e),
                }
            }
            Request::RevertRecordCopy {
                key,
                version,
                write,
                previous,
            } => self.revert_record_copy(key, version, write, previous).await,
            Request::GetRecord { key, pull } => {
                if pull && !self.is_primary(&key) {
                    // Not an authoritative "absent": the caller's view is stale.
                    return Response::error(
                        ErrorKind::WrongNode,
                        format!("{} is not the primary of {key}", self.me.addr),
                    );
                }
                let rec = if pull {
                    self.pull_record(key).await
                } else {
                    match self.store.get_record_cached(key).await {
                        Ok(r) => r,
                        Err(e) => return store_error(e),
                    }
                };
                match rec {
                    Some((version, record)) => Response::Record { version, record },
                    None => Response::NotFound,
                }
            }
            Request::HaveKeys { keys } => {
                let strays = self.handing_off.lock().expect("handing_off lock");
                Response::Held(
                    keys.iter()
                        .map(|k| match self.store.meta(k) {
                            None => Held::No,
                            Some(m) if strays.contains(k) => Held::Stray(m.version),
                            Some(m) => Held::Kept(m.version),
                        })
                        .collect(),
                )
            }
            Request::Stats => Response::Stats(self.stats()),
            Request::ListKeys { after, limit } => {
                let limit = (limit as usize).min(crate::proto::KEYS_MAX);
                let keys = self.store.keys_after(after, limit);
                Response::Keys(
                    keys.into_iter()
                        .map(|(key, m)| crate::proto::KeyInfo {
                            key,
                            size: m.size,
                            version: m.version,
                            chunk: m.kind == store::EntryKind::Chunk,
                        })
                        .collect(),
                )
            }
            Request::PutChunkCopy { key, data, age_ms } => {
                self.counters.chunk_puts.fetch_add(1, Ordering::Relaxed);
                if self.recently_freed(&key) {
                    return Response::error(
                        ErrorKind::Collected,
                        format!("chunk {} was just garbage-collected here", key.short()),
                    );
                }
                match self
                    .store
                    .put_chunk_copy(key, data, Duration::from_millis(age_ms))
                    .await
                {
                    Ok(_) => Response::Stored { copies: 1 },
                    Err(e) => store_error(e),
                }
            }
            Request::ListChunkRefs { after, limit } => {
                match self.chunk_refs_page(after, limit).await {
                    Ok((chunks, next)) => Response::ChunkRefs { chunks, next },
                    Err(e) => Response::error(ErrorKind::Storage, e),
                }
            }
            Request::DropChunks { keys, grace_ms } => {
                let (chunks, bytes) = self
                    .drop_chunks(&keys, Duration::from_millis(grace_ms))
                    .await;
                Response::Dropped { chunks, bytes }
            }
            Request::CollectGarbage => self.collect_garbage().await,
        }
    }
}

/// What a leaving node no longer answers. It still serves reads and lookups (the latter
/// as if it were gone), but claims nothing: it does not answer as alive (Ping, GetState),
/// is not adopted (Notify), is never counted as a holder (HaveKeys) and takes no new
/// copies or writes. Otherwise a peer could re-adopt it, or drop its own copy of a key
/// because the leaver "has" it, moments before the leaver drops it too.
fn refused_while_leaving(req: &Request) -> bool {
    matches!(
        req,
        Request::Ping
            | Request::GetState
            | Request::Notify { .. }
            | Request::HaveKeys { .. }
            | Request::PutChunk { .. }
            | Request::PutChunkCopy { .. }
            | Request::PutRecordCopy { .. }
            | Request::RevertRecordCopy { .. }
            | Request::CasRecord { .. }
            | Request::EditRecord { .. }
            | Request::DropChunks { .. }
            | Request::CollectGarbage
    )
}

/// The copy to keep among `copies` of a record: the highest version; within it, the
/// body most copies hold; on a tie, `local`'s.
fn newest_copy(copies: &[(u64, Record)], local: Option<&(u64, Record)>) -> Option<(u64, Record)> {
    let top = copies.iter().map(|(v, _)| *v).max()?;
    let mut best: Option<(&(u64, Record), usize)> = None;
    for c in copies.iter().filter(|(v, _)| *v == top) {
        let n = copies.iter().filter(|o| *o == c).count();
        let better = match best {
            None => true,
            Some((b, bn)) => n > bn || (n == bn && Some(c) == local && Some(b) != local),
        };
        if better {
            best = Some((c, n));
        }
    }
    best.map(|(c, _)| c.clone())
}

/// What a replica did with a record copy (see `PutRecordCopy`).
enum CopyFate {
    /// Newer than the copy held: stored.
    Stored,
    /// The very copy held already.
    Held,
    /// Another copy of that version, or a later version, is held (its version).
    Other(u64),
}

/// Where a replicated write landed: see [`Node::replicate_to`].
#[derive(Default)]
struct Replicated {
    acked: Vec<Peer>,
    missed: Vec<Peer>,
    /// A replica that refused a record copy because it holds that version or a later
    /// one: the highest such version and who holds it. Replication stops there.
    newer: Option<(u64, Peer)>,
}

fn store_error(e: store::StoreError) -> Response {
    match e {
        store::StoreError::HashMismatch { .. } => {
            Response::error(ErrorKind::HashMismatch, e.to_string())
        }
        _ => Response::error(ErrorKind::Storage, e.to_string()),
    }
}

impl crate::net::Handler for Node {
    fn handle(self: Arc<Self>, req: Request) -> BoxFuture<'static, Response> {
        Box::pin(self.dispatch(req))
    }

    fn bad_request(&self) {
        self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
}
