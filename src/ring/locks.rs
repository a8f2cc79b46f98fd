//! Byte-range locks as pure rules: one owner's ranges and the changes fcntl asks of
//! them, conflicts between owners, what a file's primary grants, when a mount's lease
//! lapses, and when a primary is still too new to its range to grant (its grace). The
//! peer (`chord::locks`) and the mount (`client::locks`) both decide with these
//! functions; docs/locks.md argues why the rules never grant one byte to two
//! conflicting owners.
//!
//! An owner's locks are kept *normalized*: sorted by start, non-overlapping, and
//! adjacent ranges of the same kind and pid merged, so two lists that lock the same
//! bytes the same way are equal (and hash alike: [`digest`]).

use crate::id::Id;
use crate::proto::lock::{LockHolder, LockKind, LockRange};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// One fcntl or flock request on one owner's locks: bytes `[start, end)` become locked
/// as `kind`, or unlocked (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOp {
    pub start: u64,
    pub end: u64,
    pub kind: Option<LockKind>,
    pub pid: u32,
}

/// Sorts and merges ranges that are already non-overlapping.
fn coalesce(mut v: Vec<LockRange>) -> Vec<LockRange> {
    v.retain(|r| !r.is_empty());
    v.sort_by_key(|r| r.start);
    let mut out: Vec<LockRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if l.end == r.start && l.kind == r.kind && l.pid == r.pid => l.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// `locks` (normalized) with `op` applied: the bytes of the op take its kind (or are
/// freed), the rest keep theirs, as POSIX says of F_SETLK on one's own locks.
pub fn apply(locks: &[LockRange], op: &LockOp) -> Vec<LockRange> {
    let mut out = Vec::with_capacity(locks.len() + 2);
    for l in locks {
        if l.end <= op.start || l.start >= op.end {
            out.push(*l);
            continue;
        }
        if l.start < op.start {
            out.push(LockRange {
                end: op.start,
                ..*l
            });
        }
        if l.end > op.end {
            out.push(LockRange {
                start: op.end,
                ..*l
            });
        }
    }
    if let Some(kind) = op.kind {
        out.push(LockRange {
            start: op.start,
            end: op.end,
            kind,
            pid: op.pid,
        });
    }
    coalesce(out)
}

/// Any list of ranges (from the wire: maybe overlapping, unsorted) as one owner's
/// normalized locks: where ranges overlap, exclusive wins over shared, and of two of
/// the same kind the later one.
pub fn normalize(v: &[LockRange]) -> Vec<LockRange> {
    let mut by_kind: Vec<&LockRange> = v.iter().filter(|r| !r.is_empty()).collect();
    by_kind.sort_by_key(|r| r.kind);
    let mut out = Vec::new();
    for r in by_kind {
        out = apply(
            &out,
            &LockOp {
                start: r.start,
                end: r.end,
                kind: Some(r.kind),
                pid: r.pid,
            },
        );
    }
    out
}

/// Whether every byte `want` locks is locked by `have` at least as strongly (both
/// normalized): `want` asks nothing that `have` does not already hold.
pub fn covers(have: &[LockRange], want: &[LockRange]) -> bool {
    want.iter().all(|w| {
        let mut pos = w.start;
        for h in have {
            if h.end <= pos {
                continue;
            }
            if h.start > pos || h.kind < w.kind {
                return false;
            }
            pos = h.end;
            if pos >= w.end {
                return true;
            }
        }
        pos >= w.end
    })
}

/// For every byte, the weaker of `a` and `b` (unlocked when either is): what an owner
/// surely holds when a change from `a` to `b` may or may not have been applied.
pub fn meet(a: &[LockRange], b: &[LockRange]) -> Vec<LockRange> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x.overlaps(y) {
                out.push(LockRange {
                    start: x.start.max(y.start),
                    end: x.end.min(y.end),
                    kind: x.kind.min(y.kind),
                    pid: x.pid,
                });
            }
        }
    }
    coalesce(out)
}

