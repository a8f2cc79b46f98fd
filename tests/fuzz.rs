//! Property tests that fuzz every decoder of outside bytes: the frame codec and every
//! `Request`/`Response` variant, the on-disk record files (alone and through
//! `Store::open`), and a live node's TCP server.
//!
//! Case counts come from `PROPTEST_CASES` (default 256 here; the server test runs a
//! tenth of them), seeds from `PROPTEST_RNG_SEED` (default: random). `scripts/fuzz.sh
//! MINUTES` runs them in release mode with many cases and a new seed each round.
//!
//! The test binary counts allocations: decoding any input of n bytes must never make
//! one allocation larger than [`ALLOC_BOUND`] + 2n, so no length read from the input
//! (a MessagePack array, map, string or bin header claiming 4 GiB) is trusted before the
//! bytes are there.

mod common;

use bytes::{Bytes, BytesMut};
use chordfs::id::Id;
use chordfs::proto::lock::{LockAnswer, LockHolder, LockKind, LockRange};
use chordfs::proto::{
    codec, DirEntry, Edit, EditRefusal, Envelope, ErrorKind, GcReport, Held, Inode, KeyInfo, Kind,
    NodeState, NodeStats, Peer, Record, Request, Response, Timespec, Value, FRAME_MAX_BYTES,
};
use chordfs::store::journal::{self, Entry};
use chordfs::store::{decode_record_file, encode_record_file, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------- allocation gauge

/// Serde's cautious preallocation (1 MiB) plus slack.
const ALLOC_BOUND: usize = 2 << 20;

struct Gauge;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to the system allocator; the gauge only
// records the largest size asked for on this thread (a const-initialised Cell: no
// allocation, no reentrancy).
unsafe impl GlobalAlloc for Gauge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = PEAK.try_with(|p| p.set(p.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GAUGE: Gauge = Gauge;

/// Runs `f` and returns its result with the largest single allocation it made.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(|p| p.get()))
}

// ---------------------------------------------------------------- strategies

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        1 => Just(Id::ZERO),
        8 => any::<[u8; 20]>().prop_map(Id),
    ]
}

/// Addresses that fail fast when a node tries them (no DNS): a loopback port, or no port.
fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..).prop_map(|p| format!("127.0.0.1:{p}")),
        "[a-z.]{0,12}",
    ]
}

fn peer() -> impl Strategy<Value = Peer> {
    (id(), addr()).prop_map(|(id, addr)| Peer { id, addr })
}

fn peers(max: usize) -> impl Strategy<Value = Vec<Peer>> {
    prop::collection::vec(peer(), 0..max)
}

fn ids(max: usize) -> impl Strategy<Value = Vec<Id>> {
    prop::collection::vec(id(), 0..max)
}

fn small_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::File),
        Just(Kind::Dir),
        Just(Kind::Symlink),
        Just(Kind::Fifo),
        Just(Kind::Socket),
        Just(Kind::CharDevice),
        Just(Kind::BlockDevice),
    ]
}

fn timespec() -> impl Strategy<Value = Timespec> {
    let edge = prop_oneof![
        Just(i64::MAX),
        Just(i64::MAX - 1),
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(0),
        Just(-1),
    ];
    prop_oneof![
        (edge, any::<u32>()).prop_map(|(secs, nanos)| Timespec { secs, nanos }),
        (any::<i64>(), any::<u32>()).prop_map(|(secs, nanos)| Timespec { secs, nanos }),
        (-10_000_000_000i64..10_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| Timespec { secs, nanos }),
    ]
}

