//! Finding lost peers again. Stabilize drops a successor, and check_predecessor a
//! predecessor, when it fails to answer; but a peer that only *seemed* dead (lost
//! messages, a partition) is then forgotten by everyone, and two halves of a partitioned
//! ring, or a node whose whole successor list timed out, stay apart for good.
//!
//! So a node remembers the peers it dropped as unreachable, and on each check tick
//! probes one: it asks that peer's ring where this node's id belongs. An answer between
//! this node and its successor (or any answer, for a node left alone) becomes the new
//! successor; stabilize and notify then zip the two rings together. A peer is forgotten
//! once its ring places this node where this node's own ring does (same ring), or when
//! it has not answered for [`LOST_TTL_CHECKS`] check intervals (really gone). Until
//! then it also counts as possibly live for the copies a write needs (see
//! `Node::required_copies`).

use super::node::{Node, MAX_LOOKUP_HOPS};
use crate::proto::{Peer, Request, Response};

/// Most lost peers remembered (the most recent are kept).
pub const LOST_MAX: usize = 16;
/// What probing a peer's ring found.
enum Probe {
    /// No answer.
    Silent,
    /// The peer's ring is this node's.
    SameRing,
    Other,
}

/// Check ticks between probes of a peer met lately (see [`Node::reconcile`]).
const SEEN_PROBE_EVERY: u64 = 4;
/// Peers a node left alone tries to rejoin through, per check tick.
const REJOIN_TRIES: usize = 3;
/// Check intervals after which a lost peer that never answered is taken for dead
/// (10 minutes at the default interval of a second). Long, because a partition can
/// last that long, and a peer forgotten on both sides is never found again.
pub const LOST_TTL_CHECKS: u32 = 600;

/// A peer dropped as unreachable, and since when.
#[derive(Clone, Debug)]
pub struct Lost {
    pub peer: Peer,
    pub since: tokio::time::Instant,
}

impl Node {
    /// Remembers `peer` as dropped for failing to answer (not for leaving).
    pub fn note_lost(&self, peer: &Peer) {
        if peer.id == self.me.id || self.departed_lately(peer) {
            return;
        }
        let mut lost = self.lost.lock().expect("lost lock");
        lost.retain(|l| l.peer.id != peer.id);
        lost.push(Lost {
            peer: peer.clone(),
            since: tokio::time::Instant::now(),
        });
        if lost.len() > LOST_MAX {
            lost.remove(0);
        }
    }

    /// Remembers that `peer` announced its leave: it is gone, not lost, even when a call
    /// that was already on its way to it fails afterwards. Without this, a stabilize
    /// round that raced the leave noted the leaver as lost, and the last node of a ring
    /// shrunk by leaves stayed unsure of its range, refusing every request as "not the
    /// primary" for the lost peer's lifetime (found by tests/migration.rs under load).
    pub fn note_departed(&self, peer: &Peer) {
        self.forget_lost(peer);
        let mut departed = self.departed.lock().expect("departed lock");
        departed.retain(|(id, _)| *id != peer.id);
        departed.push((peer.id, tokio::time::Instant::now()));
        if departed.len() > LOST_MAX {
            departed.remove(0);
        }
    }

    fn departed_lately(&self, peer: &Peer) -> bool {
        let ttl = self.lost_ttl();
        let mut departed = self.departed.lock().expect("departed lock");
        departed.retain(|(_, at)| at.elapsed() < ttl);
        departed.iter().any(|(id, _)| *id == peer.id)
    }

    /// How long a lost (or departed) peer is remembered.
    fn lost_ttl(&self) -> std::time::Duration {
        self.cfg.check_predecessor_every * LOST_TTL_CHECKS
    }

    /// Live nodes this node sees, itself included: its successors (distinct, as
    /// `Routing::set_successors` keeps them), when the list is not full (a full list
    /// means a ring larger than the list: `None`).
    fn live_in_view(&self) -> Option<usize> {
        let r = self.routing.read().expect("routing lock");
        let others = r.successors.iter().filter(|p| p.id != self.me.id).count();
        (others < r.list_len).then_some(1 + others)
    }

