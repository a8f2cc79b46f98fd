//! Hostile or broken input on a node's port, and a corrupt data dir: every case gets an
//! error reply or a closed connection, never a crash, and afterwards the node still
//! answers Ping and serves every file with nothing lost.

mod common;

use chordfs::id::Id;
use chordfs::proto::lock::{LOCKS_MAX, RENEW_FILES_MAX};
use chordfs::proto::{
    codec, Envelope, ErrorKind, LockKind, LockRange, Request, Response, KEYS_MAX,
};
use common::{assert_same, get_bytes, put_bytes, random_bytes, wait_until, Cluster, Opts, SETTLE};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection past the handshake (these nodes have no cluster secret), so what follows
/// reaches the frame decoder.
async fn connect(addr: &str) -> TcpStream {
    let mut s = raw_connect(addr).await;
    chordfs::net::auth::client_handshake(&mut s, b"", IO_TIMEOUT)
        .await
        .expect("handshake");
    s
}

/// A connection that has not authenticated.
async fn raw_connect(addr: &str) -> TcpStream {
    tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

async fn send(s: &mut TcpStream, bytes: &[u8]) {
    tokio::time::timeout(IO_TIMEOUT, s.write_all(bytes))
        .await
        .expect("write in time")
        .expect("write");
}

/// The next frame's body, or None once the node has closed the connection.
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let read = async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .expect("the node answers or closes in time")
}

async fn read_response(s: &mut TcpStream) -> Envelope<Response> {
    let body = read_frame(s)
        .await
        .expect("a reply, not a closed connection");
    codec::decode::<Response>(&body).expect("the reply decodes")
}

/// True once the node has closed this connection (EOF or reset), within the timeout.
async fn closed_by_node(s: &mut TcpStream, what: &str) -> bool {
    let mut buf = [0u8; 1024];
    for _ in 0..1000 {
        let read = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf)).await;
        match read.unwrap_or_else(|_| panic!("{what}: connection not closed in time")) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // an error reply first is fine
        }
    }
    false
}

fn assert_error(env: &Envelope<Response>, id: u64, kind: ErrorKind) {
    assert_eq!(env.id, id, "the reply carries the request's id");
    match &env.body {
        Response::Error { kind: k, .. } => assert_eq!(*k, kind, "{:?}", env.body),
        other => panic!("want an error {kind:?}, got {other:?}"),
    }
}

/// The node answers Ping on a fresh connection and every file reads back whole.
async fn assert_healthy(c: &Cluster, addr: &str, files: &[(String, Vec<u8>)], after: &str) {
    let mut s = connect(addr).await;
    send(&mut s, &frame(&codec::encode(1, &Request::Ping).unwrap())).await;
    let env = read_response(&mut s).await;
    assert!(
        matches!(env.body, Response::Pong { .. }),
        "after {after}: {:?}",
        env.body
    );
    let client = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in files {
        assert_same(
            &format!("after {after}: {path}"),
            &get_bytes(&client, path).await,
            data,
        );
    }
}