fn inode() -> impl Strategy<Value = Inode> {
    let head = (
        kind(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        timespec(),
        timespec(),
        timespec(),
        any::<u32>(),
        any::<u32>(),
    );
    let tail = (
        ids(8),
        prop::collection::btree_map(
            any::<String>(),
            (id(), kind()).prop_map(|(id, kind)| DirEntry { id, kind }),
            0..6,
        ),
        id(),
        any::<String>(),
        prop::collection::btree_map(
            any::<String>(),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(serde_bytes::ByteBuf::from),
            0..4,
        ),
        proptest::option::of(
            prop::collection::vec(any::<u8>(), 0..256).prop_map(serde_bytes::ByteBuf::from),
        ),
    );
    (head, tail).prop_map(
        |(
            (kind, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, chunk_bytes),
            (chunks, entries, parent, target, xattrs, inline),
        )| Inode {
            kind,
            mode,
            uid,
            gid,
            nlink,
            size,
            atime,
            mtime,
            ctime,
            rdev,
            chunk_bytes,
            chunks,
            entries,
            parent,
            target,
            xattrs,
            inline,
        },
    )
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => Just(Record::Deleted),
        6 => inode().prop_map(|i| Record::Inode(Box::new(i))),
    ]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::BadRequest),
        Just(ErrorKind::HashMismatch),
        Just(ErrorKind::WrongNode),
        Just(ErrorKind::Unavailable),
        Just(ErrorKind::Storage),
        Just(ErrorKind::ShuttingDown),
        Just(ErrorKind::Collected),
        Just(ErrorKind::Internal),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<String>(), id(), kind(), timespec()).prop_map(|(name, id, kind, time)| {
            Edit::Link {
                name,
                entry: DirEntry { id, kind },
                time,
            }
        }),
        (
            any::<String>(),
            any::<bool>(),
            proptest::option::of(id()),
            timespec()
        )
            .prop_map(|(name, dir, id, time)| Edit::Unlink {
                name,
                dir,
                id,
                time
            }),
    ]
}

fn edit_refusal() -> impl Strategy<Value = EditRefusal> {
    prop_oneof![
        Just(EditRefusal::Exists),
        Just(EditRefusal::NotFound),
        Just(EditRefusal::NotDir),
        Just(EditRefusal::IsDir),
    ]
}

/// Every `Request` variant (the match below fails to compile when one is added, so
/// this list stays whole).
fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Ping),
        Just(Request::GetState),
        (id(), ids(6)).prop_map(|(key, avoid)| Request::FindSuccessor { key, avoid }),
        peer().prop_map(|candidate| Request::Notify { candidate }),
        (peer(), proptest::option::of(peer()), peers(6), peers(6)).prop_map(
            |(peer, predecessor, successors, known)| Request::Leave {
                peer,
                predecessor,
                successors,
                known,
            }
        ),
        (id(), small_bytes(), any::<bool>()).prop_map(|(key, data, replicate)| {
            Request::PutChunk {
                key,
                data,
                replicate,
            }
        }),
        id().prop_map(|key| Request::GetChunk { key }),
        (id(), any::<u64>(), record()).prop_map(|(key, expect, record)| Request::CasRecord {
            key,
            expect,
            record
        }),
        (id(), edit()).prop_map(|(key, edit)| Request::EditRecord { key, edit }),
        (id(), any::<String>()).prop_map(|(key, name)| Request::LookupName { key, name }),
        (id(), any::<u64>(), record(), any::<u64>()).prop_map(|(key, version, record, write)| {
            Request::PutRecordCopy {
                key,
                version,
                record,
                write,
            }
        }),
        (
            id(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of((any::<u64>(), record()))
        )
            .prop_map(|(key, version, write, previous)| {
                Request::RevertRecordCopy {
                    key,
                    version,
                    write,
                    previous,
                }
            }),
        (id(), any::<bool>()).prop_map(|(key, pull)| Request::GetRecord { key, pull }),
        ids(64).prop_map(|keys| Request::HaveKeys { keys }),
        Just(Request::Stats),
        id().prop_map(|key| Request::CheckChunk { key }),
        (
            id(),
            prop::collection::vec(any::<u8>(), 0..512),
            any::<u64>()
        )
            .prop_map(|(key, data, age_ms)| Request::PutChunkCopy {
                key,
                data: Bytes::from(data),
                age_ms,
            }),
        (proptest::option::of(id()), any::<u32>())
            .prop_map(|(after, limit)| Request::ListChunkRefs { after, limit }),
        (ids(64), any::<u64>()).prop_map(|(keys, grace_ms)| Request::DropChunks { keys, grace_ms }),
        Just(Request::CollectGarbage),
        ids(64).prop_map(|keys| Request::TouchChunks { keys }),
        (id(), any::<[u64; 3]>(), lock_ranges(), lock_ranges()).prop_map(
            |(key, [session, owner, seq], held, locks)| Request::SetLocks {
                key,
                session,
                owner,
                seq,
                held,
                locks,
            }
        ),
        (id(), any::<[u64; 2]>(), lock_range()).prop_map(|(key, [session, owner], range)| {
            Request::TestLock {
                key,
                session,
                owner,
                range,
            }
        }),
        (id(), any::<[u64; 2]>()).prop_map(|(key, [generation, wait_ms])| Request::WaitLock {
            key,
            generation,
            wait_ms,
        }),
        (
            any::<u64>(),
            prop::collection::vec((id(), any::<u64>()), 0..8)
        )
            .prop_map(|(session, files)| Request::RenewLease { session, files }),
        (proptest::option::of(id()), any::<u32>())
            .prop_map(|(after, limit)| Request::ListKeys { after, limit }),
    ]
}