/// A digest of one session's locks on one file (owners in order, each with its
/// normalized ranges; owners holding nothing left out): 0 when it holds nothing. The
/// mount's renewal sends it, so a primary that holds something else says so.
pub fn digest<'a>(owners: impl IntoIterator<Item = (u64, &'a [LockRange])>) -> u64 {
    let mut owners: Vec<(u64, &[LockRange])> =
        owners.into_iter().filter(|(_, l)| !l.is_empty()).collect();
    if owners.is_empty() {
        return 0;
    }
    owners.sort_by_key(|(o, _)| *o);
    let mut bytes = Vec::new();
    for (owner, locks) in owners {
        bytes.extend_from_slice(&owner.to_be_bytes());
        bytes.extend_from_slice(&(locks.len() as u64).to_be_bytes());
        for l in locks {
            bytes.extend_from_slice(&l.start.to_be_bytes());
            bytes.extend_from_slice(&l.end.to_be_bytes());
            bytes.push(l.kind as u8);
            bytes.extend_from_slice(&l.pid.to_be_bytes());
        }
    }
    let h = Id::hash(&bytes);
    u64::from_be_bytes(h.0[..8].try_into().expect("8 bytes")).max(1)
}

/// One owner's locks on one file at its primary, and the last request that set them.
#[derive(Clone, Debug)]
pub struct Holding {
    pub locks: Vec<LockRange>,
    pub seq: u64,
    /// When `locks` last changed: an owner holding nothing is forgotten two leases on.
    pub changed: Instant,
}

/// The locks of one file at its primary.
#[derive(Clone, Debug, Default)]
pub struct FileLocks {
    /// By (session, owner).
    pub holders: BTreeMap<(u64, u64), Holding>,
    /// Changes with every change of any holder's locks; never repeats (see
    /// [`LockTable::generation`]).
    pub generation: u64,
}

impl FileLocks {
    /// The first lock of another owner that conflicts with any of `want`.
    pub fn conflict(&self, session: u64, owner: u64, want: &[LockRange]) -> Option<LockHolder> {
        for (&(s, o), h) in &self.holders {
            if (s, o) == (session, owner) {
                continue;
            }
            for l in &h.locks {
                if want.iter().any(|w| w.conflicts(l)) {
                    return Some(LockHolder {
                        session: s,
                        owner: o,
                        range: *l,
                    });
                }
            }
        }
        None
    }

    fn held_by(&self, session: u64, owner: u64) -> &[LockRange] {
        self.holders
            .get(&(session, owner))
            .map(|h| h.locks.as_slice())
            .unwrap_or(&[])
    }
}

/// What a primary did with a `SetLocks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    /// The owner's locks are now the ones asked for.
    Granted,
    /// Another owner's lock is in the way; nothing changed.
    Conflict(LockHolder),
    /// Growth asked during the grace period: nothing new granted (what the owner held
    /// was reclaimed, if this node lacked it).
    Grace,
    /// The owner believes it holds locks this node lacks, past the grace period.
    Lost,
    /// An older request than one already applied for this owner: ignored.
    Stale,
}

/// Every lock a node holds as primary, and the leases of the sessions holding them.
#[derive(Debug)]
pub struct LockTable {
    files: HashMap<Id, FileLocks>,
    /// When each session was last heard from.
    sessions: HashMap<u64, Instant>,
    /// Source of generations: one counter for every file, so a file forgotten and met
    /// again never shows an old generation to a waiter.
    clock: u64,
    pub lease: Duration,
}

impl LockTable {
    pub fn new(lease: Duration) -> LockTable {
        LockTable {
            files: HashMap::new(),
            sessions: HashMap::new(),
            clock: 0,
            lease,
        }
    }

    /// The file's lock state as a number that changes with every change (0: no locks
    /// known).
    pub fn generation(&self, key: &Id) -> u64 {
        self.files.get(key).map(|f| f.generation).unwrap_or(0)
    }

    pub fn file(&self, key: &Id) -> Option<&FileLocks> {
        self.files.get(key)
    }

    /// The session was heard from: its lease runs from `now`.
    pub fn renew(&mut self, session: u64, now: Instant) {
        self.sessions.insert(session, now);
    }

