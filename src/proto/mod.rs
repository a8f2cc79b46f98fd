//! The wire: request and response enums, and the frame codec.
//!
//! Every frame is a 4-byte big-endian length and a MessagePack body (rmp-serde) holding
//! an [`Envelope`]: a request id chosen by the caller, echoed in the reply, so one
//! connection carries many requests at once.

pub mod codec;
pub mod lock;
pub mod record;

use crate::id::Id;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use lock::{LockAnswer, LockHolder, LockKind, LockRange};
pub use record::{DirEntry, Edit, EditRefusal, Inode, Kind, Record, Timespec};

/// Frames above this size are refused before any byte of them is buffered.
pub const FRAME_MAX_BYTES: usize = 40 * 1024 * 1024;
/// The largest chunk a client may ask for; leaves room for the envelope in a frame.
pub const CHUNK_MAX_BYTES: usize = 32 * 1024 * 1024;
/// The largest batch of keys in one message.
pub const KEYS_MAX: usize = 65_536;
/// Protocol version, exchanged in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A ring member: its id and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub id: Id,
    pub addr: String,
}

/// A stored value: an immutable chunk or a versioned record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    Record { version: u64, record: Record },
}

/// What a caller asks of a node. Verbs with named fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    /// Routing state, for stabilize and for clients building a ring view.
    GetState,
    /// One step of an iterative lookup. `avoid` lists peers the caller found dead.
    FindSuccessor {
        key: Id,
        avoid: Vec<Id>,
    },
    /// "I might be your predecessor."
    Notify {
        candidate: Peer,
    },
    /// A graceful leave: the leaver's neighbours, so the ring closes around it.
    Leave {
        peer: Peer,
        predecessor: Option<Peer>,
        successors: Vec<Peer>,
        /// Other peers the leaver knows of (lost ones, ones met lately): where a
        /// neighbour left alone by this leave can look for the rest of the ring.
        #[serde(default)]
        known: Vec<Peer>,
    },
    /// Store an immutable chunk. With `replicate`, the receiver forwards it to its
    /// successors and answers once min(R, live) copies are durable.
    PutChunk {
        key: Id,
        data: Bytes,
        replicate: bool,
    },
    GetChunk {
        key: Id,
    },
    /// A reader got a copy of `key` from this node that fails its hash: check the copy on
    /// disk, and drop it for repair when it is bad.
    CheckChunk {
        key: Id,
    },
    /// Compare-and-set a record at the key's primary: succeeds when the current version
    /// equals `expect` (0 = absent); the new version is `expect + 1`.
    CasRecord {
        key: Id,
        expect: u64,
        record: Record,
    },
    /// Change a directory at the key's primary (see [`Edit`]): the primary applies the
    /// change to the version it holds and writes it as a compare-and-set would.
    EditRecord {
        key: Id,
        edit: Edit,
    },
    /// One name in a directory, as this node holds the directory: a create's check
    /// that a name is free, without moving the directory (a later write confirms it).
    LookupName {
        key: Id,
        name: String,
    },
    /// Store a record copy if it is newer than the one held (replication and repair).
    PutRecordCopy {
        key: Id,
        version: u64,
        record: Record,
        /// The primary's id for this write (0 from repair), so that only this very
        /// write can be taken back (see `RevertRecordCopy`).
        #[serde(default)]
        write: u64,
    },
    /// Undo a record copy of a write that failed: if this node holds `record` at
    /// `version`, it goes back to `previous` (or is removed when `None`). Sent by a
    /// primary that could not make the write durable on enough nodes, so that the
    /// unacknowledged version cannot later shadow an acknowledged one of the same number.
    /// Only the copy stored by write `write` is undone: the same body at the same
    /// version stored again by a retry of the write, acknowledged, stays.
    RevertRecordCopy {
        key: Id,
        version: u64,
        write: u64,
        previous: Option<(u64, Record)>,
    },
    /// Read a record. With `pull`, a primary missing it first asks its replicas.
    GetRecord {
        key: Id,
        pull: bool,
    },
    /// Which of these keys are held, at which version (0 for chunks), and whether this
    /// node counts itself one of their holders (answered with [`Response::Held`]).
    HaveKeys {
        keys: Vec<Id>,
    },
    /// Counts and disk space of the node.
    Stats,
    /// The keys held here, in ring order, after `after` (from the start when absent), at
    /// most `limit` of them (capped at [`KEYS_MAX`]). Page on with the last key returned.
    ListKeys {
        after: Option<Id>,
        limit: u32,
    },
    /// Store a copy of a chunk that the sender has held for `age_ms` (repair): a new
    /// copy keeps that age, a copy already held keeps its own, so repair never makes an
    /// unreferenced chunk look freshly written to garbage collection.
    PutChunkCopy {
        key: Id,
        data: Bytes,
        age_ms: u64,
    },
    /// The chunk keys referenced by the records held here (every version held, live
    /// inodes only), records in key order after `after`, at most `limit` records a page.
    ListChunkRefs {
        after: Option<Id>,
        limit: u32,
    },
    /// Garbage collection found these chunks unreferenced: delete the copies held here
    /// that were last stored at least `grace_ms` ago (or this node's own grace, if longer).
    DropChunks {
        keys: Vec<Id>,
        grace_ms: u64,
    },
    /// Run a garbage-collection sweep now, and answer with what it freed.
    CollectGarbage,
    /// A record is about to name these chunks (a server-side copy shares them): make the
    /// copies held here young again, as a writer's store of them would, without their
    /// bytes. Answered with [`Response::Held`]: `Kept(0)` for a copy held and touched.
    TouchChunks {
        keys: Vec<Id>,
    },
    /// Set one owner's locks on a file, at the file's primary (the successor of its
    /// inode id), to exactly `locks` (docs/locks.md). `held` is what the owner believes
    /// it holds there now: a primary that holds less than that and is past its grace
    /// period answers `Lost`. `seq` grows with every lock request of the session, so a
    /// late duplicate of an older request changes nothing.
    SetLocks {
        key: Id,
        session: u64,
        owner: u64,
        seq: u64,
        #[serde(default)]
        held: Vec<LockRange>,
        locks: Vec<LockRange>,
    },
    /// F_GETLK: the first lock of another owner that conflicts with `range`.
    TestLock {
        key: Id,
        session: u64,
        owner: u64,
        range: LockRange,
    },
    /// Answers once the file's lock state is no longer `generation`, or after `wait_ms`
    /// (at most `lock::WAIT_LOCK_MAX_MS`): how a blocked F_SETLKW waits without polling.
    WaitLock {
        key: Id,
        generation: u64,
        wait_ms: u64,
    },
    /// Renews the session's lease at this node. `files`: the files whose primary the
    /// session takes this node for, each with the digest of the locks it holds there.
    RenewLease {
        session: u64,
        #[serde(default)]
        files: Vec<(Id, u64)>,
    },
}