    /// When this node sees no more live nodes than it has lost (and does not see again),
    /// the two counts: it may be on the small side of a split, one that message loss
    /// cut as well as a partition. Its neighbours can agree with it all round and still
    /// form a ring of their own, so it takes no writes as a primary until it sees most
    /// of the ring again (simulation seed 4887: under 20% loss, a newcomer and two
    /// neighbours, each having lost four peers, formed a three-node ring and
    /// acknowledged a first version of a record whose second version the rest of the
    /// ring held).
    pub(super) fn outnumbered(&self) -> Option<(usize, usize)> {
        let live = self.live_in_view()?;
        let r = self.routing.read().expect("routing lock");
        let in_view = |p: &Peer| {
            r.successors.iter().any(|q| q.id == p.id)
                || r.predecessor.as_ref().is_some_and(|q| q.id == p.id)
        };
        let lost = self
            .lost
            .lock()
            .expect("lost lock")
            .iter()
            .filter(|l| !in_view(&l.peer))
            .count();
        (lost > 0 && lost >= live).then_some((live, lost))
    }

    fn forget_lost(&self, peer: &Peer) {
        self.lost
            .lock()
            .expect("lost lock")
            .retain(|l| l.peer.id != peer.id);
    }

    /// Probes the next lost peer (round robin) and adopts a closer successor through it;
    /// every few ticks, also a peer met lately, so that a small ring that forgot the
    /// rest (every peer it lost has timed out, or was never its own to lose) finds it
    /// again (found by the simulation: CHORDFS_SIM_SEED=345, two nodes that joined
    /// while a partition healed ended as a ring of their own).
    pub async fn reconcile(&self) {
        let tick = self
            .reconcile_ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next = {
            let mut lost = self.lost.lock().expect("lost lock");
            (!lost.is_empty()).then(|| {
                let l = lost.remove(0);
                let peer = l.peer.clone();
                lost.push(l);
                peer
            })
        };
        match next {
            Some(peer) => match self.probe_ring(&peer).await {
                Probe::Silent => {
                    let ttl = self.lost_ttl();
                    let live = self.live_in_view();
                    let mut lost = self.lost.lock().expect("lost lock");
                    // Only a node that sees most of the ring it knew takes its silent
                    // peers for dead. The small side of a split cannot tell the rest
                    // from dead, and if it forgot them it would soon take writes with
                    // fewer than R copies that the heal then loses to the other side's
                    // (found by tests/netns.rs: a two-node side forgot the three others
                    // after the lost-peer lifetime and acknowledged two puts that
                    // vanished at the heal).
                    if live.is_none_or(|live| live > lost.len()) {
                        lost.retain(|l| l.since.elapsed() < ttl);
                    }
                }
                Probe::SameRing => self.forget_lost(&peer),
                Probe::Other => {}
            },
            None => self.rejoin_if_alone().await,
        }
        if tick % SEEN_PROBE_EVERY == 0 {
            let round = tick / SEEN_PROBE_EVERY;
            // Every other round, the address this node joined through: the one peer an
            // operator chose, so two rings that know no live member of each other still
            // meet there if it is alive (simulation seed 1214).
            let peer = if round % 2 == 1 {
                self.joined_via_peer().await
            } else {
                let seen = self.seen.lock().expect("seen lock");
                let n = seen.len() as u64;
                (n > 0).then(|| seen[((round / 2) % n) as usize].clone())
            };
            if let Some(peer) = peer.filter(|p| p.id != self.me.id) {
                self.probe_ring(&peer).await;
            }
        }
    }

    /// The node this one joined through, as a peer (its id from a ping), if it answers.
    async fn joined_via_peer(&self) -> Option<Peer> {
        let addr = self.joined_via.lock().expect("joined_via lock").clone()?;
        match self
            .net
            .call(&addr, Request::Ping, self.cfg.rpc_timeout)
            .await
        {
            Ok(Response::Pong { id }) => Some(Peer { id, addr }),
            _ => None,
        }
    }

