//! The iterative lookup as a state machine. A [`Walk`] says what to do next
//! ([`Action`]): answer a step from the caller's own table, ask a peer
//! `FindSuccessor { key, avoid }`, or stop. The caller does it and feeds the answer back
//! ([`Walk::stepped`], [`Walk::unreachable`]). The peer, its join and reconcile, and the
//! client all drive this one walk; they differ only in where it starts and in what a
//! dead peer does to it, which the constructor fixes.

use super::routing::Step;
use crate::id::Id;
use crate::proto::Peer;

/// Longest lookup path before giving up (a converged ring of a million nodes needs ~20).
pub const MAX_LOOKUP_HOPS: usize = 64;

/// What the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer a step from the caller's own routing table
    /// (`Routing::step(key, walk.avoid())`) and feed it to [`Walk::stepped`].
    Local,
    /// Send `FindSuccessor { key, avoid: walk.avoid() }` to this address and feed the
    /// answer to [`Walk::stepped`] (or, when it does not answer, [`Walk::unreachable`]).
    Ask(String),
    /// `from`'s successor owns the key; `successors` lists it first (as answered: the
    /// caller filters what it must).
    Found {
        from: Peer,
        successors: Vec<Peer>,
        /// Peers asked.
        hops: u32,
    },
    /// No answer within the bounds.
    NotConverged,
}

/// Where a walk starts and what a dead peer does to it.
#[derive(Clone, Debug)]
enum Start {
    /// From the caller's own table (a ring member). The path of peers that said "ask
    /// next" is a stack: a dead one is popped and avoided, and the previous one asked
    /// again; a step that points back at the caller starts again from its table.
    Table,
    /// From a member at an address (a node that joins, or probes another ring). The
    /// caller's own id is avoided: a restarted node may still sit in others' lists.
    Member,
    /// From a client's guess. A dead peer is avoided and the walk starts again from a
    /// member of `members` not found dead (going back to one seed spent every hop on it
    /// once the seed itself died), or else from `fallback`.
    Client {
        members: Vec<Peer>,
        fallback: String,
    },
}

/// One lookup of `key`: see the module doc.
#[derive(Clone, Debug)]
pub struct Walk {
    key: Id,
    me: Option<Id>,
    start: Start,
    avoid: Vec<Id>,
    /// Table walks: the peers that answered "ask next", the last to be asked next.
    /// Member walks: every peer met on the way (live a moment ago), for the caller.
    path: Vec<Peer>,
    /// Member and client walks: the address asked next.
    at: String,
    hops: u32,
    steps: usize,
    max_steps: usize,
    gave_up: bool,
    found: Option<(Peer, Vec<Peer>)>,
}

impl Walk {
    fn new(key: Id, me: Option<Id>, start: Start, at: String, max_steps: usize) -> Walk {
        Walk {
            key,
            me,
            start,
            avoid: Vec::new(),
            path: Vec::new(),
            at,
            hops: 0,
            steps: 0,
            max_steps,
            gave_up: false,
            found: None,
        }
    }

    /// A member's lookup from its own table. With `avoid_self` the member counts itself
    /// gone (a graceful leave).
    pub fn from_table(key: Id, me: Id, avoid_self: bool) -> Walk {
        let mut w = Walk::new(
            key,
            Some(me),
            Start::Table,
            String::new(),
            2 * MAX_LOOKUP_HOPS,
        );
        if avoid_self {
            w.avoid.push(me);
        }
        w
    }

    /// A lookup that `me` (not yet, or not surely, on the ring asked) starts at the member
    /// at `addr`.
    pub fn from_member(key: Id, me: Id, addr: &str) -> Walk {
        let mut w = Walk::new(
            key,
            Some(me),
            Start::Member,
            addr.to_string(),
            MAX_LOOKUP_HOPS,
        );
        w.avoid.push(me);
        w
    }

    /// A client's lookup, starting at `first` (its guess of the key's primary), with
    /// `members` to start again from when a peer is dead, and `fallback` when none is left.
    pub fn from_client(key: Id, first: String, members: Vec<Peer>, fallback: String) -> Walk {
        Walk::new(
            key,
            None,
            Start::Client { members, fallback },
            first,
            MAX_LOOKUP_HOPS,
        )
    }

    pub fn key(&self) -> &Id {
        &self.key
    }

    /// The peers to skip: the `avoid` of every request this walk sends.
    pub fn avoid(&self) -> &[Id] {
        &self.avoid
    }

    /// Member walks: the peers met on the way, the answering one last.
    pub fn path(&self) -> &[Peer] {
        &self.path
    }

    /// The address the last [`Action::Ask`] went to.
    pub fn asked(&self) -> &str {
        match self.start {
            Start::Table => self.path.last().map(|p| p.addr.as_str()).unwrap_or(""),
            _ => &self.at,
        }
    }

    /// What to do next.
    pub fn next_action(&mut self) -> Action {
        if let Some((from, successors)) = self.found.take() {
            return Action::Found {
                from,
                successors,
                hops: self.hops,
            };
        }
        if self.gave_up || self.steps >= self.max_steps {
            return Action::NotConverged;
        }
        self.steps += 1;
        match self.start {
            Start::Table => match self.path.last() {
                None => Action::Local,
                Some(p) => {
                    self.hops += 1;
                    Action::Ask(p.addr.clone())
                }
            },
            _ => {
                self.hops += 1;
                Action::Ask(self.at.clone())
            }
        }
    }