/// What a node says of one key asked by [`Request::HaveKeys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Held {
    /// Not held here.
    No,
    /// Held at this version (0 for chunks), and kept: this node counts itself a holder.
    Kept(u64),
    /// Held at this version, but this node's last repair pass found the key outside its
    /// range: it is handing it off and may drop it. Such a copy must not be counted as
    /// one of the R, or two groups of nodes that each take the other for the holders
    /// (views of a ring healing from a partition) could each drop theirs on the strength
    /// of the other's. Pinned by `a_copy_is_not_dropped_on_the_strength_of_stray_ones`.
    Stray(u64),
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong {
        id: Id,
    },
    State(NodeState),
    /// The lookup is over: `from` is the node whose successor owns `key`; `successors`
    /// is that node's successor list, owner first.
    Found {
        from: Peer,
        successors: Vec<Peer>,
    },
    /// Ask this peer next.
    Next {
        peer: Peer,
    },
    Ok,
    /// A key was stored on this many nodes, durably.
    Stored {
        copies: u32,
    },
    Chunk(Bytes),
    Record {
        version: u64,
        record: Record,
    },
    /// What an `EditRecord` did: written as `version` (and the entry it removed), or
    /// refused, with nothing written.
    Edited {
        version: u64,
        removed: Option<DirEntry>,
    },
    EditRefused(EditRefusal),
    /// A `LookupName` answer: the directory's version held and the name's entry.
    Entry {
        version: u64,
        entry: Option<DirEntry>,
    },
    /// CAS failed: the version now held.
    Conflict {
        current: u64,
    },
    NotFound,
    /// One answer per key asked by HaveKeys, in order.
    Held(Vec<Held>),
    Stats(NodeStats),
    /// A page of held keys: (key, size in bytes, version; 0 for chunks).
    Keys(Vec<KeyInfo>),
    /// A page of chunk references: the chunks the page's records name, and the last
    /// record key of the page when more follow (None: the listing is complete).
    ChunkRefs {
        chunks: Vec<Id>,
        next: Option<Id>,
    },
    /// Chunks deleted by `DropChunks`, and their bytes.
    Dropped {
        chunks: u64,
        bytes: u64,
    },
    /// What a garbage-collection sweep did.
    Collected(GcReport),
    /// The answer to a lock request (`SetLocks`, `TestLock`, `WaitLock`, `RenewLease`).
    Lock(LockAnswer),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame did not decode, or a field is out of bounds.
    BadRequest,
    /// The chunk's bytes do not hash to its key.
    HashMismatch,
    /// This node is not the primary for the key; look it up again.
    WrongNode,
    /// Fewer copies than required could be made durable.
    Unavailable,
    /// The node's disk failed.
    Storage,
    /// The node is shutting down.
    ShuttingDown,
    /// A repair copy of a chunk that garbage collection has just freed here: refused,
    /// so that repair does not hand back what the holders are deleting.
    Collected,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub me: Peer,
    pub predecessor: Option<Peer>,
    pub successors: Vec<Peer>,
    pub replicas: u32,
    /// Peers this node dropped for not answering, and still counts as possibly live
    /// (a node joining through it learns them: see `Node::join`).
    #[serde(default)]
    pub lost: Vec<Peer>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub chunks: u64,
    pub records: u64,
    pub bytes: u64,
    pub disk_total: u64,
    pub disk_free: u64,
}

