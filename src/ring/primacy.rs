//! When a node may act as a key's primary, and how many copies its writes need.
//!
//! A write is acknowledged by its primary once min(R, live) copies are durable. Two
//! nodes that each take themselves for a key's primary would each acknowledge a version
//! of the same number with their own replicas, and one would later win over the other:
//! an acknowledged write lost. So a primary checks its range with its neighbours before
//! each write ([`neighbour_doubt`]) and refuses to write while it may be cut off from
//! most of the ring ([`outnumbered`]); these are the rules, the node carries the
//! messages. The simulation's record checks pin them (`tests/sim.rs`).

use super::book::PeerBook;
use super::routing::Routing;
use crate::id::Id;
use crate::proto::{NodeState, Peer};

/// Whether `me` is the primary of `key` as far as its table knows. Without a
/// predecessor (it just joined, or its predecessor died) it does not know its range:
/// only a node alone on its ring, that has lost nobody, claims every key.
pub fn is_primary(key: &Id, routing: &Routing, nothing_lost: bool) -> bool {
    match &routing.predecessor {
        Some(p) => key.in_open_closed(&p.id, &routing.me.id),
        None => routing.successor().id == routing.me.id && nothing_lost,
    }
}

/// Copies a write needs: R, or every live node when fewer. Lost peers count as live
/// (they may only be cut off), so a node split from its ring does not take writes with
/// fewer than R copies.
pub fn required_copies(replicas: usize, reachable_others: usize, lost: usize) -> usize {
    replicas.min(1 + reachable_others + lost)
}

/// Live nodes a node sees, itself included: its distinct successors, when the list is
/// not full (a full list means a ring larger than the list: None).
pub fn live_in_view(routing: &Routing) -> Option<usize> {
    let others = routing
        .successors
        .iter()
        .filter(|p| p.id != routing.me.id)
        .count();
    (others < routing.list_len).then_some(1 + others)
}

/// When a node sees no more live nodes than it has lost (and does not see again), the
/// two counts: it may be on the small side of a split, one that message loss cut as well
/// as a partition. Its neighbours can agree with it all round and still form a ring of
/// their own, so it takes no writes as a primary until it sees most of the ring again.
/// Pinned by `a_node_that_lost_as_many_as_it_sees_is_outnumbered`.
pub fn outnumbered(routing: &Routing, book: &PeerBook) -> Option<(usize, usize)> {
    let live = live_in_view(routing)?;
    let in_view = |p: &Peer| {
        routing.successors.iter().any(|q| q.id == p.id)
            || routing.predecessor.as_ref().is_some_and(|q| q.id == p.id)
    };
    let lost = book.lost_peers().filter(|p| !in_view(p)).count();
    (lost > 0 && lost >= live).then_some((live, lost))
}

