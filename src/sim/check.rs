//! The invariants a settled ring must hold, checked against the nodes' own state (their
//! routing tables and stores) and through the client, as a user would see them.

use super::cluster::{Cluster, Status, REPLICAS};
use super::workload::{client_config, Ledger};
use crate::client::Client;
use crate::id::Id;
use crate::ring::placement;
use rand::rngs::StdRng;
use rand::Rng;

/// Most failures kept per run (the first ones tell the story).
const MAX_FAILURES: usize = 20;

#[derive(Default)]
pub struct Checker {
    pub checks: u64,
    pub failures: Vec<String>,
    /// Violations of a property the design does not promise in this run (see
    /// `check_unless`): reported, not failed.
    pub notes: Vec<String>,
}

impl Checker {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok && self.failures.len() < MAX_FAILURES {
            self.failures.push(what());
        }
    }

    /// A check that only counts as a failure when `excused` is false.
    fn check_unless(&mut self, excused: bool, ok: bool, what: impl FnOnce() -> String) {
        if excused {
            self.checks += 1;
            if !ok && self.notes.len() < MAX_FAILURES {
                self.notes.push(what());
            }
        } else {
            self.check(ok, what);
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Live nodes as (id, index), in ring order.
pub fn live_ring(cl: &Cluster) -> Vec<(Id, usize)> {
    let mut v: Vec<(Id, usize)> = cl
        .with_status(Status::Live)
        .into_iter()
        .map(|i| (cl.nodes[i].id, i))
        .collect();
    v.sort();
    v
}

/// Position in `ring` of the first id at or after `key`, wrapping.
fn owner_pos(ring: &[(Id, usize)], key: &Id) -> usize {
    placement::owner_index(ring, key).expect("a live ring")
}

/// The nodes that should hold `key`: its owner and the next ones, R in all.
fn holders(ring: &[(Id, usize)], key: &Id) -> Vec<usize> {
    placement::holders(ring, key, REPLICAS)
        .map(|(_, i)| *i)
        .collect()
}

/// Successor and predecessor pointers form one cycle through every live node, and each
/// successor list names the next live nodes in order.
pub fn ring(c: &mut Checker, cl: &Cluster) {
    let ring = live_ring(cl);
    let n = ring.len();
    c.check(n > 0, || "no live node".into());
    for (pos, (id, i)) in ring.iter().enumerate() {
        let Some(node) = &cl.nodes[*i].node else {
            continue;
        };
        let r = node.snapshot();
        let addr = &cl.nodes[*i].addr;
        let next = &ring[(pos + 1) % n];
        let prev = &ring[(pos + n - 1) % n];
        c.check(r.successor().id == next.0, || {
            format!(
                "ring: {addr} has successor {} but the next live node is {}",
                r.successor().addr,
                cl.nodes[next.1].addr
            )
        });
        let pred_ok = if n == 1 {
            r.predecessor.as_ref().is_none_or(|p| p.id == *id)
        } else {
            r.predecessor.as_ref().is_some_and(|p| p.id == prev.0)
        };
        c.check(pred_ok, || {
            format!(
                "ring: {addr} has predecessor {:?} but the previous live node is {}",
                r.predecessor.as_ref().map(|p| &p.addr),
                cl.nodes[prev.1].addr
            )
        });
        let want: Vec<Id> = (1..n)
            .take(r.list_len)
            .map(|k| ring[(pos + k) % n].0)
            .collect();
        let have: Vec<Id> = r.successors.iter().map(|p| p.id).take(want.len()).collect();
        c.check(n == 1 || have == want, || {
            format!(
                "ring: {addr} has successor list {:?}, expected the next {} live nodes",
                r.successors.iter().map(|p| &p.addr).collect::<Vec<_>>(),
                want.len()
            )
        });
    }
}

/// Every acknowledged chunk is held by its R rightful holders, and every acknowledged
/// record by its holders at the acknowledged version or newer.
pub fn placement(c: &mut Checker, cl: &Cluster, ledger: &Ledger) {
    let ring = live_ring(cl);
    if ring.is_empty() {
        return;
    }
    for (key, data) in &ledger.chunks {
        for h in holders(&ring, key) {
            let held = cl.nodes[h].store.meta(key).is_some();
            c.check(held, || {
                format!(
                    "placement: chunk {} ({} bytes) missing on its holder {}",
                    key.short(),
                    data.len(),
                    cl.nodes[h].addr
                )
            });
        }
    }
    for (key, (version, _)) in ledger.latest_records() {
        for h in holders(&ring, &key) {
            let have = cl.nodes[h].store.meta(&key).map(|m| m.version);
            c.check(have.is_some_and(|v| v >= version), || {
                format!(
                    "placement: record {} acknowledged at v{version}, holder {} has {have:?}",
                    key.short(),
                    cl.nodes[h].addr
                )
            });
        }
    }
}

/// Two acknowledged writes of one record never share a version (no lost update).
/// Excused after a partition with R nodes on both sides: each side has a primary for
/// every key and takes writes (Chord has no quorum across the ring).
pub fn acknowledgements(c: &mut Checker, ledger: &Ledger, split_brain: bool) {
    for (key, writes) in &ledger.records {
        let mut versions: Vec<u64> = writes.iter().map(|(v, _)| *v).collect();
        versions.sort();
        let n = versions.len();
        versions.dedup();
        c.check_unless(split_brain, versions.len() == n, || {
            format!(
                "records: two acknowledged writes of {} got the same version ({n} writes, {} versions)",
                key.short(),
                versions.len()
            )
        });
    }
}

/// A lookup from every live node finds the first live node at or after the key.
pub async fn lookups(c: &mut Checker, cl: &Cluster, rng: &mut StdRng, keys: usize) {
    let ring = live_ring(cl);
    if ring.is_empty() {
        return;
    }
    let keys: Vec<Id> = (0..keys).map(|_| Id(rng.random())).collect();
    for (_, i) in &ring {
        let Some(node) = cl.nodes[*i].node.clone() else {
            continue;
        };
        for key in &keys {
            let want = ring[owner_pos(&ring, key)];
            let got = node.core.lookup(key, false).await;
            let ok = matches!(&got, Ok((_, s, _)) if s[0].id == want.0);
            c.check(ok, || {
                format!(
                    "lookup: {} looked up {} and got {:?}, expected {}",
                    cl.nodes[*i].addr,
                    key.short(),
                    got.as_ref().map(|(_, s, _)| &s[0].addr),
                    cl.nodes[want.1].addr
                )
            });
        }
    }
}

/// Through a fresh client (no cache): every acknowledged chunk reads back byte-identical,
/// every acknowledged record at its version or newer (and, at the same version, with the
/// same content, unless there was a partition: then the primary on the cut-off side may
/// have written that version too, without acknowledging it, and ties between versions
/// are not broken in favour of the acknowledged one).
pub async fn reads(c: &mut Checker, cl: &Cluster, ledger: &Ledger, partitioned: bool) {
    let ring = live_ring(cl);
    let Some((_, first)) = ring.first() else {
        return;
    };
    let client = match Client::with_transport(
        client_config(&cl.nodes[*first].addr),
        cl.net.endpoint("checker"),
    )
    .await
    {
        Ok(cl) => cl,
        Err(e) => {
            c.check(false, || {
                format!("reads: the checker cannot reach the ring: {e}")
            });
            return;
        }
    };
    for (key, data) in &ledger.chunks {
        let got = client.get_chunk(key).await;
        c.check(got.as_ref().is_ok_and(|b| b == data), || {
            format!(
                "reads: acknowledged chunk {} reads back as {:?}",
                key.short(),
                got.as_ref().map(|b| b.len())
            )
        });
    }
    for (key, (version, record)) in ledger.latest_records() {
        let got = client.get_record(&key).await;
        let newer = matches!(&got, Ok(Some((v, _))) if *v >= version);
        c.check(newer, || {
            format!(
                "reads: record {} acknowledged at v{version} reads back as {:?}",
                key.short(),
                got.as_ref().map(|o| o.as_ref().map(|(v, _)| *v))
            )
        });
        let same = match &got {
            Ok(Some((v, r))) => *v > version || (*v == version && *r == record),
            _ => true,
        };
        c.check_unless(partitioned, same, || {
            format!(
                "reads: record {} acknowledged at v{version} reads back at v{version} with other content",
                key.short(),
            )
        });
    }
}
