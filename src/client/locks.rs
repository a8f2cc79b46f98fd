//! File locks as one mount holds them: its session (a random id per mount process),
//! what each lock owner holds on each file (what the kernel was told), the requests
//! that change it at the file's primary, and the lease renewal that keeps the locks,
//! reclaims them from a new primary and notices when they are lost. The rules are
//! [`crate::ring::locks`]; the design, and why it never grants a byte to two
//! conflicting owners, is docs/locks.md.
//!
//! Invariants: requests on one (file, owner) go one at a time, each computing its
//! change from what the last left; a file's locks are trusted until the send time of
//! the last request its primary confirmed plus 0.9 lease (the primary keeps them a
//! whole lease from its receipt), and past that they are *lost*: the callback set by
//! [`LockSession::on_lost`] hears of it and the mount fails the owner's next operation.

use super::retry::Retry;
use super::{Client, ClientError};
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::lock::{
    LockAnswer, LockHolder, LockRange, LEASE_DEFAULT_MS, LOCKS_MAX, LOCK_EOF, WAIT_LOCK_MAX_MS,
};
use crate::proto::{ErrorKind, Peer, Request, Response};
use crate::ring::locks::{apply, digest, meet, LockOp};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
// Tokio's clock, so tests with paused time see leases run out.
use tokio::time::Instant;

