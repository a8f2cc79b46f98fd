//! Space comes back: garbage collection on a real 3-node ring (R=3) of node processes.
//!
//! Sweeps are asked for (`chordfs gc` or `CollectGarbage`); the periodic timer is off
//! (`--gc-interval-secs 0`) so that each test decides when a sweep runs. Waits poll
//! observed state up to a deadline; nothing depends on how long anything takes.

mod common;

use bytes::Bytes;
use chordfs::client::Client;
use chordfs::id::Id;
use chordfs::proto::{Request, Response};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

const CHUNK: u32 = 64 * 1024;

/// A ring whose unreferenced chunks may go once they are `grace_secs` old.
async fn ring(grace_secs: u64) -> Cluster {
    Cluster::start(
        3,
        Opts {
            replicas: 3,
            extra: vec![
                "--http".into(),
                "127.0.0.1:0".into(),
                "--gc-interval-secs".into(),
                "0".into(),
                "--gc-grace-secs".into(),
                grace_secs.to_string(),
            ],
        },
    )
    .await
}

async fn small_chunk_client(c: &Cluster) -> std::sync::Arc<Client> {
    c.client_with(|cfg| cfg.chunk_bytes = CHUNK).await
}

/// The chunk keys of a stored file (holes left out).
async fn chunks_of(client: &Client, path: &str) -> BTreeSet<Id> {
    let f = client.resolve(path).await.expect("resolve");
    f.inode
        .chunks
        .iter()
        .copied()
        .filter(|k| *k != Id::ZERO)
        .collect()
}

/// `rm` as the CLI does it: unlink, tombstoning the inode when no link is left.
async fn remove(client: &Client, path: &str) {
    let (parent, name) = client.resolve_parent(path).await.expect("parent");
    let (_, left, deleted) = client
        .unlink_child(&parent.id, name, false, |_| true)
        .await
        .expect("unlink");
    assert!(
        left > 0 || deleted,
        "{path}: its last link went, so did its inode"
    );
}

/// Asks every running node to sweep; returns the chunks freed (every copy counted).
async fn sweep_all(c: &Cluster, client: &Client) -> Result<u64, String> {
    let mut freed = 0;
    for addr in c.live_addrs() {
        let r = client
            .collect_garbage(&addr, Duration::from_secs(120))
            .await
            .map_err(|e| format!("gc on {addr}: {e}"))?;
        freed += r.chunks_freed + r.peer_chunks_freed;
    }
    Ok(freed)
}

/// Ok when no running node holds any of `keys`.
async fn check_gone(c: &Cluster, keys: &BTreeSet<Id>) -> Result<(), String> {
    for i in c.live() {
        let held = c.keys_of(&c.nodes[i].addr).await?;
        let left = held.iter().filter(|k| keys.contains(&k.key)).count();
        if left > 0 {
            return Err(format!("node {i} still holds {left} of them"));
        }
    }
    Ok(())
}

/// Ok when every running node holds every one of `keys`.
async fn check_everywhere(c: &Cluster, keys: &BTreeSet<Id>) -> Result<(), String> {
    for i in c.live() {
        let held: BTreeSet<Id> = c
            .keys_of(&c.nodes[i].addr)
            .await?
            .into_iter()
            .map(|k| k.key)
            .collect();
        let missing = keys.difference(&held).count();
        if missing > 0 {
            return Err(format!("node {i} lacks {missing} of them"));
        }
    }
    Ok(())
}

/// Sweeps until none of `keys` is held anywhere (each sweep frees what has outlived
/// the grace period; the loop is bounded by the deadline).
async fn sweep_until_gone(c: &Cluster, client: &Client, keys: &BTreeSet<Id>) {
    wait_until(
        "the removed chunks to be freed everywhere",
        SETTLE,
        || async {
            sweep_all(c, client).await?;
            check_gone(c, keys).await
        },
    )
    .await;
}

