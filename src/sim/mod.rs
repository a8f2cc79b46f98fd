//! Deterministic simulation of a ring: many nodes in one process, on a simulated network
//! and simulated time, driven by one seed.
//!
//! A run ([`run_seed`]) starts 8-12 nodes on a [`net::SimNet`], runs two client workers
//! (chunk puts, record compare-and-sets, through the real client library) and, for 8-16
//! simulated seconds, a random schedule of faults: joins, graceful leaves, crashes,
//! restarts (same id, same store), message delay and loss, and partitions that heal. At
//! most R-1 nodes are out of reach at once: crashed, or cut off on a side of a partition
//! smaller than R (a ring cannot tell the two apart; a partition with R or more nodes on
//! each side is a split brain, see below). Then the faults stop, the network heals, some crashed
//! nodes come back, and once the ring settles (bounded in simulated time) it checks:
//! - ring: successor and predecessor pointers form one cycle through every live node, and
//!   each successor list names the next live nodes;
//! - lookup: from every live node, a lookup of random keys finds the first live node at or
//!   after the key;
//! - placement: every acknowledged chunk is held by its R rightful holders (all live nodes
//!   when fewer), every acknowledged record at its version or newer;
//! - reads: through a fresh client, every acknowledged chunk reads back byte-identical and
//!   every acknowledged record at the acknowledged version or newer;
//! - records: no two acknowledged writes of one record got the same version, and a
//!   record read back at its acknowledged version has the acknowledged content.
//!
//! The record checks are excused (reported, not failed) where the design promises
//! nothing: the first after a partition with R nodes on each side (each side has a
//! primary for every key, and Chord has no quorum across the ring), the second after any
//! partition (an unacknowledged write on the cut-off side can take the same version, and
//! version ties are not broken in favour of the acknowledged write).
//!
//! What is simulated: the network (per-message delay, loss of requests and replies,
//! partitions, unreachable crashed nodes: every such call times out in simulated time),
//! node processes (a crash drops every task of the node at its next await, a restart
//! builds a new `Node` over the same store), and the disk ([`crate::store::Store::memory`]:
//! a write is durable once it returns, so a crash loses nothing acknowledged). The code
//! under test is the real one: `chord::Node` (routing, maintenance, repair, leave) and
//! the client library. Not simulated: TCP framing and authentication (`net::server`,
//! `net::client`), disk errors and corruption, torn writes, clock skew, the FUSE and HTTP
//! layers, and byzantine peers. Partitions are two-sided cuts among the nodes (a node
//! started during one joins the side of the member it joins through); the clients reach
//! every node. Leaves are not scheduled during a partition.
//!
//! Determinism: a current-thread tokio runtime with paused time (so simulated seconds pass
//! at once, and tasks run in one order), one seed from which every random choice derives
//! (node ids, the schedule, each message's delay and fate, client data), `biased` selects,
//! ordered maps only, and tokio's clock (never `std::time::Instant`) in the code under
//! test. Each run hashes its event log and every message's fate into a trace hash; the
//! same seed gives the same hash.
//!
//! Replay a seed: `CHORDFS_SIM_SEED=<seed> cargo test --test sim -- --nocapture` prints
//! its event log, and on failure every live node's table and the clients' record
//! operations. `CHORDFS_SIM_WATCH=<hex prefix of a key>` prints every message about that
//! key as it is answered; `CHORDFS_SIM_FAULTS=crashes,weather` (of joins, leaves,
//! crashes, weather, partitions) narrows the faults, to find which kind breaks a seed.
//! Run many: `scripts/sim.sh <SEEDS> <START>` (release build).
//!
//! Layout: [`net`] the network, [`cluster`] nodes and their lifecycle, [`workload`] the
//! clients and the ledger of acknowledged writes, [`check`] the invariants; this module
//! the scenario (bootstrap, faults, quiesce, settle, check).

pub mod check;
pub mod cluster;
pub mod net;
pub mod workload;

use check::Checker;
use cluster::{Cluster, Status, REPLICAS};
use net::{fnv, NetStats, SimNet, Weather};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use workload::Ledger;

/// Most schedule events in one run.
const MAX_EVENTS: usize = 200;
/// Most nodes a run ever starts.
const MAX_NODES: usize = 18;
/// Longest the ring may take to settle after the faults stop (simulated).
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// Random keys each live node looks up in the final check.
const LOOKUP_KEYS: usize = 8;
/// Client workers.
const WORKERS: usize = 2;

/// The kinds of fault a run may schedule (all, unless narrowed to find a culprit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    pub joins: bool,
    pub leaves: bool,
    /// Crashes and restarts.
    pub crashes: bool,
    /// Delay and loss.
    pub weather: bool,
    pub partitions: bool,
}

impl Faults {
    pub const ALL: Faults = Faults {
        joins: true,
        leaves: true,
        crashes: true,
        weather: true,
        partitions: true,
    };

