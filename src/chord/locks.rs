//! The lock service: the byte-range locks of every file whose primary this node is (the
//! successor of the file's inode id), with the leases of the mounts holding them. The
//! decisions are the pure rules of [`crate::ring::locks`]; this shell watches the
//! node's range (for the grace period of a range it took over), runs the lease clock
//! and keeps the waiters of blocked locks. Why no byte is ever granted to two
//! conflicting owners, across primary changes too: docs/locks.md.

use super::core::{now, Core};
use super::records::Records;
use crate::id::Id;
use crate::proto::lock::{LockAnswer, LockRange, WAIT_LOCK_MAX_MS};
use crate::proto::{ErrorKind, Response};
use crate::ring::locks::{LockTable, Range, RangeLog, SetOutcome};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Locks {
    core: Arc<Core>,
    // Never held across an await: every request reads and decides under it in one go.
    state: Mutex<State>,
    /// Counts changes of any file's locks here: wakes the `WaitLock`s to look again.
    changed: watch::Sender<u64>,
}

struct State {
    table: LockTable,
    range: RangeLog,
}

fn wrong_node(key: &Id) -> Response {
    Response::error(
        ErrorKind::WrongNode,
        format!("not the primary of the locks of {}", key.short()),
    )
}

impl Locks {
    pub fn new(core: Arc<Core>) -> Locks {
        let state = State {
            table: LockTable::new(core.cfg.lock_lease),
            range: RangeLog::new(core.me.id, now()),
        };
        Locks {
            core,
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        }
    }

    fn lease(&self) -> Duration {
        self.core.cfg.lock_lease
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lock table")
    }

    /// The keys this node is the primary of now, as `Core::is_primary` decides.
    fn range_now(&self) -> (Range, u64) {
        let core = &self.core;
        let r = core.routing.read().expect("routing lock");
        let range = if core.is_joining() {
            Range::Nothing
        } else {
            match &r.predecessor {
                Some(p) => Range::After(p.id),
                None if r.successor().id == core.me.id && core.book().lost().is_empty() => {
                    Range::Everything
                }
                None => Range::Nothing,
            }
        };
        (range, r.predecessor_changes)
    }

    /// Brings the range log up to date and forgets the files that left the range
    /// (their locks are another primary's now). Returns the range.
    fn observe(&self, st: &mut State, at: Instant) -> Range {
        let (range, epoch) = self.range_now();
        st.range.observe(range, epoch, at, self.lease() * 2);
        let me = self.core.me.id;
        if !st.table.retain(|k| range.holds(k, &me)).is_empty() {
            self.changed.send_modify(|g| *g += 1);
        }
        range
    }

