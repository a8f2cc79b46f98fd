//! The simulated cluster: nodes that start, join, leave, crash and restart on a
//! [`SimNet`], and the event log every change is written to.

use super::net::{fnv, SimNet, FNV_START};
use crate::chord::{Node, NodeConfig};
use crate::id::Id;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Replicas per key in the simulated ring.
pub const REPLICAS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Live,
    /// Handing its keys over; still serving.
    Leaving,
    Left,
    Crashed,
    /// Never got into the ring (its join failed).
    Failed,
}

pub struct SimNode {
    pub addr: String,
    pub id: Id,
    /// Survives crashes: what was written is on "disk".
    pub store: Arc<Store>,
    pub node: Option<Arc<Node>>,
    kill: CancellationToken,
    pub status: Status,
    leave_done: Arc<AtomicBool>,
    /// A leave that ended with keys still here (it could not hand them all over).
    pub incomplete_leave: bool,
}

pub struct Cluster {
    pub seed: u64,
    pub net: Arc<SimNet>,
    pub nodes: Vec<SimNode>,
    pub events: Vec<String>,
    event_hash: u64,
    /// A partition left R or more nodes on each side: both could take writes.
    pub split_brain: bool,
    /// Any partition happened (each side may have had a primary for a key).
    pub partitioned: bool,
}

/// Node settings for the simulation: the paper's timers, made short.
pub fn node_config(addr: &str) -> NodeConfig {
    let mut cfg = NodeConfig::new(addr.to_string(), PathBuf::from("/nonexistent/sim"));
    cfg.replicas = REPLICAS;
    cfg.successor_list_len = 5;
    cfg.stabilize_every = Duration::from_millis(50);
    cfg.fix_fingers_every = Duration::from_millis(100);
    cfg.check_predecessor_every = Duration::from_millis(100);
    cfg.repair_every = Duration::from_millis(300);
    cfg.rpc_timeout = Duration::from_millis(300);
    cfg
}

impl Cluster {
    pub fn new(seed: u64, net: Arc<SimNet>) -> Cluster {
        Cluster {
            seed,
            net,
            nodes: Vec::new(),
            events: Vec::new(),
            event_hash: FNV_START,
            split_brain: false,
            partitioned: false,
        }
    }

    /// Writes one line to the event log (and its hash), stamped with simulated time.
    pub fn log(&mut self, what: impl AsRef<str>) {
        let ms = self.net.now_ms();
        let line = format!("{:>4}.{:03}s {}", ms / 1000, ms % 1000, what.as_ref());
        self.event_hash = fnv(self.event_hash, line.as_bytes());
        tracing::debug!("sim: {line}");
        self.events.push(line);
    }

    pub fn event_hash(&self) -> u64 {
        self.event_hash
    }

