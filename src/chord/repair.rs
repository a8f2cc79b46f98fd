//! Repair (anti-entropy): every node walks the keys it holds, finds each key's rightful
//! holders (its successor and the next R-1 nodes), gives them any copy they lack or hold
//! older, and drops its own copy only once every rightful holder has confirmed one.
//!
//! The same pass serves every membership change: a join (the successor hands the new node
//! its range), a failure (survivors restore R copies), and a graceful leave (run with
//! `leaving`, it hands off every key). Copy, verify, then drop: a key is never without a
//! readable copy while it moves.

use super::core::Core;
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::{Held, Peer, Request, Response, KEYS_MAX};
use crate::ring::placement::holders_from_lookup;
use crate::store::{EntryKind, Meta};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock, so the throttle follows paused (simulated) time in tests.
use tokio::time::Instant;

/// What repair is doing, for the sidecar.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairStatus {
    pub running: bool,
    pub passes: u64,
    /// Keys to check in the current (or last) pass, and how many are done.
    pub keys_total: u64,
    pub keys_checked: u64,
    /// Since start: copies given to other nodes, their bytes, and keys dropped here after
    /// their rightful holders confirmed them.
    pub keys_pushed: u64,
    pub bytes_pushed: u64,
    pub keys_dropped: u64,
    /// Keys that the last pass could not bring to R copies.
    pub under_replicated: u64,
    pub last_pass_ms: u64,
    pub last_error: Option<String>,
    /// Scrubbing: copies re-read and verified since start, and full passes done.
    pub scrubbed_keys: u64,
    pub scrubbed_bytes: u64,
    pub scrub_passes: u64,
    /// Where the scrub resumes.
    #[serde(skip)]
    pub scrub_cursor: Option<Id>,
}

impl RepairStatus {
    /// Fraction of the current pass done, 1.0 when idle.
    pub fn progress(&self) -> f64 {
        if !self.running || self.keys_total == 0 {
            1.0
        } else {
            self.keys_checked as f64 / self.keys_total as f64
        }
    }
}

/// Caps repair's bandwidth: after each push, sleeps long enough to stay under the rate.
struct Throttle {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl Throttle {
    async fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let spent = self.start.elapsed();
        if due > spent {
            tokio::time::sleep(due - spent).await;
        }
    }
}

/// The repair subsystem (with scrubbing, `scrub.rs`): its status and the marks of keys
/// found outside this node's range.
pub struct Repair {
    pub core: Arc<Core>,
    // Never held across an await: read or updated in one go.
    pub status: Mutex<RepairStatus>,
    /// Records this node holds outside its range, since when (see `repair_group`).
    // Never held across an await: one map operation at a time.
    pub strays: Mutex<HashMap<Id, tokio::time::Instant>>,
    /// Keys this node holds but found outside its range in its last pass: it answers
    /// them as [`Held::Stray`] (see `repair_group`).
    // Never held across an await: one set operation at a time.
    pub handing_off: Mutex<HashSet<Id>>,
}

impl Repair {
    pub fn new(core: Arc<Core>) -> Repair {
        Repair {
            core,
            status: Mutex::new(RepairStatus::default()),
            strays: Mutex::new(HashMap::new()),
            handing_off: Mutex::new(HashSet::new()),
        }
    }