    /// Asks `peer`'s ring where this node belongs. When it answers with another
    /// successor than this node's own, tells the peer about this node and adopts the
    /// answer if it is closer: stabilize and notify then zip the two rings together.
    async fn probe_ring(&self, peer: &Peer) -> Probe {
        let Some(found) = self.find_successors_via(peer).await else {
            return Probe::Silent;
        };
        let list: Vec<Peer> = found.into_iter().filter(|p| p.id != self.me.id).collect();
        let Some(first) = list.first().cloned() else {
            return Probe::Other;
        };
        // Same ring already, when the peer's ring puts this node where its own ring
        // does. (Asking the own ring instead, "does a lookup of the peer's id find the
        // peer?", trusted stale successor lists that still named it, and both halves of
        // a healed partition forgot each other for good: CHORDFS_SIM_SEED=2192.)
        if self.routing.read().expect("routing lock").successor().id == first.id {
            return Probe::SameRing;
        }
        // It answers but is not on our ring: tell it about us too. A node left alone
        // adopts us as its first partner (Routing::notify), and stabilize walks it to
        // its place; without this, a lone node whose own lost list is empty is never
        // found (its place on our ring is rarely right after us). Found by the
        // simulation: CHORDFS_SIM_SEED=279.
        let _ = self
            .call(
                peer,
                Request::Notify {
                    candidate: self.me.clone(),
                },
            )
            .await;
        let mut r = self.routing.write().expect("routing lock");
        let succ = r.successor().clone();
        if succ.id == self.me.id || first.id.in_open(&self.me.id, &succ.id) {
            tracing::info!(
                "reconcile: {} found again; successor {} -> {}",
                peer.addr,
                succ.addr,
                first.addr
            );
            r.set_successors(first, &list[1..]);
        }
        Probe::Other
    }

    /// A node alone, with no predecessor and no lost peer to probe, is unknown to any
    /// ring it was part of: it joins again through the address it first joined by, or
    /// else through a peer it has had in its successor list (a few per tick, most recent
    /// first). (Found by the simulation: CHORDFS_SIM_SEED=450, where n10's only peer
    /// left; and 92, where the node it joined through was gone as well.)
    async fn rejoin_if_alone(&self) {
        if !self.routing.read().expect("routing lock").is_alone() {
            return;
        }
        self.rejoin(REJOIN_TRIES).await;
    }

    /// A leave that finds this node alone: tries every peer it knows, lost ones too.
    pub(super) async fn rejoin_to_leave(&self) {
        let lost: Vec<Peer> = self
            .lost
            .lock()
            .expect("lost lock")
            .iter()
            .map(|l| l.peer.clone())
            .collect();
        self.note_seen(&lost);
        self.rejoin(LOST_MAX + 1).await;
    }

    /// Joins again through the address this node first joined by, or else through
    /// peers it has had in its successor lists, most recent first; at most `tries`.
    async fn rejoin(&self, tries: usize) {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(via) = self.joined_via.lock().expect("joined_via lock").clone() {
            candidates.push(via);
        }
        for p in self.seen.lock().expect("seen lock").iter().rev() {
            if p.id != self.me.id && !candidates.contains(&p.addr) {
                candidates.push(p.addr.clone());
            }
        }
        for via in candidates.into_iter().take(tries) {
            match self.join_through(&via).await {
                Ok(()) => {
                    tracing::info!("alone: rejoined through {via}");
                    return;
                }
                Err(e) => tracing::debug!("alone: rejoin through {via} failed: {e}"),
            }
        }
    }

    /// Remembers peers met in successor lists, for [`Node::rejoin_if_alone`].
    pub fn note_seen(&self, peers: &[Peer]) {
        let mut seen = self.seen.lock().expect("seen lock");
        for p in peers {
            if p.id == self.me.id {
                continue;
            }
            seen.retain(|q| q.id != p.id);
            seen.push(p.clone());
        }
        let excess = seen.len().saturating_sub(LOST_MAX);
        seen.drain(..excess);
    }

    /// Iterative lookup of this node's own id, starting at `via` (not at this node's own
    /// table, which may know nothing of `via`'s ring). None when it fails.
    async fn find_successors_via(&self, via: &Peer) -> Option<Vec<Peer>> {
        let mut cur = via.clone();
        let mut avoid = vec![self.me.id];
        for _ in 0..MAX_LOOKUP_HOPS {
            let req = Request::FindSuccessor {
                key: self.me.id,
                avoid: avoid.clone(),
            };
            match self.call(&cur, req).await {
                Ok(Response::Found { successors, .. }) => return Some(successors),
                Ok(Response::Next { peer }) if peer.id == self.me.id => avoid.push(peer.id),
                Ok(Response::Next { peer }) => cur = peer,
                _ => return None,
            }
        }
        None
    }
}
