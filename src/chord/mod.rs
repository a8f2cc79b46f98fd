//! The Chord peer: a shared [`core::Core`] (identity, settings, routing table, store,
//! transport, peer book) and the subsystems over it, each owning its state:
//!
//! ```text
//!  handler.rs   every request, matched and handed to its subsystem
//!  node.rs      Node = core + subsystems; the loops that drive them
//!  maintenance  stabilize, notify, fix_fingers, check_predecessor, join, leave
//!  reconcile    finding lost peers and split rings again (part of maintenance)
//!  records      record writes at the primary, replicas' copies
//!  take_back    undoing a record write that missed its copies
//!  primacy      the primary's check with its neighbours before acknowledging
//!  chunks       chunk writes and reads
//!  repair       anti-entropy: every key on its R rightful holders
//!  scrub        re-reading stored copies to find the ones gone bad (part of repair)
//!  gc           mark and sweep of unreferenced chunks
//!  locks        byte-range locks of the files this node is the primary of, and leases
//! ```
//! The decisions (routing, placement, the lookup walk, the peer book, the primary's
//! range, which record copy wins) are pure functions in [`crate::ring`].

pub mod chunks;
pub mod core;
pub mod gc;
pub mod handler;
pub mod locks;
pub mod maintenance;
pub mod node;
pub mod primacy;
pub mod reconcile;
pub mod records;
pub mod repair;
pub mod scrub;
pub mod take_back;

pub use self::core::{load_or_create_id, Core, NodeConfig};
pub use node::Node;
