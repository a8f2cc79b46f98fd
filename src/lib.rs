//! chordfs: a distributed file store on a Chord ring.
//!
//! ```text
//!  cp / ls (kernel) -> fs (FUSE, fuser) --\
//!                                          >-- client: ring view, chunking, records, cache
//!  chordfs put/get/ls/rm/status (cli) ----/          |  net: TCP, framed MessagePack (proto)
//!                                                     v
//!            chord::Node (routing, maintenance, repair) + store (data dir) + http sidecar
//! ```
//! Modules, from the bottom up:
//! - [`id`]: 160-bit ids and ring interval arithmetic.
//! - [`proto`]: request/response enums, records, the frame codec.
//! - [`net`]: the transport trait, the TCP client pool and the server.
//! - [`store`]: the data dir: chunks and records, atomic and verified.
//! - [`ring`]: the ring's rules as pure code: routing, placement, the lookup walk, the
//!   peer book, the primary's range, which record copy wins.
//! - [`chord`]: the peer: a shared core and its subsystems (maintenance, records,
//!   repair, gc) carrying out those rules over the network.
//! - [`client`]: the one client library (CLI and mount).
//! - [`fs`]: the FUSE driver over the client.
//! - [`http`]: the status sidecar.
//! - [`sys`]: the system calls std does not wrap (the one module with `unsafe`).
//! - [`daemon`]: starting and stopping a node process.
//! - [`sim`]: deterministic simulation of a ring (seeded faults, invariant checks).

pub mod chord;
pub mod client;
pub mod daemon;
pub mod fs;
pub mod http;
pub mod id;
pub mod net;
pub mod proto;
pub mod ring;
pub mod sim;
pub mod store;
pub mod sys;