    /// `SetLocks`: sets `owner`'s locks on `key` to `locks`. `held` is what the owner
    /// believes it holds; `grace` whether this node may not know every lock on `key`
    /// yet. Shrinking is always granted; a claim to locks this node lacks is a reclaim
    /// during the grace and lost after it; growth waits for the grace to end, then is
    /// granted unless another owner's lock conflicts. Pinned by the `set_*` tests.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        key: Id,
        session: u64,
        owner: u64,
        seq: u64,
        held: &[LockRange],
        locks: &[LockRange],
        grace: bool,
        now: Instant,
    ) -> SetOutcome {
        let held = normalize(held);
        let want = normalize(locks);
        self.renew(session, now);
        let empty = FileLocks::default();
        let file = self.files.get(&key).unwrap_or(&empty);
        if let Some(h) = file.holders.get(&(session, owner)) {
            if seq < h.seq || (seq == h.seq && h.locks != want) {
                return SetOutcome::Stale;
            }
            if seq == h.seq {
                return SetOutcome::Granted;
            }
        }
        let cur = file.held_by(session, owner);
        if covers(cur, &want) {
            self.put(key, session, owner, seq, want, now);
            return SetOutcome::Granted;
        }
        if !covers(cur, &held) {
            if !grace || file.conflict(session, owner, &held).is_some() {
                return SetOutcome::Lost;
            }
            if covers(&held, &want) {
                self.put(key, session, owner, seq, want, now);
                return SetOutcome::Granted;
            }
            // Reclaimed; the growth waits. Not recorded as `seq`: the request as a
            // whole was not applied.
            let keep = self
                .files
                .get(&key)
                .map_or(0, |f| f.holders.get(&(session, owner)).map_or(0, |h| h.seq));
            self.put(key, session, owner, keep, held, now);
            return SetOutcome::Grace;
        }
        if grace {
            return SetOutcome::Grace;
        }
        if let Some(c) = file.conflict(session, owner, &want) {
            return SetOutcome::Conflict(c);
        }
        self.put(key, session, owner, seq, want, now);
        SetOutcome::Granted
    }

    fn put(
        &mut self,
        key: Id,
        session: u64,
        owner: u64,
        seq: u64,
        locks: Vec<LockRange>,
        now: Instant,
    ) {
        let file = self.files.entry(key).or_default();
        let changed = file.held_by(session, owner) != locks.as_slice();
        let since = match file.holders.get(&(session, owner)) {
            Some(h) if !changed => h.changed,
            _ => now,
        };
        file.holders.insert(
            (session, owner),
            Holding {
                locks,
                seq,
                changed: since,
            },
        );
        if changed {
            self.clock += 1;
            file.generation = self.clock;
        }
    }

    /// F_GETLK: the first lock of another owner conflicting with `range`.
    pub fn test(
        &self,
        key: &Id,
        session: u64,
        owner: u64,
        range: &LockRange,
    ) -> Option<LockHolder> {
        self.files
            .get(key)?
            .conflict(session, owner, std::slice::from_ref(range))
    }

    /// The session's locks on `key`: their digest and the owners holding any.
    pub fn digest_of(&self, key: &Id, session: u64) -> (u64, Vec<u64>) {
        let Some(f) = self.files.get(key) else {
            return (0, vec![]);
        };
        let mine: Vec<(u64, &[LockRange])> = f
            .holders
            .iter()
            .filter(|((s, _), h)| *s == session && !h.locks.is_empty())
            .map(|((_, o), h)| (*o, h.locks.as_slice()))
            .collect();
        let owners = mine.iter().map(|(o, _)| *o).collect();
        (digest(mine), owners)
    }

    /// Drops every lock of sessions not heard from for a lease, and forgets owners that
    /// have held nothing for two. Returns the files whose locks changed.
    pub fn expire(&mut self, now: Instant) -> Vec<Id> {
        let lease = self.lease;
        let lapsed: HashSet<u64> = self
            .sessions
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > lease)
            .map(|(s, _)| *s)
            .collect();
        self.sessions.retain(|s, _| !lapsed.contains(s));
        let mut changed = Vec::new();
        for (key, f) in self.files.iter_mut() {
            let before = f.holders.values().filter(|h| !h.locks.is_empty()).count();
            f.holders.retain(|(s, _), h| {
                let idle =
                    h.locks.is_empty() && now.saturating_duration_since(h.changed) > lease * 2;
                !(lapsed.contains(s) || idle)
            });
            let after = f.holders.values().filter(|h| !h.locks.is_empty()).count();
            if after != before {
                self.clock += 1;
                f.generation = self.clock;
                changed.push(*key);
            }
        }
        self.files.retain(|_, f| !f.holders.is_empty());
        changed
    }

    /// Forgets the files `keep` refuses (their range moved to another node). Returns
    /// them.
    pub fn retain(&mut self, keep: impl Fn(&Id) -> bool) -> Vec<Id> {
        let gone: Vec<Id> = self.files.keys().filter(|k| !keep(k)).copied().collect();
        for k in &gone {
            self.files.remove(k);
        }
        gone
    }

    /// Files with locks, and sessions with a lease (for the status page and tests).
    pub fn counts(&self) -> (usize, usize) {
        (self.files.len(), self.sessions.len())
    }
}