async fn stats(c: &Cluster, addr: &str) -> chordfs::proto::NodeStats {
    match c.request(addr, Request::Stats).await {
        Ok(Response::Stats(s)) => s,
        other => panic!("{addr} answered Stats with {other:?}"),
    }
}

/// The sidecar address a node wrote to its node.json.
fn http_addr(dir: &Path) -> String {
    let s = std::fs::read_to_string(dir.join("node.json")).expect("node.json");
    let v: serde_json::Value = serde_json::from_str(&s).expect("node.json parses");
    v["http"].as_str().expect("node has a sidecar").to_string()
}

/// GET a sidecar path as JSON (the sidecar answers with a Content-Length).
async fn http_json(addr: &str, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .expect("the sidecar answers in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8");
    let (_, body) = text.split_once("\r\n\r\n").expect("a header block");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_files_are_freed_on_every_replica_and_kept_files_survive() {
    let c = ring(1).await;
    let client = small_chunk_client(&c).await;
    let keep = random_bytes(5 * CHUNK as usize + 100, 1);
    // Shares its first two chunks with `keep`: those must survive its removal.
    let mut shared = keep[..2 * CHUNK as usize].to_vec();
    shared.extend(random_bytes(3 * CHUNK as usize, 2));
    let other = random_bytes(4 * CHUNK as usize + 7, 3);
    put_bytes(&client, "/keep", &keep).await;
    put_bytes(&client, "/dir/shared", &shared).await;
    put_bytes(&client, "/dir/other", &other).await;

    let kept = chunks_of(&client, "/keep").await;
    let removed: BTreeSet<Id> = chunks_of(&client, "/dir/shared")
        .await
        .union(&chunks_of(&client, "/dir/other").await)
        .copied()
        .filter(|k| !kept.contains(k))
        .collect();
    assert_eq!(removed.len(), 3 + 5, "3 own chunks of shared, 5 of other");
    wait_until("every chunk on every node", SETTLE, || async {
        check_everywhere(&c, &kept).await?;
        check_everywhere(&c, &removed).await
    })
    .await;
    let mut before = Vec::new();
    for a in c.live_addrs() {
        before.push(stats(&c, &a).await.bytes);
    }

    // Through the CLI: rm, then gc (which must report what it freed).
    let ring_addr = c.seed();
    for path in ["/dir/shared", "/dir/other"] {
        let out = std::process::Command::new(bin())
            .args(["rm", "--ring", &ring_addr, path])
            .output()
            .expect("run rm");
        assert!(out.status.success(), "rm {path}: {out:?}");
    }
    wait_until("chordfs gc to free the removed chunks", SETTLE, || async {
        let out = tokio::process::Command::new(bin())
            .args(["gc", "--ring", &ring_addr])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !text.contains("3 nodes, 3 swept") {
            return Err(format!(
                "gc said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        check_gone(&c, &removed).await
    })
    .await;

    check_everywhere(&c, &kept).await.expect("kept chunks stay");
    assert_same("/keep", &get_bytes(&client, "/keep").await, &keep);
    for (i, addr) in c.live_addrs().iter().enumerate() {
        let after = stats(&c, addr).await.bytes;
        let freed = removed.len() as u64 * CHUNK as u64 - CHUNK as u64 + 7;
        assert!(
            before[i] >= after + freed,
            "node {i}: {} bytes before, {after} after; {freed} should have gone",
            before[i]
        );
    }
    // The sidecar reports it, as status fields and counters.
    let mut total = 0;
    for n in &c.nodes {
        let h = http_addr(&n.dir);
        let st = http_json(&h, "/status").await;
        let gc = &st["gc"];
        assert!(gc["last_run"].as_u64().is_some(), "{gc}");
        assert!(gc["runs"].as_u64().unwrap() >= 1, "{gc}");
        total += gc["chunks_freed"].as_u64().unwrap();
    }
    assert!(
        total >= 3 * removed.len() as u64,
        "every copy freed: {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_chunks_survive_within_the_grace_and_a_writer_refreshes_old_ones() {
    // A long grace: nothing written in this test is old enough to go.
    let c = ring(3600).await;
    let client = small_chunk_client(&c).await;
    // A concurrent write: its chunk is stored, its record not yet written.
    let pending = Bytes::from(random_bytes(CHUNK as usize, 10));
    let pending_key = client.put_chunk(pending).await.expect("put chunk");
    // A chunk no record names, old on every holder (as if written hours ago)...
    let old = Bytes::from(random_bytes(CHUNK as usize, 11));
    let old_key = Id::hash(&old);
    let doomed = Bytes::from(random_bytes(CHUNK as usize, 12));
    let doomed_key = Id::hash(&doomed);
    for addr in c.live_addrs() {
        for (key, data) in [(old_key, &old), (doomed_key, &doomed)] {
            let req = Request::PutChunkCopy {
                key,
                data: data.clone(),
                age_ms: 7_200_000,
            };
            match c.request(&addr, req).await {
                Ok(Response::Stored { .. }) => {}
                other => panic!("{addr}: {other:?}"),
            }
        }
    }
    // ...which a writer now stores again, about to reference it (a dedup hit).
    assert_eq!(client.put_chunk(old).await.unwrap(), old_key);

    let mut young = 0;
    for addr in c.live_addrs() {
        let r = client
            .collect_garbage(&addr, Duration::from_secs(120))
            .await
            .expect("gc runs");
        young += r.kept_young;
    }
    let survivors: BTreeSet<Id> = [pending_key, old_key].into();
    check_everywhere(&c, &survivors)
        .await
        .expect("young chunks survive the sweep");
    check_gone(&c, &[doomed_key].into())
        .await
        .expect("the old unreferenced chunk is freed");
    assert!(young >= 2, "kept as young: {young}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_and_truncate_free_the_old_chunks() {
    let c = ring(1).await;
    let client = small_chunk_client(&c).await;
    let first = random_bytes(4 * CHUNK as usize, 20);
    put_bytes(&client, "/f", &first).await;
    let first_keys = chunks_of(&client, "/f").await;
    let second = random_bytes(3 * CHUNK as usize, 21);
    put_bytes(&client, "/f", &second).await;
    let second_keys = chunks_of(&client, "/f").await;

    let long = random_bytes(6 * CHUNK as usize, 22);
    put_bytes(&client, "/t", &long).await;
    let long_keys: Vec<Id> = client.resolve("/t").await.unwrap().inode.chunks;
    // Truncate to 2.5 chunks, as the mount's commit does it: the cut chunk is stored
    // anew, the chunks past the end leave the record.
    let keep_len = 2 * CHUNK as usize + CHUNK as usize / 2;
    let cut = client
        .put_block(Bytes::copy_from_slice(&long[2 * CHUNK as usize..keep_len]))
        .await
        .unwrap();
    let t = client.resolve("/t").await.unwrap();
    client
        .update_inode(&t.id, |ino| {
            ino.chunks.truncate(3);
            ino.chunks[2] = cut;
            ino.size = keep_len as u64;
            Ok(())
        })
        .await
        .unwrap();
    let gone: BTreeSet<Id> = first_keys
        .difference(&second_keys)
        .copied()
        .chain(long_keys[2..].iter().copied())
        .collect();
    assert_eq!(gone.len(), 4 + 4);
    sweep_until_gone(&c, &client, &gone).await;
    assert_same("/f", &get_bytes(&client, "/f").await, &second);
    assert_same("/t", &get_bytes(&client, "/t").await, &long[..keep_len]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_does_not_bring_freed_chunks_back() {
    // A grace far longer than the test: chunks are made old by hand, so a copy that
    // repair brought back young would stay, and fail the test.
    let c = ring(600).await;
    let client = small_chunk_client(&c).await;
    let data = random_bytes(5 * CHUNK as usize, 30);
    put_bytes(&client, "/gone", &data).await;
    let keys = chunks_of(&client, "/gone").await;
    wait_until("every chunk on every node", SETTLE, || {
        check_everywhere(&c, &keys)
    })
    .await;
    remove(&client, "/gone").await;
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for n in &c.nodes {
        for k in &keys {
            let hex = k.to_hex();
            let path = n.dir.join("chunks").join(&hex[..2]).join(&hex);
            let f = std::fs::File::open(&path).expect("chunk file");
            f.set_modified(two_hours_ago).expect("backdate");
        }
    }
    // Node 0 loses its copies (crashed, disk replaced); on its return the others'
    // repair hands them back, as old as theirs.
    let mut c = c;
    c.kill(0);
    for k in &keys {
        let hex = k.to_hex();
        std::fs::remove_file(c.nodes[0].dir.join("chunks").join(&hex[..2]).join(&hex))
            .expect("remove a chunk file");
    }
    c.restart(0).await;
    c.wait_converged().await;
    wait_until("repair to hand node 0 its copies back", SETTLE, || {
        check_everywhere(&c, &keys)
    })
    .await;
    for k in &keys {
        let hex = k.to_hex();
        let path = c.nodes[0].dir.join("chunks").join(&hex[..2]).join(&hex);
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        assert!(
            age > Duration::from_secs(3600),
            "a repaired copy keeps its sender's age, not {age:?}"
        );
    }

    // One sweep from one node frees every copy at once.
    let r = client
        .collect_garbage(&c.nodes[1].addr, Duration::from_secs(120))
        .await
        .expect("gc");
    assert_eq!(r.chunks_freed, keys.len() as u64, "{r:?}");
    assert_eq!(r.peer_chunks_freed, 2 * keys.len() as u64, "{r:?}");
    check_gone(&c, &keys).await.expect("freed everywhere");
    // A late repair copy of a chunk just freed is refused.
    let first = Bytes::copy_from_slice(&data[..CHUNK as usize]);
    let late = Request::PutChunkCopy {
        key: Id::hash(&first),
        data: first,
        age_ms: 0,
    };
    match c.request(&c.nodes[2].addr, late).await {
        Err(e) if e.contains("garbage-collected") => {}
        other => panic!("a late repair copy was answered {other:?}"),
    }

    // Repair runs several more passes on every node; nothing comes back.
    let passes = |v: &serde_json::Value| v["repair"]["passes"].as_u64().unwrap_or(0);
    let mut start = Vec::new();
    for n in &c.nodes {
        start.push(passes(&http_json(&http_addr(&n.dir), "/status").await));
    }
    wait_until("three more repair passes on every node", SETTLE, || {
        let start = &start;
        let c = &c;
        async move {
            for (i, n) in c.nodes.iter().enumerate() {
                let now = passes(&http_json(&http_addr(&n.dir), "/status").await);
                if now < start[i] + 3 {
                    return Err(format!("node {i}: {now} passes, from {}", start[i]));
                }
            }
            Ok(())
        }
    })
    .await;
    check_gone(&c, &keys)
        .await
        .expect("still gone after repair");
}

mod fsutil;

/// Used space on a mount, in KiB, as df reports it.
fn df_used_kib(dir: &Path) -> u64 {
    let out = fsutil::sh(&format!("df -k --output=used {} | tail -1", dir.display()));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("df said {out:?}: {e}"))
}

#[test]
fn df_on_a_mount_shows_the_space_coming_back() {
    let ring = fsutil::Ring::start_with(3, 3, &["--gc-interval-secs", "0", "--gc-grace-secs", "1"]);
    let m = fsutil::Mount::new(ring.addr(), "chunk_size=64K");
    let mib = 1024 * 1024;
    let a = fsutil::pattern(2 * mib, 1);
    let b = fsutil::pattern(2 * mib, 2);
    let t = fsutil::pattern(2 * mib, 3);
    std::fs::write(m.path("a"), &a).unwrap();
    std::fs::write(m.path("b"), &b).unwrap();
    std::fs::write(m.path("t"), &t).unwrap();
    // A write on a ring that has just formed can be acknowledged before every
    // successor list is full (min(R, the live nodes a node knows of)); repair then adds
    // the missing copies, and df, which counts stored bytes over R, catches up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let before = loop {
        let used = df_used_kib(&m.dir);
        if used >= 6 * 1024 || std::time::Instant::now() > deadline {
            break used;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        before >= 6 * 1024,
        "6 MiB written, df says {before} KiB used"
    );

    std::fs::remove_file(m.path("a")).unwrap();
    std::fs::remove_file(m.path("b")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("t"))
        .unwrap();
    f.set_len(100_000).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // Sweep (each run frees what has outlived the 1 s grace) until df shows the space
    // back; bounded by a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut after = before;
    while std::time::Instant::now() < deadline {
        fsutil::ok(std::process::Command::new(fsutil::BIN).args(["gc", "--ring", ring.addr()]));
        after = df_used_kib(&m.dir);
        if after + 5 * 1024 < before {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        after + 5 * 1024 < before,
        "df used: {before} KiB before, {after} KiB after removing 4 MiB and cutting 2 MiB to 100 kB"
    );
    let got = std::fs::read(m.path("t")).unwrap();
    assert!(got == t[..100_000], "the truncated file reads back");
}

/// A copy's record names its source's chunks (as the mount's copy_file_range writes
/// it): the chunks survive the source's removal and a sweep, and go with the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_shared_by_a_copy_survive_the_source_and_go_with_the_copy() {
    let c = ring(1).await;
    let client = small_chunk_client(&c).await;
    let data = random_bytes(6 * CHUNK as usize + 99, 40);
    put_bytes(&client, "/src", &data).await;
    let src = client.resolve("/src").await.unwrap();
    let keys = chunks_of(&client, "/src").await;
    let root = client.root().await.unwrap();
    client
        .keep_chunks(&src.inode.chunks)
        .await
        .expect("keep the shared chunks");
    client
        .create_child(&root.id, "copy", src.inode.clone(), None)
        .await
        .expect("the copy's record");
    remove(&client, "/src").await;
    wait_until("every shared chunk on every node", SETTLE, || async {
        check_everywhere(&c, &keys).await
    })
    .await;
    // Sweeps after the grace (1 s) has passed for every chunk: none of them goes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sweep_all(&c, &client).await.expect("sweeps");
    check_everywhere(&c, &keys)
        .await
        .expect("chunks named by the copy survive the source's removal");
    assert_same("/copy", &get_bytes(&client, "/copy").await, &data);
    remove(&client, "/copy").await;
    sweep_until_gone(&c, &client, &keys).await;
}

/// The window a copy closes with `TouchChunks` (client/keep.rs): chunks that no record
/// names any more and that are old would be freed by a sweep; touched, they are young,
/// so a record written after the touch finds them kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touched_chunk_outlives_its_only_record() {
    let c = ring(3600).await;
    let client = small_chunk_client(&c).await;
    let shared = Bytes::from(random_bytes(CHUNK as usize, 41));
    let control = Bytes::from(random_bytes(CHUNK as usize, 42));
    let (shared_key, control_key) = (Id::hash(&shared), Id::hash(&control));
    // Two old chunks on every holder that no record names: the source just removed.
    for addr in c.live_addrs() {
        for (key, data) in [(shared_key, &shared), (control_key, &control)] {
            let req = Request::PutChunkCopy {
                key,
                data: data.clone(),
                age_ms: 7_200_000,
            };
            match c.request(&addr, req).await {
                Ok(Response::Stored { .. }) => {}
                other => panic!("{addr}: {other:?}"),
            }
        }
    }
    let missing = Id::hash(b"never stored");
    assert_eq!(
        client.touch_chunks(&[shared_key, Id::ZERO, missing]).await,
        [missing],
        "every holder confirms the held chunk; holes are not asked about"
    );
    sweep_all(&c, &client).await.expect("sweeps");
    check_everywhere(&c, &[shared_key].into())
        .await
        .expect("the touched chunk is young, so kept");
    check_gone(&c, &[control_key].into())
        .await
        .expect("the old one nobody touched is freed");
}
