//! Placement: a key lives on its successor (the first member at or after it, wrapping
//! round the ring) and the next R-1 members. This is the one "holders of k" of the
//! project: repair, the client's view, garbage collection, the simulation's checks and
//! the test harness all ask it.

use crate::id::Id;
use crate::proto::Peer;

/// Anything that sits on the ring at an id.
pub trait OnRing {
    fn ring_id(&self) -> Id;
}

impl OnRing for Id {
    fn ring_id(&self) -> Id {
        *self
    }
}

impl OnRing for Peer {
    fn ring_id(&self) -> Id {
        self.id
    }
}

/// A member and something the caller keeps with it (the simulation's node index).
impl<T> OnRing for (Id, T) {
    fn ring_id(&self) -> Id {
        self.0
    }
}

/// Index in `sorted` (members sorted by id) of the key's successor; None when empty.
pub fn owner_index<T: OnRing>(sorted: &[T], key: &Id) -> Option<usize> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted.partition_point(|m| m.ring_id() < *key) % sorted.len())
}

/// The first `n` members at or after `key` in ring order, the key's successor first
/// (all of them when there are fewer than `n`). `sorted` is sorted by id, no repeats.
pub fn holders<'a, T: OnRing>(
    sorted: &'a [T],
    key: &Id,
    n: usize,
) -> impl Iterator<Item = &'a T> + 'a {
    let start = owner_index(sorted, key).unwrap_or(0);
    let len = sorted.len();
    (0..n.min(len)).map(move |i| &sorted[(start + i) % len])
}

/// The key's successor among `sorted`; None when empty.
pub fn owner<'a, T: OnRing>(sorted: &'a [T], key: &Id) -> Option<&'a T> {
    owner_index(sorted, key).map(|i| &sorted[i])
}

/// The holders of a key from a lookup's answer: `successors` (the key's successor
/// first), distinct, at most `r`; and `from` (the node that answered, the key's
/// predecessor) when the list is short of `r`. A successor list never names its own
/// node, so on a ring of R nodes or fewer `from`'s list stops short of it although the
/// ring wraps back to it: without it, a node of a small ring counts itself out and
/// drops its copy. `from_gone` (a leaving node answering for itself) leaves it out.
/// Pinned by `short_lists_wrap_back_to_the_node_that_answered`.
pub fn holders_from_lookup(
    from: &Peer,
    successors: Vec<Peer>,
    r: usize,
    from_gone: bool,
) -> Vec<Peer> {
    let mut holders: Vec<Peer> = Vec::new();
    for p in successors {
        if holders.len() < r && !holders.iter().any(|h| h.id == p.id) {
            holders.push(p);
        }
    }
    if holders.len() < r && !from_gone && !holders.iter().any(|h| h.id == from.id) {
        holders.push(from.clone());
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::{id, peer};
    use proptest::prelude::*;

    fn ids<'a, T: OnRing + 'a>(it: impl Iterator<Item = &'a T>) -> Vec<Id> {
        it.map(|m| m.ring_id()).collect()
    }

    #[test]
    fn holders_wrap_around_the_ring() {
        let ring = [id(10), id(20), id(30)];
        assert_eq!(ids(holders(&ring, &id(15), 2)), [id(20), id(30)]);
        assert_eq!(ids(holders(&ring, &id(20), 2)), [id(20), id(30)]);
        assert_eq!(ids(holders(&ring, &id(31), 2)), [id(10), id(20)]);
        assert_eq!(holders(&ring, &id(5), 9).count(), 3);
        assert_eq!(holders(&[] as &[Id], &id(5), 3).count(), 0);
        assert_eq!(owner(&ring, &id(31)), Some(&id(10)));
    }

    #[test]
    fn short_lists_wrap_back_to_the_node_that_answered() {
        // A ring of three, R = 3: 10's successor list names 20 and 30 only.
        let got = holders_from_lookup(&peer(10), vec![peer(20), peer(30)], 3, false);
        assert_eq!(ids(got.iter()), [id(20), id(30), id(10)]);
        // Leaving, the answering node counts itself out.
        let got = holders_from_lookup(&peer(10), vec![peer(20), peer(30)], 3, true);
        assert_eq!(ids(got.iter()), [id(20), id(30)]);
        // A full list is cut at R, repeats skipped, `from` not added.
        let list = vec![peer(20), peer(20), peer(30), peer(40), peer(50)];
        let got = holders_from_lookup(&peer(10), list, 3, false);
        assert_eq!(ids(got.iter()), [id(20), id(30), id(40)]);
    }

    proptest! {
        /// The holders are the successor of the key and the members after it: no member
        /// between the key and its successor, and the list follows ring order.
        #[test]
        fn the_owner_is_the_first_member_at_or_after_the_key(
            mut members in proptest::collection::btree_set(any::<[u8; 20]>(), 1..30),
            key in any::<[u8; 20]>(),
            n in 1usize..6,
        ) {
            let key = Id(key);
            let sorted: Vec<Id> = std::mem::take(&mut members).into_iter().map(Id).collect();
            let got = ids(holders(&sorted, &key, n));
            prop_assert_eq!(got.len(), n.min(sorted.len()));
            let first = got[0];
            prop_assert!(sorted.iter().all(|m| !m.in_open(&key.pred(), &first) || *m == first));
            let at = sorted.iter().position(|m| *m == first).unwrap();
            for (i, g) in got.iter().enumerate() {
                prop_assert_eq!(*g, sorted[(at + i) % sorted.len()]);
            }
        }
    }
}