/// The variants `request()` covers, checked by an exhaustive match.
fn request_variant(r: &Request) -> usize {
    match r {
        Request::Ping => 0,
        Request::GetState => 1,
        Request::FindSuccessor { .. } => 2,
        Request::Notify { .. } => 3,
        Request::Leave { .. } => 4,
        Request::PutChunk { .. } => 5,
        Request::GetChunk { .. } => 6,
        Request::CasRecord { .. } => 7,
        Request::PutRecordCopy { .. } => 8,
        Request::GetRecord { .. } => 9,
        Request::HaveKeys { .. } => 10,
        Request::Stats => 11,
        Request::ListKeys { .. } => 12,
        Request::CheckChunk { .. } => 13,
        Request::PutChunkCopy { .. } => 14,
        Request::ListChunkRefs { .. } => 15,
        Request::DropChunks { .. } => 16,
        Request::CollectGarbage => 17,
        Request::RevertRecordCopy { .. } => 18,
        Request::EditRecord { .. } => 19,
        Request::LookupName { .. } => 20,
        Request::TouchChunks { .. } => 21,
        Request::SetLocks { .. } => 22,
        Request::TestLock { .. } => 23,
        Request::WaitLock { .. } => 24,
        Request::RenewLease { .. } => 25,
    }
}
const REQUEST_VARIANTS: usize = 26;

fn node_stats() -> impl Strategy<Value = NodeStats> {
    any::<[u64; 5]>().prop_map(
        |[chunks, records, bytes, disk_total, disk_free]| NodeStats {
            chunks,
            records,
            bytes,
            disk_total,
            disk_free,
        },
    )
}

fn held() -> impl Strategy<Value = Held> {
    prop_oneof![
        Just(Held::No),
        any::<u64>().prop_map(Held::Kept),
        any::<u64>().prop_map(Held::Stray),
    ]
}

fn key_info() -> impl Strategy<Value = KeyInfo> {
    (id(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(key, size, version, chunk)| {
        KeyInfo {
            key,
            size,
            version,
            chunk,
        }
    })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        id().prop_map(|id| Response::Pong { id }),
        (
            peer(),
            proptest::option::of(peer()),
            peers(6),
            any::<u32>(),
            peers(4)
        )
            .prop_map(|(me, predecessor, successors, replicas, lost)| {
                Response::State(NodeState {
                    me,
                    predecessor,
                    successors,
                    replicas,
                    lost,
                })
            }),
        (peer(), peers(6)).prop_map(|(from, successors)| Response::Found { from, successors }),
        peer().prop_map(|peer| Response::Next { peer }),
        Just(Response::Ok),
        any::<u32>().prop_map(|copies| Response::Stored { copies }),
        small_bytes().prop_map(Response::Chunk),
        (any::<u64>(), record()).prop_map(|(version, record)| Response::Record { version, record }),
        any::<u64>().prop_map(|current| Response::Conflict { current }),
        (
            any::<u64>(),
            proptest::option::of((id(), kind()).prop_map(|(id, kind)| DirEntry { id, kind }))
        )
            .prop_map(|(version, removed)| Response::Edited { version, removed }),
        edit_refusal().prop_map(Response::EditRefused),
        (
            any::<u64>(),
            proptest::option::of((id(), kind()).prop_map(|(id, kind)| DirEntry { id, kind }))
        )
            .prop_map(|(version, entry)| Response::Entry { version, entry }),
        Just(Response::NotFound),
        prop::collection::vec(held(), 0..32).prop_map(Response::Held),
        node_stats().prop_map(Response::Stats),
        prop::collection::vec(key_info(), 0..16).prop_map(Response::Keys),
        (ids(64), proptest::option::of(id()))
            .prop_map(|(chunks, next)| Response::ChunkRefs { chunks, next }),
        any::<(u64, u64)>().prop_map(|(chunks, bytes)| Response::Dropped { chunks, bytes }),
        (any::<[u64; 8]>(), any::<u32>()).prop_map(|(v, nodes)| Response::Collected(GcReport {
            nodes,
            referenced: v[0],
            chunks_held: v[1],
            chunks_freed: v[2],
            bytes_freed: v[3],
            kept_young: v[4],
            peer_chunks_freed: v[5],
            peer_bytes_freed: v[6],
            duration_ms: v[7],
        })),
        (error_kind(), any::<String>())
            .prop_map(|(kind, message)| Response::Error { kind, message }),
        lock_answer().prop_map(Response::Lock),
    ]
}

