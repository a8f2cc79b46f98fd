//! The paper's periodic work: stabilize, notify, fix_fingers, check_predecessor; and
//! join and graceful leave. Each is a step function that tests can call directly;
//! `Node::run_maintenance` drives them on timers until the node shuts down.

use super::core::Core;
use super::repair::Repair;
use crate::id::ID_BITS;
use crate::net::RpcError;
use crate::proto::{Peer, Request, Response};
use crate::ring::book::LOST_MAX;
use crate::ring::lookup::{Action, Walk};
use crate::ring::Step;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a leave keeps trying to hand its keys over while no pass makes progress.
pub const LEAVE_PATIENCE: Duration = Duration::from_secs(30);
/// Bound on the passes of one leave (at the longest pause, 2 s, well over an hour).
const LEAVE_PASSES_MAX: u32 = 2_000;

/// The ring-keeping subsystem: the routing table's upkeep and the node's membership.
pub struct Maintenance {
    pub core: Arc<Core>,
    /// Reconcile ticks so far (see `reconcile`).
    pub reconcile_ticks: AtomicU64,
}

impl Maintenance {
    pub fn new(core: Arc<Core>) -> Maintenance {
        Maintenance {
            core,
            reconcile_ticks: AtomicU64::new(0),
        }
    }

    /// Joins the ring through any live member.
    pub async fn join(&self, via: &str) -> Result<(), RpcError> {
        self.core.joining.store(true, Ordering::Release);
        let res = self.join_through(via).await;
        if res.is_ok() {
            self.core.joining.store(false, Ordering::Release);
            self.core.book().set_joined_via(via);
        }
        res
    }

    pub(super) async fn join_through(&self, via: &str) -> Result<(), RpcError> {
        let core = &self.core;
        let timeout = core.cfg.rpc_timeout;
        // Avoids this node: a restarted node may still sit in others' successor lists.
        let mut walk = Walk::from_member(core.me.id, core.me.id, via);
        let (from_addr, successors) = loop {
            let addr = match walk.next_action() {
                Action::Ask(addr) => addr,
                Action::Found { successors, .. } => break (walk.asked().to_string(), successors),
                Action::Local | Action::NotConverged => {
                    return Err(RpcError::Unexpected {
                        addr: via.to_string(),
                        detail: "join lookup did not converge".into(),
                    })
                }
            };
            let req = Request::FindSuccessor {
                key: core.me.id,
                avoid: walk.avoid().to_vec(),
            };
            match core.net.call(&addr, req, timeout).await? {
                Response::Found { successors, from } => {
                    walk.stepped(Step::Found { from, successors })
                }
                Response::Next { peer } => walk.stepped(Step::Next(peer)),
                other => return Err(RpcError::unexpected(&addr, &other)),
            }
        };
        let list: Vec<Peer> = successors
            .into_iter()
            .filter(|p| p.id != core.me.id)
            .collect();
        let Some(first) = list.first().cloned() else {
            // Joined nothing: succeeding here would leave this node alone, and nobody
            // would look for it; let the caller retry.
            return Err(RpcError::Unexpected {
                addr: from_addr,
                detail: "the ring named no successor but this node".into(),
            });
        };
        // The successor's own view, before this node commits to it: its neighbours are
        // where this node looks if the successor goes, and the peers it counts as
        // possibly live are this node's too. A join that cannot get it fails and is
        // retried: a newcomer that knew only the node it joined through is left alone
        // for good when that node goes a moment later.
        let st = match core
            .net
            .call(&first.addr, Request::GetState, timeout)
            .await?
        {
            Response::State(st) => st,
            other => return Err(RpcError::unexpected(&first.addr, &other)),
        };
        core.routing
            .write()
            .expect("routing lock")
            .set_successors(first.clone(), &list[1..]);
        // The members the lookup passed through and the successor's neighbours: live a
        // moment ago, all this node knows of its ring if its new neighbours go before it
        // ever stabilizes with them.
        core.note_seen(walk.path());
        core.note_seen(&list);
        core.note_seen(&st.successors);
        core.note_seen(st.predecessor.as_slice());
        // A node that joins the small side of a split must not take it for the whole
        // ring and acknowledge writes with fewer than R copies: it counts the
        // successor's lost peers as possibly live too.
        for p in st.lost.iter().take(LOST_MAX) {
            core.note_lost(p);
        }
        self.stabilize().await;
        Ok(())
    }

