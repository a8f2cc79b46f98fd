//! The peer book: what a node remembers of peers beyond its routing table.
//! - *lost*: peers dropped for failing to answer (not for leaving). They may only be cut
//!   off, so they count as possibly live for the copies a write needs, and reconcile
//!   probes them round robin until their ring is found to be this one or they time out.
//! - *seen*: peers met lately in successor lists and on join paths, most recent last:
//!   where a node left alone looks for its ring again.
//! - *departed*: peers that announced their leave lately: gone, not lost, even when a
//!   call already on its way to one fails afterwards.
//! - *joined via*: the address the node joined through (where it rejoins).
//!
//! Times are passed in (the caller's clock: tokio's, so the simulation's paused time
//! applies).

use crate::id::Id;
use crate::proto::Peer;
use std::time::{Duration, Instant};

/// Most lost, seen and departed peers remembered each (the most recent are kept).
pub const LOST_MAX: usize = 16;

/// A peer dropped as unreachable, and since when.
#[derive(Clone, Debug)]
pub struct Lost {
    pub peer: Peer,
    pub since: Instant,
}

#[derive(Clone, Debug)]
pub struct PeerBook {
    me: Id,
    lost: Vec<Lost>,
    seen: Vec<Peer>,
    departed: Vec<(Id, Instant)>,
    joined_via: Option<String>,
}

impl PeerBook {
    pub fn new(me: Id) -> PeerBook {
        PeerBook {
            me,
            lost: Vec::new(),
            seen: Vec::new(),
            departed: Vec::new(),
            joined_via: None,
        }
    }

    pub fn lost(&self) -> &[Lost] {
        &self.lost
    }

    pub fn lost_peers(&self) -> impl Iterator<Item = &Peer> {
        self.lost.iter().map(|l| &l.peer)
    }

    pub fn is_lost(&self, id: &Id) -> bool {
        self.lost.iter().any(|l| l.peer.id == *id)
    }

    /// Peers met lately, most recent last.
    pub fn seen(&self) -> &[Peer] {
        &self.seen
    }

    pub fn joined_via(&self) -> Option<&str> {
        self.joined_via.as_deref()
    }

    pub fn set_joined_via(&mut self, addr: &str) {
        self.joined_via = Some(addr.to_string());
    }

    /// Remembers `peer` as dropped for failing to answer, unless it left lately (within
    /// `ttl`). Pinned by `a_departed_peer_is_not_noted_lost`.
    pub fn note_lost(&mut self, peer: &Peer, now: Instant, ttl: Duration) {
        if peer.id == self.me || self.departed_lately(peer, now, ttl) {
            return;
        }
        self.lost.retain(|l| l.peer.id != peer.id);
        self.lost.push(Lost {
            peer: peer.clone(),
            since: now,
        });
        if self.lost.len() > LOST_MAX {
            self.lost.remove(0);
        }
    }

    pub fn forget_lost(&mut self, peer: &Peer) {
        self.lost.retain(|l| l.peer.id != peer.id);
    }

    /// Remembers that `peer` announced its leave: no longer lost, and not noted lost
    /// again for the lost peers' lifetime. Without this, a stabilize round that raced
    /// the leave noted the leaver as lost, and the last node of a ring shrunk by leaves
    /// stayed unsure of its range (tests/migration.rs).
    pub fn note_departed(&mut self, peer: &Peer, now: Instant) {
        self.forget_lost(peer);
        self.departed.retain(|(id, _)| *id != peer.id);
        self.departed.push((peer.id, now));
        if self.departed.len() > LOST_MAX {
            self.departed.remove(0);
        }
    }

    fn departed_lately(&mut self, peer: &Peer, now: Instant, ttl: Duration) -> bool {
        self.departed
            .retain(|(_, at)| now.saturating_duration_since(*at) < ttl);
        self.departed.iter().any(|(id, _)| *id == peer.id)
    }

    /// Remembers peers met in successor lists (not this node), most recent last.
    pub fn note_seen(&mut self, peers: &[Peer]) {
        for p in peers {
            if p.id == self.me {
                continue;
            }
            self.seen.retain(|q| q.id != p.id);
            self.seen.push(p.clone());
        }
        let excess = self.seen.len().saturating_sub(LOST_MAX);
        self.seen.drain(..excess);
    }