/// What one garbage-collection sweep on one node did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    /// Ring members whose records were read in the mark.
    pub nodes: u32,
    /// Distinct chunks referenced by any record in the ring.
    pub referenced: u64,
    /// Chunks held here before the sweep.
    pub chunks_held: u64,
    /// Chunks freed here, and their bytes.
    pub chunks_freed: u64,
    pub bytes_freed: u64,
    /// Unreferenced chunks kept here because they are younger than the grace period.
    pub kept_young: u64,
    /// Copies freed on the other holders of the chunks freed here.
    pub peer_chunks_freed: u64,
    pub peer_bytes_freed: u64,
    pub duration_ms: u64,
}

/// One held key, as listed by `ListKeys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key: Id,
    pub size: u64,
    /// Record version; 0 for chunks.
    pub version: u64,
    pub chunk: bool,
}

/// What travels in a frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

impl Response {
    /// Bytes of bulk data carried (to size the frame buffer).
    pub fn payload_len(&self) -> usize {
        match self {
            Response::Chunk(d) => d.len(),
            _ => 0,
        }
    }
}

impl Request {
    /// Bytes of bulk data carried (to size the frame buffer).
    pub fn payload_len(&self) -> usize {
        match self {
            Request::PutChunk { data, .. } | Request::PutChunkCopy { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Reject fields out of bounds before acting on them.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::PutChunk { data, .. } if data.len() > CHUNK_MAX_BYTES => Err(format!(
                "chunk of {} bytes exceeds {CHUNK_MAX_BYTES}",
                data.len()
            )),
            Request::PutChunkCopy { data, .. } if data.len() > CHUNK_MAX_BYTES => Err(format!(
                "chunk of {} bytes exceeds {CHUNK_MAX_BYTES}",
                data.len()
            )),
            Request::HaveKeys { keys }
            | Request::DropChunks { keys, .. }
            | Request::TouchChunks { keys }
                if keys.len() > KEYS_MAX =>
            {
                Err(format!("{} keys exceed {KEYS_MAX}", keys.len()))
            }
            Request::EditRecord { edit, .. } if !record::valid_name(edit.name()) => {
                Err("edit of an invalid name".into())
            }
            Request::LookupName { name, .. } if !record::valid_name(name) => {
                Err("lookup of an invalid name".into())
            }
            Request::FindSuccessor { avoid, .. } if avoid.len() > 1024 => {
                Err("avoid list too long".into())
            }
            Request::Leave {
                successors, known, ..
            } if successors.len() > 1024 || known.len() > 1024 => {
                Err("successor list too long".into())
            }
            Request::SetLocks { held, locks, .. }
                if held.len() > lock::LOCKS_MAX || locks.len() > lock::LOCKS_MAX =>
            {
                Err(format!("more than {} lock ranges", lock::LOCKS_MAX))
            }
            Request::SetLocks { held, locks, .. }
                if held.iter().chain(locks.iter()).any(LockRange::is_empty) =>
            {
                Err("an empty lock range".into())
            }
            Request::TestLock { range, .. } if range.is_empty() => {
                Err("an empty lock range".into())
            }
            Request::RenewLease { files, .. } if files.len() > lock::RENEW_FILES_MAX => Err(
                format!("more than {} files in one renewal", lock::RENEW_FILES_MAX),
            ),
            _ => Ok(()),
        }
    }
}