/// Which keys a node is the primary of, as its predecessor says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// None (no predecessor known, or not known yet).
    Nothing,
    /// `(predecessor, me]`.
    After(Id),
    /// Every key: a node alone on its ring.
    Everything,
}

impl Range {
    pub fn holds(&self, key: &Id, me: &Id) -> bool {
        match self {
            Range::Nothing => false,
            Range::After(p) => key.in_open_closed(p, me),
            Range::Everything => true,
        }
    }
}

/// The recent history of a node's range, to tell whether it has been a key's primary
/// for a whole grace period (then it knows every lock on the key: each was granted or
/// reclaimed here) or took the key over lately (then holders of locks granted
/// elsewhere may not have reclaimed them yet). The node observes its routing table's
/// predecessor and change counter; a change it may have missed counts as a moment of
/// holding nothing, so a gap can only make the grace longer. Pinned by the `grace_*`
/// tests.
#[derive(Clone, Debug)]
pub struct RangeLog {
    me: Id,
    /// (since, range), oldest first; the first is the node's start (holding nothing).
    entries: VecDeque<(Instant, Range)>,
    epoch: u64,
}

impl RangeLog {
    pub fn new(me: Id, now: Instant) -> RangeLog {
        RangeLog {
            me,
            entries: VecDeque::from([(now, Range::Nothing)]),
            epoch: 0,
        }
    }

    /// The routing table now shows `range` after `epoch` predecessor changes. A jump of
    /// more than one change, or a new range without a change counted, means changes
    /// went unseen: a moment of holding nothing is logged before the new range. Entries
    /// older than `keep` (beyond the newest of them) are dropped.
    pub fn observe(&mut self, range: Range, epoch: u64, now: Instant, keep: Duration) {
        let last = self.entries.back().map(|e| e.1).unwrap_or(Range::Nothing);
        if epoch == self.epoch && range == last {
            return;
        }
        if epoch != self.epoch.wrapping_add(1) {
            self.entries.push_back((now, Range::Nothing));
        }
        if self.entries.back().map(|e| e.1) != Some(range) {
            self.entries.push_back((now, range));
        }
        self.epoch = epoch;
        while self.entries.len() > 1 && self.entries[1].0 + keep <= now {
            self.entries.pop_front();
        }
    }