    /// The answer to the last [`Action`]: a step from the caller's table or a peer's.
    pub fn stepped(&mut self, step: Step) {
        match step {
            Step::Found { from, successors } => {
                if matches!(self.start, Start::Member) {
                    self.path.push(from.clone());
                }
                self.found = Some((from, successors));
            }
            Step::Next(peer) => match &self.start {
                Start::Table if Some(peer.id) == self.me => self.path.clear(),
                Start::Table => {
                    if self.path.len() >= MAX_LOOKUP_HOPS {
                        self.gave_up = true;
                    } else {
                        self.path.push(peer);
                    }
                }
                Start::Member if Some(peer.id) == self.me => self.avoid.push(peer.id),
                Start::Member => {
                    self.at = peer.addr.clone();
                    self.path.push(peer);
                }
                Start::Client { .. } => self.at = peer.addr,
            },
        }
    }

    /// The peer last asked did not answer. Member walks have no way round it: their
    /// callers give up.
    pub fn unreachable(&mut self) {
        match &self.start {
            Start::Table => {
                if let Some(dead) = self.path.pop() {
                    self.avoid.push(dead.id);
                }
            }
            Start::Member => self.gave_up = true,
            Start::Client { members, fallback } => {
                if let Some(p) = members.iter().find(|p| p.addr == self.at) {
                    self.avoid.push(p.id);
                }
                let failed = &self.at;
                self.at = members
                    .iter()
                    .find(|p| !self.avoid.contains(&p.id) && p.addr != *failed)
                    .map(|p| p.addr.clone())
                    .unwrap_or_else(|| fallback.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::routing::ConvergedRing;
    use crate::ring::testing::{id, peer};

    #[test]
    fn a_table_walk_backs_up_past_a_dead_peer() {
        let mut w = Walk::from_table(id(50), id(10), false);
        assert_eq!(w.next_action(), Action::Local);
        w.stepped(Step::Next(peer(30)));
        assert_eq!(w.next_action(), Action::Ask("n30".into()));
        w.stepped(Step::Next(peer(40)));
        assert_eq!(w.next_action(), Action::Ask("n40".into()));
        w.unreachable();
        assert_eq!(w.avoid(), [id(40)]);
        // Back to the peer before it, which now avoids the dead one.
        assert_eq!(w.next_action(), Action::Ask("n30".into()));
        w.stepped(Step::Found {
            from: peer(45),
            successors: vec![peer(60)],
        });
        match w.next_action() {
            Action::Found {
                from,
                successors,
                hops,
            } => {
                assert_eq!(from.id, id(45));
                assert_eq!(successors[0].id, id(60));
                assert_eq!(hops, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_step_back_to_the_caller_starts_again_from_its_table() {
        let mut w = Walk::from_table(id(50), id(10), false);
        w.next_action();
        w.stepped(Step::Next(peer(30)));
        w.next_action();
        w.stepped(Step::Next(peer(10)));
        assert_eq!(w.next_action(), Action::Local);
    }

    #[test]
    fn walks_end_within_their_bounds() {
        // A ring that keeps pointing onwards never ends a walk by itself.
        let mut w = Walk::from_table(id(50), id(10), false);
        let mut actions = 0;
        while !matches!(w.next_action(), Action::NotConverged | Action::Found { .. }) {
            actions += 1;
            assert!(actions <= 2 * MAX_LOOKUP_HOPS, "unbounded");
            w.stepped(Step::Next(peer((actions % 200) as u8 + 11)));
        }
        let mut m = Walk::from_member(id(50), id(10), "n20");
        let mut asks = 0;
        while let Action::Ask(_) = m.next_action() {
            asks += 1;
            m.stepped(Step::Next(peer(20)));
        }
        assert_eq!(asks, MAX_LOOKUP_HOPS);
    }

    #[test]
    fn a_member_walk_avoids_the_caller_and_remembers_its_path() {
        let mut w = Walk::from_member(id(10), id(10), "seed");
        assert_eq!(w.avoid(), [id(10)]);
        assert_eq!(w.next_action(), Action::Ask("seed".into()));
        w.stepped(Step::Next(peer(30)));
        assert_eq!(w.next_action(), Action::Ask("n30".into()));
        w.stepped(Step::Next(peer(10)));
        assert_eq!(w.avoid(), [id(10), id(10)]);
        assert_eq!(w.next_action(), Action::Ask("n30".into()));
        w.stepped(Step::Found {
            from: peer(5),
            successors: vec![peer(20)],
        });
        assert!(matches!(w.next_action(), Action::Found { .. }));
        assert_eq!(
            w.path().iter().map(|p| p.id).collect::<Vec<_>>(),
            [id(30), id(5)]
        );
        let mut dead = Walk::from_member(id(10), id(10), "seed");
        dead.next_action();
        dead.unreachable();
        assert_eq!(dead.next_action(), Action::NotConverged);
    }

    #[test]
    fn a_client_walk_starts_again_from_a_member_not_found_dead() {
        let members = vec![peer(10), peer(20), peer(30)];
        let mut w = Walk::from_client(id(25), "n30".into(), members, "seed".into());
        assert_eq!(w.next_action(), Action::Ask("n30".into()));
        w.unreachable();
        assert_eq!(w.avoid(), [id(30)]);
        assert_eq!(w.next_action(), Action::Ask("n10".into()));
        w.unreachable();
        assert_eq!(w.next_action(), Action::Ask("n20".into()));
        w.unreachable();
        assert_eq!(w.next_action(), Action::Ask("seed".into()));
    }

    #[test]
    fn table_walks_over_a_converged_ring_find_the_owner() {
        let ids: Vec<Id> = (0..40u8).map(|b| id(b * 6 + 1)).collect();
        let ring = ConvergedRing::new(&ids, 4);
        for start in 0..ring.tables.len() {
            for k in [0u8, 7, 100, 239, 255] {
                let key = id(k);
                let (_, owner) = ring.lookup(start, &key);
                let want = *crate::ring::placement::owner(&ids, &key).unwrap();
                assert_eq!(owner, want);
            }
        }
    }
}
