//! Finding lost peers again. Stabilize drops a successor, and check_predecessor a
//! predecessor, when it fails to answer; but a peer that only *seemed* dead (lost
//! messages, a partition) is then forgotten by everyone, and two halves of a partitioned
//! ring, or a node whose whole successor list timed out, stay apart for good.
//!
//! So a node remembers the peers it dropped as unreachable (the peer book's *lost*), and
//! on each check tick probes one: it asks that peer's ring where this node's id belongs.
//! An answer between this node and its successor (or any answer, for a node left alone)
//! becomes the new successor; stabilize and notify then zip the two rings together. A
//! peer is forgotten once its ring places this node where this node's own ring does
//! (same ring), or when it has not answered for the lost peers' lifetime (really gone).
//! Until then it also counts as possibly live for the copies a write needs (see
//! [`crate::ring::primacy::required_copies`]).

use super::core::now;
use super::maintenance::Maintenance;
use crate::proto::{Peer, Request, Response};
use crate::ring::book::LOST_MAX;
use crate::ring::lookup::{Action, Walk};
use crate::ring::{primacy, Step};

/// What probing a peer's ring found.
enum Probe {
    /// No answer.
    Silent,
    /// The peer's ring is this node's.
    SameRing,
    Other,
}

/// Check ticks between probes of a peer met lately (see [`Maintenance::reconcile`]).
const SEEN_PROBE_EVERY: u64 = 4;
/// Peers a node left alone tries to rejoin through, per check tick.
const REJOIN_TRIES: usize = 3;

impl Maintenance {
    /// Probes the next lost peer (round robin) and adopts a closer successor through it;
    /// every few ticks, also a peer met lately (or, every other time, the address this
    /// node joined through: the one peer an operator chose, so two rings that know no
    /// live member of each other still meet there if it is alive), so that a small ring
    /// that forgot the rest finds it again.
    pub async fn reconcile(&self) {
        let core = &self.core;
        let tick = self
            .reconcile_ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next = core.book().next_lost();
        match next {
            Some(peer) => match self.probe_ring(&peer).await {
                Probe::Silent => {
                    let ttl = core.lost_ttl();
                    let live = primacy::live_in_view(&core.routing.read().expect("routing lock"));
                    core.book().expire_lost(now(), ttl, live);
                }
                Probe::SameRing => core.book().forget_lost(&peer),
                Probe::Other => {}
            },
            None => self.rejoin_if_alone().await,
        }
        if tick % SEEN_PROBE_EVERY == 0 {
            let round = tick / SEEN_PROBE_EVERY;
            let peer = if round % 2 == 1 {
                self.joined_via_peer().await
            } else {
                let book = core.book();
                let seen = book.seen();
                let n = seen.len() as u64;
                (n > 0).then(|| seen[((round / 2) % n) as usize].clone())
            };
            if let Some(peer) = peer.filter(|p| p.id != core.me.id) {
                self.probe_ring(&peer).await;
            }
        }
    }

    /// The node this one joined through, as a peer (its id from a ping), if it answers.
    async fn joined_via_peer(&self) -> Option<Peer> {
        let core = &self.core;
        let addr = core.book().joined_via()?.to_string();
        match core
            .net
            .call(&addr, Request::Ping, core.cfg.rpc_timeout)
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
        let core = &self.core;
        let Some(found) = self.find_successors_via(peer).await else {
            return Probe::Silent;
        };
        let list: Vec<Peer> = found.into_iter().filter(|p| p.id != core.me.id).collect();
        let Some(first) = list.first().cloned() else {
            return Probe::Other;
        };
        // Same ring already, when the peer's ring puts this node where its own ring
        // does. (Asking the own ring instead, "does a lookup of the peer's id find the
        // peer?", trusted stale successor lists that still named it, and both halves of
        // a healed partition forgot each other for good.)
        if core.routing.read().expect("routing lock").successor().id == first.id {
            return Probe::SameRing;
        }
        // It answers but is not on our ring: tell it about us too. A node left alone
        // adopts us as its first partner (Routing::notify), and stabilize walks it to
        // its place; without this, a lone node whose own lost list is empty is never
        // found (its place on our ring is rarely right after us).
        let _ = core
            .call(
                peer,
                Request::Notify {
                    candidate: core.me.clone(),
                },
            )
            .await;
        let mut r = core.routing.write().expect("routing lock");
        let succ = r.successor().clone();
        if succ.id == core.me.id || first.id.in_open(&core.me.id, &succ.id) {
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
    /// first).
    async fn rejoin_if_alone(&self) {
        if !self.core.routing.read().expect("routing lock").is_alone() {
            return;
        }
        self.rejoin(REJOIN_TRIES).await;
    }

    /// A leave that finds this node alone: tries every peer it knows, lost ones too.
    pub(super) async fn rejoin_to_leave(&self) {
        {
            let mut book = self.core.book();
            let lost: Vec<Peer> = book.lost_peers().cloned().collect();
            book.note_seen(&lost);
        }
        self.rejoin(LOST_MAX + 1).await;
    }

    /// Joins again through the address this node first joined by, or else through
    /// peers it has had in its successor lists, most recent first; at most `tries`.
    async fn rejoin(&self, tries: usize) {
        let candidates = self.core.book().rejoin_candidates();
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

    /// Iterative lookup of this node's own id, starting at `via` (not at this node's own
    /// table, which may know nothing of `via`'s ring). None when it fails.
    async fn find_successors_via(&self, via: &Peer) -> Option<Vec<Peer>> {
        let core = &self.core;
        let mut walk = Walk::from_member(core.me.id, core.me.id, &via.addr);
        loop {
            let addr = match walk.next_action() {
                Action::Ask(addr) => addr,
                Action::Found { successors, .. } => return Some(successors),
                Action::Local | Action::NotConverged => return None,
            };
            let req = Request::FindSuccessor {
                key: core.me.id,
                avoid: walk.avoid().to_vec(),
            };
            match core.net.call(&addr, req, core.cfg.rpc_timeout).await {
                Ok(Response::Found { from, successors }) => {
                    walk.stepped(Step::Found { from, successors })
                }
                Ok(Response::Next { peer }) => walk.stepped(Step::Next(peer)),
                _ => return None,
            }
        }
    }
}
