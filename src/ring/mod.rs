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

pub mod book;
pub mod lookup;
pub mod placement;
pub mod primacy;
pub mod records;
pub mod routing;
pub mod walk;

pub use lookup::{Walk, MAX_LOOKUP_HOPS};
pub use routing::{Routing, Step};