    pub fn with_status(&self, s: Status) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].status == s)
            .collect()
    }

    /// The node at `addr` (panics if there is none: a test's own mistake).
    pub fn by_addr(&self, addr: &str) -> &SimNode {
        self.nodes
            .iter()
            .find(|n| n.addr == addr)
            .unwrap_or_else(|| panic!("no simulated node at {addr}"))
    }

    /// Nodes that serve: live or still leaving.
    pub fn serving(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| matches!(self.nodes[i].status, Status::Live | Status::Leaving))
            .collect()
    }

    /// Adds a node (not started yet); its id comes from the seed.
    pub fn add(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = format!("n{i:02}");
        let id = Id::hash(format!("chordfs-sim:{}:{i}", self.seed).as_bytes());
        self.nodes.push(SimNode {
            addr,
            id,
            store: Store::memory(),
            node: None,
            kill: CancellationToken::new(),
            status: Status::Failed,
            leave_done: Arc::new(AtomicBool::new(false)),
            incomplete_leave: false,
        });
        i
    }

    /// Starts node `i` (new, or restarting on its old store), joining through `via`.
    /// Returns false when the join failed within its bounded retries.
    pub async fn start(&mut self, i: usize, via: &[String]) -> bool {
        let addr = self.nodes[i].addr.clone();
        let kill = CancellationToken::new();
        let node = Node::new(
            node_config(&addr),
            self.nodes[i].id,
            self.nodes[i].store.clone(),
            self.net.endpoint(&addr),
        );
        self.net.attach(&addr, node.clone(), kill.clone());
        if let Some(first) = via.first() {
            self.net.join_side(&addr, first);
            // A node that joins one side of a partition can give that side R nodes:
            // from then on both sides take writes (seed 161: a 2-node side grew to 3).
            if self.partitioned {
                let sizes = self.net.side_sizes();
                self.split_brain |= sizes.len() > 1 && sizes.iter().all(|&n| n >= REPLICAS);
            }
        }
        let mut joined = via.is_empty();
        let mut last = String::new();
        for attempt in 0..(via.len() * 2).min(8) {
            match node.join(&via[attempt % via.len()]).await {
                Ok(()) => {
                    joined = true;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if !joined {
            self.net.detach(&addr);
            kill.cancel();
            self.log(format!("{addr} could not join: {last}"));
            self.nodes[i].status = if self.nodes[i].node.is_some() {
                Status::Crashed
            } else {
                Status::Failed
            };
            return false;
        }
        let tasks: [futures::future::BoxFuture<'static, ()>; 2] = [
            Box::pin(node.clone().run_maintenance()),
            Box::pin(node.clone().run_repair()),
        ];
        for task in tasks {
            let kill = kill.clone();
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = kill.cancelled() => {}
                    _ = task => {}
                }
            });
        }
        let n = &mut self.nodes[i];
        n.node = Some(node);
        n.kill = kill;
        n.status = Status::Live;
        true
    }

    /// Stops node `i` at once: no more answers, every task of it dropped.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.kill.cancel();
        if let Some(node) = &n.node {
            node.shut_down();
        }
        self.net.detach(&n.addr);
        n.status = Status::Crashed;
    }

    /// Starts a graceful leave of node `i` in the background; [`Cluster::reap_leaves`]
    /// records its end.
    pub fn begin_leave(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(node) = n.node.clone() else { return };
        n.status = Status::Leaving;
        let done = Arc::new(AtomicBool::new(false));
        n.leave_done = done.clone();
        let (net, kill, addr) = (self.net.clone(), n.kill.clone(), n.addr.clone());
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = kill.cancelled() => {}
                _ = node.leave() => {}
            }
            node.shut_down();
            kill.cancel();
            net.detach(&addr);
            done.store(true, Ordering::Release);
        });
    }

    /// Marks finished leaves as left, noting any that kept keys.
    pub fn reap_leaves(&mut self) {
        for i in self.with_status(Status::Leaving) {
            if !self.nodes[i].leave_done.load(Ordering::Acquire) {
                continue;
            }
            self.nodes[i].status = Status::Left;
            let (chunks, records, _) = self.nodes[i].store.counts();
            let addr = self.nodes[i].addr.clone();
            if chunks + records > 0 {
                self.nodes[i].incomplete_leave = true;
                self.log(format!(
                    "{addr} left with {chunks} chunks and {records} records not handed over"
                ));
            } else {
                self.log(format!("{addr} left"));
            }
        }
    }

    /// Waits (bounded) for every leave in progress to end.
    pub async fn finish_leaves(&mut self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while !self.with_status(Status::Leaving).is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.reap_leaves();
        }
    }

    /// Ends every task of every node (the end of a run), and takes them off the
    /// network: the network holds each attached node, and each node the network (its
    /// endpoint), so a node left attached kept the whole run in memory, store and all
    /// (a sweep of 26,000 seeds grew past 24 GB and was killed).
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.kill.cancel();
            if let Some(node) = &n.node {
                node.shut_down();
            }
            self.net.detach(&n.addr);
        }
    }
}