    /// Forgets a peer met lately that did not answer.
    pub fn forget_seen(&mut self, id: &Id) {
        self.seen.retain(|q| q.id != *id);
    }

    /// The lost peer to probe next, round robin (it goes to the back of the line).
    pub fn next_lost(&mut self) -> Option<Peer> {
        if self.lost.is_empty() {
            return None;
        }
        let l = self.lost.remove(0);
        let peer = l.peer.clone();
        self.lost.push(l);
        Some(peer)
    }

    /// Forgets lost peers silent for `ttl`, but only when this node sees more live nodes
    /// (`live_in_view`, None: more than a full successor list) than it has lost: the
    /// small side of a split cannot tell the rest from dead, and if it forgot them it
    /// would take writes with fewer than R copies that the heal then loses
    /// (tests/netns.rs). Pinned by `a_node_that_sees_few_keeps_its_lost_peers`.
    pub fn expire_lost(&mut self, now: Instant, ttl: Duration, live_in_view: Option<usize>) {
        if live_in_view.is_none_or(|live| live > self.lost.len()) {
            self.lost
                .retain(|l| now.saturating_duration_since(l.since) < ttl);
        }
    }

    /// Every peer this node knows beyond its table, lost ones first, at most `n`: what a
    /// leaving node hands its neighbours.
    pub fn known(&self, n: usize) -> Vec<Peer> {
        self.lost_peers()
            .chain(self.seen.iter())
            .take(n)
            .cloned()
            .collect()
    }

    /// Where a node alone joins again: the address it joined through, then peers met
    /// lately, most recent first; each address once.
    pub fn rejoin_candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = self.joined_via.iter().cloned().collect();
        for p in self.seen.iter().rev() {
            if p.id != self.me && !out.contains(&p.addr) {
                out.push(p.addr.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::peer;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn lost_peers_are_kept_most_recent_last_and_bounded() {
        let t = Instant::now();
        let mut b = PeerBook::new(peer(0).id);
        b.note_lost(&peer(0), t, TTL);
        assert!(b.lost().is_empty(), "a node never loses itself");
        for i in 1..=(LOST_MAX as u8 + 2) {
            b.note_lost(&peer(i), t, TTL);
        }
        assert_eq!(b.lost().len(), LOST_MAX);
        assert_eq!(b.lost()[0].peer, peer(3));
        b.note_lost(&peer(3), t, TTL);
        assert_eq!(b.lost().last().unwrap().peer, peer(3));
        assert_eq!(b.next_lost(), Some(peer(4)));
        assert_eq!(b.lost().last().unwrap().peer, peer(4));
    }

    #[test]
    fn a_departed_peer_is_not_noted_lost() {
        let t = Instant::now();
        let mut b = PeerBook::new(peer(0).id);
        b.note_lost(&peer(1), t, TTL);
        b.note_departed(&peer(1), t);
        assert!(!b.is_lost(&peer(1).id));
        b.note_lost(&peer(1), t + Duration::from_secs(1), TTL);
        assert!(!b.is_lost(&peer(1).id));
        // Once the lifetime is over, a silent peer of that id is lost like any other.
        b.note_lost(&peer(1), t + TTL, TTL);
        assert!(b.is_lost(&peer(1).id));
    }

    #[test]
    fn a_node_that_sees_few_keeps_its_lost_peers() {
        let t = Instant::now();
        let mut b = PeerBook::new(peer(0).id);
        b.note_lost(&peer(1), t, TTL);
        b.note_lost(&peer(2), t, TTL);
        let later = t + TTL;
        b.expire_lost(later, TTL, Some(2));
        assert_eq!(b.lost().len(), 2, "sees 2, lost 2: may be the small side");
        b.expire_lost(later, TTL, Some(3));
        assert!(b.lost().is_empty());
    }

    #[test]
    fn seen_peers_and_rejoin_candidates() {
        let mut b = PeerBook::new(peer(0).id);
        b.note_seen(&[peer(1), peer(0), peer(2), peer(1)]);
        assert_eq!(b.seen(), [peer(2), peer(1)]);
        b.set_joined_via("n2");
        assert_eq!(b.rejoin_candidates(), ["n2", "n1"]);
        b.note_lost(&peer(5), Instant::now(), TTL);
        assert_eq!(b.known(2), [peer(5), peer(2)]);
        b.forget_seen(&peer(2).id);
        assert_eq!(b.seen(), [peer(1)]);
    }
}
