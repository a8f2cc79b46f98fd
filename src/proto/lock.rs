//! The wire types of byte-range locks (fcntl, OFD and flock locks of the mount), held
//! by a file's primary: ranges, holders and the answers of the lock requests. The rules
//! that decide them are in [`crate::ring::locks`]; the design is docs/locks.md.

use serde::{Deserialize, Serialize};

/// A node's lock lease unless `--lock-lease-ms` says otherwise: a mount that dies
/// holds its locks at most this long.
pub const LEASE_DEFAULT_MS: u64 = 30_000;
/// The most ranges one owner may hold on one file (a request naming more is refused).
pub const LOCKS_MAX: usize = 1024;
/// The most files one lease renewal names.
pub const RENEW_FILES_MAX: usize = 4096;
/// The longest a `WaitLock` is held by the primary before it answers anyway.
pub const WAIT_LOCK_MAX_MS: u64 = 30_000;
/// `end` of a range that runs to the end of the file, however long it grows.
pub const LOCK_EOF: u64 = u64::MAX;

/// Shared (read) or exclusive (write); shared is the weaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Bytes `[start, end)` of a file locked as `kind` by a process `pid` (reported by
/// F_GETLK; the pid is the holder's, in its own mount's pid namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    /// Exclusive; [`LOCK_EOF`] for "to the end of the file".
    pub end: u64,
    pub kind: LockKind,
    #[serde(default)]
    pub pid: u32,
}

/// Who holds a lock: a mount's session (one per mount process), the lock owner within
/// it (the kernel's: a process for POSIX locks, an open file for OFD and flock locks),
/// and the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub session: u64,
    pub owner: u64,
    pub range: LockRange,
}

/// What a lock request did, or why not (carried by `Response::Lock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockAnswer {
    /// The owner's locks are now the ones asked for. When `lease_ms` is not 0, this
    /// node checked with its neighbours that it is the file's primary, and the
    /// session's lease here runs for `lease_ms` from when the request arrived; a pure
    /// release is answered without that check, with 0.
    Granted { lease_ms: u64 },
    /// Another owner holds a conflicting lock (the first one found). `generation`
    /// is the file's lock state now, for a `WaitLock`.
    Conflict { holder: LockHolder, generation: u64 },
    /// `TestLock`: nothing conflicts.
    Free,
    /// This node has not been the file's primary for a whole lease yet, so it may not
    /// know every lock held (their holders are reclaiming them): nothing new is granted
    /// for `retry_ms` more.
    Grace { retry_ms: u64 },
    /// The owner believes it holds locks this node does not know, and this node has
    /// been the primary long enough to know: they lapsed (or were never granted here).
    /// Nothing was changed.
    Lost,
    /// `WaitLock`: the file's lock state is now `generation` (it changed, or the wait
    /// ran out).
    Changed { generation: u64 },
    /// `RenewLease`: the session's lease here runs for `lease_ms` more. `differ`: files
    /// whose locks this node holds for the session differ from the digest sent, with
    /// the owners it holds there; `elsewhere`: files this node is not the primary of.
    Renewed {
        lease_ms: u64,
        differ: Vec<(crate::id::Id, Vec<u64>)>,
        elsewhere: Vec<crate::id::Id>,
    },
}

impl LockRange {
    pub fn overlaps(&self, other: &LockRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Two locks of different owners conflict when they overlap and one is exclusive.
    pub fn conflicts(&self, other: &LockRange) -> bool {
        self.overlaps(other)
            && (self.kind == LockKind::Exclusive || other.kind == LockKind::Exclusive)
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}
