//! The routing table of one node: predecessor, successor list and fingers. Pure: no I/O,
//! so lookups and updates are tested (and simulated at 1,000 nodes) without a network.

use super::lookup::{Action, Walk};
use crate::id::{Id, ID_BITS};
use crate::proto::Peer;

/// One step of a lookup answered from this table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `from`'s successor owns the key; `successors` lists the owner first.
    Found { from: Peer, successors: Vec<Peer> },
    /// Ask this closer peer.
    Next(Peer),
}

#[derive(Clone, Debug)]
pub struct Routing {
    pub me: Peer,
    pub predecessor: Option<Peer>,
    /// Never empty: a lone node is its own successor.
    pub successors: Vec<Peer>,
    /// `fingers[i]` is the first node succeeding `me + 2^i`, when known.
    pub fingers: Vec<Option<Peer>>,
    pub list_len: usize,
    /// Counts changes of the predecessor made through [`Routing::set_predecessor`], so
    /// the lock service can tell whether it saw every change of its range
    /// (`ring::locks::RangeLog`).
    pub predecessor_changes: u64,
}

impl Routing {
    pub fn new(me: Peer, list_len: usize) -> Routing {
        Routing {
            successors: vec![me.clone()],
            me,
            predecessor: None,
            fingers: vec![None; ID_BITS],
            list_len: list_len.max(1),
            predecessor_changes: 0,
        }
    }

    /// Sets the predecessor, counting the change (see `predecessor_changes`).
    pub fn set_predecessor(&mut self, p: Option<Peer>) {
        if self.predecessor.as_ref().map(|q| q.id) != p.as_ref().map(|q| q.id) {
            self.predecessor_changes += 1;
        }
        self.predecessor = p;
    }

    pub fn successor(&self) -> &Peer {
        &self.successors[0]
    }

    /// A node with no other node in its table: its own successor, and no predecessor.
    pub fn is_alone(&self) -> bool {
        self.successor().id == self.me.id && self.predecessor.is_none()
    }

    /// Answers one lookup step for `key`, ignoring peers in `avoid` (found dead by the
    /// caller). Falls back on the successor list when fingers are stale or missing.
    pub fn step(&self, key: &Id, avoid: &[Id]) -> Step {
        let alive = |p: &&Peer| !avoid.contains(&p.id);
        // We own it: answer as our predecessor would, saving the hop around the ring.
        if let Some(pred) = &self.predecessor {
            if key.in_open_closed(&pred.id, &self.me.id) && !avoid.contains(&self.me.id) {
                let mut list = vec![self.me.clone()];
                list.extend(
                    self.successors
                        .iter()
                        .filter(|p| p.id != self.me.id)
                        .cloned(),
                );
                list.truncate(self.list_len);
                return Step::Found {
                    from: pred.clone(),
                    successors: list,
                };
            }
        }
        let live: Vec<Peer> = self.successors.iter().filter(alive).cloned().collect();
        if let Some(first) = live.first() {
            if key.in_open_closed(&self.me.id, &first.id) {
                return Step::Found {
                    from: self.me.clone(),
                    successors: live,
                };
            }
        } else {
            return Step::Found {
                from: self.me.clone(),
                successors: vec![],
            };
        }
        match self.closest_preceding_node(key, avoid) {
            Some(p) => Step::Next(p),
            None => Step::Found {
                from: self.me.clone(),
                successors: live,
            },
        }
    }

    /// The known peer closest before `key` (fingers and successors alike), if any is
    /// closer than this node.
    pub fn closest_preceding_node(&self, key: &Id, avoid: &[Id]) -> Option<Peer> {
        let candidates = self
            .fingers
            .iter()
            .rev()
            .flatten()
            .chain(self.successors.iter());
        let mut best: Option<&Peer> = None;
        for p in candidates {
            if avoid.contains(&p.id) || p.id == self.me.id || !p.id.in_open(&self.me.id, key) {
                continue;
            }
            // The closer to key, the further from me along the ring.
            if best.is_none_or(|b| p.id.in_open(&b.id, key)) {
                best = Some(p);
            }
        }
        best.cloned()
    }