fn lock_range() -> impl Strategy<Value = LockRange> {
    (any::<u64>(), any::<u64>(), any::<bool>(), any::<u32>()).prop_map(|(start, end, x, pid)| {
        LockRange {
            start,
            end,
            kind: if x {
                LockKind::Exclusive
            } else {
                LockKind::Shared
            },
            pid,
        }
    })
}

fn lock_ranges() -> impl Strategy<Value = Vec<LockRange>> {
    prop::collection::vec(lock_range(), 0..8)
}

fn lock_answer() -> impl Strategy<Value = LockAnswer> {
    prop_oneof![
        any::<u64>().prop_map(|lease_ms| LockAnswer::Granted { lease_ms }),
        (any::<[u64; 3]>(), lock_range()).prop_map(|([session, owner, generation], range)| {
            LockAnswer::Conflict {
                holder: LockHolder {
                    session,
                    owner,
                    range,
                },
                generation,
            }
        }),
        Just(LockAnswer::Free),
        any::<u64>().prop_map(|retry_ms| LockAnswer::Grace { retry_ms }),
        Just(LockAnswer::Lost),
        any::<u64>().prop_map(|generation| LockAnswer::Changed { generation }),
        (
            any::<u64>(),
            prop::collection::vec((id(), prop::collection::vec(any::<u64>(), 0..4)), 0..4),
            ids(8)
        )
            .prop_map(|(lease_ms, differ, elsewhere)| LockAnswer::Renewed {
                lease_ms,
                differ,
                elsewhere,
            }),
    ]
}