    /// Parses a comma-separated list: `joins,leaves,crashes,weather,partitions` or `all`.
    pub fn parse(s: &str) -> Result<Faults, String> {
        if s.trim() == "all" {
            return Ok(Faults::ALL);
        }
        let mut f = Faults {
            joins: false,
            leaves: false,
            crashes: false,
            weather: false,
            partitions: false,
        };
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "joins" => f.joins = true,
                "leaves" => f.leaves = true,
                "crashes" => f.crashes = true,
                "weather" => f.weather = true,
                "partitions" => f.partitions = true,
                other => return Err(format!("unknown fault kind {other:?}")),
            }
        }
        Ok(f)
    }

    pub fn name(&self) -> String {
        if *self == Faults::ALL {
            return "all".into();
        }
        let mut v = Vec::new();
        for (on, n) in [
            (self.joins, "joins"),
            (self.leaves, "leaves"),
            (self.crashes, "crashes"),
            (self.weather, "weather"),
            (self.partitions, "partitions"),
        ] {
            if on {
                v.push(n);
            }
        }
        v.join(",")
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub faults: Faults,
    pub trace_hash: u64,
    pub checks: u64,
    pub failures: Vec<String>,
    /// What went wrong that the design does not promise here (a split brain's records).
    pub notes: Vec<String>,
    pub events: Vec<String>,
    /// Each live node's view at the end, when a check failed.
    pub tables: Vec<String>,
    /// The clients' record operations, when a check failed.
    pub record_log: Vec<String>,
    pub net: NetStats,
    pub sim_ms: u64,
    pub settle_ms: Option<u64>,
    pub acked_chunks: usize,
    pub acked_records: usize,
    pub ops: u64,
    pub failed_ops: u64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The command that replays this seed.
    pub fn replay_command(&self) -> String {
        let faults = if self.faults == Faults::ALL {
            String::new()
        } else {
            format!("CHORDFS_SIM_FAULTS={} ", self.faults.name())
        };
        format!(
            "{faults}CHORDFS_SIM_SEED={} cargo test --test sim -- --nocapture",
            self.seed
        )
    }

    /// One line: seed, trace hash, what ran.
    pub fn summary(&self) -> String {
        format!(
            "seed {} trace {:016x}: {} nodes, {} events, {} ops ({} failed), {} chunks and {} records acknowledged, {} messages ({} lost, {} cut, {} timeouts), settled in {}, {} checks, {} excused, {}",
            self.seed,
            self.trace_hash,
            self.events.iter().filter(|e| e.contains(" started")).count(),
            self.events.len(),
            self.ops,
            self.failed_ops,
            self.acked_chunks,
            self.acked_records,
            self.net.sent,
            self.net.lost + self.net.replies_lost,
            self.net.cut,
            self.net.timeouts,
            self.settle_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into()),
            self.checks,
            self.notes.len(),
            if self.passed() { "ok" } else { "FAILED" },
        )
    }

    /// What a failing seed prints: the failures, the last events, the replay command.
    pub fn report(&self) -> String {
        let mut out = format!("{}\n", self.summary());
        for f in &self.failures {
            out += &format!("  invariant failed: {f}\n");
        }
        for n in &self.notes {
            out += &format!("  excused (split brain): {n}\n");
        }
        let skip = self.events.len().saturating_sub(60);
        if skip > 0 {
            out += &format!("  ... {skip} earlier events\n");
        }
        for e in &self.events[skip..] {
            out += &format!("  {e}\n");
        }
        for l in &self.record_log {
            if self
                .failures
                .iter()
                .any(|f| f.contains(&l[l.find(" record ").unwrap_or(0) + 8..][..16]))
            {
                out += &format!("  {l}\n");
            }
        }
        for t in &self.tables {
            out += &format!("  {t}\n");
        }
        out += &format!("  replay: {}\n", self.replay_command());
        out
    }
}

/// Runs the scenario of `seed` on its own paused-time runtime.
pub fn run_seed(seed: u64) -> Outcome {
    run_seed_with(seed, Faults::ALL)
}

/// Runs the scenario of `seed` with only the given kinds of fault.
pub fn run_seed_with(seed: u64, faults: Faults) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(scenario(seed, faults))
}

fn pick<T: Copy>(rng: &mut StdRng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.random_range(0..v.len())])
}

fn addrs(cl: &Cluster, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| cl.nodes[i].addr.clone()).collect()
}

/// Join targets for a new or restarting node: serving nodes, in a random order.
fn join_via(cl: &Cluster, rng: &mut StdRng) -> Vec<String> {
    let mut s = cl.with_status(Status::Live);
    for k in (1..s.len()).rev() {
        s.swap(k, rng.random_range(0..=k));
    }
    addrs(cl, &s)
}

/// Nodes down that may hold the only copies of something: crashed, or left without
/// handing everything over.
fn down(cl: &Cluster) -> usize {
    cl.nodes
        .iter()
        .filter(|n| n.status == Status::Crashed || (n.status == Status::Left && n.incomplete_leave))
        .count()
}

/// Nodes on the small side of the partition in force, when that side has fewer than R
/// nodes: out of the main ring's reach, like crashed ones. (A side of R or more is a
/// split brain, excused instead: see `acknowledgements`.)
fn cut_off(cl: &Cluster, partitioned: bool) -> usize {
    if !partitioned {
        return 0;
    }
    let small = cl.net.side_sizes().into_iter().min().unwrap_or(0);
    if small < REPLICAS {
        small
    } else {
        0
    }
}