    /// How much longer `key` is in grace: until `grace` has passed since this node
    /// last began to hold it without a break. `Some(grace)` when it does not hold it.
    pub fn grace_left(&self, key: &Id, now: Instant, grace: Duration) -> Option<Duration> {
        let mut since = None;
        for (t, r) in self.entries.iter().rev() {
            if !r.holds(key, &self.me) {
                break;
            }
            since = Some(*t);
        }
        let Some(since) = since else {
            return Some(grace);
        };
        let end = since + grace;
        (end > now).then(|| end - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::lock::LOCK_EOF;
    use crate::ring::testing::id;
    use proptest::prelude::*;
    use LockKind::{Exclusive as X, Shared as S};

    fn r(start: u64, end: u64, kind: LockKind) -> LockRange {
        LockRange {
            start,
            end,
            kind,
            pid: 7,
        }
    }

    fn op(start: u64, end: u64, kind: Option<LockKind>) -> LockOp {
        LockOp {
            start,
            end,
            kind,
            pid: 7,
        }
    }

    #[test]
    fn a_lock_in_the_middle_splits_and_an_unlock_cuts() {
        let all = apply(&[], &op(0, LOCK_EOF, Some(S)));
        let mid = apply(&all, &op(10, 20, Some(X)));
        assert_eq!(mid, vec![r(0, 10, S), r(10, 20, X), r(20, LOCK_EOF, S)]);
        let cut = apply(&mid, &op(5, 15, None));
        assert_eq!(cut, vec![r(0, 5, S), r(15, 20, X), r(20, LOCK_EOF, S)]);
        // Adjacent ranges of one kind merge back into one.
        let back = apply(&cut, &op(5, 20, Some(S)));
        assert_eq!(back, vec![r(0, LOCK_EOF, S)]);
        assert_eq!(apply(&back, &op(0, LOCK_EOF, None)), vec![]);
    }

    #[test]
    fn overlapping_ranges_from_the_wire_normalize_exclusive_first() {
        let n = normalize(&[r(10, 30, X), r(0, 20, S), r(25, 40, S), r(50, 50, X)]);
        assert_eq!(n, vec![r(0, 10, S), r(10, 30, X), r(30, 40, S)]);
        assert_eq!(normalize(&n), n);
    }

    #[test]
    fn coverage_needs_every_byte_at_least_as_strong() {
        let have = vec![r(0, 10, X), r(10, 20, S)];
        assert!(covers(&have, &[r(0, 20, S)]));
        assert!(covers(&have, &[r(2, 8, X)]));
        assert!(!covers(&have, &[r(5, 15, X)]));
        assert!(!covers(&have, &[r(15, 25, S)]));
        assert!(covers(&have, &[]));
        assert!(!covers(&[], &[r(0, 1, S)]));
    }

    #[test]
    fn meet_keeps_the_weaker_of_each_byte() {
        let a = vec![r(0, 10, X), r(20, 30, S)];
        let b = vec![r(5, 25, S)];
        assert_eq!(meet(&a, &b), vec![r(5, 10, S), r(20, 25, S)]);
    }

    #[test]
    fn digests_tell_states_apart_and_ignore_empty_owners() {
        let a = [r(0, 10, X)];
        assert_eq!(digest([(1, &a[..]), (2, &[][..])]), digest([(1, &a[..])]));
        assert_ne!(digest([(1, &a[..])]), digest([(2, &a[..])]));
        assert_eq!(digest([(2, &[][..])]), 0);
    }

    fn table() -> (LockTable, Instant) {
        (LockTable::new(Duration::from_secs(30)), Instant::now())
    }

    #[test]
    fn set_grants_shared_to_many_and_exclusive_to_one() {
        let (mut t, now) = table();
        let k = id(1);
        let sh = [r(0, 100, S)];
        assert_eq!(t.set(k, 1, 1, 1, &[], &sh, false, now), SetOutcome::Granted);
        assert_eq!(t.set(k, 2, 1, 1, &[], &sh, false, now), SetOutcome::Granted);
        let ex = [r(50, 60, X)];
        match t.set(k, 2, 9, 2, &[], &ex, false, now) {
            SetOutcome::Conflict(h) => assert_eq!((h.session, h.range), (1, r(0, 100, S))),
            other => panic!("{other:?}"),
        }
        // Non-overlapping exclusive ranges of two owners coexist.
        let k2 = id(2);
        assert_eq!(
            t.set(k2, 1, 1, 3, &[], &[r(0, 10, X)], false, now),
            SetOutcome::Granted
        );
        assert_eq!(
            t.set(k2, 2, 1, 3, &[], &[r(10, 20, X)], false, now),
            SetOutcome::Granted
        );
        assert!(t.test(&k2, 3, 1, &r(5, 15, S)).is_some());
        assert!(t.test(&k2, 3, 1, &r(20, 30, X)).is_none());
        // The holder itself never conflicts with its own locks.
        assert!(t.test(&k2, 1, 1, &r(0, 10, X)).is_none());
    }

    #[test]
    fn set_upgrades_in_place_and_a_shrink_is_always_granted() {
        let (mut t, now) = table();
        let k = id(1);
        t.set(k, 1, 1, 1, &[], &[r(0, 10, S)], false, now);
        t.set(k, 2, 1, 1, &[], &[r(0, 10, S)], false, now);
        // Upgrading a shared lock others share conflicts...
        assert!(matches!(
            t.set(k, 1, 1, 2, &[r(0, 10, S)], &[r(0, 10, X)], false, now),
            SetOutcome::Conflict(_)
        ));
        // ...and releasing is granted even in the grace period.
        assert_eq!(
            t.set(k, 2, 1, 2, &[r(0, 10, S)], &[], true, now),
            SetOutcome::Granted
        );
        assert_eq!(
            t.set(k, 1, 1, 3, &[r(0, 10, S)], &[r(0, 10, X)], false, now),
            SetOutcome::Granted
        );
    }

    #[test]
    fn set_ignores_late_duplicates_and_repeats_the_same_request() {
        let (mut t, now) = table();
        let k = id(1);
        let held = [r(0, 10, X)];
        assert_eq!(
            t.set(k, 1, 1, 5, &[], &held, false, now),
            SetOutcome::Granted
        );
        assert_eq!(
            t.set(k, 1, 1, 5, &[], &held, false, now),
            SetOutcome::Granted
        );
        assert_eq!(
            t.set(k, 1, 1, 6, &held, &[], false, now),
            SetOutcome::Granted
        );
        // The lock request, delivered late, must not take the lock back.
        assert_eq!(t.set(k, 1, 1, 5, &[], &held, false, now), SetOutcome::Stale);
        assert!(t.test(&k, 2, 1, &r(0, 10, X)).is_none());
    }

    #[test]
    fn set_in_grace_grants_only_reclaims_and_releases() {
        let (mut t, now) = table();
        let k = id(1);
        let held = [r(0, 10, X)];
        // A new primary knows nothing: growth waits.
        assert_eq!(t.set(k, 1, 1, 1, &[], &held, true, now), SetOutcome::Grace);
        // A holder reclaims what it holds.
        assert_eq!(
            t.set(k, 2, 1, 1, &held, &held, true, now),
            SetOutcome::Granted
        );
        // A conflicting claim from another session is lost, not granted.
        assert_eq!(t.set(k, 3, 1, 1, &held, &held, true, now), SetOutcome::Lost);
        // Reclaim plus growth: the held part is taken back, the growth waits.
        let more = [r(0, 10, X), r(20, 30, X)];
        let k2 = id(2);
        assert_eq!(
            t.set(k2, 1, 1, 2, &held, &more, true, now),
            SetOutcome::Grace
        );
        assert!(t.test(&k2, 9, 1, &r(5, 6, S)).is_some());
        assert!(t.test(&k2, 9, 1, &r(25, 26, S)).is_none());
        // The same request after the grace is granted.
        assert_eq!(
            t.set(k2, 1, 1, 2, &held, &more, false, now),
            SetOutcome::Granted
        );
    }

    #[test]
    fn set_after_the_grace_tells_a_holder_its_locks_are_lost() {
        let (mut t, now) = table();
        let held = [r(0, 10, X)];
        assert_eq!(
            t.set(id(1), 1, 1, 1, &held, &held, false, now),
            SetOutcome::Lost
        );
        assert_eq!(
            t.set(id(1), 1, 1, 1, &held, &[r(0, 20, X)], false, now),
            SetOutcome::Lost
        );
        // Nothing was granted by it.
        assert!(t.test(&id(1), 2, 1, &r(0, 20, X)).is_none());
    }

    #[test]
    fn a_lapsed_lease_frees_the_sessions_locks_and_changes_the_generation() {
        let (mut t, now) = table();
        let k = id(1);
        t.set(k, 1, 1, 1, &[], &[r(0, 10, X)], false, now);
        t.set(k, 2, 1, 1, &[], &[r(20, 30, X)], false, now);
        let g = t.generation(&k);
        t.renew(2, now + Duration::from_secs(20));
        assert!(t.expire(now + Duration::from_secs(30)).is_empty());
        assert_eq!(t.expire(now + Duration::from_secs(31)), vec![k]);
        assert_ne!(t.generation(&k), g);
        assert!(t.test(&k, 3, 1, &r(0, 10, X)).is_none());
        assert!(t.test(&k, 3, 1, &r(20, 30, X)).is_some());
        assert_eq!(t.counts(), (1, 1));
        t.expire(now + Duration::from_secs(51));
        assert_eq!(t.counts(), (0, 0));
        // A file forgotten and locked again never shows an old generation.
        t.set(
            k,
            4,
            1,
            1,
            &[],
            &[r(0, 1, S)],
            false,
            now + Duration::from_secs(52),
        );
        assert!(t.generation(&k) > g);
    }

    #[test]
    fn digest_of_a_session_matches_the_mounts_digest() {
        let (mut t, now) = table();
        let k = id(1);
        let a = [r(0, 10, X)];
        let b = [r(20, 30, S)];
        t.set(k, 1, 5, 1, &[], &a, false, now);
        t.set(k, 1, 6, 2, &[], &b, false, now);
        t.set(k, 2, 6, 1, &[], &[r(40, 50, S)], false, now);
        let (d, owners) = t.digest_of(&k, 1);
        assert_eq!(d, digest([(6, &b[..]), (5, &a[..])]));
        assert_eq!(owners, vec![5, 6]);
        assert_eq!(t.digest_of(&id(2), 1), (0, vec![]));
    }

    #[test]
    fn grace_runs_from_when_the_key_came_into_the_range() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let me = id(100);
        let mut log = RangeLog::new(me, t0);
        let g = s(30);
        // Joined at t0, learnt its predecessor 50 at t0+2 (one change).
        log.observe(Range::After(id(50)), 1, t0 + s(2), s(60));
        assert_eq!(log.grace_left(&id(70), t0 + s(2), g), Some(s(30)));
        assert_eq!(log.grace_left(&id(70), t0 + s(31), g), Some(s(1)));
        assert_eq!(log.grace_left(&id(70), t0 + s(32), g), None);
        assert_eq!(
            log.grace_left(&id(40), t0 + s(40), g),
            Some(g),
            "not its key"
        );
        // The predecessor died: 30 takes over; keys of (30, 50] start their grace.
        log.observe(Range::After(id(30)), 2, t0 + s(40), s(60));
        assert_eq!(log.grace_left(&id(40), t0 + s(41), g), Some(s(29)));
        assert_eq!(log.grace_left(&id(70), t0 + s(41), g), None);
        // A join shrinks the range: 80 took (30, 80], then left again.
        log.observe(Range::After(id(80)), 3, t0 + s(50), s(60));
        log.observe(Range::After(id(30)), 4, t0 + s(51), s(60));
        assert_eq!(log.grace_left(&id(70), t0 + s(52), g), Some(s(29)));
        assert_eq!(log.grace_left(&id(90), t0 + s(52), g), None);
    }

    #[test]
    fn grace_counts_unseen_changes_as_a_gap() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut log = RangeLog::new(id(100), t0);
        log.observe(Range::After(id(50)), 1, t0, s(60));
        assert_eq!(log.grace_left(&id(70), t0 + s(40), s(30)), None);
        // Three changes at once, ending where it began: something may have held 70.
        log.observe(Range::After(id(50)), 4, t0 + s(40), s(60));
        assert_eq!(log.grace_left(&id(70), t0 + s(41), s(30)), Some(s(29)));
        // A different range with no change counted (a table set from outside) too.
        log.observe(Range::After(id(40)), 4, t0 + s(80), s(60));
        assert_eq!(log.grace_left(&id(70), t0 + s(81), s(30)), Some(s(29)));
    }