fn response_variant(r: &Response) -> usize {
    match r {
        Response::Pong { .. } => 0,
        Response::State(_) => 1,
        Response::Found { .. } => 2,
        Response::Next { .. } => 3,
        Response::Ok => 4,
        Response::Stored { .. } => 5,
        Response::Chunk(_) => 6,
        Response::Record { .. } => 7,
        Response::Conflict { .. } => 8,
        Response::NotFound => 9,
        Response::Held(_) => 10,
        Response::Stats(_) => 11,
        Response::Keys(_) => 12,
        Response::Error { .. } => 13,
        Response::ChunkRefs { .. } => 14,
        Response::Dropped { .. } => 15,
        Response::Collected(_) => 16,
        Response::Edited { .. } => 17,
        Response::EditRefused(_) => 18,
        Response::Entry { .. } => 19,
        Response::Lock(_) => 20,
    }
}
const RESPONSE_VARIANTS: usize = 21;

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Value::Chunk),
        (any::<u64>(), record()).prop_map(|(version, record)| Value::Record { version, record }),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Overwrite bytes with a header claiming a huge size (MessagePack array32, map32,
    /// str32, bin32, or a bare 4-byte length).
    Huge(usize, u8),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, h)| Mutation::Huge(i, h)),
    ];
    prop::collection::vec(one, 1..5)
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len();
        match *m {
            Mutation::Flip(i, x) if n > 0 => b[i % n] ^= x,
            Mutation::Set(i, x) if n > 0 => b[i % n] = x,
            Mutation::Insert(i, x) => b.insert(i % (n + 1), x),
            Mutation::Remove(i) if n > 0 => {
                b.remove(i % n);
            }
            Mutation::Truncate(i) => b.truncate(i % (n + 1)),
            Mutation::Huge(i, h) if n > 0 => {
                let at = i % n;
                let head: &[u8] = match h % 5 {
                    0 => &[0xdd, 0xff, 0xff, 0xff, 0xf0],
                    1 => &[0xdf, 0xff, 0xff, 0xff, 0xf0],
                    2 => &[0xdb, 0xff, 0xff, 0xff, 0xf0],
                    3 => &[0xc6, 0xff, 0xff, 0xff, 0xf0],
                    _ => &[0x7f, 0xff, 0xff, 0xf0],
                };
                for (k, v) in head.iter().copied().enumerate() {
                    if at + k < n {
                        b[at + k] = v;
                    }
                }
            }
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------- decoders

/// Decodes `bytes` every way a node or client does; never panics, never trusts a
/// length it has not seen the bytes of.
fn decode_all_ways(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ((), peak) = peak_alloc(|| {
        let _ = codec::decode::<Request>(bytes);
        let _ = codec::decode::<Response>(bytes);
        let _ = codec::salvage_id(bytes);
        let _ = decode_record_file(bytes);
        let _ = journal::parse(bytes);
        if let Some((_, Record::Inode(ino))) = decode_record_file(bytes) {
            let _ = times_of(&ino);
        }
    });
    prop_assert!(
        peak <= ALLOC_BOUND + 2 * bytes.len(),
        "decoding {} bytes allocated {} at once",
        bytes.len(),
        peak
    );
    Ok(())
}

/// What the mount does with a record's times: convert them for `stat`.
fn times_of(ino: &Inode) -> [SystemTime; 3] {
    [ino.atime.into(), ino.mtime.into(), ino.ctime.into()]
}

/// Splits a byte stream into pieces and feeds the framing codec; every frame it yields
/// is within the cap, and it never panics.
fn feed_framing(stream: &[u8], cuts: &[usize]) -> Result<usize, TestCaseError> {
    let mut codec = codec::framing();
    let mut buf = BytesMut::new();
    let mut frames = 0;
    let mut at = 0;
    let mut pieces: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    pieces.sort_unstable();
    pieces.push(stream.len());
    for end in pieces {
        if end < at {
            continue;
        }
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        // Bounded: each frame consumes at least its 4-byte head.
        for _ in 0..=stream.len() / 4 + 1 {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    prop_assert!(f.len() <= FRAME_MAX_BYTES);
                    decode_all_ways(&f)?;
                    frames += 1;
                }
                Ok(None) => break,
                Err(_) => return Ok(frames), // a connection would close here
            }
        }
    }
    Ok(frames)
}

fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn config(divisor: u32) -> Config {
    let base = Config::default();
    Config {
        cases: (base.cases / divisor).max(1),
        ..base
    }
}