/// The neighbours' views that decide whether `me` may write as primary of `key` with
/// `replicas` (its first R-1 distinct successors) as replicas. Returns why not, if not:
/// - the predecessor's successor is a node between the two whose range holds the key;
/// - the predecessor's successor lies beyond `me` (it does not know `me`, so lookups
///   through it reach a node that takes itself for the primary of this range);
/// - the successor's predecessor is a node between `me` and it (this successor list is
///   stale, so its replicas are not the key's);
/// - the successor's own list does not name `replicas` next (a list copied from a stale
///   view skips the nodes that hold the record).
///
/// `from_predecessor`/`from_successor` are None when that neighbour is `me` itself.
/// Pinned by the `neighbour_doubt_*` tests below and the simulation.
pub fn neighbour_doubt(
    me: &Id,
    key: &Id,
    from_predecessor: Option<&(Peer, NodeState)>,
    from_successor: Option<&(Peer, NodeState)>,
    replicas: &[Id],
    want: usize,
) -> Option<String> {
    if let Some((pred, st)) = from_predecessor {
        if let Some(next) = st.successors.first() {
            if next.id != *me
                && next.id.in_open(&pred.id, me)
                && key.in_open_closed(&pred.id, &next.id)
            {
                return Some(format!("{} is, says the predecessor", next.addr));
            }
            if next.id != *me && !next.id.in_open(&pred.id, me) {
                return Some(format!(
                    "the predecessor {} takes {} for its successor",
                    pred.addr, next.addr
                ));
            }
        }
    }
    if let Some((succ, st)) = from_successor {
        if let Some(prev) = &st.predecessor {
            if prev.id != *me && prev.id.in_open(me, &succ.id) {
                return Some(format!(
                    "its successor list is settling ({} lies before {})",
                    prev.addr, succ.addr
                ));
            }
        }
        let mine: Vec<Id> = replicas.iter().copied().take(want).collect();
        let mut theirs: Vec<Id> = vec![succ.id];
        for p in &st.successors {
            if p.id != *me && !theirs.contains(&p.id) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::{id, peer, state};

    fn table(me: u8, pred: Option<u8>, succ: &[u8], list_len: usize) -> Routing {
        let mut r = Routing::new(peer(me), list_len);
        r.predecessor = pred.map(peer);
        if !succ.is_empty() {
            r.successors = succ.iter().map(|b| peer(*b)).collect();
        }
        r
    }

    #[test]
    fn a_node_is_primary_of_its_range_only() {
        let r = table(30, Some(20), &[40, 50], 4);
        assert!(is_primary(&id(25), &r, true));
        assert!(is_primary(&id(30), &r, true));
        assert!(!is_primary(&id(20), &r, true));
        // Without a predecessor only a lone node that lost nobody claims a key.
        let lone = table(30, None, &[], 4);
        assert!(is_primary(&id(99), &lone, true));
        assert!(!is_primary(&id(99), &lone, false));
        assert!(!is_primary(&id(25), &table(30, None, &[40], 4), true));
    }

    #[test]
    fn writes_need_r_copies_or_every_live_node() {
        assert_eq!(required_copies(3, 5, 0), 3);
        assert_eq!(required_copies(3, 1, 0), 2);
        assert_eq!(required_copies(3, 1, 4), 3, "lost peers may be live");
    }

    #[test]
    fn a_node_that_lost_as_many_as_it_sees_is_outnumbered() {
        let r = table(30, Some(20), &[40], 4);
        let mut book = PeerBook::new(id(30));
        let t = std::time::Instant::now();
        let ttl = std::time::Duration::from_secs(60);
        assert_eq!(outnumbered(&r, &book), None);
        book.note_lost(&peer(50), t, ttl);
        assert_eq!(outnumbered(&r, &book), None, "sees 2, lost 1");
        book.note_lost(&peer(60), t, ttl);
        assert_eq!(outnumbered(&r, &book), Some((2, 2)));
        // A lost peer that is in view again does not count.
        book.note_lost(&peer(40), t, ttl);
        assert_eq!(outnumbered(&r, &book), Some((2, 2)));
        // A full successor list: a large ring, never outnumbered.
        let full = table(30, Some(20), &[40, 50, 60, 70], 4);
        assert_eq!(outnumbered(&full, &book), None);
    }

    #[test]
    fn neighbour_doubt_spots_a_node_between_predecessor_and_me() {
        // 20 says its successor is 25, which lies between 20 and me (30) and owns 24.
        let pred = (peer(20), state(20, Some(10), &[25, 30]));
        assert!(neighbour_doubt(&id(30), &id(24), Some(&pred), None, &[], 2).is_some());
        // Key 28 is still mine, but 20 takes 25 for its successor: lookups through 20
        // find 25, fine; 28 lies beyond 25, so no doubt from the first rule.
        assert!(neighbour_doubt(&id(30), &id(28), Some(&pred), None, &[], 2).is_none());
        // 20's successor lies beyond me: 20 does not know me.
        let far = (peer(20), state(20, Some(10), &[40]));
        let why = neighbour_doubt(&id(30), &id(28), Some(&far), None, &[], 2).unwrap();
        assert!(why.contains("takes n40"), "{why}");
    }

    #[test]
    fn neighbour_doubt_spots_a_stale_successor_list() {
        let me = id(30);
        // My successor 40 has 35 for predecessor: my list skips 35.
        let succ = (peer(40), state(40, Some(35), &[50, 60]));
        assert!(neighbour_doubt(&me, &id(28), None, Some(&succ), &[id(40), id(50)], 2).is_some());
        // Agreeing lists: no doubt.
        let ok = (peer(40), state(40, Some(30), &[50, 60]));
        assert!(neighbour_doubt(&me, &id(28), None, Some(&ok), &[id(40), id(50)], 2).is_none());
        // My replicas are not the ones the successor names next.
        let other = (peer(40), state(40, Some(30), &[55, 60]));
        let why = neighbour_doubt(&me, &id(28), None, Some(&other), &[id(40), id(50)], 2).unwrap();
        assert!(why.contains("other successors"), "{why}");
    }
}
