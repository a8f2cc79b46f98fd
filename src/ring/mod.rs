//! The ring's rules, as pure code: no tokio, no I/O, no clock of its own (callers pass
//! the time in). The peer (`chord`), the client, the simulation's checks and the test
//! harness all decide with these functions, so each rule is written once and unit-tested
//! here; the async callers only carry messages.
//!
//! - [`routing`]: one node's table (predecessor, successor list, fingers) and the answer
//!   to one lookup step.
//! - [`lookup`]: the iterative lookup as a state machine ([`lookup::Walk`]) that a caller
//!   drives by sending the requests it asks for.
//! - [`walk`]: the walk along successor lists that finds the ring's membership.
//! - [`placement`]: which members hold a key (its successor and the next R-1).
//! - [`book`]: the peers a node lost, met and saw leave, and where it joined.
//! - [`primacy`]: when a node may act as a key's primary, and how many copies a write
//!   needs.
//! - [`records`]: which of several copies of a record is the one to keep.
//! - [`locks`]: byte-range locks at a file's primary: ranges, conflicts, leases, and
//!   the grace period of a primary new to its range.

pub mod book;
pub mod locks;
pub mod lookup;
pub mod placement;
pub mod primacy;
pub mod records;
pub mod routing;
pub mod walk;

pub use lookup::{Walk, MAX_LOOKUP_HOPS};
pub use routing::{Routing, Step};

/// Small rings for tests: ids and peers named by one byte (the id's first), node states
/// and records told apart by a number.
#[cfg(test)]
pub(crate) mod testing {
    use crate::id::Id;
    use crate::proto::{Inode, Kind, NodeState, Peer, Record, Timespec};

    /// The id whose first byte is `b` (the rest zero): ring order is `b`'s order.
    pub fn id(b: u8) -> Id {
        let mut a = [0u8; 20];
        a[0] = b;
        Id(a)
    }

    /// The peer at [`id`]`(b)`, reached at `n{b}`.
    pub fn peer(b: u8) -> Peer {
        Peer {
            id: id(b),
            addr: format!("n{b}"),
        }
    }

    /// A node's state as `GetState` answers it.
    pub fn state(me: u8, pred: Option<u8>, succ: &[u8]) -> NodeState {
        NodeState {
            me: peer(me),
            predecessor: pred.map(peer),
            successors: succ.iter().map(|b| peer(*b)).collect(),
            replicas: 3,
            lost: vec![],
        }
    }

    /// A file record told apart by its size alone (its times fixed).
    pub fn record(size: u64) -> Record {
        let mut ino = Inode::new(Kind::File, 0o644, 0, 0, Id::ZERO, 4096);
        ino.size = size;
        let t = Timespec { secs: 1, nanos: 0 };
        (ino.atime, ino.mtime, ino.ctime) = (t, t, t);
        Record::Inode(Box::new(ino))
    }
}