async fn scenario(seed: u64, faults: Faults) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let net = SimNet::new(StdRng::seed_from_u64(rng.random()));
    let mut cl = Cluster::new(seed, net.clone());
    let started = Instant::now();

    // Bootstrap: one node, then the others join through random members.
    let initial = rng.random_range(8..=12);
    for _ in 0..initial {
        let i = cl.add();
        let via = join_via(&cl, &mut rng);
        if cl.start(i, &via).await {
            let addr = cl.nodes[i].addr.clone();
            cl.log(format!("{addr} started ({})", cl.nodes[i].id.short()));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
    }
    let formed = settle(&cl, None, Duration::from_secs(10)).await;
    cl.log(match formed {
        Some(ms) => format!("ring of {initial} formed after {ms} ms"),
        None => format!("ring of {initial} did not form in 10 s"),
    });

    // Clients.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let ring = join_via(&cl, &mut rng).first().cloned().unwrap_or_default();
        workers.push(tokio::spawn(workload::worker(
            w,
            net.clone(),
            ring,
            StdRng::seed_from_u64(rng.random()),
            ledger.clone(),
            stop.clone(),
        )));
    }

    // Faults.
    chaos(&mut cl, &mut rng, faults).await;

    // Quiesce: clients stop, the network heals, leaves end, some crashed nodes return.
    stop.cancel();
    for w in workers {
        if tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .is_err()
        {
            cl.log("a client worker did not stop in 30 s");
        }
    }
    net.heal();
    net.set_weather(Weather::CALM);
    cl.log("faults stop: network healed and calm");
    cl.finish_leaves(Duration::from_secs(20)).await;
    for i in cl.with_status(Status::Leaving) {
        let addr = cl.nodes[i].addr.clone();
        cl.log(format!("{addr} did not finish leaving in 20 s; stopped"));
        cl.crash(i);
    }
    for i in cl.with_status(Status::Crashed) {
        if rng.random_bool(0.5) {
            let via = join_via(&cl, &mut rng);
            if cl.start(i, &via).await {
                let addr = cl.nodes[i].addr.clone();
                cl.log(format!("{addr} restarted"));
            }
        }
    }

    // Settle, then check.
    let ledger = Arc::try_unwrap(ledger)
        .map(|m| m.into_inner().expect("ledger"))
        .unwrap_or_else(|arc| std::mem::take(&mut *arc.lock().expect("ledger")));
    let settle_ms = settle(&cl, Some(&ledger), SETTLE_LIMIT).await;
    cl.log(match settle_ms {
        Some(ms) => format!("settled after {ms} ms"),
        None => format!("did not settle in {} s", SETTLE_LIMIT.as_secs()),
    });
    let mut c = Checker::default();
    check::ring(&mut c, &cl);
    check::placement(&mut c, &cl, &ledger);
    check::acknowledgements(&mut c, &ledger, cl.split_brain);
    let mut check_rng = StdRng::seed_from_u64(rng.random());
    check::lookups(&mut c, &cl, &mut check_rng, LOOKUP_KEYS).await;
    check::reads(&mut c, &cl, &ledger, cl.partitioned).await;
    let tables = if c.ok() { Vec::new() } else { tables(&cl) };
    let record_log = if c.ok() {
        Vec::new()
    } else {
        ledger.log.clone()
    };
    cl.stop_all();

    let sim_ms = started.elapsed().as_millis() as u64;
    let trace_hash = fnv(cl.event_hash(), &net.trace_hash().to_le_bytes());
    Outcome {
        seed,
        faults,
        trace_hash,
        checks: c.checks,
        failures: c.failures,
        notes: c.notes,
        events: std::mem::take(&mut cl.events),
        tables,
        record_log,
        net: net.stats(),
        sim_ms,
        settle_ms,
        acked_chunks: ledger.chunks.len(),
        acked_records: ledger.records.len(),
        ops: ledger.ops,
        failed_ops: ledger.failed_ops,
    }
}

/// Each live node's predecessor, successors, distinct fingers and store, in ring order.
fn tables(cl: &Cluster) -> Vec<String> {
    check::live_ring(cl)
        .into_iter()
        .filter_map(|(_, i)| {
            let node = cl.nodes[i].node.as_ref()?;
            let r = node.snapshot();
            let name = |p: &crate::proto::Peer| p.addr.clone();
            let (chunks, records, _) = node.store().counts();
            let repair = node.repair.status();
            let (lost, seen): (Vec<String>, Vec<String>) = {
                let book = node.core.book();
                (
                    book.lost_peers().map(name).collect(),
                    book.seen().iter().map(name).collect(),
                )
            };
            Some(format!(
                "{} {}: predecessor {:?}, successors {:?}, fingers {:?}, lost {lost:?}, seen {seen:?}, {chunks} chunks, {records} records, repair passes {} last error {:?}",
                cl.nodes[i].addr,
                node.me().id.short(),
                r.predecessor.as_ref().map(name),
                r.successors.iter().map(name).collect::<Vec<_>>(),
                r.distinct_fingers().iter().map(|(_, p)| name(p)).collect::<Vec<_>>(),
                repair.passes,
                repair.last_error,
            ))
        })
        .collect()
}

/// Polls of the settle check that must pass in a row (a second of simulated time), so a
/// reply lost just before the network calmed cannot undo the state being checked.
const SETTLED_POLLS: u32 = 4;