    fn arb_ranges() -> impl Strategy<Value = Vec<LockRange>> {
        prop::collection::vec(
            (0u64..64, 1u64..16, any::<bool>(), 1u32..3).prop_map(|(s, len, x, pid)| LockRange {
                start: s,
                end: s + len,
                kind: if x { X } else { S },
                pid,
            }),
            0..8,
        )
    }

    /// What a list of normalized locks says of one byte.
    fn kind_at(locks: &[LockRange], b: u64) -> Option<(LockKind, u32)> {
        locks
            .iter()
            .find(|l| l.start <= b && b < l.end)
            .map(|l| (l.kind, l.pid))
    }

    fn is_normal(v: &[LockRange]) -> bool {
        v.windows(2).all(|w| {
            w[0].end <= w[1].start
                && !(w[0].end == w[1].start && w[0].kind == w[1].kind && w[0].pid == w[1].pid)
        }) && v.iter().all(|r| !r.is_empty())
    }

    proptest! {
        #[test]
        fn apply_changes_exactly_the_bytes_of_the_op(
            base in arb_ranges(), s in 0u64..80, len in 0u64..20, k in 0u8..3
        ) {
            let locks = normalize(&base);
            let kind = [None, Some(S), Some(X)][k as usize];
            let o = LockOp { start: s, end: s + len, kind, pid: 9 };
            let after = apply(&locks, &o);
            prop_assert!(is_normal(&after));
            for b in 0..100 {
                let want = if b >= o.start && b < o.end {
                    kind.map(|k| (k, 9))
                } else {
                    kind_at(&locks, b)
                };
                prop_assert_eq!(kind_at(&after, b), want, "byte {}", b);
            }
        }

        #[test]
        fn covers_and_meet_agree_with_bytes(a in arb_ranges(), b in arb_ranges()) {
            let (a, b) = (normalize(&a), normalize(&b));
            let bytewise = (0..100).all(|x| match (kind_at(&a, x), kind_at(&b, x)) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some((ka, _)), Some((kb, _))) => ka >= kb,
            });
            prop_assert_eq!(covers(&a, &b), bytewise);
            let m = meet(&a, &b);
            prop_assert!(covers(&a, &m) && covers(&b, &m));
            for x in 0..100 {
                let want = match (kind_at(&a, x), kind_at(&b, x)) {
                    (Some((ka, _)), Some((kb, _))) => Some(ka.min(kb)),
                    _ => None,
                };
                prop_assert_eq!(kind_at(&m, x).map(|k| k.0), want);
            }
        }

        /// However owners ask, no byte is ever held by two conflicting owners, and an
        /// owner's request is granted exactly when nothing conflicts.
        #[test]
        fn no_two_owners_ever_hold_conflicting_locks(
            ops in prop::collection::vec((0u64..4, 0u64..40, 1u64..20, 0u8..3, any::<bool>()), 1..40)
        ) {
            let (mut t, now) = table();
            let k = id(1);
            let mut mine: HashMap<u64, Vec<LockRange>> = HashMap::new();
            for (i, (owner, s, len, kind, grace)) in ops.into_iter().enumerate() {
                let kind = [None, Some(S), Some(X)][kind as usize];
                let held = mine.get(&owner).cloned().unwrap_or_default();
                let want = apply(&held, &LockOp { start: s, end: s + len, kind, pid: 1 });
                let others: Vec<LockRange> = mine
                    .iter()
                    .filter(|(o, _)| **o != owner)
                    .flat_map(|(_, l)| l.clone())
                    .collect();
                let clash = want.iter().any(|w| others.iter().any(|o| o.conflicts(w)));
                let out = t.set(k, owner, owner, i as u64 + 1, &held, &want, grace, now);
                if covers(&held, &want) {
                    prop_assert_eq!(&out, &SetOutcome::Granted);
                } else if grace {
                    prop_assert_eq!(&out, &SetOutcome::Grace);
                } else {
                    prop_assert_eq!(matches!(out, SetOutcome::Conflict(_)), clash);
                }
                if out == SetOutcome::Granted {
                    mine.insert(owner, want);
                }
                let f = t.file(&k).cloned().unwrap_or_default();
                let all: Vec<(u64, LockRange)> = f
                    .holders
                    .iter()
                    .flat_map(|((_, o), h)| h.locks.iter().map(move |l| (*o, *l)))
                    .collect();
                for (o1, l1) in &all {
                    for (o2, l2) in &all {
                        prop_assert!(o1 == o2 || !l1.conflicts(l2), "{:?} vs {:?}", l1, l2);
                    }
                }
            }
        }
    }
}