async fn some_files(c: &Cluster) -> Vec<(String, Vec<u8>)> {
    let client = c.client_with(|cfg| cfg.chunk_bytes = 16 * 1024).await;
    let mut files = Vec::new();
    for i in 0..4u64 {
        let data = random_bytes(40_000 + i as usize * 11_111, 500 + i);
        let path = format!("/bad/f{i}");
        put_bytes(&client, &path, &data).await;
        files.push((path, data));
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_get_an_error_or_a_closed_connection_and_nothing_else() {
    let c = Cluster::start(3, Opts::default()).await;
    let files = some_files(&c).await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
    let addr = c.nodes[1].addr.clone();

    // Before authenticating, nothing is decoded as a request: junk, or a well-formed
    // request frame, only closes the connection.
    let mut s = raw_connect(&addr).await;
    send(&mut s, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(closed_by_node(&mut s, "huge hello").await);
    let mut s = raw_connect(&addr).await;
    send(&mut s, &frame(&codec::encode(1, &Request::Stats).unwrap())).await;
    assert!(closed_by_node(&mut s, "request without handshake").await);
    assert_healthy(&c, &addr, &files, "frames before the handshake").await;

    // A length prefix far above the frame cap: refused before buffering, connection closed.
    let mut s = connect(&addr).await;
    send(&mut s, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(closed_by_node(&mut s, "huge length").await);
    assert_healthy(&c, &addr, &files, "a huge length prefix").await;

    // Not our protocol at all (its first four bytes read as a 1.2 GB length).
    let mut s = connect(&addr).await;
    send(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(closed_by_node(&mut s, "http").await);
    assert_healthy(&c, &addr, &files, "an HTTP request").await;

    // A well-framed body of garbage: an error reply (no id to salvage), then closed.
    let mut s = connect(&addr).await;
    send(&mut s, &frame(b"\xc1\xc1 definitely not msgpack \x00\xff")).await;
    let env = read_response(&mut s).await;
    assert_error(&env, 0, ErrorKind::BadRequest);
    assert!(closed_by_node(&mut s, "garbage").await);
    assert_healthy(&c, &addr, &files, "garbage bytes").await;

    // Random garbage frames of many lengths: each gets a BadRequest reply (with the id,
    // when the junk happens to hold one) or a closed connection.
    for seed in 0..20u64 {
        let mut s = connect(&addr).await;
        let junk = random_bytes(1 + (seed as usize * 37) % 300, 9000 + seed);
        send(&mut s, &frame(&junk)).await;
        if let Some(body) = read_frame(&mut s).await {
            let env = codec::decode::<Response>(&body).expect("the reply decodes");
            assert!(
                matches!(
                    env.body,
                    Response::Error {
                        kind: ErrorKind::BadRequest,
                        ..
                    }
                ),
                "random frame {seed}: {:?}",
                env.body
            );
        }
    }
    assert_healthy(&c, &addr, &files, "random frames").await;

    // A truncated frame, then the peer goes away.
    let mut s = connect(&addr).await;
    let ping = codec::encode(9, &Request::Ping).unwrap();
    let mut f = frame(&ping);
    f.truncate(f.len() - 2);
    send(&mut s, &f).await;
    drop(s);
    assert_healthy(&c, &addr, &files, "a truncated frame").await;

    // An unknown message in a valid envelope: an error with the same id, and the
    // connection stays usable.
    #[derive(serde::Serialize)]
    enum Alien {
        Teleport { to: u32 },
    }
    let mut s = connect(&addr).await;
    send(
        &mut s,
        &frame(&codec::encode(77, &Alien::Teleport { to: 1 }).unwrap()),
    )
    .await;
    assert_error(&read_response(&mut s).await, 77, ErrorKind::BadRequest);
    send(&mut s, &frame(&codec::encode(78, &Request::Ping).unwrap())).await;
    let env = read_response(&mut s).await;
    assert_eq!(env.id, 78);
    assert!(matches!(env.body, Response::Pong { .. }));

    // A chunk whose bytes don't hash to its key: refused, not stored, either way.
    let bogus = Id::hash(b"the bytes this key promises");
    for (id, replicate) in [(80, true), (81, false)] {
        let req = Request::PutChunk {
            key: bogus,
            data: bytes::Bytes::from_static(b"other bytes"),
            replicate,
        };
        send(&mut s, &frame(&codec::encode(id, &req).unwrap())).await;
        assert_error(&read_response(&mut s).await, id, ErrorKind::HashMismatch);
    }
    // A batch over the bound: refused as a bad request.
    let req = Request::HaveKeys {
        keys: vec![Id::ZERO; KEYS_MAX + 1],
    };
    send(&mut s, &frame(&codec::encode(82, &req).unwrap())).await;
    assert_error(&read_response(&mut s).await, 82, ErrorKind::BadRequest);
    // A directory edit of a name no directory may hold: refused before it is applied.
    for (id, name) in [(83, "x".repeat(256)), (84, "a/b".into()), (85, "..".into())] {
        let req = Request::EditRecord {
            key: chordfs::proto::record::root_id(),
            edit: chordfs::proto::Edit::Link {
                name,
                entry: chordfs::proto::DirEntry {
                    id: bogus,
                    kind: chordfs::proto::Kind::File,
                },
                time: chordfs::proto::Timespec::now(),
            },
        };
        send(&mut s, &frame(&codec::encode(id, &req).unwrap())).await;
        assert_error(&read_response(&mut s).await, id, ErrorKind::BadRequest);
    }
    // Lock requests out of bounds or naming no bytes: refused before any table is
    // touched, whichever node is the key's primary.
    let range = |start, end| LockRange {
        start,
        end,
        kind: LockKind::Exclusive,
        pid: 1,
    };
    let set = |held: Vec<LockRange>, locks: Vec<LockRange>| Request::SetLocks {
        key: bogus,
        session: 1,
        owner: 1,
        seq: 1,
        held,
        locks,
    };
    let many: Vec<LockRange> = (0..=LOCKS_MAX as u64)
        .map(|i| range(2 * i, 2 * i + 1))
        .collect();
    let bad_locks = [
        (86, set(vec![], many.clone())),
        (87, set(many, vec![])),
        (88, set(vec![], vec![range(10, 10)])),
        (89, set(vec![range(20, 10)], vec![])),
        (
            92,
            Request::TestLock {
                key: bogus,
                session: 1,
                owner: 1,
                range: range(5, 0),
            },
        ),
        (
            93,
            Request::RenewLease {
                session: 1,
                files: vec![(bogus, 0); RENEW_FILES_MAX + 1],
            },
        ),
    ];
    for (id, req) in bad_locks {
        send(&mut s, &frame(&codec::encode(id, &req).unwrap())).await;
        assert_error(&read_response(&mut s).await, id, ErrorKind::BadRequest);
    }
    drop(s);
    assert!(
        !c.all_keys().await.contains(&bogus),
        "a mismatched chunk was stored somewhere"
    );
    assert_healthy(
        &c,
        &addr,
        &files,
        "an unknown message, a mismatched chunk and bad lock requests",
    )
    .await;

    // Peers that disconnect mid-request: half of a 1 MiB PutChunk frame...
    let big = random_bytes(1 << 20, 4242);
    let req = Request::PutChunk {
        key: Id::hash(&big),
        data: bytes::Bytes::from(big.clone()),
        replicate: true,
    };
    let f = frame(&codec::encode(90, &req).unwrap());
    let mut s = connect(&addr).await;
    send(&mut s, &f[..f.len() / 2]).await;
    drop(s);
    // ...and whole requests whose caller leaves before the answer.
    let some_chunk = *keys.iter().next().unwrap();
    let mut s = connect(&addr).await;
    send(
        &mut s,
        &frame(&codec::encode(91, &Request::GetChunk { key: some_chunk }).unwrap()),
    )
    .await;
    send(&mut s, &f).await;
    drop(s);
    assert_healthy(&c, &addr, &files, "peers that disconnect mid-request").await;

    // Nothing lost anywhere, and every node still answers.
    c.wait_placed(&keys).await;
    for a in c.live_addrs() {
        assert_healthy(&c, &a, &[], "all of the above").await;
    }
}

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_on_disk_is_read_around_and_repaired() {
    let c = Cluster::start(3, Opts::default()).await;
    let files = some_files(&c).await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;

    // Corrupt, on its primary, one chunk of /bad/f2 and the inode record of /bad/f3.
    let reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    let f2 = reader.resolve("/bad/f2").await.unwrap();
    let chunk = f2.inode.chunks[1];
    let inode = reader.resolve("/bad/f3").await.unwrap().id;
    let ids = c.sorted_live_ids();
    let node_ids: Vec<Id> = c.nodes.iter().map(|n| n.id).collect();
    let primary_of = |key: &Id| {
        let owner = common::owner(&ids, key);
        node_ids.iter().position(|n| *n == owner).unwrap()
    };
    // Records live in a node's journal until its checkpoint; a restart writes them to
    // their files, where the damage below reaches them.
    let record_node = primary_of(&inode);
    let mut c = c;
    c.kill(record_node);
    c.restart(record_node).await;
    c.wait_converged().await;
    let hex = chunk.to_hex();
    let chunk_node = primary_of(&chunk);
    let chunk_path = c.nodes[chunk_node]
        .dir
        .join("chunks")
        .join(&hex[..2])
        .join(&hex);
    flip_a_byte(&chunk_path);
    let hex = inode.to_hex();
    flip_a_byte(
        &c.nodes[record_node]
            .dir
            .join("records")
            .join(&hex[..2])
            .join(&hex),
    );

    // Reads still return the right bytes, from another replica.
    let fresh = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in &files {
        assert_same(path, &get_bytes(&fresh, path).await, data);
    }
    // The bad copies come back, good, on the nodes that had them.
    wait_until("the corrupt copies to be repaired", SETTLE, || async {
        let have: BTreeSet<Id> = c
            .keys_of(&c.nodes[chunk_node].addr)
            .await?
            .into_iter()
            .map(|k| k.key)
            .collect();
        if !have.contains(&chunk) {
            return Err("chunk not back yet".into());
        }
        let bytes = std::fs::read(&chunk_path).map_err(|e| e.to_string())?;
        if Id::hash(&bytes) != chunk {
            return Err("chunk file still bad".into());
        }
        let have: BTreeSet<Id> = c
            .keys_of(&c.nodes[record_node].addr)
            .await?
            .into_iter()
            .map(|k| k.key)
            .collect();
        if !have.contains(&inode) {
            return Err("record not back yet".into());
        }
        Ok(())
    })
    .await;
    c.wait_placed(&keys).await;
    assert_healthy(&c, &c.nodes[chunk_node].addr, &files, "a corrupt chunk").await;
}