proptest! {
    #![proptest_config(config(1))]

    /// Every request round-trips through a frame, whatever its fields.
    #[test]
    fn every_request_round_trips(rid in any::<u64>(), req in request()) {
        assert!(request_variant(&req) < REQUEST_VARIANTS);
        let f = codec::encode(rid, &req).unwrap();
        let back: Envelope<Request> = codec::decode(&f).unwrap();
        prop_assert_eq!(back.id, rid);
        prop_assert_eq!(back.body, req);
        prop_assert_eq!(codec::salvage_id(&f), Some(rid));
    }

    /// Every response round-trips through a frame.
    #[test]
    fn every_response_round_trips(rid in any::<u64>(), resp in response()) {
        assert!(response_variant(&resp) < RESPONSE_VARIANTS);
        let f = codec::encode(rid, &resp).unwrap();
        let back: Envelope<Response> = codec::decode(&f).unwrap();
        prop_assert_eq!(back.id, rid);
        prop_assert_eq!(back.body, resp);
    }

    #[test]
    fn values_round_trip(v in value()) {
        let f = codec::encode(1, &v).unwrap();
        let back: Envelope<Value> = codec::decode(&f).unwrap();
        prop_assert_eq!(back.body, v);
    }

    /// Random bytes: no decoder panics or over-allocates.
    #[test]
    fn random_bytes_decode_safely(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decode_all_ways(&bytes)?;
    }

    /// Valid frames of every request and response variant, mutated and truncated: no
    /// decoder panics or over-allocates; a frame that still decodes as a request
    /// encodes again (it is a real request, not a half-read one).
    #[test]
    fn mutated_frames_decode_safely(
        rid in any::<u64>(),
        req in request(),
        resp in response(),
        ms in mutations(),
    ) {
        for f in [codec::encode(rid, &req).unwrap(), codec::encode(rid, &resp).unwrap()] {
            let m = mutate(f.to_vec(), &ms);
            decode_all_ways(&m)?;
            if let Ok(env) = codec::decode::<Request>(&m) {
                let again = codec::encode(env.id, &env.body).unwrap();
                prop_assert_eq!(codec::decode::<Request>(&again).unwrap().body, env.body);
            }
        }
    }

    /// A stream of length-prefixed frames (some valid, some junk, some mutated), cut
    /// into arbitrary pieces as TCP may deliver it: the framing never panics, never
    /// yields a frame over the cap, and yields every valid frame when nothing is
    /// mutated.
    #[test]
    fn framed_streams_split_anywhere(
        reqs in prop::collection::vec(request(), 1..4),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        ms in mutations(),
    ) {
        let mut stream = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            stream.extend(length_prefixed(&codec::encode(i as u64, r).unwrap()));
        }
        let n = feed_framing(&stream, &cuts)?;
        prop_assert_eq!(n, reqs.len());
        stream.extend(length_prefixed(&junk));
        feed_framing(&mutate(stream, &ms), &cuts)?;
    }

    /// Record files: every record round-trips; any change to a record file's bytes
    /// (bit flip, truncation, insertion, a huge length) is refused, never a panic.
    #[test]
    fn record_files_round_trip_and_refuse_any_damage(
        version in any::<u64>(),
        rec in record(),
        ms in mutations(),
    ) {
        let bytes = encode_record_file(version, &rec).unwrap();
        prop_assert_eq!(decode_record_file(&bytes), Some((version, rec.clone())));
        let bad = mutate(bytes.clone(), &ms);
        decode_all_ways(&bad)?;
        if bad != bytes {
            prop_assert_eq!(decode_record_file(&bad), None);
        }
        // A body damaged *under a valid checksum* (a buggy writer, not rot): refused or
        // decoded, never a panic.
        let body = mutate(bytes[20..].to_vec(), &ms);
        let mut resealed = Id::hash(&body).0.to_vec();
        resealed.extend_from_slice(&body);
        decode_all_ways(&resealed)?;
    }

    /// The record journal: whatever a crash or a bad disk does to its bytes, a start
    /// replays a prefix of the entries written (never a damaged or invented one), and
    /// the store opens.
    #[test]
    fn a_damaged_journal_replays_a_prefix_of_what_was_written(
        recs in proptest::collection::vec((any::<u64>(), record(), any::<bool>()), 1..6),
        ms in mutations(),
    ) {
        let entries: Vec<Entry> = recs
            .iter()
            .enumerate()
            .map(|(i, (version, rec, delete))| {
                let key = Id::hash(format!("j{}", i % 3).as_bytes());
                if *delete {
                    Entry::Delete(key)
                } else {
                    Entry::Write(key, encode_record_file(*version, rec).unwrap())
                }
            })
            .collect();
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
        prop_assert_eq!(journal::parse(&bytes), (entries.clone(), bytes.len()));
        let bad = mutate(bytes, &ms);
        let (got, used) = journal::parse(&bad);
        prop_assert!(used <= bad.len());
        prop_assert_eq!(&got[..], &entries[..got.len()]);
        // A data dir holding that journal opens, with the replayed prefix applied.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("journal")).unwrap();
        std::fs::write(dir.path().join("journal").join("00000000000000000001.log"), &bad).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut want: BTreeMap<Id, Option<(u64, Record)>> = BTreeMap::new();
        for e in &got {
            match e {
                Entry::Write(k, b) => { want.insert(*k, decode_record_file(b)); }
                Entry::Delete(k) => { want.insert(*k, None); }
            }
        }
        for (k, r) in want {
            prop_assert_eq!(store.get_record_blocking(&k).unwrap(), r);
        }
    }

    /// Any record a node or mount receives converts to `stat` times without a panic.
    #[test]
    fn any_record_times_convert(t in timespec()) {
        let _ = SystemTime::from(t);
    }
}

