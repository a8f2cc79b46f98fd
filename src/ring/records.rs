//! Which copy of a record to keep when several meet: the one rule, used by the primary
//! when it catches up from its replicas and by the client when it reads replicas
//! because the primary is down.
//!
//! The highest version wins. Two different bodies under one version can meet: a write
//! that failed and could not be taken back everywhere, next to an acknowledged one. An
//! acknowledged write reached R nodes and a failed one fewer, so within the highest
//! version the body most copies hold wins; on a tie, the caller's own (`local`).

use crate::proto::Record;

/// The copy to keep among `copies`: see the module doc. Pinned by
/// `the_body_most_copies_hold_wins_a_version_tie`.
pub fn newest_copy(
    copies: &[(u64, Record)],
    local: Option<&(u64, Record)>,
) -> Option<(u64, Record)> {
    let top = copies.iter().map(|(v, _)| *v).max()?;
    let mut best: Option<(&(u64, Record), usize)> = None;
    for c in copies.iter().filter(|(v, _)| *v == top) {
        let n = copies.iter().filter(|o| *o == c).count();
        let better = match best {
            None => true,
            Some((b, bn)) => n > bn || (n == bn && Some(c) == local && Some(b) != local),
        };
        if better {
            best = Some((c, n));
        }
    }
    best.map(|(c, _)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::record as rec;

    #[test]
    fn the_highest_version_wins() {
        let copies = [(3, rec(1)), (5, rec(2)), (4, rec(3))];
        assert_eq!(newest_copy(&copies, None), Some((5, rec(2))));
        assert_eq!(newest_copy(&[], None), None);
    }

    #[test]
    fn the_body_most_copies_hold_wins_a_version_tie() {
        // A failed write's copy (body 9) met first, the acknowledged one (body 7) twice.
        let copies = [(4, rec(9)), (4, rec(7)), (4, rec(7)), (3, rec(1))];
        assert_eq!(newest_copy(&copies, None), Some((4, rec(7))));
        // Even when the caller's own copy is the failed one.
        assert_eq!(newest_copy(&copies, Some(&(4, rec(9)))), Some((4, rec(7))));
        // An even tie goes to the caller's own copy, else to the first met.
        let even = [(4, rec(9)), (4, rec(7))];
        assert_eq!(newest_copy(&even, Some(&(4, rec(7)))), Some((4, rec(7))));
        assert_eq!(newest_copy(&even, None), Some((4, rec(9))));
    }
}