/// Waits until the ring (and, given a ledger, data placement) checks pass for
/// [`SETTLED_POLLS`] polls in a row; returns when they began to pass, in simulated ms
/// from the call, or None when `limit` ran out.
async fn settle(cl: &Cluster, ledger: Option<&Ledger>, limit: Duration) -> Option<u64> {
    let start = Instant::now();
    let mut since: Option<u64> = None;
    let mut passes = 0;
    loop {
        let mut c = Checker::default();
        check::ring(&mut c, cl);
        if let Some(l) = ledger {
            check::placement(&mut c, cl, l);
        }
        if c.ok() {
            passes += 1;
            since.get_or_insert(start.elapsed().as_millis() as u64);
            if passes >= SETTLED_POLLS {
                return since;
            }
        } else {
            passes = 0;
            since = None;
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Clone, Copy)]
enum Fault {
    Join,
    Leave,
    Crash,
    Restart,
    Weather,
    Partition,
}

const FAULTS: [(Fault, u32); 6] = [
    (Fault::Join, 2),
    (Fault::Leave, 1),
    (Fault::Crash, 2),
    (Fault::Restart, 2),
    (Fault::Weather, 2),
    (Fault::Partition, 1),
];

fn weather(rng: &mut StdRng) -> Weather {
    match rng.random_range(0..4) {
        0 => Weather::CALM,
        1 => Weather {
            delay_ms: (5, 60),
            loss: 0.0,
        },
        2 => Weather {
            delay_ms: (1, 20),
            loss: 0.05,
        },
        _ => Weather {
            delay_ms: (10, 150),
            loss: 0.2,
        },
    }
}

/// The fault schedule: random events every 100-700 simulated ms for 8-16 s.
async fn chaos(cl: &mut Cluster, rng: &mut StdRng, faults: Faults) {
    let until = Instant::now() + Duration::from_millis(rng.random_range(8_000..16_000));
    let mut heal_at: Option<Instant> = None;
    let total: u32 = FAULTS.iter().map(|(_, w)| w).sum();
    for _ in 0..MAX_EVENTS {
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..700))).await;
        cl.reap_leaves();
        if heal_at.is_some_and(|t| Instant::now() >= t) {
            cl.net.heal();
            heal_at = None;
            cl.log("partition healed");
        }
        let mut roll = rng.random_range(0..total);
        let mut fault = Fault::Weather;
        for (f, w) in FAULTS {
            if roll < w {
                fault = f;
                break;
            }
            roll -= w;
        }
        let live = cl.with_status(Status::Live);
        let allowed = match fault {
            Fault::Join => faults.joins,
            Fault::Leave => faults.leaves,
            Fault::Crash | Fault::Restart => faults.crashes,
            Fault::Weather => faults.weather,
            Fault::Partition => faults.partitions,
        };
        if !allowed {
            continue;
        }
        match fault {
            Fault::Join if cl.nodes.len() < MAX_NODES => {
                let i = cl.add();
                let via = join_via(cl, rng);
                if cl.start(i, &via).await {
                    let addr = cl.nodes[i].addr.clone();
                    cl.log(format!("{addr} started ({})", cl.nodes[i].id.short()));
                }
            }
            Fault::Leave if live.len() > 4 && heal_at.is_none() => {
                let i = pick(rng, &live).expect("live nodes");
                let addr = cl.nodes[i].addr.clone();
                cl.log(format!("{addr} leaving"));
                cl.begin_leave(i);
            }
            Fault::Crash
                if live.len() > 3 && down(cl) + cut_off(cl, heal_at.is_some()) < REPLICAS - 1 =>
            {
                let i = pick(rng, &live).expect("live nodes");
                let addr = cl.nodes[i].addr.clone();
                cl.crash(i);
                cl.log(format!("{addr} crashed"));
            }
            Fault::Restart => {
                if let Some(i) = pick(rng, &cl.with_status(Status::Crashed)) {
                    let via = join_via(cl, rng);
                    let addr = cl.nodes[i].addr.clone();
                    if cl.start(i, &via).await {
                        cl.log(format!("{addr} restarted"));
                    }
                }
            }
            Fault::Weather => {
                let w = weather(rng);
                cl.net.set_weather(w);
                cl.log(format!(
                    "weather: delay {}-{} ms, loss {}",
                    w.delay_ms.0, w.delay_ms.1, w.loss
                ));
            }
            Fault::Partition if heal_at.is_none() && live.len() >= 4 => {
                let serving = cl.serving();
                let mut side: Vec<usize> = Vec::new();
                if rng.random_bool(0.5) {
                    side.push(pick(rng, &serving).expect("serving nodes"));
                } else {
                    for &i in &serving {
                        if rng.random_bool(0.5) {
                            side.push(i);
                        }
                    }
                }
                let other: Vec<usize> = serving
                    .iter()
                    .copied()
                    .filter(|i| !side.contains(i))
                    .collect();
                if side.is_empty() || other.is_empty() {
                    continue;
                }
                // The promise covers R-1 nodes out of reach: crashed ones and those cut
                // off on a small side count alike (a ring cannot tell them apart).
                let small = side.len().min(other.len());
                if small < REPLICAS && down(cl) + small > REPLICAS - 1 {
                    continue;
                }
                let ms = rng.random_range(300..3_000);
                heal_at = Some(Instant::now() + Duration::from_millis(ms));
                let (a, b) = (addrs(cl, &side), addrs(cl, &other));
                cl.net.partition(&[a.clone(), b.clone()]);
                let both = a.len() >= REPLICAS && b.len() >= REPLICAS;
                cl.split_brain |= both;
                cl.partitioned = true;
                cl.log(format!(
                    "partition {a:?} | {b:?} for {ms} ms{}",
                    if both {
                        " (split brain: both sides take writes)"
                    } else {
                        ""
                    }
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::id::Id;
    use crate::net::Transport;
    use crate::proto::{Record, Request, Response};
    use bytes::Bytes;
    use workload::make_record;

    /// Runs `f` on a single-threaded runtime whose clock only moves when every task
    /// waits, as the simulation's own runs do.
    fn in_simulated_time<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// A ring of `n` simulated nodes, joined one by one, settled.
    async fn settled_ring(seed: u64, n: usize) -> (Cluster, Arc<SimNet>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let net = SimNet::new(StdRng::seed_from_u64(seed + 1));
        let mut cl = Cluster::new(seed, net.clone());
        for _ in 0..n {
            let i = cl.add();
            let via = join_via(&cl, &mut rng);
            assert!(cl.start(i, &via).await, "node {i} joins");
        }
        assert!(settle(&cl, None, Duration::from_secs(20)).await.is_some());
        (cl, net)
    }

    /// A primary cut off right after a partition still counts its old successors, so it
    /// writes locally and only then fails to replicate. That write must be taken back:
    /// the other side then writes the same version, acknowledged, and after the heal
    /// that acknowledged record is what everyone reads, not the failed one.
    #[test]
    fn a_failed_record_write_is_taken_back_and_never_shadows_an_acknowledged_one() {
        in_simulated_time(async {
            let (mut cl, net) = settled_ring(7, 5).await;
            let key = Id::hash(b"revert test");
            let some = cl.nodes[0].node.clone().expect("live");
            let (_, holders, _) = some.core.lookup(&key, false).await.expect("lookup");
            let primary = holders[0].addr.clone();
            let client = net.endpoint("client");
            let t = Duration::from_secs(2);
            let cas = |addr: String, expect: u64, tag: u64| {
                client.call(
                    &addr,
                    Request::CasRecord {
                        key,
                        expect,
                        record: make_record(tag),
                    },
                    t,
                )
            };
            let first = cas(primary.clone(), 0, 1).await.expect("answer");
            assert!(matches!(first, Response::Stored { copies: 3 }), "{first:?}");

            // Cut the primary off, and write through it before it notices.
            let others: Vec<String> = cl
                .nodes
                .iter()
                .map(|n| n.addr.clone())
                .filter(|a| *a != primary)
                .collect();
            net.partition(&[vec![primary.clone()], others.clone()]);
            let failed = cas(primary.clone(), 1, 2).await;
            assert!(
                !matches!(failed, Ok(Response::Stored { .. })),
                "a write with no replica reachable is refused: {failed:?}"
            );
            let store = cl.by_addr(&primary).store.clone();
            assert_eq!(
                store.record_version(&key),
                1,
                "the failed write is taken back on its primary"
            );

            // The other side takes the same version, acknowledged.
            let mut acked = None;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let via = cl.by_addr(&others[0]);
                let Some(n) = via.node.clone() else { continue };
                let Ok((_, h, _)) = n.core.lookup(&key, false).await else {
                    continue;
                };
                if let Ok(Response::Stored { .. }) = cas(h[0].addr.clone(), 1, 3).await {
                    acked = Some(h[0].addr.clone());
                    break;
                }
            }
            assert!(acked.is_some(), "the majority side takes the write");

            net.heal();
            assert!(settle(&cl, None, Duration::from_secs(30)).await.is_some());
            // Let repair run, then read through the rightful primary.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let read = client
                .call(&primary, Request::GetRecord { key, pull: true }, t)
                .await
                .expect("answer");
            match read {
                Response::Record { version, record } => {
                    assert_eq!(version, 2);
                    assert_eq!(record, make_record(3), "the acknowledged body wins");
                }
                other => panic!("read after heal: {other:?}"),
            }
            cl.stop_all();
        });
    }

    /// A ring of 5 where record `key` was written once (v1, acknowledged) through its
    /// primary, then written again through it (v2) with `doom` deciding which messages
    /// are lost; that second write must fail. Returns the ring, the network, the key,
    /// the primary's address and its successors', in order.
    async fn a_failed_write(
        seed: u64,
        doom: impl FnOnce(&SimNet, &str, &[String]),
    ) -> (Cluster, Arc<SimNet>, Id, String, Vec<String>) {
        let (cl, net) = settled_ring(seed, 5).await;
        let key = Id::hash(b"failed write test");
        let some = cl.nodes[0].node.clone().expect("live");
        let (_, holders, _) = some.core.lookup(&key, false).await.expect("lookup");
        let primary = holders[0].addr.clone();
        let node = cl.by_addr(&primary).node.clone().expect("primary live");
        let succs: Vec<String> = node
            .core
            .replica_targets()
            .into_iter()
            .map(|p| p.addr)
            .collect();
        let client = net.endpoint("client");
        let cas = |expect: u64, tag: u64| {
            client.call(
                &primary,
                Request::CasRecord {
                    key,
                    expect,
                    record: make_record(tag),
                },
                Duration::from_secs(5),
            )
        };
        let first = cas(0, 1).await;
        assert!(
            matches!(first, Ok(Response::Stored { copies: 3 })),
            "{first:?}"
        );
        doom(&net, &primary, &succs);
        let failed = cas(1, 2).await;
        assert!(
            !matches!(failed, Ok(Response::Stored { .. })),
            "the second write was to fail: {failed:?}"
        );
        (cl, net, key, primary, succs)
    }

    /// The version and body of `key` held by the node at `addr`, if any.
    async fn held(cl: &Cluster, addr: &str, key: Id) -> Option<(u64, Record)> {
        let n = cl.by_addr(addr);
        n.store.get_record(key).await.expect("store reads")
    }

    /// After repair has run for a while, no node holds the failed write's body, the
    /// key's holders hold the acknowledged v1, and a read through the primary gets it.
    async fn no_trace_of_the_failed_write(
        mut cl: Cluster,
        net: Arc<SimNet>,
        key: Id,
        primary: &str,
    ) {
        tokio::time::sleep(Duration::from_secs(6)).await;
        for n in &cl.nodes {
            let copy = held(&cl, &n.addr, key).await;
            assert!(
                copy.as_ref().is_none_or(|c| *c == (1, make_record(1))),
                "{} holds {:?} of the record, not the acknowledged v1",
                n.addr,
                copy.map(|c| c.0)
            );
        }
        let some = cl.nodes[0].node.clone().expect("live");
        let (_, holders, _) = some.core.lookup(&key, false).await.expect("lookup");
        for h in holders.iter().take(3) {
            assert_eq!(
                held(&cl, &h.addr, key).await,
                Some((1, make_record(1))),
                "holder {} keeps the acknowledged v1",
                h.addr
            );
        }
        let read = net
            .endpoint("client")
            .call(
                primary,
                Request::GetRecord { key, pull: true },
                Duration::from_secs(2),
            )
            .await;
        match read {
            Ok(Response::Record { version, record }) => {
                assert_eq!(
                    (version, record),
                    (1, make_record(1)),
                    "read through {primary}"
                )
            }
            other => panic!("read through {primary}: {other:?}"),
        }
        cl.stop_all();
    }

    /// A take-back that is lost is sent again, until the replica confirms it.
    /// (CHORDFS_SIM_SEED=18408: a take-back lost to 20% loss left a replica with the
    /// copy of a failed write beside an acknowledged one of the same version; it spread
    /// the copy when it became a holder, long after. Resent, the take-back gets there
    /// first. It does not win against the replica's next repair pass when the replica
    /// is a holder already, as here, and the others hold an older version: that door,
    /// the one simulation seed 7399 found, is still open; see README.md.)
    #[test]
    fn a_lost_take_back_is_sent_again() {
        in_simulated_time(async {
            let (mut cl, net, _, primary, succs) = a_failed_write(22, |net, p, succs| {
                for s in &succs[1..] {
                    net.lose_requests("PutRecordCopy", p, s, 1);
                }
                net.lose_requests("RevertRecordCopy", p, &succs[0], 1);
            })
            .await;
            let node = cl.by_addr(&primary).node.clone().expect("primary live");
            let pending = || -> Vec<String> {
                let p = node.records.take_backs.lock().expect("take-backs lock");
                p.iter().map(|t| t.peer.addr.clone()).collect()
            };
            assert_eq!(
                pending(),
                vec![succs[0].clone()],
                "the take-back lost on its way to the first successor waits to be sent again"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(pending(), Vec::<String>::new(), "sent again and confirmed");
            assert_eq!(
                net.lost_on_purpose("RevertRecordCopy", &primary, &succs[0]),
                1,
                "the first take-back was lost"
            );
            cl.stop_all();
        });
    }

    /// A primary's own repair pass does not push its copy of a write still in flight:
    /// it reads records under their lock, so it sees the write's outcome. (Before: the
    /// pass pushed the copy to a holder while the write waited on its replicas; the
    /// write failed, but that copy, stored by repair and so not taken back, spread:
    /// CHORDFS_SIM_SEED=23479.)
    #[test]
    fn a_primary_does_not_push_its_copy_of_a_write_in_flight() {
        in_simulated_time(async {
            let (cl, net, key, primary, _) = a_failed_write(23, |net, p, succs| {
                // Every copy is lost: the write waits out a timeout per batch, time
                // for several repair passes on the primary.
                for s in succs {
                    net.lose_requests("PutRecordCopy", p, s, 1);
                }
            })
            .await;
            no_trace_of_the_failed_write(cl, net, key, &primary).await;
        });
    }

    /// The small side of a partition cannot tell the rest of the ring from dead. However
    /// long the split lasts (past the lifetime of lost peers), it keeps counting them and
    /// refuses writes it could not keep: R copies are out of its reach.
    #[test]
    fn the_small_side_of_a_long_partition_keeps_refusing_writes() {
        in_simulated_time(async {
            let (mut cl, net) = settled_ring(11, 5).await;
            let key = Id::hash(b"minority test");
            let some = cl.nodes[0].node.clone().expect("live");
            let (_, holders, _) = some.core.lookup(&key, false).await.expect("lookup");
            // The key's primary and its successor on one side, the other three apart.
            let small: Vec<String> = holders[..2].iter().map(|p| p.addr.clone()).collect();
            let big: Vec<String> = cl
                .nodes
                .iter()
                .map(|n| n.addr.clone())
                .filter(|a| !small.contains(a))
                .collect();
            net.partition(&[small.clone(), big.clone()]);
            let node_cfg = cl.nodes[0].node.as_ref().expect("live").cfg().clone();
            let lifetime = node_cfg.check_predecessor_every * crate::chord::core::LOST_TTL_CHECKS;
            tokio::time::sleep(lifetime + Duration::from_secs(10)).await;

            let client = net.endpoint("client");
            for addr in &small {
                let node = cl.by_addr(addr).node.clone().expect("live");
                let lost = node.core.book().lost().len();
                assert!(lost >= big.len(), "{addr} still counts {lost} lost peers");
                let answer = client
                    .call(
                        addr,
                        Request::CasRecord {
                            key,
                            expect: 0,
                            record: make_record(1),
                        },
                        Duration::from_secs(2),
                    )
                    .await;
                assert!(
                    !matches!(answer, Ok(Response::Stored { .. })),
                    "{addr}, on the small side, acknowledged a write: {answer:?}"
                );
            }
            net.heal();
            assert!(settle(&cl, None, Duration::from_secs(30)).await.is_some());
            cl.stop_all();
        });
    }

    /// A leave over a lossy network takes longer, but ends with every key handed over:
    /// it keeps passing over its keys while they go down, and gives up only when nothing
    /// moves for a long time. (It once stopped after five quick passes and left with the
    /// last copies of some chunks: simulation seed 6250.)
    #[test]
    fn a_leave_under_heavy_loss_hands_over_every_key() {
        in_simulated_time(async {
            let (mut cl, net) = settled_ring(11, 6).await;
            let client = Client::with_transport(
                workload::client_config(&cl.nodes[0].addr),
                net.endpoint("client"),
            )
            .await
            .expect("client");
            let mut keys = Vec::new();
            for n in 0..60u32 {
                let data = Bytes::from(format!("chunk {n} ").repeat(50));
                keys.push(client.put_chunk(data).await.expect("put"));
            }
            // The node holding the most keys leaves while 30% of all messages are lost.
            let leaver = (0..cl.nodes.len())
                .max_by_key(|&i| cl.nodes[i].store.counts().0)
                .expect("nodes");
            let held = cl.nodes[leaver].store.counts().0;
            assert!(held > 0);
            net.set_weather(Weather {
                delay_ms: (10, 150),
                loss: 0.3,
            });
            cl.begin_leave(leaver);
            cl.finish_leaves(Duration::from_secs(600)).await;
            net.set_weather(Weather::CALM);
            assert_eq!(cl.nodes[leaver].status, Status::Left, "the leave ends");
            assert_eq!(
                cl.nodes[leaver].store.counts(),
                (0, 0, 0),
                "the leaver handed over all {held} chunks it held"
            );
            assert!(settle(&cl, None, Duration::from_secs(30)).await.is_some());
            for key in &keys {
                let copies = cl
                    .nodes
                    .iter()
                    .filter(|n| n.status == Status::Live && n.store.meta(key).is_some())
                    .count();
                assert!(copies >= 1, "chunk {} kept", key.short());
                let data = client.get_chunk(key).await.expect("read back");
                assert_eq!(Id::hash(&data), *key);
            }
            cl.stop_all();
        });
    }

    /// A copy outside its key's range is dropped only when the rightful holders keep
    /// theirs; holders that are themselves handing the key off (each took the other
    /// group for the holders, as views of a healing ring can) do not count. Without
    /// this both groups dropped on the strength of each other (simulation seed 24845).
    #[test]
    fn a_copy_is_not_dropped_on_the_strength_of_stray_ones() {
        in_simulated_time(async {
            let (mut cl, net) = settled_ring(21, 5).await;
            let client = Client::with_transport(
                workload::client_config(&cl.nodes[0].addr),
                net.endpoint("client"),
            )
            .await
            .expect("client");
            let data = Bytes::from_static(b"held by three, then by a fourth");
            let key = client.put_chunk(data.clone()).await.expect("put");
            let holding = |i: usize| cl.nodes[i].store.meta(&key).is_some();
            let holders: Vec<usize> = (0..cl.nodes.len()).filter(|&i| holding(i)).collect();
            assert_eq!(holders.len(), REPLICAS, "the chunk is on its holders");
            let outsider = (0..cl.nodes.len())
                .find(|i| !holders.contains(i))
                .expect("a node that is not a holder");
            let node = |i: usize| cl.nodes[i].node.clone().expect("live");
            cl.nodes[outsider]
                .store
                .put_chunk(key, data.clone())
                .await
                .expect("a stray copy");
            let mark = |stray: bool| {
                for &h in &holders {
                    let n = node(h);
                    let mut handing_off = n.repair.handing_off.lock().expect("handing_off lock");
                    if stray {
                        handing_off.insert(key);
                    } else {
                        handing_off.remove(&key);
                    }
                }
            };
            mark(true);
            node(outsider)
                .repair
                .pass(false)
                .await
                .expect("repair pass");
            assert!(
                holding(outsider),
                "the outsider dropped its copy although every holder was handing it off"
            );
            mark(false);
            node(outsider)
                .repair
                .pass(false)
                .await
                .expect("repair pass");
            assert!(
                !holding(outsider),
                "the outsider keeps its copy once the holders keep theirs"
            );
            for h in holders {
                assert!(holding(h), "holder {h} kept the chunk");
            }
            cl.stop_all();
        });
    }

    /// A stabilize round asks its successor for its state; when the successor changes
    /// while that answer is on its way (reconcile adopts a closer one), the answer no
    /// longer describes this node's list and must not overwrite the new one. Written
    /// over it, it skipped the node's true successors, and the node acknowledged a
    /// version of a record that the skipped primary had acknowledged too (simulation
    /// seed 15069).
    #[test]
    fn a_stale_stabilize_answer_does_not_overwrite_a_newer_successor() {
        in_simulated_time(async {
            let net = SimNet::new(StdRng::seed_from_u64(5));
            net.set_weather(Weather {
                delay_ms: (20, 20),
                loss: 0.0,
            });
            let mut nodes = Vec::new();
            for i in 0..6 {
                let addr = format!("n{i:02}");
                let node = crate::chord::Node::new(
                    cluster::node_config(&addr),
                    Id::hash(addr.as_bytes()),
                    crate::store::Store::memory(),
                    net.endpoint(&addr),
                );
                net.attach(&addr, node.clone(), CancellationToken::new());
                nodes.push(node);
            }
            // A settled ring (no maintenance runs: this test drives the one round).
            nodes.sort_by_key(|n| n.me().id);
            let n = nodes.len();
            let after = |i: usize| -> Vec<crate::proto::Peer> {
                (1..n).map(|k| nodes[(i + k) % n].me().clone()).collect()
            };
            for (i, node) in nodes.iter().enumerate() {
                let mut r = node.core.routing.write().expect("routing lock");
                r.predecessor = Some(nodes[(i + n - 1) % n].me().clone());
                let list = after(i);
                r.set_successors(list[0].clone(), &list[1..]);
            }
            // Node 0 has a stale view: only node 4, whose predecessor (node 3) lies
            // beyond node 0's true successors.
            let a = nodes[0].clone();
            a.core
                .routing
                .write()
                .expect("routing lock")
                .set_successors(nodes[4].me().clone(), &[]);
            let round = tokio::spawn({
                let a = a.clone();
                async move { a.maintenance.stabilize().await }
            });
            // While it asks node 4, it learns its true successors (as reconcile does).
            tokio::time::sleep(Duration::from_millis(5)).await;
            let list = after(0);
            a.core
                .routing
                .write()
                .expect("routing lock")
                .set_successors(list[0].clone(), &list[1..]);
            round.await.expect("the stabilize round");
            let got: Vec<String> = a
                .snapshot()
                .successors
                .iter()
                .map(|p| p.addr.clone())
                .collect();
            assert_eq!(
                got[0],
                nodes[1].me().addr,
                "the stale answer replaced the true successor: {got:?}"
            );
        });
    }

    /// A session taking locks through the simulated network, its renewal running.
    async fn lock_session(
        net: &Arc<SimNet>,
        ring: &str,
        name: &str,
        id: u64,
    ) -> (
        Arc<crate::client::locks::LockSession>,
        tokio::task::JoinHandle<()>,
    ) {
        let client = Client::with_transport(workload::client_config(ring), net.endpoint(name))
            .await
            .expect("client");
        let session = crate::client::locks::LockSession::with_id(client, id);
        let renewal = tokio::spawn(session.clone().run());
        (session, renewal)
    }

    /// A lock outlives its primary's crash: its holder reclaims it from the new primary
    /// in that node's grace period, and nobody else gets it meanwhile. A holder that
    /// falls silent loses it, and another session gets it only once the silent one has
    /// stopped trusting it; back, the silent one is told. The argument of docs/locks.md.
    #[test]
    fn a_lock_outlives_its_primarys_crash_and_lapses_with_a_silent_holder() {
        use crate::client::locks::LockError;
        use crate::proto::lock::{LockKind, LOCK_EOF};
        use crate::ring::locks::LockOp;
        in_simulated_time(async {
            let (mut cl, net) = settled_ring(13, 5).await;
            // The nodes' lease clocks (the simulation's runs start none: they take no
            // locks).
            for n in &cl.nodes {
                tokio::spawn(n.node.clone().expect("live").run_locks());
            }
            let ring = cl.nodes[0].addr.clone();
            let (a, a_renewal) = lock_session(&net, &ring, "client-a", 1).await;
            let (b, _b_renewal) = lock_session(&net, &ring, "client-b", 2).await;
            let key = Id::hash(b"a locked file");
            let whole = LockOp {
                start: 0,
                end: LOCK_EOF,
                kind: Some(LockKind::Exclusive),
                pid: 1,
            };
            let lease = cl.nodes[0].node.as_ref().expect("live").cfg().lock_lease;
            // A fresh ring's nodes are in their grace: the first lock waits it out.
            tokio::time::timeout(
                lease * 3,
                a.set(key, 1, whole, true, std::future::pending()),
            )
            .await
            .expect("a's lock within the grace")
            .expect("a locks");
            // While the ring notices the crash no node may take the key's requests: b's
            // try fails then, and is made again.
            let b_try = || async {
                loop {
                    match b.set(key, 1, whole, false, std::future::pending()).await {
                        Err(LockError::Client(_)) => tokio::time::sleep(lease / 30).await,
                        other => return other,
                    }
                }
            };
            assert!(matches!(b_try().await, Err(LockError::WouldBlock)));

            let some = cl.nodes[0].node.clone().expect("live");
            let (_, holders, _) = some.core.lookup(&key, false).await.expect("lookup");
            let primary = cl
                .nodes
                .iter()
                .position(|n| n.addr == holders[0].addr)
                .expect("primary");
            cl.crash(primary);
            // The new primary waits out its grace, in which a reclaims; then b is refused.
            let got = tokio::time::timeout(lease * 3, b_try())
                .await
                .expect("b answered");
            assert!(matches!(got, Err(LockError::WouldBlock)), "{got:?}");
            assert!(!a.trusted(&key, 1).is_empty(), "a kept its lock");

            // a falls silent: no renewal, no network.
            a_renewal.abort();
            let mut side: Vec<String> = cl
                .nodes
                .iter()
                .map(|n| n.addr.clone())
                .chain(["client-b".to_string()])
                .collect();
            side.sort();
            net.partition(&[vec!["client-a".into()], side]);
            tokio::time::timeout(
                lease * 3,
                b.set(key, 1, whole, true, std::future::pending()),
            )
            .await
            .expect("b's lock once a's lease lapsed")
            .expect("b locks");
            assert!(
                a.trusted(&key, 1).is_empty(),
                "a still trusts the lock b got"
            );
            net.heal();
            let unlock = LockOp {
                kind: None,
                ..whole
            };
            let told = a.set(key, 1, unlock, false, std::future::pending()).await;
            assert!(matches!(told, Err(LockError::Lost)), "{told:?}");
            assert!(!b.trusted(&key, 1).is_empty(), "b holds it");
            cl.stop_all();
        });
    }
}