proptest! {
    #![proptest_config(config(8))]

    /// The store reading a data dir: good, damaged and random record files side by side;
    /// `Store::open` keeps exactly the good ones (and serves them), drops the rest.
    #[test]
    fn store_open_keeps_good_records_and_drops_damaged_ones(
        recs in prop::collection::vec((any::<u64>(), record(), mutations(), any::<bool>()), 1..6),
        junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut want = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, (version, rec, ms, damage)) in recs.iter().enumerate() {
            let key = Id::hash(format!("rec{i}").as_bytes());
            let mut bytes = encode_record_file(*version, rec).unwrap();
            if *damage {
                bytes = mutate(bytes, ms);
            }
            match decode_record_file(&bytes) {
                Some(r) => { want.insert(key, r); }
                None => bad.push(key),
            }
            write_record(dir.path(), &key, &bytes);
        }
        for (i, j) in junk.iter().enumerate() {
            let key = Id::hash(format!("junk{i}").as_bytes());
            if decode_record_file(j).is_none() {
                bad.push(key);
            }
            write_record(dir.path(), &key, j);
        }
        let store = Store::open(dir.path()).unwrap();
        for (key, (version, rec)) in &want {
            prop_assert_eq!(store.get_record_blocking(key).unwrap(), Some((*version, rec.clone())));
        }
        for key in &bad {
            prop_assert!(store.meta(key).is_none());
            prop_assert_eq!(store.get_record_blocking(key).unwrap(), None);
        }
    }
}

fn write_record(dir: &std::path::Path, key: &Id, bytes: &[u8]) {
    let hex = key.to_hex();
    let p = dir.join("records").join(&hex[..2]);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join(hex), bytes).unwrap();
}

// ---------------------------------------------------------------- a live node

/// What one connection does with a fuzzed frame.
#[derive(Clone, Debug)]
enum Probe {
    /// A valid request, perhaps mutated.
    Frame(Request, Vec<Mutation>, bool),
    /// Random bytes in a well-formed frame.
    Junk(Vec<u8>),
    /// Random bytes with no framing at all.
    Raw(Vec<u8>),
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        4 => (request(), mutations(), any::<bool>()).prop_map(|(r, m, mutate)| Probe::Frame(r, m, mutate)),
        2 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Probe::Junk),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Probe::Raw),
    ]
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(addr: &str) -> tokio::net::TcpStream {
    let mut s = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    chordfs::net::auth::client_handshake(&mut s, b"", IO_TIMEOUT)
        .await
        .expect("handshake");
    s
}

/// Sends the probe; the node answers with a frame that decodes as a response, or
/// closes the connection, within the timeout. Then Ping on a fresh connection answers.
async fn poke(addr: &str, p: &Probe) -> Result<(), String> {
    let bytes = match p {
        Probe::Frame(r, ms, m) => {
            let f = codec::encode(7, r).unwrap().to_vec();
            length_prefixed(&if *m { mutate(f, ms) } else { f })
        }
        Probe::Junk(j) => length_prefixed(j),
        Probe::Raw(r) => r.clone(),
    };
    let mut s = connect(addr).await;
    s.write_all(&bytes).await.map_err(|e| e.to_string())?;
    // Half-close: a node waiting for the rest of a frame sees the end of the stream.
    let _ = s.shutdown().await;
    let mut got = Vec::new();
    match tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut got)).await {
        Err(_) => return Err("the node neither answered nor closed in time".into()),
        Ok(_) => {
            // Every whole frame it sent decodes as a response.
            let mut buf = BytesMut::from(&got[..]);
            let mut codec = codec::framing();
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                codec::decode::<Response>(&f).map_err(|e| format!("reply: {e}"))?;
            }
        }
    }
    let mut s = connect(addr).await;
    s.write_all(&length_prefixed(&codec::encode(1, &Request::Ping).unwrap()))
        .await
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 4];
    let read = async {
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| "no Pong in time".to_string())?
        .map_err(|e| format!("Ping: {e}"))?;
    match codec::decode::<Response>(&body).map(|e| e.body) {
        Ok(Response::Pong { .. }) => Ok(()),
        other => Err(format!("Ping answered {other:?}")),
    }
}

/// Random and mutated frames of every request variant, sent to a live node over TCP:
/// each gets a decodable reply or a closed connection, and the node keeps serving.
#[test]
fn a_live_node_survives_fuzzed_frames() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = common::Opts {
        replicas: 1,
        extra: Vec::new(),
    };
    let cluster = rt.block_on(common::Cluster::start(1, opts));
    let addr = cluster.nodes[0].addr.clone();
    let mut runner = TestRunner::new(Config {
        source_file: Some(file!()),
        ..config(10)
    });
    let result = runner.run(&probe(), |p| {
        rt.block_on(poke(&addr, &p)).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\n{}", cluster.logs());
    }
    drop(cluster);
}
