//! Finding lost peers again. Stabilize drops a successor, and check_predecessor a
//! predecessor, when it fails to answer; but a peer that only *seemed* dead (lost
//! messages, a partition) is then forgotten by everyone, and two halves of a partitioned
//! ring, or a node whose whole successor list timed out, stay apart for good.
//!
//! So a node remembers the peers it dropped as unreachable, and on each check tick
//! probes one: it asks that peer's ring where this node's id belongs. An answer between
//! this node and its successor (or any answer, for a node left alone) becomes the new
//! successor; stabilize and notify then zip the two rings together. A peer is forgotten
//! once this node's own lookup finds it again (same ring), or when it has not answered
//! for [`LOST_TTL_CHECKS`] check intervals (really gone). Until then it also counts as
//! possibly live for the copies a write needs (see `Node::required_copies`).

use super::node::{Node, MAX_LOOKUP_HOPS};
use crate::proto::{Peer, Request, Response};

/// Most lost peers remembered (the most recent are kept).
pub const LOST_MAX: usize = 16;
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
        let ttl = self.cfg.check_predecessor_every * LOST_TTL_CHECKS;
        let mut departed = self.departed.lock().expect("departed lock");
        departed.retain(|(_, at)| at.elapsed() < ttl);
        departed.iter().any(|(id, _)| *id == peer.id)
    }

    fn forget_lost(&self, peer: &Peer) {
        self.lost
            .lock()
            .expect("lost lock")
            .retain(|l| l.peer.id != peer.id);
    }

    /// Probes the next lost peer (round robin) and adopts a closer successor through it.
    pub async fn reconcile(&self) {
        let next = {
            let mut lost = self.lost.lock().expect("lost lock");
            (!lost.is_empty()).then(|| {
                let l = lost.remove(0);
                let peer = l.peer.clone();
                lost.push(l);
                peer
            })
        };
        let Some(peer) = next else {
            self.rejoin_if_alone().await;
            return;
        };
        // Same ring already? Then it is found, not lost.
        if let Ok((_, successors, _)) = self.lookup(&peer.id, false).await {
            if successors.first().is_some_and(|p| p.id == peer.id) {
                self.forget_lost(&peer);
                return;
            }
        }
        let found = match self.find_successors_via(&peer).await {
            Some(list) => list,
            None => {
                let ttl = self.cfg.check_predecessor_every * LOST_TTL_CHECKS;
                self.lost
                    .lock()
                    .expect("lost lock")
                    .retain(|l| l.since.elapsed() < ttl);
                return;
            }
        };
        // It answers but is not on our ring: tell it about us too. A node left alone
        // adopts us as its first partner (Routing::notify), and stabilize walks it to
        // its place; without this, a lone node whose own lost list is empty is never
        // found (its place on our ring is rarely right after us). Found by the
        // simulation: CHORDFS_SIM_SEED=279.
        let _ = self
            .call(
                &peer,
                Request::Notify {
                    candidate: self.me.clone(),
                },
            )
            .await;
        let list: Vec<Peer> = found.into_iter().filter(|p| p.id != self.me.id).collect();
        let Some(first) = list.first().cloned() else {
            return;
        };
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
    }

    /// A node alone, with no predecessor and no lost peer to probe, is unknown to any
    /// ring it was part of: it joins again through the address it first joined by.
    /// (Found by the simulation: CHORDFS_SIM_SEED=450, where n10's only peer left.)
    async fn rejoin_if_alone(&self) {
        let alone = {
            let r = self.routing.read().expect("routing lock");
            r.successor().id == self.me.id && r.predecessor.is_none()
        };
        let via = self.joined_via.lock().expect("joined_via lock").clone();
        if let (true, Some(via)) = (alone, via) {
            match self.join_through(&via).await {
                Ok(()) => tracing::info!("alone: rejoined through {via}"),
                Err(e) => tracing::debug!("alone: rejoin through {via} failed: {e}"),
            }
        }
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
