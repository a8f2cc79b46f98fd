//! The core every subsystem of the peer shares: who this node is, its settings, its
//! routing table, its store, its transport, its peer book and its lifecycle flags, with
//! the few operations they all need (calls, lookups, the primary's range, replication).
//! Decisions are made by the pure rules of [`crate::ring`]; this is the shell that
//! carries their messages.

use crate::id::Id;
use crate::net::{RpcError, Transport};
use crate::proto::{NodeState, NodeStats, Peer, Request, Response};
use crate::ring::book::PeerBook;
use crate::ring::lookup::{Action, Walk};
use crate::ring::{primacy, Routing, Step};
use crate::store::{self, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Check intervals after which a lost peer that never answered is taken for dead
/// (10 minutes at the default interval of a second). Long, because a partition can
/// last that long, and a peer forgotten on both sides is never found again.
pub const LOST_TTL_CHECKS: u32 = 600;

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
    /// a writer holds stored chunks before its record names them (docs/design.md).
    pub gc_grace: Duration,
    /// How long a mount's locks outlive its last lease renewal here; also the grace
    /// period of a node new to a range (docs/locks.md).
    pub lock_lease: Duration,
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
            lock_lease: Duration::from_millis(crate::proto::lock::LEASE_DEFAULT_MS),
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

pub struct Core {
    pub me: Peer,
    pub cfg: NodeConfig,
    // Never held across an await: read as a snapshot, decided on, then acted on.
    // Taken before `book` where both are held.
    pub routing: RwLock<Routing>,
    // Never held across an await: read or updated in one go.
    pub book: Mutex<PeerBook>,
    pub store: Arc<Store>,
    pub net: Arc<dyn Transport>,
    pub counters: Counters,
    /// Wakes repair early (a new predecessor, a leave).
    pub repair_wake: Notify,
    pub leaving: AtomicBool,
    /// Set while `join` runs: the node knows nothing of the ring yet, so it must not act
    /// as anyone's primary (it would take writes with one copy, read keys as absent).
    pub joining: AtomicBool,
    pub shutdown: CancellationToken,
    /// `node{addr}`: every task and answer of this node runs in it, so the logs of
    /// several nodes in one process (tests, the simulation) can be told apart.
    pub span: tracing::Span,
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

/// The time as the book takes it: tokio's clock, so the simulation's paused time applies.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Core {
    pub fn new(cfg: NodeConfig, id: Id, store: Arc<Store>, net: Arc<dyn Transport>) -> Core {
        let me = Peer {
            id,
            addr: cfg.addr.clone(),
        };
        let list_len = cfg.successor_list_len.max(cfg.replicas + 1);
        let cfg_addr = cfg.addr.clone();
        Core {
            routing: RwLock::new(Routing::new(me.clone(), list_len)),
            book: Mutex::new(PeerBook::new(id)),
            me,
            cfg,
            store,
            net,
            counters: Counters::default(),
            repair_wake: Notify::new(),
            leaving: AtomicBool::new(false),
            joining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            span: tracing::info_span!("node", addr = %cfg_addr),
        }
    }

    pub fn snapshot(&self) -> Routing {
        self.routing.read().expect("routing lock").clone()
    }

    /// This node's successor (itself when alone), as the table says now.
    pub fn successor(&self) -> Peer {
        self.routing
            .read()
            .expect("routing lock")
            .successor()
            .clone()
    }

    /// This node's predecessor, as the table says now.
    pub fn predecessor(&self) -> Option<Peer> {
        self.routing
            .read()
            .expect("routing lock")
            .predecessor
            .clone()
    }

    pub fn book(&self) -> std::sync::MutexGuard<'_, PeerBook> {
        self.book.lock().expect("book lock")
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    pub fn is_joining(&self) -> bool {
        self.joining.load(Ordering::Acquire)
    }

    pub fn state(&self) -> NodeState {
        let r = self.routing.read().expect("routing lock");
        NodeState {
            me: self.me.clone(),
            predecessor: r.predecessor.clone(),
            successors: r.successors.clone(),
            replicas: self.cfg.replicas as u32,
            lost: self.book().lost_peers().cloned().collect(),
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

    /// How long a lost (or departed) peer is remembered.
    pub fn lost_ttl(&self) -> Duration {
        self.cfg.check_predecessor_every * LOST_TTL_CHECKS
    }

    /// Remembers `peer` as dropped for failing to answer (not for leaving).
    pub fn note_lost(&self, peer: &Peer) {
        let ttl = self.lost_ttl();
        self.book().note_lost(peer, now(), ttl);
    }

    /// Remembers that `peer` announced its leave (see [`PeerBook::note_departed`]).
    pub fn note_departed(&self, peer: &Peer) {
        self.book().note_departed(peer, now());
    }

    /// Remembers peers met in successor lists, where a node left alone looks again.
    pub fn note_seen(&self, peers: &[Peer]) {
        self.book().note_seen(peers);
    }

    /// Iterative lookup, starting from this node's own table. Peers that fail to answer
    /// are avoided and the lookup backs up, so it stays right while the ring settles.
    /// With `avoid_self`, this node is treated as gone (a graceful leave).
    pub async fn lookup(
        &self,
        key: &Id,
        avoid_self: bool,
    ) -> Result<(Peer, Vec<Peer>, u32), RpcError> {
        let mut walk = Walk::from_table(*key, self.me.id, avoid_self);
        loop {
            let step = match walk.next_action() {
                Action::Local => self
                    .routing
                    .read()
                    .expect("routing lock")
                    .step(key, walk.avoid()),
                Action::Ask(addr) => {
                    let req = Request::FindSuccessor {
                        key: *key,
                        avoid: walk.avoid().to_vec(),
                    };
                    match self.net.call(&addr, req, self.cfg.rpc_timeout).await {
                        Ok(Response::Found { from, successors }) => {
                            Step::Found { from, successors }
                        }
                        Ok(Response::Next { peer }) => Step::Next(peer),
                        Ok(other) => return Err(RpcError::unexpected(&addr, &other)),
                        Err(e) if e.is_unreachable() => {
                            walk.unreachable();
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::Found {
                    from,
                    successors,
                    hops,
                } => {
                    let live: Vec<Peer> = successors
                        .into_iter()
                        .filter(|p| !walk.avoid().contains(&p.id))
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
                Action::NotConverged => {
                    return Err(RpcError::Unexpected {
                        addr: self.me.addr.clone(),
                        detail: format!("lookup of {key:?} did not converge"),
                    })
                }
            };
            walk.stepped(step);
        }
    }

    /// True when this node is the primary for `key` as far as it knows (see
    /// [`primacy::is_primary`]); never while it joins.
    pub fn is_primary(&self, key: &Id) -> bool {
        if self.is_joining() {
            return false;
        }
        let r = self.routing.read().expect("routing lock");
        let nothing_lost = r.predecessor.is_some() || self.book().lost().is_empty();
        primacy::is_primary(key, &r, nothing_lost)
    }

    /// The peers after this node that hold its replicas: its distinct successors.
    pub fn replica_targets(&self) -> Vec<Peer> {
        let r = self.routing.read().expect("routing lock");
        r.successors
            .iter()
            .filter(|p| p.id != self.me.id)
            .cloned()
            .collect()
    }

    /// Copies required for a write to succeed (see [`primacy::required_copies`]).
    pub fn required_copies(&self) -> usize {
        let others = self.replica_targets().len();
        let lost = self.book().lost().len();
        primacy::required_copies(self.cfg.replicas, others, lost)
    }

    /// See [`primacy::outnumbered`].
    pub fn outnumbered(&self) -> Option<(usize, usize)> {
        let r = self.routing.read().expect("routing lock");
        primacy::outnumbered(&r, &self.book())
    }

    /// Sends `req` (built per target) to successors until `want` of them acknowledge.
    /// Returns who acknowledged and who was asked but did not (refused, or silent: a
    /// timed-out copy may still have been stored).
    pub async fn replicate_to(&self, want: usize, make: impl Fn() -> Request) -> Replicated {
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

    /// Logs a write acknowledged with fewer than R copies (the ring has fewer live nodes
    /// than R, as far as this node knows): an operator's sign of a shrunk ring, and of a
    /// split one if it happens while the ring is whole.
    pub fn note_short_write(&self, key: &Id, copies: usize) {
        if copies < self.cfg.replicas {
            let lost = self.book().lost().len();
            tracing::warn!(
                "{key} acknowledged with {copies} of {} copies ({} successors reachable, {lost} peers lost)",
                self.cfg.replicas,
                self.replica_targets().len()
            );
        }
    }
}

/// Where a replicated write landed: see [`Core::replicate_to`].
#[derive(Default)]
pub struct Replicated {
    pub acked: Vec<Peer>,
    pub missed: Vec<Peer>,
    /// A replica that refused a record copy because it holds that version or a later
    /// one: the highest such version and who holds it. Replication stops there.
    pub newer: Option<(u64, Peer)>,
}

/// A store error as a wire answer.
pub fn store_error(e: store::StoreError) -> crate::proto::Response {
    use crate::proto::ErrorKind;
    match e {
        store::StoreError::HashMismatch { .. } => {
            Response::error(ErrorKind::HashMismatch, e.to_string())
        }
        _ => Response::error(ErrorKind::Storage, e.to_string()),
    }
}