    /// A copy of the status (readable even if a holder of the lock panicked).
    pub fn status(&self) -> RepairStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut RepairStatus)) {
        f(&mut self.status.lock().expect("repair lock"));
    }

    /// `HaveKeys`: the versions held here, keys being handed off as [`Held::Stray`] (a
    /// copy on its way out must not be counted among the R).
    pub fn held(&self, keys: &[Id]) -> Vec<Held> {
        let strays = self.handing_off.lock().expect("handing_off lock");
        keys.iter()
            .map(|k| match self.core.store.meta(k) {
                None => Held::No,
                Some(m) if strays.contains(k) => Held::Stray(m.version),
                Some(m) => Held::Kept(m.version),
            })
            .collect()
    }

    /// One pass over every key held here. Returns how many keys could not be settled
    /// (a rightful holder unreachable, or still to be handed off when leaving).
    pub async fn pass(&self, leaving: bool) -> Result<usize, RpcError> {
        let core = &self.core;
        let started = Instant::now();
        let keys = core.store.keys();
        // Forget the marks of keys gone since (dropped by garbage collection).
        self.handing_off
            .lock()
            .expect("handing_off lock")
            .retain(|k| core.store.meta(k).is_some());
        self.update(|s| {
            s.running = true;
            s.keys_total = keys.len() as u64;
            s.keys_checked = 0;
        });
        let mut throttle = Throttle {
            start: Instant::now(),
            bytes: 0,
            rate: core.cfg.repair_bytes_per_sec,
        };
        let mut unsettled = 0usize;
        let mut under = 0u64;
        let mut i = 0;
        let result = loop {
            if i >= keys.len() {
                break Ok(());
            }
            if core.shutdown.is_cancelled() && !leaving {
                break Ok(());
            }
            let (from, successors, _) = match core.lookup(&keys[i].0, leaving).await {
                Ok(found) => found,
                // A leave goes on with the other keys: over a lossy network, stopping at
                // the first failed lookup left most keys untried pass after pass.
                Err(e) if leaving => {
                    tracing::debug!("leave: lookup of {} failed: {e}", keys[i].0.short());
                    unsettled += 1;
                    i += 1;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let owner = successors[0].id;
            let mut j = i + 1;
            while j < keys.len() && keys[j].0.in_open_closed(&from.id, &owner) {
                j += 1;
            }
            let from_gone = leaving && from.id == core.me.id;
            let holders = holders_from_lookup(&from, successors, core.cfg.replicas, from_gone);
            let (left, short) = self
                .repair_group(&keys[i..j], &holders, leaving, &mut throttle)
                .await;
            unsettled += left;
            under += short;
            let done = j as u64;
            self.update(|s| s.keys_checked = done);
            i = j;
        };
        let ms = started.elapsed().as_millis() as u64;
        self.update(|s| {
            s.running = false;
            s.passes += 1;
            s.last_pass_ms = ms;
            s.under_replicated = under;
            s.last_error = result.as_ref().err().map(|e| e.to_string());
        });
        result.map(|()| unsettled)
    }

    /// Brings `holders` up to date on `group` (keys sharing one owner), and drops this
    /// node's copies that it should no longer hold. Returns (unsettled, under-replicated).
    async fn repair_group(
        &self,
        group: &[(Id, Meta)],
        holders: &[Peer],
        leaving: bool,
        throttle: &mut Throttle,
    ) -> (usize, u64) {
        let core = &self.core;
        let keep_here = !leaving && holders.iter().any(|p| p.id == core.me.id);
        let others: Vec<&Peer> = holders.iter().filter(|p| p.id != core.me.id).collect();
        // Mark our copies stray *before* asking anyone, and keep the mark until they are
        // dropped (or found ours again): a peer asking meanwhile gets `Held::Stray` and
        // does not count this copy. So of two nodes that each take the other for a
        // holder, at most one can lean on the other's copy to drop its own.
        {
            let mut handing_off = self.handing_off.lock().expect("handing_off lock");
            for (key, _) in group {
                if keep_here {
                    handing_off.remove(key);
                } else {
                    handing_off.insert(*key);
                }
            }
        }
        // confirmed[k] = how many other rightful holders keep key k at our version or newer.
        let mut confirmed = vec![0usize; group.len()];
        for peer in &others {
            for (batch_no, batch) in group.chunks(KEYS_MAX / 4).enumerate() {
                let base = batch_no * (KEYS_MAX / 4);
                let keys: Vec<Id> = batch.iter().map(|(k, _)| *k).collect();
                let held = match core.call(peer, Request::HaveKeys { keys }).await {
                    Ok(Response::Held(v)) if v.len() == batch.len() => v,
                    _ => continue,
                };
                for (n, ((key, meta), theirs)) in batch.iter().zip(held).enumerate() {
                    let ok = match theirs {
                        Held::Kept(v) if v >= meta.version => true,
                        // The peer has it but is handing it off: no copy to count on,
                        // and none to send.
                        Held::Stray(v) if v >= meta.version => false,
                        // Missing or older: give it ours. A stray holder updated so
                        // still does not count.
                        Held::Stray(_) => {
                            self.push(peer, key, meta, throttle).await;
                            false
                        }
                        Held::Kept(_) | Held::No => self.push(peer, key, meta, throttle).await,
                    };
                    if ok {
                        confirmed[base + n] += 1;
                    }
                }
            }
        }
        let mut unsettled = 0;
        let mut under = 0;
        let needed = others.len();
        // A lookup answered while the ring is in flux can name fewer than R holders (a
        // successor list cut short by timeouts). Dropping after fewer than R confirmed
        // copies lets such views delete every copy, one node after another: keep ours
        // unless R others have it (or this node is leaving anyway).
        let may_drop = needed > 0 && (leaving || needed >= core.cfg.replicas);
        for ((key, meta), c) in group.iter().zip(confirmed) {
            let copies = c + usize::from(keep_here);
            if copies < core.cfg.replicas.min(holders.len()) {
                under += 1;
            }
            if keep_here {
                self.strays.lock().expect("strays lock").remove(key);
                continue;
            }
            if may_drop && c >= needed {
                if meta.kind == EntryKind::Record && !leaving && !self.stray_record_expired(key) {
                    continue;
                }
                if core.store.delete(key).is_ok() {
                    self.strays.lock().expect("strays lock").remove(key);
                    self.handing_off
                        .lock()
                        .expect("handing_off lock")
                        .remove(key);
                    self.update(|s| s.keys_dropped += 1);
                }
            } else {
                unsettled += 1;
            }
        }
        (unsettled, under)
    }

    /// Whether a record found outside this node's range has stayed so for the hold
    /// time (ten repair intervals), starting the clock when it is first found so.
    ///
    /// A record is dropped only after that hold: a view of the ring taken while it
    /// settles can name the wrong holders, and a node that dropped an acknowledged
    /// version on such a view, then found itself a holder again, accepted an older
    /// version from a stale holder in its place; its next write reused the lost
    /// version number (pinned by the simulation's sweep; docs/findings.md). Chunks never
    /// change, so a stale copy of one can do no such harm; they go at once.
    fn stray_record_expired(&self, key: &Id) -> bool {
        let hold = self.core.cfg.repair_every * 10;
        let now = tokio::time::Instant::now();
        let mut strays = self.strays.lock().expect("strays lock");
        let since = *strays.entry(*key).or_insert(now);
        now.duration_since(since) >= hold
    }

    /// Gives `peer` this node's copy of `key`. False when it could not.
    async fn push(&self, peer: &Peer, key: &Id, meta: &Meta, throttle: &mut Throttle) -> bool {
        let core = &self.core;
        let req = match meta.kind {
            // The copy keeps this one's age, so that garbage collection sees an
            // unreferenced chunk as old on every holder (see gc.rs).
            EntryKind::Chunk => match core.store.get_chunk(*key).await {
                Ok(Some(data)) => match core.store.chunk_age(key) {
                    Some(age) => Request::PutChunkCopy {
                        key: *key,
                        data,
                        age_ms: age.as_millis() as u64,
                    },
                    None => return false,
                },
                _ => return false,
            },
            // Read under the record's lock: a write this node is making as primary holds
            // it until the write is acknowledged or taken back, and its copy must not
            // travel meanwhile: it could win over an acknowledged one. Pinned by
            // `a_primary_does_not_push_its_copy_of_a_write_in_flight`.
            EntryKind::Record => {
                let held = {
                    let _guard = core.store.lock_record(key).await;
                    core.store.get_record(*key).await
                };
                match held {
                    Ok(Some((version, record))) => Request::PutRecordCopy {
                        key: *key,
                        version,
                        record,
                        write: 0,
                    },
                    _ => return false,
                }
            }
        };
        match core.call(peer, req).await {
            Ok(Response::Ok) | Ok(Response::Stored { .. }) => {
                self.update(|s| {
                    s.keys_pushed += 1;
                    s.bytes_pushed += meta.size;
                });
                throttle.account(meta.size).await;
                true
            }
            Ok(other) => {
                tracing::warn!(
                    "repair push of {} to {} answered {other:?}",
                    key.short(),
                    peer.addr
                );
                false
            }
            Err(e) => {
                tracing::debug!(
                    "repair push of {} to {} failed: {e}",
                    key.short(),
                    peer.addr
                );
                false
            }
        }
    }

    /// Keys held here and this node's role for each: primary when the key falls in this
    /// node's own range, replica otherwise. Uses only the local table, so it is cheap.
    pub fn roles(&self) -> Vec<(Id, Meta, &'static str)> {
        let r = self.core.snapshot();
        let pred = r.predecessor.clone();
        self.core
            .store
            .keys()
            .into_iter()
            .map(|(k, m)| {
                let role = match &pred {
                    Some(p) if k.in_open_closed(&p.id, &self.core.me.id) => "primary",
                    None => "primary",
                    Some(_) => "replica",
                };
                (k, m, role)
            })
            .collect()
    }
}