    /// Ask the successor for its predecessor, adopt it if it sits between us, refresh the
    /// successor list from the successor's, and notify it. A dead successor is dropped
    /// and the next one in the list takes its place.
    pub async fn stabilize(&self) {
        let core = &self.core;
        for _ in 0..core.cfg.successor_list_len.max(1) + 1 {
            let succ = core.successor();
            if succ.id == core.me.id {
                // Alone, or everyone after us has died: a known predecessor closes the loop.
                let pred = core.predecessor();
                if let Some(p) = pred {
                    core.routing
                        .write()
                        .expect("routing lock")
                        .set_successors(p, &[]);
                    continue;
                }
                return;
            }
            match core.call(&succ, Request::GetState).await {
                Ok(Response::State(st)) => {
                    let mut first = succ.clone();
                    let mut tail = st.successors.clone();
                    if let Some(x) = st.predecessor.as_ref() {
                        if x.id != core.me.id && x.id.in_open(&core.me.id, &succ.id) {
                            // A closer successor: check it answers before adopting it.
                            if let Ok(Response::State(xs)) = core.call(x, Request::GetState).await {
                                first = x.clone();
                                tail = xs.successors;
                            }
                        }
                    }
                    let vanished = {
                        let mut r = core.routing.write().expect("routing lock");
                        // The successor changed while its answer was on its way (reconcile
                        // adopted a closer one, a leave closed the ring): the answer
                        // describes a list that is no longer this node's, and written over
                        // the new one it can skip live nodes. Ask the new successor
                        // instead. Pinned by
                        // `a_stale_stabilize_answer_does_not_overwrite_a_newer_successor`.
                        if r.successor().id != succ.id {
                            None
                        } else {
                            let before = r.successors.clone();
                            r.set_successors(first.clone(), &tail);
                            Some(
                                before
                                    .into_iter()
                                    .filter(|p| {
                                        p.id != core.me.id
                                            && !r.successors.iter().any(|q| q.id == p.id)
                                    })
                                    .collect::<Vec<Peer>>(),
                            )
                        }
                    };
                    let Some(vanished) = vanished else {
                        continue;
                    };
                    core.note_seen(&tail);
                    core.note_seen(std::slice::from_ref(&first));
                    self.probe_vanished(vanished).await;
                    // A leaving node keeps its successor list fresh for the hand-over, but
                    // must not offer itself as anyone's predecessor again.
                    if !core.is_leaving() {
                        let _ = core
                            .call(
                                &first,
                                Request::Notify {
                                    candidate: core.me.clone(),
                                },
                            )
                            .await;
                    }
                    return;
                }
                Ok(_) | Err(_) => {
                    tracing::info!("successor {} unreachable; dropping it", succ.addr);
                    core.routing.write().expect("routing lock").remove(&succ.id);
                    core.note_lost(&succ);
                }
            }
        }
    }

    /// Pings the peers that just fell out of the successor list because the successor's
    /// list no longer names them, and notes those that do not answer as lost. A node
    /// learns of a partition this way even when its own successor is on its side: it
    /// then still counts the peers beyond as possibly live, so the small side of a split
    /// keeps requiring R copies and refuses writes it could not keep (tests/netns.rs).
    /// Peers that announced their leave are not noted (see `PeerBook::note_departed`).
    async fn probe_vanished(&self, vanished: Vec<Peer>) {
        let core = &self.core;
        if vanished.is_empty() {
            return;
        }
        let wait = core.cfg.rpc_timeout.min(Duration::from_secs(1));
        let pings = vanished
            .iter()
            .map(|p| core.net.call(&p.addr, Request::Ping, wait));
        for (p, res) in vanished.iter().zip(futures::future::join_all(pings).await) {
            if !matches!(res, Ok(Response::Pong { id }) if id == p.id) {
                tracing::debug!("{} left the successor list and does not answer", p.addr);
                core.note_lost(p);
            }
        }
    }

