//! The Chord peer: routing table (pure), the node that answers RPCs, the maintenance
//! loops of the paper, and repair (anti-entropy) that keeps R copies of every key.

pub mod gc;
pub mod maintenance;
pub mod node;
pub mod reconcile;
pub mod repair;
pub mod routing;
pub mod scrub;

pub use node::{Node, NodeConfig};
pub use routing::{Routing, Step};
