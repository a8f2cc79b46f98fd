//! The ring itself: nodes join one by one and converge, lookups agree with the sorted
//! list of ids from every node, and a restarted node keeps its id and its data.

mod common;

use chordfs::id::Id;
use chordfs::proto::{Request, Response};
use common::{owner, wait_until, Cluster, Opts};
use std::collections::BTreeSet;

/// Iterative Chord lookup driven from `start`: FindSuccessor, follow `Next`, until
/// `Found`. Returns the owner the ring names.
async fn lookup_from(c: &Cluster, start: &str, key: Id) -> Result<Id, String> {
    let mut cur = start.to_string();
    for _ in 0..32 {
        match c
            .request(&cur, Request::FindSuccessor { key, avoid: vec![] })
            .await?
        {
            Response::Found { successors, .. } => {
                return successors
                    .first()
                    .map(|p| p.id)
                    .ok_or_else(|| format!("{cur}: empty successors"))
            }
            Response::Next { peer } => cur = peer.addr,
            other => return Err(format!("{cur} answered {other:?}")),
        }
    }
    Err(format!("lookup of {key:?} from {start} took over 32 hops"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_join_one_by_one_and_lookups_agree_with_sorted_ids() {
    let mut c = Cluster::empty(Opts::default());
    for n in 1..=5 {
        c.add_node().await;
        // Each join settles before the next one: every intermediate ring converges too.
        c.wait_converged().await;
        assert_eq!(c.live().len(), n);
    }
    let ids = c.sorted_live_ids();
    let keys: Vec<Id> = (0..1000u32)
        .map(|i| Id::hash(format!("lookup-key-{i}").as_bytes()))
        .collect();
    // The node ids themselves and their neighbours are the edge cases of (pred, me].
    let mut edge: Vec<Id> = Vec::new();
    for id in &ids {
        edge.extend([*id, id.pred(), id.add_pow2(0)]);
    }
    for addr in c.live_addrs() {
        for batch in keys.chunks(50).chain(std::iter::once(&edge[..])) {
            let found =
                futures::future::join_all(batch.iter().map(|k| lookup_from(&c, &addr, *k))).await;
            for (k, got) in batch.iter().zip(found) {
                let got = got.unwrap_or_else(|e| panic!("lookup from {addr}: {e}"));
                assert_eq!(got, owner(&ids, k), "lookup of {k:?} from {addr}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_id_and_its_data() {
    let mut c = Cluster::start(4, Opts::default()).await;
    let client = c.client_with(|cfg| cfg.chunk_bytes = 16 * 1024).await;
    let data = common::random_bytes(300 * 1024, 7);
    common::put_bytes(&client, "/restart/file", &data).await;
    let expected = c.all_keys().await;
    c.wait_placed(&expected).await;

    let victim = 2;
    let id = c.nodes[victim].id;
    let held: BTreeSet<Id> = c
        .keys_of(&c.nodes[victim].addr)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert!(
        !held.is_empty(),
        "with 4 nodes and R=3 every node holds something"
    );
    c.kill(victim);
    c.restart(victim).await;
    assert_eq!(c.nodes[victim].id, id, "same data dir, same id");
    let now: BTreeSet<Id> = c
        .keys_of(&c.nodes[victim].addr)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    let lost: Vec<&Id> = held.difference(&now).collect();
    assert!(lost.is_empty(), "keys gone after a restart: {lost:?}");

    c.wait_converged().await;
    c.wait_placed(&expected).await;
    // A fresh client (no cache) reads it whole.
    let fresh = c.client().await;
    common::assert_same(
        "after restart",
        &common::get_bytes(&fresh, "/restart/file").await,
        &data,
    );
}

/// Ok when lookups of `keys` from every running node name the owner among `ids`.
async fn lookups_agree(c: &Cluster, keys: &[Id]) -> Result<(), String> {
    let ids = c.sorted_live_ids();
    for addr in c.live_addrs() {
        for batch in keys.chunks(50) {
            let found =
                futures::future::join_all(batch.iter().map(|k| lookup_from(c, &addr, *k))).await;
            for (k, got) in batch.iter().zip(found) {
                let got = got.map_err(|e| format!("lookup from {addr}: {e}"))?;
                if got != owner(&ids, k) {
                    return Err(format!("lookup of {k:?} from {addr} named {got:?}"));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_failures_and_a_join_lookups_agree_again() {
    let mut c = Cluster::start(6, Opts::default()).await;
    let keys: Vec<Id> = (0..300u32)
        .map(|i| Id::hash(format!("after-failure-{i}").as_bytes()))
        .collect();
    lookups_agree(&c, &keys).await.unwrap();
    // Two failures, then a join: fingers and successor lists that named the dead must
    // be replaced, and the newcomer found, by the ring's own maintenance.
    c.kill(2);
    c.kill(4);
    c.add_node().await;
    c.wait_converged().await;
    wait_until(
        "lookups from every node to agree with the sorted ids",
        common::SETTLE,
        || lookups_agree(&c, &keys),
    )
    .await;
}