    /// Sets the successor list to `first` followed by `first`'s own list, cut where that
    /// list comes back round to this node: on a ring smaller than the list, what follows
    /// is this node's own (older) list, and copying it would keep a dead node in every
    /// list forever, passed from one node to the next by stabilize.
    pub fn set_successors(&mut self, first: Peer, tail: &[Peer]) {
        let mut list = vec![first];
        for p in tail {
            if list.len() >= self.list_len || p.id == self.me.id {
                break;
            }
            if list.iter().any(|q| q.id == p.id) {
                continue;
            }
            list.push(p.clone());
        }
        if list[0].id == self.me.id && list.len() > 1 {
            list.remove(0);
        }
        self.successors = list;
    }

    /// The paper's notify: adopt `candidate` as predecessor if it is closer.
    /// Returns true when the predecessor changed.
    pub fn notify(&mut self, candidate: &Peer) -> bool {
        if candidate.id == self.me.id {
            return false;
        }
        let closer = match &self.predecessor {
            None => true,
            Some(p) => candidate.id.in_open(&p.id, &self.me.id),
        };
        if closer {
            self.set_predecessor(Some(candidate.clone()));
        }
        // A lone node learns of its first partner this way.
        if self.successors.len() == 1 && self.successors[0].id == self.me.id {
            self.successors = vec![candidate.clone()];
        }
        closer
    }

    /// Forgets a peer found dead or gone, everywhere it appears.
    pub fn remove(&mut self, id: &Id) {
        if self.predecessor.as_ref().is_some_and(|p| &p.id == id) {
            self.set_predecessor(None);
        }
        for f in self.fingers.iter_mut() {
            if f.as_ref().is_some_and(|p| &p.id == id) {
                *f = None;
            }
        }
        self.successors.retain(|p| &p.id != id);
        if self.successors.is_empty() {
            self.successors.push(self.me.clone());
        }
    }

    /// Records that `peer` succeeds `me + 2^i`, and fills the fingers above `i` that the
    /// same peer also succeeds (saving a lookup each).
    pub fn set_finger(&mut self, i: usize, peer: Peer) -> usize {
        self.fingers[i] = Some(peer.clone());
        let mut j = i + 1;
        // peer succeeds me + 2^i, so no node lies in [me + 2^i, peer): every later start
        // up to peer has the same successor.
        while j < ID_BITS && self.me.id.add_pow2(j).in_open_closed(&self.me.id, &peer.id) {
            self.fingers[j] = Some(peer.clone());
            j += 1;
        }
        j
    }

    /// Distinct peers this table knows, for pictures and diagnostics.
    pub fn distinct_fingers(&self) -> Vec<(usize, Peer)> {
        let mut out: Vec<(usize, Peer)> = Vec::new();
        for (i, f) in self.fingers.iter().enumerate() {
            if let Some(p) = f {
                if out.last().is_none_or(|(_, q)| q.id != p.id) {
                    out.push((i, p.clone()));
                }
            }
        }
        out
    }
}

/// Builds the exact tables of a ring of `ids` (as a converged ring has), for simulation.
pub fn converged_tables(ids: &[Id], list_len: usize) -> Vec<Routing> {
    let mut sorted: Vec<Id> = ids.to_vec();
    sorted.sort();
    let peer = |id: Id| Peer {
        id,
        addr: id.short(),
    };
    let successor_of = |key: &Id| -> usize {
        match sorted.binary_search(key) {
            Ok(i) => i,
            Err(i) if i == sorted.len() => 0,
            Err(i) => i,
        }
    };
    let n = sorted.len();
    (0..n)
        .map(|i| {
            let mut r = Routing::new(peer(sorted[i]), list_len);
            r.predecessor = Some(peer(sorted[(i + n - 1) % n]));
            r.successors = (1..=list_len.min(n.saturating_sub(1)).max(1))
                .map(|k| peer(sorted[(i + k) % n]))
                .collect();
            for b in 0..ID_BITS {
                r.fingers[b] = Some(peer(sorted[successor_of(&sorted[i].add_pow2(b))]));
            }
            r
        })
        .collect()
}

/// A converged ring's exact tables, to drive lookups over without a network (tests, and
/// `examples/lookup_hops.rs`).
pub struct ConvergedRing {
    pub tables: Vec<Routing>,
    by_addr: std::collections::HashMap<String, usize>,
}