    /// Refreshes every finger, skipping the ones the same peer covers.
    pub async fn fix_fingers(&self) {
        let core = &self.core;
        let mut i = 0;
        while i < ID_BITS {
            let start = core.me.id.add_pow2(i);
            match core.lookup(&start, false).await {
                Ok((_, successors, _)) => {
                    i = core
                        .routing
                        .write()
                        .expect("routing lock")
                        .set_finger(i, successors[0].clone());
                }
                Err(_) => i += 1,
            }
            if core.shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Clears the predecessor when it no longer answers, so a live node can take its place.
    pub async fn check_predecessor(&self) {
        let core = &self.core;
        let pred = core.predecessor();
        if let Some(p) = pred {
            match core.call(&p, Request::Ping).await {
                Ok(Response::Pong { .. }) => {}
                _ => {
                    tracing::info!("predecessor {} unreachable; clearing it", p.addr);
                    core.note_lost(&p);
                    let mut r = core.routing.write().expect("routing lock");
                    if r.predecessor.as_ref().is_some_and(|q| q.id == p.id) {
                        r.set_predecessor(None);
                    }
                    for f in r.fingers.iter_mut() {
                        if f.as_ref().is_some_and(|q| q.id == p.id) {
                            *f = None;
                        }
                    }
                    drop(r);
                    core.repair_wake.notify_one();
                }
            }
        }
    }

    /// `Notify`: the paper's notify; a new predecessor takes over part of this node's
    /// range, so repair is woken to hand it its keys.
    pub fn notified(&self, candidate: &Peer) {
        let changed = self
            .core
            .routing
            .write()
            .expect("routing lock")
            .notify(candidate);
        if changed {
            self.core.repair_wake.notify_one();
        }
    }

    /// `Leave`: a neighbour announces its graceful leave, with its neighbours and the
    /// peers it knows.
    pub fn neighbour_left(
        &self,
        peer: Peer,
        predecessor: Option<Peer>,
        successors: Vec<Peer>,
        known: Vec<Peer>,
    ) {
        let core = &self.core;
        let known: Vec<Peer> = known
            .into_iter()
            .filter(|p| p.id != peer.id)
            .take(LOST_MAX)
            .collect();
        core.note_seen(&known);
        let mut r = core.routing.write().expect("routing lock");
        if r.successor().id == peer.id {
            // The leaver's successors, then ours: its list may be short, or name only us
            // (a node that took a one-entry list naming itself was left alone).
            r.remove(&peer.id);
            let tail: Vec<Peer> = successors
                .into_iter()
                .chain(r.successors.iter().cloned())
                .filter(|p| p.id != peer.id && p.id != core.me.id)
                .collect();
            if let Some(first) = tail.first().cloned() {
                r.set_successors(first, &tail[1..]);
            }
        } else if r.predecessor.as_ref().is_some_and(|p| p.id == peer.id) {
            r.remove(&peer.id);
            r.set_predecessor(predecessor.filter(|p| p.id != core.me.id && p.id != peer.id));
        } else {
            r.remove(&peer.id);
        }
        drop(r);
        core.note_departed(&peer);
        core.repair_wake.notify_one();
    }

    /// Graceful leave: close the ring around this node, then hand every key to the nodes
    /// that hold it once this one is gone, verified, before returning.
    pub async fn leave(&self, repair: &Repair) {
        let core = &self.core;
        let mut r = core.snapshot();
        if r.is_alone() && !core.store.is_empty() {
            // Alone, with data: the ring may only have lost this node (loss, a
            // partition). Join it again through the peers it knew, to hand the data
            // over and tell its neighbours of the leave.
            self.rejoin_to_leave().await;
            r = core.snapshot();
        }
        core.leaving.store(true, Ordering::Release);
        if r.is_alone() {
            // The last member: there is nobody to hand data to; it stays on disk.
            return;
        }
        let known = core.book().known(2 * LOST_MAX);
        let msg = Request::Leave {
            peer: core.me.clone(),
            predecessor: r.predecessor.clone(),
            successors: r.successors.clone(),
            known,
        };
        if let Some(p) = &r.predecessor {
            let _ = core.call(p, msg.clone()).await;
        }
        if r.successor().id != core.me.id {
            let _ = core.call(r.successor(), msg).await;
        }
        self.hand_over_all(repair).await;
    }

    /// The hand-over of a leave: repair passes until no key is left here, waiting longer
    /// between passes while they fail. It gives up only after [`LEAVE_PATIENCE`] without
    /// progress (the number of keys still held not going down), so a lossy network or a
    /// neighbour that is itself leaving slows a leave down instead of ending it with the
    /// last copies of some keys on board.
    async fn hand_over_all(&self, repair: &Repair) {
        let core = &self.core;
        let mut pause = Duration::from_millis(200);
        let mut best = usize::MAX;
        let mut progress_at = tokio::time::Instant::now();
        for attempt in 0..LEAVE_PASSES_MAX {
            let pass = repair.pass(true).await;
            let held = core.store.len();
            match pass {
                Ok(0) if held == 0 => return,
                Ok(left) => tracing::warn!(
                    "leave: {left} keys not yet handed over, {held} held (pass {attempt})"
                ),
                Err(e) => tracing::warn!("leave: hand-over failed: {e} (pass {attempt})"),
            }
            if held < best {
                best = held;
                progress_at = tokio::time::Instant::now();
                pause = Duration::from_millis(200);
            } else if progress_at.elapsed() >= LEAVE_PATIENCE {
                tracing::error!(
                    "leave: giving up with {held} keys not handed over after {} s without progress; \
                     they stay in {} and come back if this node is started again",
                    LEAVE_PATIENCE.as_secs(),
                    core.cfg.data_dir.display()
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs the periodic work until shutdown: each step on its own timer, side by side,
    /// so a slow step (fix_fingers waiting out timeouts on dead fingers) does not hold
    /// up stabilize or check_predecessor (with the three in one select, a node whose
    /// fix_fingers kept timing out never cleared a dead predecessor).
    pub async fn run(&self) {
        let cfg = &self.core.cfg;
        tokio::join!(
            self.every(cfg.stabilize_every, || self.stabilize()),
            self.every(cfg.fix_fingers_every, || self.fix_fingers()),
            self.every(cfg.check_predecessor_every, || async {
                self.check_predecessor().await;
                self.reconcile().await;
            }),
        );
    }

    /// Runs `step` every `period` (later when a step overruns) until shutdown.
    async fn every<F, Fut>(&self, period: Duration, mut step: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased: polled in order, not at random, so a seeded simulation replays.
            tokio::select! {
                biased;
                _ = self.core.shutdown.cancelled() => return,
                _ = tick.tick() => step().await,
            }
        }
    }
}