/// How long one `WaitLock` asks the primary to hold a blocked lock request before it
/// answers anyway (the request is then sent again): long, so a blocked F_SETLKW costs
/// one request every few seconds, not a poll.
const WAIT_LOCK_MS: u64 = 10_000;
/// The most `WaitLock`s one mount keeps open at once. Each occupies one of the 64
/// requests a node serves at once on the mount's connection (`MAX_INFLIGHT_PER_CONNECTION`),
/// so more would stall the mount's other requests to that node; waiters beyond this
/// send their lock request again after a backoff of [`BACKOFF_MIN`] doubling to
/// [`BACKOFF_MAX`] instead.
const WAITS_MAX: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a lock request failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("a conflicting lock is held")]
    WouldBlock,
    #[error("interrupted by a signal")]
    Interrupted,
    #[error("the locks held on this file were lost (lease lapsed, or taken over)")]
    Lost,
    #[error("more than {LOCKS_MAX} lock ranges on one file")]
    TooMany,
    /// A node refused the request as malformed, or does not know lock requests (an
    /// older version).
    #[error("the ring refused the lock request: {0}")]
    Refused(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A lock request that failed, and whether an attempt of it may have been applied (it
/// timed out or its connection dropped after it was sent).
struct CallFailed {
    err: LockError,
    maybe_applied: bool,
}

#[derive(Default)]
struct FileBelief {
    /// What each owner holds (normalized), as the kernel was told.
    owners: BTreeMap<u64, Vec<LockRange>>,
    /// These locks are trusted until then.
    valid_until: Option<Instant>,
    /// The primary may hold something else (an answer was lost): renewal sends the
    /// owners' locks again.
    resync: bool,
}

type LostFn = dyn Fn(Id, &[u64]) + Send + Sync;
/// Held across one (file, owner)'s request, so they go one at a time.
type Gate = Arc<tokio::sync::Mutex<()>>;

pub struct LockSession {
    client: Arc<Client>,
    pub id: u64,
    seq: AtomicU64,
    lease_ms: AtomicU64,
    // Never held across an await.
    files: Mutex<HashMap<Id, FileBelief>>,
    // Never held across an await; the gates themselves are (tokio mutexes).
    gates: Mutex<HashMap<(Id, u64), Gate>>,
    /// Wakes the renewal early (a primary in its grace: reclaim now).
    wake: Notify,
    /// Permits for open `WaitLock`s (see [`WAITS_MAX`]).
    waits: tokio::sync::Semaphore,
    on_lost: OnceLock<Box<LostFn>>,
}

impl Client {
    /// One lock request at the key's primary, sent again (with the view refreshed)
    /// while the primary is unreachable or says it is not the one, until the
    /// operation's time is spent. Returns the answer and when the answered attempt
    /// was sent. `extra` lengthens the RPC timeout (a `WaitLock` is answered late).
    async fn lock_call(
        &self,
        key: &Id,
        req: &Request,
        extra: Duration,
    ) -> Result<(LockAnswer, Instant), CallFailed> {
        let mut retry = Retry::new(self, format!("locks of {}", key.short()), "");
        let mut maybe_applied = false;
        loop {
            match self.view.get().successors_of(key, 1).pop() {
                None => retry.last = "empty ring view".into(),
                Some(primary) => {
                    let sent = Instant::now();
                    let timeout = self.cfg.rpc_timeout + extra;
                    match self.net.call(&primary.addr, req.clone(), timeout).await {
                        Ok(Response::Lock(a)) => return Ok((a, sent)),
                        Ok(other) => retry.unexpected(&primary, &other),
                        Err(RpcError::Remote {
                            kind: ErrorKind::WrongNode,
                            message,
                            ..
                        }) => retry.last = message,
                        Err(RpcError::Remote {
                            kind: ErrorKind::BadRequest,
                            message,
                            ..
                        }) => {
                            return Err(CallFailed {
                                err: LockError::Refused(message),
                                maybe_applied,
                            })
                        }
                        Err(e) => {
                            maybe_applied |= matches!(
                                e,
                                RpcError::Timeout { .. }
                                    | RpcError::Disconnected { .. }
                                    | RpcError::Codec(_)
                            );
                            retry.failed(&primary, &e);
                        }
                    }
                }
            }
            if let Err(e) = retry.pause().await {
                return Err(CallFailed {
                    err: e.into(),
                    maybe_applied,
                });
            }
        }
    }
}

/// The next step of a lock request that must wait.
enum Then {
    /// For the file's locks to change from this generation.
    Changed(u64),
    /// This long (the primary's grace period).
    Sleep(Duration),
}

impl LockSession {
    pub fn new(client: Arc<Client>) -> Arc<LockSession> {
        Self::with_id(client, rand::random::<u64>() | 1)
    }

    /// A session of a chosen id (the simulation's, which must be deterministic).
    pub fn with_id(client: Arc<Client>, id: u64) -> Arc<LockSession> {
        Arc::new(LockSession {
            client,
            id,
            seq: AtomicU64::new(0),
            lease_ms: AtomicU64::new(LEASE_DEFAULT_MS),
            files: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            waits: tokio::sync::Semaphore::new(WAITS_MAX),
            on_lost: OnceLock::new(),
        })
    }

    /// Sets the callback that hears of lost locks: the file and the owners that lost
    /// theirs. Called inline (it must not block), at most once per loss.
    pub fn on_lost(&self, f: Box<LostFn>) {
        let _ = self.on_lost.set(f);
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed).max(100))
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn gate(&self, key: Id, owner: u64) -> Gate {
        self.gates
            .lock()
            .expect("lock gates")
            .entry((key, owner))
            .or_default()
            .clone()
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<Id, FileBelief>> {
        self.files.lock().expect("lock beliefs")
    }

    /// What `owner` holds on `key`.
    pub fn held(&self, key: &Id, owner: u64) -> Vec<LockRange> {
        self.files()
            .get(key)
            .and_then(|f| f.owners.get(&owner).cloned())
            .unwrap_or_default()
    }

    /// What `owner` holds on `key` and may still trust now (nothing once the lease of
    /// the file's locks lapsed, even before a renewal round declared them lost).
    pub fn trusted(&self, key: &Id, owner: u64) -> Vec<LockRange> {
        let files = self.files();
        match files.get(key) {
            Some(f) if f.valid_until.is_some_and(|v| v > Instant::now()) => {
                f.owners.get(&owner).cloned().unwrap_or_default()
            }
            _ => vec![],
        }
    }

    /// Declares the locks of `key` lost if their lease lapsed. Returns whether any of
    /// `key`'s locks are lost now (or were already declared lost before).
    pub fn check(&self, key: &Id) -> bool {
        let lapsed = self.files().get(key).is_some_and(|f| {
            !f.owners.is_empty() && f.valid_until.is_none_or(|v| v <= Instant::now())
        });
        if lapsed {
            tracing::warn!("locks on {} lost: their lease lapsed", key.short());
            self.lose(key, None);
        }
        lapsed
    }

    /// Forgets the locks of `owners` on `key` (every owner's when None), tells the
    /// callback, and has the renewal clean up whatever the primary still holds.
    fn lose(&self, key: &Id, owners: Option<&[u64]>) {
        let gone: Vec<u64> = {
            let mut files = self.files();
            let Some(f) = files.get_mut(key) else {
                return;
            };
            let gone: Vec<u64> = match owners {
                Some(o) => o
                    .iter()
                    .copied()
                    .filter(|o| f.owners.remove(o).is_some())
                    .collect(),
                None => std::mem::take(&mut f.owners).into_keys().collect(),
            };
            f.resync = true;
            gone
        };
        if !gone.is_empty() {
            if let Some(cb) = self.on_lost.get() {
                cb(*key, &gone);
            }
        }
        self.wake.notify_one();
    }

    /// Records what the primary confirmed: `owner` holds `locks` on `key`, and, when
    /// the answer carried a lease, the file's locks are trusted for 0.9 of it from
    /// `sent`.
    fn confirmed(&self, key: Id, owner: u64, locks: Vec<LockRange>, sent: Instant, lease_ms: u64) {
        if lease_ms > 0 {
            self.lease_ms.store(lease_ms, Ordering::Relaxed);
        }
        let mut files = self.files();
        let f = files.entry(key).or_default();
        if locks.is_empty() {
            f.owners.remove(&owner);
        } else {
            f.owners.insert(owner, locks);
        }
        if lease_ms > 0 {
            let until = sent + Duration::from_millis(lease_ms) * 9 / 10;
            f.valid_until = Some(f.valid_until.map_or(until, |v| v.max(until)));
        }
        if f.owners.is_empty() && !f.resync {
            files.remove(&key);
        }
    }

    /// A change from `held` to `want` may or may not have been applied: the owner
    /// surely holds only the weaker of the two on every byte, which the primary holds
    /// either way; the renewal sends it to make that so.
    fn uncertain(&self, key: Id, owner: u64, held: &[LockRange], want: &[LockRange]) {
        let sure = meet(held, want);
        let mut files = self.files();
        let f = files.entry(key).or_default();
        if sure.is_empty() {
            f.owners.remove(&owner);
        } else {
            f.owners.insert(owner, sure);
        }
        f.resync = true;
        drop(files);
        self.wake.notify_one();
    }

    /// F_SETLK / F_SETLKW / flock: applies `op` to `owner`'s locks on `key`. A conflict
    /// fails at once with `WouldBlock`, or, with `wait`, waits for the file's locks to
    /// change and tries again; a primary in its grace period is waited for either way.
    /// Every wait ends early with `Interrupted` when `interrupted` completes.
    pub async fn set(
        &self,
        key: Id,
        owner: u64,
        op: LockOp,
        wait: bool,
        interrupted: impl Future<Output = ()>,
    ) -> Result<(), LockError> {
        tokio::pin!(interrupted);
        let mut backoff = BACKOFF_MIN;
        loop {
            let then = {
                let gate = self.gate(key, owner);
                let _one_at_a_time = gate.lock().await;
                let held = self.held(&key, owner);
                if self.check(&key) && !held.is_empty() {
                    return Err(LockError::Lost);
                }
                let held = self.held(&key, owner);
                let want = apply(&held, &op);
                if want == held {
                    return Ok(());
                }
                if want.len() > LOCKS_MAX {
                    return Err(LockError::TooMany);
                }
                let req = Request::SetLocks {
                    key,
                    session: self.id,
                    owner,
                    seq: self.next_seq(),
                    held: held.clone(),
                    locks: want.clone(),
                };
                match self.client.lock_call(&key, &req, Duration::ZERO).await {
                    Ok((LockAnswer::Granted { lease_ms }, sent)) => {
                        self.confirmed(key, owner, want, sent, lease_ms);
                        return Ok(());
                    }
                    Ok((LockAnswer::Conflict { generation, .. }, _)) if wait => {
                        Then::Changed(generation)
                    }
                    Ok((LockAnswer::Conflict { .. }, _)) => return Err(LockError::WouldBlock),
                    Ok((LockAnswer::Grace { retry_ms }, _)) => {
                        // A new primary: reclaim what this mount holds there now.
                        self.wake.notify_one();
                        Then::Sleep(Duration::from_millis(retry_ms.clamp(10, 5_000)))
                    }
                    Ok((LockAnswer::Lost, _)) => {
                        self.lose(&key, Some(&[owner]));
                        return Err(LockError::Lost);
                    }
                    Ok((other, _)) => {
                        return Err(LockError::Client(ClientError::Invalid(format!(
                            "unexpected lock answer {other:?}"
                        ))))
                    }
                    Err(f) => {
                        if f.maybe_applied {
                            self.uncertain(key, owner, &held, &want);
                        }
                        return Err(f.err);
                    }
                }
            };
            tokio::select! {
                _ = &mut interrupted => return Err(LockError::Interrupted),
                _ = self.wait_for(key, then, &mut backoff) => {}
            }
        }
    }

    async fn wait_for(&self, key: Id, then: Then, backoff: &mut Duration) {
        match then {
            Then::Sleep(d) => tokio::time::sleep(d).await,
            Then::Changed(generation) => {
                let Ok(_permit) = self.waits.try_acquire() else {
                    tokio::time::sleep(*backoff).await;
                    *backoff = (*backoff * 2).min(BACKOFF_MAX);
                    return;
                };
                let req = Request::WaitLock {
                    key,
                    generation,
                    wait_ms: WAIT_LOCK_MS.min(WAIT_LOCK_MAX_MS),
                };
                let extra = Duration::from_millis(WAIT_LOCK_MS);
                // Whatever the answer, the lock request is sent again.
                if self.client.lock_call(&key, &req, extra).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// F_GETLK: the first lock of another owner that conflicts with `range`.
    pub async fn test(
        &self,
        key: Id,
        owner: u64,
        range: LockRange,
        interrupted: impl Future<Output = ()>,
    ) -> Result<Option<LockHolder>, LockError> {
        tokio::pin!(interrupted);
        let req = Request::TestLock {
            key,
            session: self.id,
            owner,
            range,
        };
        loop {
            let wait = match self.client.lock_call(&key, &req, Duration::ZERO).await {
                Ok((LockAnswer::Free, _)) => return Ok(None),
                Ok((LockAnswer::Conflict { holder, .. }, _)) => return Ok(Some(holder)),
                Ok((LockAnswer::Grace { retry_ms }, _)) => {
                    Duration::from_millis(retry_ms.clamp(10, 5_000))
                }
                Ok((other, _)) => {
                    return Err(LockError::Client(ClientError::Invalid(format!(
                        "unexpected lock answer {other:?}"
                    ))))
                }
                Err(f) => return Err(f.err),
            };
            tokio::select! {
                _ = &mut interrupted => return Err(LockError::Interrupted),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Drops every lock `owner` holds on `key` (a close, an unlock of everything).
    pub async fn release(&self, key: Id, owner: u64) -> Result<(), LockError> {
        let all = LockOp {
            start: 0,
            end: LOCK_EOF,
            kind: None,
            pid: 0,
        };
        self.set(key, owner, all, false, std::future::pending())
            .await
    }

    /// Drops every lock of this mount (its end).
    pub async fn release_all(&self) {
        let held: Vec<(Id, u64)> = self
            .files()
            .iter()
            .flat_map(|(k, f)| f.owners.keys().map(move |o| (*k, *o)))
            .collect();
        futures::future::join_all(held.into_iter().map(|(k, o)| self.release(k, o))).await;
    }

    /// The renewal, until the mount ends: every third of a lease, or at once when a
    /// request met a primary in its grace; a round that could not reach a primary is
    /// tried again within a second.
    pub async fn run(self: Arc<Self>) {
        let mut pause = self.lease() / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
            }
            pause = if self.renew_once().await {
                self.lease() / 3
            } else {
                (self.lease() / 10).min(Duration::from_secs(1))
            };
        }
    }

    /// One renewal round: declares lapsed locks lost, renews the lease at the primary
    /// of every file this mount holds locks on, and sends again the locks of files the
    /// primary holds otherwise. Returns whether every primary was reached and agreed.
    pub async fn renew_once(&self) -> bool {
        let lapsed: Vec<Id> = {
            let now = Instant::now();
            self.files()
                .iter()
                .filter(|(_, f)| !f.owners.is_empty() && f.valid_until.is_none_or(|v| v <= now))
                .map(|(k, _)| *k)
                .collect()
        };
        for k in lapsed {
            tracing::warn!("locks on {} lost: their lease lapsed", k.short());
            self.lose(&k, None);
        }
        let files: Vec<(Id, u64)> = self
            .files()
            .iter()
            .filter(|(_, f)| !f.owners.is_empty() || f.resync)
            .map(|(k, f)| (*k, digest(f.owners.iter().map(|(o, l)| (*o, l.as_slice())))))
            .collect();
        self.gates
            .lock()
            .expect("lock gates")
            .retain(|_, g| Arc::strong_count(g) > 1);
        if files.is_empty() {
            return true;
        }
        let view = self.client.view();
        let mut by_primary: BTreeMap<String, (Peer, Vec<(Id, u64)>)> = BTreeMap::new();
        for (k, d) in files {
            if let Some(p) = view.successors_of(&k, 1).pop() {
                by_primary
                    .entry(p.addr.clone())
                    .or_insert_with(|| (p, vec![]))
                    .1
                    .push((k, d));
            }
        }
        let rounds = by_primary
            .into_values()
            .map(|(peer, files)| self.renew_at(peer, files));
        let ok = futures::future::join_all(rounds)
            .await
            .into_iter()
            .all(|ok| ok);
        if !ok {
            let _ = self.client.refresh_view().await;
        }
        ok
    }

    async fn renew_at(&self, peer: Peer, files: Vec<(Id, u64)>) -> bool {
        let sent = Instant::now();
        let req = Request::RenewLease {
            session: self.id,
            files: files.clone(),
        };
        let answer = self
            .client
            .net
            .call(&peer.addr, req, self.client.cfg.rpc_timeout)
            .await;
        let (lease_ms, differ, elsewhere) = match answer {
            Ok(Response::Lock(LockAnswer::Renewed {
                lease_ms,
                differ,
                elsewhere,
            })) => (lease_ms, differ, elsewhere),
            Ok(other) => {
                tracing::debug!("renewal at {}: {other:?}", peer.addr);
                return false;
            }
            Err(e) => {
                tracing::debug!("renewal at {}: {e}", peer.addr);
                return false;
            }
        };
        self.lease_ms.store(lease_ms.max(100), Ordering::Relaxed);
        let until = sent + Duration::from_millis(lease_ms) * 9 / 10;
        {
            let mut beliefs = self.files();
            for (k, d) in &files {
                if differ.iter().any(|(x, _)| x == k) || elsewhere.contains(k) {
                    continue;
                }
                if let Some(f) = beliefs.get_mut(k) {
                    f.valid_until = Some(f.valid_until.map_or(until, |v| v.max(until)));
                    // The primary holds exactly what this mount believes.
                    let now = digest(f.owners.iter().map(|(o, l)| (*o, l.as_slice())));
                    if now == *d {
                        f.resync = false;
                    }
                    if f.owners.is_empty() && !f.resync {
                        beliefs.remove(k);
                    }
                }
            }
        }
        let mut ok = elsewhere.is_empty();
        for (k, owners) in differ {
            ok &= self.resync(k, owners).await;
        }
        ok
    }

    /// Sends the primary of `key` what each owner holds there (the owners this mount
    /// knows and those the primary named): a reclaim at a primary in its grace, a
    /// clean-up after a lost answer. An owner whose locks the primary cannot take back
    /// has lost them.
    async fn resync(&self, key: Id, named: Vec<u64>) -> bool {
        let owners: BTreeSet<u64> = {
            let files = self.files();
            files
                .get(&key)
                .map(|f| f.owners.keys().copied().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(named)
                .collect()
        };
        let mut all_ok = true;
        for owner in owners {
            let gate = self.gate(key, owner);
            let _one_at_a_time = gate.lock().await;
            let held = self.held(&key, owner);
            let req = Request::SetLocks {
                key,
                session: self.id,
                owner,
                seq: self.next_seq(),
                held: held.clone(),
                locks: held.clone(),
            };
            match self.client.lock_call(&key, &req, Duration::ZERO).await {
                Ok((LockAnswer::Granted { lease_ms }, sent)) => {
                    self.confirmed(key, owner, held, sent, lease_ms)
                }
                Ok((LockAnswer::Lost, _)) | Ok((LockAnswer::Conflict { .. }, _)) => {
                    tracing::warn!(
                        "locks of owner {owner:x} on {} lost: the primary could not take them back",
                        key.short()
                    );
                    self.lose(&key, Some(&[owner]));
                }
                Ok((other, _)) => {
                    tracing::debug!("resync of {}: {other:?}", key.short());
                    all_ok = false;
                }
                Err(f) => {
                    tracing::debug!("resync of {}: {}", key.short(), f.err);
                    all_ok = false;
                }
            }
        }
        if all_ok {
            let mut files = self.files();
            if let Some(f) = files.get_mut(&key) {
                f.resync = false;
                if f.owners.is_empty() {
                    files.remove(&key);
                }
            }
        }
        all_ok
    }
}