impl ConvergedRing {
    pub fn new(ids: &[Id], list_len: usize) -> ConvergedRing {
        let tables = converged_tables(ids, list_len);
        let by_addr = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.me.addr.clone(), i))
            .collect();
        ConvergedRing { tables, by_addr }
    }

    /// The member lookup of `key` from `tables[start]`, driven as a node drives it (a
    /// [`Walk`] from its own table): `(hops, owner)`.
    pub fn lookup(&self, start: usize, key: &Id) -> (u32, Id) {
        let mut walk = Walk::from_table(*key, self.tables[start].me.id, false);
        loop {
            let step = match walk.next_action() {
                Action::Local => self.tables[start].step(key, walk.avoid()),
                Action::Ask(addr) => self.tables[self.by_addr[&addr]].step(key, walk.avoid()),
                Action::Found {
                    successors, hops, ..
                } => return (hops, successors[0].id),
                Action::NotConverged => panic!("lookup of {key:?} did not converge"),
            };
            walk.stepped(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner(sorted: &[Id], key: &Id) -> Id {
        *crate::ring::placement::owner(sorted, key).expect("a ring")
    }

    #[test]
    fn a_lone_node_owns_everything_and_learns_its_first_partner() {
        let me = Peer {
            id: Id::hash(b"a"),
            addr: "a".into(),
        };
        let mut r = Routing::new(me.clone(), 4);
        match r.step(&Id::hash(b"k"), &[]) {
            Step::Found { successors, .. } => assert_eq!(successors[0], me),
            s => panic!("{s:?}"),
        }
        let other = Peer {
            id: Id::hash(b"b"),
            addr: "b".into(),
        };
        assert!(r.notify(&other));
        assert_eq!(r.successor(), &other);
        assert_eq!(r.predecessor.as_ref(), Some(&other));
    }

    #[test]
    fn removing_the_successor_falls_back_on_the_list() {
        let ids: Vec<Id> = (0..8u8).map(|i| Id::hash(&[i])).collect();
        let mut tables = converged_tables(&ids, 4);
        let t = &mut tables[0];
        let dead = t.successor().id;
        let next = t.successors[1].clone();
        t.remove(&dead);
        assert_eq!(t.successor(), &next);
        assert!(t.fingers.iter().flatten().all(|p| p.id != dead));
    }

    #[test]
    fn a_successor_list_stops_where_it_wraps_round_to_me() {
        let peer = |b: u8| Peer {
            id: Id::hash(&[b]),
            addr: b.to_string(),
        };
        let (me, a, b, dead) = (peer(0), peer(1), peer(2), peer(3));
        let mut r = Routing::new(me.clone(), 8);
        // A ring of three live nodes: a's list wraps round to me, then repeats mine,
        // which still names a node that died. It must not come back.
        r.set_successors(a.clone(), &[b.clone(), me.clone(), dead.clone(), a.clone()]);
        assert_eq!(r.successors, vec![a, b]);
    }

    #[test]
    fn set_finger_fills_the_fingers_the_same_peer_covers() {
        let ids: Vec<Id> = (0..16u8).map(|i| Id::hash(&[i])).collect();
        let exact = converged_tables(&ids, 4);
        let mut t = exact[3].clone();
        t.fingers = vec![None; ID_BITS];
        let mut i = 0;
        while i < ID_BITS {
            let p = exact[3].fingers[i].clone().unwrap();
            i = t.set_finger(i, p);
        }
        assert_eq!(t.fingers, exact[3].fingers);
    }

    #[test]
    fn lookups_on_a_thousand_nodes_are_right_and_short() {
        let ids: Vec<Id> = (0..1000u32).map(|i| Id::hash(&i.to_be_bytes())).collect();
        let ring = ConvergedRing::new(&ids, 8);
        let mut sorted = ids.clone();
        sorted.sort();
        let mut total = 0u64;
        for k in 0..2000u32 {
            let key = Id::hash(&(k + 1_000_000).to_be_bytes());
            let (hops, found) = ring.lookup((k as usize * 7) % 1000, &key);
            assert_eq!(found, owner(&sorted, &key));
            total += hops as u64;
        }
        let mean = total as f64 / 2000.0;
        assert!(mean <= 0.5 * (1000f64).log2() + 1.0, "mean hops {mean}");
    }

    proptest! {
        #[test]
        fn every_start_finds_the_owner(n in 1usize..40, seed in any::<u64>(), key in any::<[u8; 20]>()) {
            let ids: Vec<Id> = (0..n).map(|i| Id::hash(&[seed.to_be_bytes(), (i as u64).to_be_bytes()].concat())).collect();
            let ring = ConvergedRing::new(&ids, 4);
            let mut sorted = ids.clone();
            sorted.sort();
            let key = Id(key);
            for start in 0..n {
                prop_assert_eq!(ring.lookup(start, &key).1, owner(&sorted, &key));
            }
        }
    }
}
