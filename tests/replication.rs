//! Data on the ring: files of every awkward size read back byte-identical, R copies
//! survive the loss of R-1 nodes and repair restores them, and concurrent writers of
//! one path never corrupt the tree.

mod common;

use chordfs::client::{Client, DEFAULT_CHUNK_BYTES};
use chordfs::id::Id;
use common::{assert_same, get_bytes, put_bytes, random_bytes, wait_until, Cluster, Opts, SETTLE};
use std::collections::BTreeSet;
use std::sync::Arc;

const SMALL_CHUNK: u32 = 64 * 1024;

async fn round_trip(client: &Arc<Client>, path: &str, data: &[u8]) {
    put_bytes(client, path, data).await;
    assert_same(path, &get_bytes(client, path).await, data);
    let f = client.resolve(path).await.expect("resolve");
    assert_eq!(f.inode.size, data.len() as u64, "{path}: size");
    let cb = f.inode.chunk_bytes as usize;
    assert_eq!(
        f.inode.chunks.len(),
        data.len().div_ceil(cb),
        "{path}: chunk count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_edge_size_read_back_byte_identical() {
    let c = Cluster::start(3, Opts::default()).await;
    for chunk in [SMALL_CHUNK, DEFAULT_CHUNK_BYTES] {
        let client = c.client_with(|cfg| cfg.chunk_bytes = chunk).await;
        let cb = chunk as usize;
        for (n, size) in [0, 1, cb - 1, cb, cb + 1, 3 * cb + 17]
            .into_iter()
            .enumerate()
        {
            let data = random_bytes(size, n as u64 + u64::from(chunk));
            round_trip(&client, &format!("/sizes/{chunk}/{size}"), &data).await;
        }
        // All zeros is stored as holes, and still reads back.
        round_trip(
            &client,
            &format!("/sizes/{chunk}/zeros"),
            &vec![0u8; 2 * cb + 5],
        )
        .await;
    }
    // Reads from a client that has cached nothing go to the nodes.
    let fresh = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    let data = random_bytes(SMALL_CHUNK as usize + 1, u64::from(SMALL_CHUNK) + 4);
    assert_same(
        "fresh client",
        &get_bytes(&fresh, &format!("/sizes/{SMALL_CHUNK}/{}", data.len())).await,
        &data,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_mib_file_round_trips() {
    let c = Cluster::start(3, Opts::default()).await;
    let client = c.client().await;
    let data = random_bytes(50 * 1024 * 1024, 50);
    put_bytes(&client, "/big/fifty", &data).await;
    let reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    assert_same("50 MiB", &get_bytes(&reader, "/big/fifty").await, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_nodes_die_and_repair_restores_three_copies() {
    let mut c = Cluster::start(
        5,
        Opts {
            replicas: 3,
            ..Opts::default()
        },
    )
    .await;
    let writer = c.client_with(|cfg| cfg.chunk_bytes = SMALL_CHUNK).await;
    let mut files = Vec::new();
    for i in 0..12u64 {
        let data = random_bytes((i as usize) * 37_000 + 1000, 100 + i);
        let path = format!("/survive/dir{}/f{i}", i % 3);
        put_bytes(&writer, &path, &data).await;
        files.push((path, data));
    }
    // No waiting for repair: a put that returned is durable on R nodes, so losing R-1
    // of them right away must lose nothing.
    let expected = c.all_keys().await;

    // Kill two neighbours on the ring (the worst case: some keys lose their primary and
    // first replica at once), one of them the node the clients were seeded with.
    let ids = c.sorted_live_ids();
    let zero_pos = ids.iter().position(|id| *id == c.nodes[0].id).unwrap();
    let next_id = ids[(zero_pos + 1) % ids.len()];
    let victims = [0, c.nodes.iter().position(|n| n.id == next_id).unwrap()];
    let old_reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for v in victims {
        c.kill(v);
    }

    // Every file reads back, through a client whose view still has the dead nodes...
    for (path, data) in &files {
        assert_same(path, &get_bytes(&old_reader, path).await, data);
    }
    // ...and through one that joins now.
    let new_reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in &files {
        assert_same(path, &get_bytes(&new_reader, path).await, data);
    }

    c.wait_converged().await;
    // Three survivors and R = 3: every key ends up on every survivor.
    wait_until("every key on 3 survivors", SETTLE, || async {
        let holders = c.holders().await?;
        for key in &expected {
            let n = holders.get(key).map_or(0, |h| h.len());
            if n < 3 {
                return Err(format!("key {key:?} has {n} copies"));
            }
        }
        Ok(())
    })
    .await;
    c.wait_placed(&expected).await;
    for (path, data) in &files {
        assert_same(path, &get_bytes(&new_reader, path).await, data);
    }
    // The ring still takes writes.
    put_bytes(&new_reader, "/survive/after", b"written after the failures").await;
    assert_eq!(
        get_bytes(&new_reader, "/survive/after").await,
        b"written after the failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_path_leave_one_clean_winner() {
    let c = Cluster::start(3, Opts::default()).await;
    let a: Arc<Client> = c.client_with(|cfg| cfg.chunk_bytes = 8 * 1024).await;
    let b: Arc<Client> = c.client_with(|cfg| cfg.chunk_bytes = 8 * 1024).await;
    let checker = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for round in 0..12u64 {
        // Even rounds race to create a new name; odd rounds race to overwrite it.
        let path = format!("/race/file-{}", round / 2);
        let da = random_bytes(20_000 + round as usize * 100, 1000 + round);
        let db = random_bytes(30_000 + round as usize * 50, 2000 + round);
        let (ra, rb) = tokio::join!(
            async {
                let mut r = &da[..];
                a.put_file(&path, &mut r, 0o644, &|_| {}).await
            },
            async {
                let mut r = &db[..];
                b.put_file(&path, &mut r, 0o644, &|_| {}).await
            }
        );
        ra.unwrap_or_else(|e| panic!("round {round}: writer a: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}: writer b: {e}"));
        let got = get_bytes(&checker, &path).await;
        assert!(
            got == da || got == db,
            "round {round}: {} bytes that are neither input",
            got.len()
        );
        let dir = checker.resolve("/race").await.expect("race dir");
        let name = path.rsplit('/').next().unwrap();
        assert_eq!(
            dir.inode.entries.len() as u64,
            round / 2 + 1,
            "round {round}: entries {:?}",
            dir.inode.entries.keys()
        );
        let entry = dir.inode.entries[name];
        let f = checker.get_inode(&entry.id).await.expect("file inode");
        assert_eq!(f.inode.nlink, 1, "round {round}");
        assert_eq!(f.inode.parent, dir.id, "round {round}");
        assert_eq!(f.inode.size, got.len() as u64, "round {round}");
    }
    // The whole tree walks cleanly: every name resolves to a live inode.
    let root = checker.resolve("/").await.unwrap();
    let mut seen = BTreeSet::<Id>::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        assert!(seen.insert(d.id), "a directory cycle");
        for e in d.inode.entries.values() {
            let child = checker
                .get_inode(&e.id)
                .await
                .expect("every entry resolves");
            assert_eq!(child.inode.kind, e.kind);
            if e.kind == chordfs::proto::Kind::Dir {
                stack.push(child);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_the_root_directory_primary_dies() {
    let mut c = Cluster::start(5, Opts::default()).await;
    let client = c.client_with(|cfg| cfg.chunk_bytes = 16 * 1024).await;
    let mut files = Vec::new();
    for i in 0..3u64 {
        let data = random_bytes(50_000 + i as usize, 700 + i);
        let path = format!("/live/f{i}");
        put_bytes(&client, &path, &data).await;
        files.push((path, data));
    }
    // Kill the primary of the root directory (every create goes through it) and, at once,
    // its successor's view of it is stale: the client's next writes hit a dead primary,
    // then a successor that may not know yet that it is primary.
    let ids = c.sorted_live_ids();
    let root_owner = common::owner(&ids, &chordfs::proto::record::root_id());
    let victim = c.nodes.iter().position(|n| n.id == root_owner).unwrap();
    let writer = c.client_with(|cfg| cfg.chunk_bytes = 16 * 1024).await;
    c.kill(victim);
    for i in 3..8u64 {
        let data = random_bytes(50_000 + i as usize, 700 + i);
        let path = format!("/live/f{i}");
        put_bytes(&writer, &path, &data).await;
        files.push((path, data));
    }
    let reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in &files {
        assert_same(path, &get_bytes(&reader, path).await, data);
    }
    let dir = reader.resolve("/live").await.unwrap();
    assert_eq!(
        dir.inode.entries.len(),
        files.len(),
        "{:?}",
        dir.inode.entries.keys()
    );
    c.wait_converged().await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_routed_around_and_catches_up_when_it_thaws() {
    let mut c = Cluster::start(5, Opts::default()).await;
    let client = c
        .client_with(|cfg| {
            cfg.chunk_bytes = 16 * 1024;
            cfg.cache_bytes = 0;
        })
        .await;
    let mut files = Vec::new();
    for i in 0..6u64 {
        let data = random_bytes(30_000 + i as usize * 1000, 800 + i);
        let path = format!("/frozen/f{i}");
        put_bytes(&client, &path, &data).await;
        files.push((path, data));
    }
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;

    // SIGSTOP: connections to it stay open and every call to it times out.
    c.freeze(2);
    // Overwrite some files (records get new versions the frozen node misses) and add more.
    for (i, (path, data)) in files.iter_mut().enumerate().take(3) {
        *data = random_bytes(25_000, 900 + i as u64);
        put_bytes(&client, path, data).await;
    }
    for i in 6..9u64 {
        let data = random_bytes(30_000 + i as usize * 1000, 800 + i);
        let path = format!("/frozen/f{i}");
        put_bytes(&client, &path, &data).await;
        files.push((path, data));
    }
    for (path, data) in &files {
        assert_same(path, &get_bytes(&client, path).await, data);
    }
    c.wait_converged().await;

    c.thaw(2);
    c.wait_converged().await;
    let keys = c.all_keys().await;
    // Every rightful holder, the thawed node included, ends with the newest versions.
    c.wait_placed(&keys).await;
    let fresh = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in &files {
        assert_same(path, &get_bytes(&fresh, path).await, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_survives_two_nodes_dying_in_the_middle_of_it() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut c = Cluster::start(5, Opts::default()).await;
    let client = c.client_with(|cfg| cfg.chunk_bytes = 128 * 1024).await;
    let data = Arc::new(random_bytes(16 * 1024 * 1024, 4321));
    let sent = Arc::new(AtomicU64::new(0));
    let upload = {
        let (client, data, sent) = (client.clone(), data.clone(), sent.clone());
        tokio::spawn(async move {
            let mut r = &data[..];
            client
                .put_file("/midway/big", &mut r, 0o644, &|n| {
                    sent.fetch_add(n, Ordering::Relaxed);
                })
                .await
        })
    };
    wait_until("a quarter of the upload", SETTLE, || async {
        let n = sent.load(Ordering::Relaxed);
        if n >= data.len() as u64 / 4 {
            Ok(())
        } else {
            Err(format!("{n} bytes sent"))
        }
    })
    .await;
    // Two neighbours on the ring, neither the client's seed.
    let ids = c.sorted_live_ids();
    let seed_pos = ids.iter().position(|id| *id == c.nodes[0].id).unwrap();
    let victims: Vec<usize> = [1, 2]
        .iter()
        .map(|k| ids[(seed_pos + k) % ids.len()])
        .map(|id| c.nodes.iter().position(|n| n.id == id).unwrap())
        .collect();
    for v in &victims {
        c.kill(*v);
    }
    let done = tokio::time::timeout(SETTLE, upload)
        .await
        .expect("upload finishes")
        .expect("upload task");
    let done = done.unwrap_or_else(|e| panic!("upload failed after two nodes died: {e}"));
    assert_eq!(done.inode.size, data.len() as u64);
    let reader = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    assert_same(
        "/midway/big",
        &get_bytes(&reader, "/midway/big").await,
        &data,
    );
    c.wait_converged().await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
}
