//! Membership changes with data on the ring: a joining node receives its range, a
//! leaving node (SIGTERM) hands everything over before it exits.

mod common;

use chordfs::id::Id;
use common::{assert_same, get_bytes, put_bytes, random_bytes, wait_until, Cluster, Opts, SETTLE};
use std::collections::BTreeSet;
use std::time::Duration;

/// Writes `n` files of a few chunks each and returns them with every key they made.
async fn fill(c: &Cluster, n: u64) -> (Vec<(String, Vec<u8>)>, BTreeSet<Id>) {
    let client = c.client_with(|cfg| cfg.chunk_bytes = 16 * 1024).await;
    let mut files = Vec::new();
    for i in 0..n {
        let data = random_bytes(10_000 + (i as usize) * 9_000, 300 + i);
        let path = format!("/m/d{}/f{i}", i % 4);
        put_bytes(&client, &path, &data).await;
        files.push((path, data));
    }
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
    (files, keys)
}

async fn read_all(c: &Cluster, files: &[(String, Vec<u8>)]) {
    let client = c.client_with(|cfg| cfg.cache_bytes = 0).await;
    for (path, data) in files {
        assert_same(path, &get_bytes(&client, path).await, data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_receives_its_range() {
    let mut c = Cluster::start(4, Opts::default()).await;
    let (files, keys) = fill(&c, 24).await;

    let new = c.add_node().await;
    c.wait_converged().await;
    let new_id = c.nodes[new].id;
    let st = c.state(&c.nodes[new].addr).await.unwrap();
    let pred = st
        .predecessor
        .expect("a converged node has a predecessor")
        .id;
    let mine: BTreeSet<Id> = keys
        .iter()
        .filter(|k| k.in_open_closed(&pred, &new_id))
        .copied()
        .collect();
    wait_until(
        "the new node to hold every key of (pred, new]",
        SETTLE,
        || async {
            let held: BTreeSet<Id> = c
                .keys_of(&c.nodes[new].addr)
                .await?
                .into_iter()
                .map(|k| k.key)
                .collect();
            let missing = mine.difference(&held).count();
            if missing > 0 {
                return Err(format!(
                    "{missing} of {} keys of its range missing",
                    mine.len()
                ));
            }
            Ok(())
        },
    )
    .await;
    // Every key, not only the new node's, sits on all R of its rightful holders.
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_every_key_over_before_exit() {
    let mut c = Cluster::start(5, Opts::default()).await;
    let (files, keys) = fill(&c, 24).await;

    // Leave twice: an ordinary node, then the node clients were seeded with.
    for victim in [3, 0] {
        let held: Vec<Id> = c
            .keys_of(&c.nodes[victim].addr)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .collect();
        assert!(!held.is_empty(), "node {victim} holds keys");
        assert!(
            c.terminate(victim, Duration::from_secs(60)).await,
            "node {victim} exits cleanly"
        );
        // Checked at once: the hand-over happened before the process exited.
        let holders = c.holders().await.unwrap();
        let want = 3.min(c.live().len());
        for key in &held {
            let n = holders.get(key).map_or(0, |h| h.len());
            assert!(
                n >= want,
                "after node {victim} left, key {key:?} is on {n} nodes, want {want}"
            );
        }
        c.wait_converged().await;
        c.wait_placed(&keys).await;
        read_all(&c, &files).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_comes_back_with_its_id_and_gets_its_range_again() {
    let mut c = Cluster::start(4, Opts::default()).await;
    let (files, keys) = fill(&c, 12).await;
    let victim = 2;
    let id = c.nodes[victim].id;
    assert!(c.terminate(victim, Duration::from_secs(60)).await);
    c.wait_converged().await;
    c.wait_placed(&keys).await;

    c.restart(victim).await;
    assert_eq!(c.nodes[victim].id, id, "same data dir, same id");
    c.wait_converged().await;
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_writes_through_joins_failures_and_leaves() {
    let mut c = Cluster::start(4, Opts::default()).await;
    // One client for the whole test: its view of the ring goes stale at every step.
    let client = c
        .client_with(|cfg| {
            cfg.chunk_bytes = 16 * 1024;
            cfg.cache_bytes = 0;
        })
        .await;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut batch = 0u64;
    let mut write_batch = |files: &mut Vec<(String, Vec<u8>)>| {
        batch += 1;
        let b = batch;
        let new: Vec<(String, Vec<u8>)> = (0..4u64)
            .map(|i| {
                (
                    format!("/churn/b{b}/f{i}"),
                    random_bytes(20_000 + (i as usize) * 7_000, b * 100 + i),
                )
            })
            .collect();
        files.extend(new.clone());
        new
    };
    for step in ["start", "join", "kill", "leave", "join again", "restart"] {
        match step {
            "join" | "join again" => {
                c.add_node().await;
            }
            "kill" => c.kill(1),
            "leave" => assert!(c.terminate(2, Duration::from_secs(60)).await),
            "restart" => c.restart(1).await,
            _ => {}
        }
        // Write at once, while the ring is still settling...
        for (path, data) in write_batch(&mut files) {
            put_bytes(&client, &path, &data).await;
        }
        // ...and everything written so far reads back through the same client.
        for (path, data) in &files {
            assert_same(
                &format!("after {step}: {path}"),
                &get_bytes(&client, path).await,
                data,
            );
        }
    }
    c.wait_converged().await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;
    let dir = client.resolve("/churn").await.unwrap();
    assert_eq!(dir.inode.entries.len() as u64, batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_down_to_one_node_keeps_everything() {
    let mut c = Cluster::start(3, Opts::default()).await;
    let (files, keys) = fill(&c, 8).await;
    for victim in [0, 1] {
        assert!(
            c.terminate(victim, Duration::from_secs(60)).await,
            "node {victim} exits cleanly"
        );
        let holders = c.holders().await.unwrap();
        let remaining = c.live().len();
        for key in &keys {
            let n = holders.get(key).map_or(0, |h| h.len());
            assert_eq!(
                n, remaining,
                "after node {victim} left, key {key:?} is on {n} of {remaining} nodes"
            );
        }
        c.wait_converged().await;
        read_all(&c, &files).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_leave_all_land() {
    let mut c = Cluster::start(5, Opts::default()).await;
    let client = c
        .client_with(|cfg| {
            cfg.chunk_bytes = 16 * 1024;
            cfg.cache_bytes = 0;
        })
        .await;
    fill(&c, 12).await;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut files = Vec::new();
            for i in 0..16u64 {
                let data = random_bytes(30_000 + i as usize * 500, 5000 + i);
                let path = format!("/during/f{i}");
                let mut r = &data[..];
                client
                    .put_file(&path, &mut r, 0o644, &|_| {})
                    .await
                    .unwrap_or_else(|e| panic!("put {path} during a leave: {e}"));
                files.push((path, data));
            }
            files
        })
    };
    // The leaver is the root directory's primary, which every create updates; the leave
    // overlaps the writes (the writer has only just started).
    let ids = c.sorted_live_ids();
    let root_owner = common::owner(&ids, &chordfs::proto::record::root_id());
    let victim = c.nodes.iter().position(|n| n.id == root_owner).unwrap();
    assert!(c.terminate(victim, Duration::from_secs(60)).await);
    let files = tokio::time::timeout(SETTLE, writer)
        .await
        .expect("writes finish")
        .expect("writer");
    c.wait_converged().await;
    let keys = c.all_keys().await;
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_keys_move_on_join_and_leave_without_loss() {
    let mut c = Cluster::start(
        3,
        Opts {
            replicas: 1,
            ..Opts::default()
        },
    )
    .await;
    let (files, keys) = fill(&c, 12).await;
    let holders = c.holders().await.unwrap();
    assert!(
        holders.values().all(|h| h.len() == 1),
        "R=1: one copy of each key"
    );

    let new = c.add_node().await;
    c.wait_converged().await;
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;

    let held: Vec<Id> = c
        .keys_of(&c.nodes[new].addr)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert!(c.terminate(new, Duration::from_secs(60)).await);
    let holders = c.holders().await.unwrap();
    for key in &held {
        assert!(
            holders.contains_key(key),
            "key {key:?} lost when its only holder left"
        );
    }
    c.wait_converged().await;
    c.wait_placed(&keys).await;
    read_all(&c, &files).await;
}