    /// `SetLocks` (see [`LockTable::set`]). A request that leaves the owner holding
    /// anything is answered only after this node checked with its neighbours that it is
    /// the file's primary (as record writes do), so a node that lost its range without
    /// knowing it yet grants nothing and renews nothing; a release of everything needs
    /// no check (and renews nothing: `lease_ms` 0).
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        &self,
        records: &Records,
        key: Id,
        session: u64,
        owner: u64,
        seq: u64,
        held: Vec<LockRange>,
        locks: Vec<LockRange>,
    ) -> Response {
        if !self.core.is_primary(&key) {
            return wrong_node(&key);
        }
        let checked = !locks.is_empty();
        if checked {
            if let Some(why) = records.primacy_doubt(&key).await {
                return Response::error(ErrorKind::WrongNode, why);
            }
        }
        let at = now();
        let lease = self.lease();
        let (out, grace, generation, moved) = {
            let mut st = self.state();
            if !self.observe(&mut st, at).holds(&key, &self.core.me.id) {
                return wrong_node(&key);
            }
            let grace = st.range.grace_left(&key, at, lease);
            let before = st.table.generation(&key);
            let out = st
                .table
                .set(key, session, owner, seq, &held, &locks, grace.is_some(), at);
            let generation = st.table.generation(&key);
            (out, grace, generation, generation != before)
        };
        if moved {
            self.changed.send_modify(|g| *g += 1);
        }
        let answer = match out {
            SetOutcome::Granted => LockAnswer::Granted {
                lease_ms: if checked { lease.as_millis() as u64 } else { 0 },
            },
            SetOutcome::Conflict(holder) => LockAnswer::Conflict { holder, generation },
            SetOutcome::Grace => LockAnswer::Grace {
                retry_ms: grace.unwrap_or(lease).as_millis().max(1) as u64,
            },
            SetOutcome::Lost => LockAnswer::Lost,
            SetOutcome::Stale => {
                return Response::error(ErrorKind::BadRequest, "a stale lock request")
            }
        };
        Response::Lock(answer)
    }

    /// `TestLock` (F_GETLK). In the grace period the answer waits: a lock not yet
    /// reclaimed would be missed.
    pub fn test(&self, key: Id, session: u64, owner: u64, range: LockRange) -> Response {
        if !self.core.is_primary(&key) {
            return wrong_node(&key);
        }
        let at = now();
        let mut st = self.state();
        if !self.observe(&mut st, at).holds(&key, &self.core.me.id) {
            return wrong_node(&key);
        }
        if let Some(left) = st.range.grace_left(&key, at, self.lease()) {
            return Response::Lock(LockAnswer::Grace {
                retry_ms: left.as_millis().max(1) as u64,
            });
        }
        Response::Lock(match st.table.test(&key, session, owner, &range) {
            Some(holder) => LockAnswer::Conflict {
                holder,
                generation: st.table.generation(&key),
            },
            None => LockAnswer::Free,
        })
    }

    /// `WaitLock`: answers once the file's locks are no longer at `generation` (or
    /// this node stops being its primary), or after `wait_ms`.
    pub async fn wait(&self, key: Id, generation: u64, wait_ms: u64) -> Response {
        let wait = Duration::from_millis(wait_ms.min(WAIT_LOCK_MAX_MS));
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            let now_at = self.state().table.generation(&key);
            if now_at != generation || !self.core.is_primary(&key) {
                return Response::Lock(LockAnswer::Changed { generation: now_at });
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Response::error(ErrorKind::ShuttingDown, "lock service stopped");
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Response::Lock(LockAnswer::Changed { generation: now_at });
                }
                _ = self.core.shutdown.cancelled() => {
                    return Response::error(ErrorKind::ShuttingDown, "node is stopping");
                }
            }
        }
    }

    /// `RenewLease`: the session's lease here runs from now. Of the files named, those
    /// this node is not (or doubts being, after asking its neighbours) the primary of
    /// are `elsewhere`, and those whose locks here differ from the digest sent are
    /// `differ` (the mount then sends its locks again, as a reclaim in a grace period).
    pub async fn renew(&self, records: &Records, session: u64, files: Vec<(Id, u64)>) -> Response {
        let mut elsewhere = Vec::new();
        let mut mine = Vec::new();
        for (key, d) in files {
            if self.core.is_primary(&key) {
                mine.push((key, d));
            } else {
                elsewhere.push(key);
            }
        }
        let doubts =
            futures::future::join_all(mine.iter().map(|(k, _)| records.primacy_doubt(k))).await;
        let at = now();
        let mut differ = Vec::new();
        {
            let mut st = self.state();
            let range = self.observe(&mut st, at);
            st.table.renew(session, at);
            for ((key, d), doubt) in mine.into_iter().zip(doubts) {
                if doubt.is_some() || !range.holds(&key, &self.core.me.id) {
                    elsewhere.push(key);
                    continue;
                }
                let (held, owners) = st.table.digest_of(&key, session);
                if held != d {
                    differ.push((key, owners));
                }
            }
        }
        Response::Lock(LockAnswer::Renewed {
            lease_ms: self.lease().as_millis() as u64,
            differ,
            elsewhere,
        })
    }

    /// One tick of the lease clock: drops the locks of sessions whose lease lapsed and
    /// notes range changes.
    pub fn tick(&self) {
        let at = now();
        let expired = {
            let mut st = self.state();
            self.observe(&mut st, at);
            st.table.expire(at)
        };
        if !expired.is_empty() {
            tracing::info!("{} files' locks freed by lapsed leases", expired.len());
            self.changed.send_modify(|g| *g += 1);
        }
    }

    /// Files with locks here, and sessions with a lease.
    pub fn counts(&self) -> (usize, usize) {
        self.state().table.counts()
    }

    /// The lease clock, until shutdown: a lapsed lease frees its locks within a tenth
    /// of a lease (at most a second).
    pub async fn run(&self) {
        let every = (self.lease() / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.core.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => self.tick(),
            }
        }
    }
}
