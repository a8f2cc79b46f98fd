//! A ring member: the shared core and the subsystems over it, and the loops that drive
//! them. Requests are answered by `handler.rs`.

use super::core::{Core, NodeConfig};
use super::gc::Gc;
use super::locks::Locks;
use super::maintenance::Maintenance;
use super::records::Records;
use super::repair::Repair;
use crate::id::Id;
use crate::net::{RpcError, Transport};
use crate::proto::{NodeState, NodeStats, Peer};
use crate::ring::Routing;
use crate::store::Store;
use std::sync::Arc;
use tracing::Instrument;

pub struct Node {
    /// Identity, settings, routing table, store, transport, peer book and flags.
    pub core: Arc<Core>,
    /// The routing table's upkeep, joins, leaves and reconcile.
    pub maintenance: Maintenance,
    /// Record writes at their primary, replicas' copies, take-backs.
    pub records: Records,
    /// Anti-entropy and scrubbing.
    pub repair: Repair,
    /// Garbage collection.
    pub gc: Gc,
    /// Byte-range locks of the files this node is the primary of.
    pub locks: Locks,
}

impl Node {
    pub fn new(cfg: NodeConfig, id: Id, store: Arc<Store>, net: Arc<dyn Transport>) -> Arc<Node> {
        let core = Arc::new(Core::new(cfg, id, store, net));
        Arc::new(Node {
            maintenance: Maintenance::new(core.clone()),
            records: Records::new(core.clone()),
            repair: Repair::new(core.clone()),
            gc: Gc::new(core.clone()),
            locks: Locks::new(core.clone()),
            core,
        })
    }

    pub fn me(&self) -> &Peer {
        &self.core.me
    }

    pub fn cfg(&self) -> &NodeConfig {
        &self.core.cfg
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.core.store
    }

    pub fn snapshot(&self) -> Routing {
        self.core.snapshot()
    }

    pub fn state(&self) -> NodeState {
        self.core.state()
    }

    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// Joins the ring through any live member.
    pub async fn join(&self, via: &str) -> Result<(), RpcError> {
        let span = self.core.span.clone();
        self.maintenance.join(via).instrument(span).await
    }

    /// Graceful leave: see [`Maintenance::leave`].
    pub async fn leave(&self) {
        let span = self.core.span.clone();
        self.maintenance.leave(&self.repair).instrument(span).await
    }

    /// Stops every loop of this node at their next await.
    pub fn shut_down(&self) {
        self.core.shutdown.cancel();
    }

    /// The periodic work of the paper (see [`Maintenance::run`]) until shutdown.
    pub async fn run_maintenance(self: Arc<Self>) {
        let span = self.core.span.clone();
        self.maintenance.run().instrument(span).await
    }

    /// Repair passes on a timer, or sooner when membership changes; each pass resends
    /// unconfirmed take-backs first and is followed by a scrub step and, when due, a
    /// checkpoint of the record journal.
    pub async fn run_repair(self: Arc<Self>) {
        let span = self.core.span.clone();
        self.repair_loop().instrument(span).await
    }

    async fn repair_loop(&self) {
        let core = &self.core;
        loop {
            tokio::select! {
                biased;
                _ = core.shutdown.cancelled() => return,
                _ = tokio::time::sleep(core.cfg.repair_every) => {}
                _ = core.repair_wake.notified() => {
                    // Let stabilization settle the new neighbours first.
                    tokio::time::sleep(core.cfg.stabilize_every * 2).await;
                }
            }
            if core.is_leaving() {
                return;
            }
            self.records.retry_take_backs().await;
            if let Err(e) = self.repair.pass(false).await {
                tracing::warn!("repair pass failed: {e}");
            }
            self.repair
                .scrub_step(super::scrub::SCRUB_BYTES_PER_STEP)
                .await;
            core.store
                .checkpoint_journal_if_older(crate::store::journal::CHECKPOINT_EVERY);
        }
    }

    /// The lock leases' clock (see [`Locks::run`]).
    pub async fn run_locks(self: Arc<Self>) {
        let span = self.core.span.clone();
        self.locks.run().instrument(span).await
    }

    /// Garbage-collection sweeps on their timer (see [`Gc::run`]).
    pub async fn run_gc(self: Arc<Self>) {
        let span = self.core.span.clone();
        self.gc.run().instrument(span).await
    }
}
