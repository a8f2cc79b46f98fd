//! Taking back a record write that did not reach enough copies: here, and on every
//! replica it was sent to. A replica undoes only the copy that very write stored (known
//! by its write id), so a take-back is harmless to repeat; one a replica does not
//! confirm is resent before each repair pass for [`TAKE_BACK_PATIENCE`]. Left in place,
//! a failed write's copy could later meet an acknowledged write of the same version and
//! win over it. Pinned by `a_failed_record_write_is_taken_back_and_never_shadows_an_acknowledged_one`
//! and `a_lost_take_back_is_sent_again` (src/sim).

use super::core::{store_error, Replicated};
use super::records::Records;
use crate::id::Id;
use crate::proto::{Peer, Record, Request, Response};
use crate::store::StoreError;
use std::time::Duration;

/// How long a take-back that a replica has not confirmed is retried.
pub const TAKE_BACK_PATIENCE: Duration = Duration::from_secs(60);
/// At most this many unconfirmed take-backs are kept; the oldest go first.
pub const TAKE_BACKS_PENDING_MAX: usize = 4096;

/// A `RevertRecordCopy` still to be confirmed by `peer`.
#[derive(Clone, Debug)]
pub struct PendingTakeBack {
    pub peer: Peer,
    pub request: Request,
    pub since: tokio::time::Instant,
}

/// Keeps the newest [`TAKE_BACKS_PENDING_MAX`] of `pending` (oldest first).
fn drop_oldest_take_backs(pending: &mut Vec<PendingTakeBack>) {
    let over = pending.len().saturating_sub(TAKE_BACKS_PENDING_MAX);
    pending.drain(..over);
}

impl Records {
    /// Undoes a record write that did not reach enough copies, with the record's lock
    /// held by the caller: here, and on every replica asked (those that did not answer
    /// too, with a shorter wait: a timed-out copy may have landed).
    pub(super) async fn take_back(
        &self,
        key: Id,
        version: u64,
        write: u64,
        previous: Option<(u64, Record)>,
        local_written: bool,
        sent: Replicated,
    ) {
        let core = &self.core;
        if local_written {
            if let Err(e) = self.restore(key, previous.clone()).await {
                tracing::warn!("could not take back failed write of {key} v{version}: {e}");
            }
        }
        let undo = || Request::RevertRecordCopy {
            key,
            version,
            write,
            previous: previous.clone(),
        };
        // Those that did not answer get a short wait only: this is a failed write's path
        // already, and a copy that did land there is retried below.
        let short = core.cfg.rpc_timeout.min(Duration::from_secs(1));
        let calls = sent
            .acked
            .iter()
            .map(|p| (p, core.cfg.rpc_timeout))
            .chain(sent.missed.iter().map(|p| (p, short)))
            .map(|(p, t)| async move { (p, core.net.call(&p.addr, undo(), t).await) });
        let mut unconfirmed = Vec::new();
        for (p, res) in futures::future::join_all(calls).await {
            if !matches!(res, Ok(Response::Ok)) {
                tracing::debug!(
                    "replica {} did not take back {key} v{version}: {res:?}",
                    p.addr
                );
                unconfirmed.push(p.clone());
            }
        }
        // One try is not enough under loss: a copy left in place may be spread by the
        // replica's repair once it becomes a holder.
        if !unconfirmed.is_empty() {
            let since = tokio::time::Instant::now();
            let mut pending = self.take_backs.lock().expect("take-backs lock");
            for peer in unconfirmed {
                pending.push(PendingTakeBack {
                    peer,
                    request: undo(),
                    since,
                });
            }
            drop_oldest_take_backs(&mut pending);
        }
    }

    /// Resends the take-backs that replicas have not confirmed, dropping those confirmed
    /// now or older than [`TAKE_BACK_PATIENCE`].
    pub async fn retry_take_backs(&self) {
        let core = &self.core;
        let now = tokio::time::Instant::now();
        let due: Vec<PendingTakeBack> = {
            let mut pending = self.take_backs.lock().expect("take-backs lock");
            pending.retain(|t| now.duration_since(t.since) < TAKE_BACK_PATIENCE);
            std::mem::take(&mut *pending)
        };
        if due.is_empty() {
            return;
        }
        let calls = due.into_iter().map(|t| async move {
            let res = core
                .net
                .call(&t.peer.addr, t.request.clone(), core.cfg.rpc_timeout)
                .await;
            (t, res)
        });
        let mut still = Vec::new();
        for (t, res) in futures::future::join_all(calls).await {
            match res {
                Ok(Response::Ok) => {}
                _ => still.push(t),
            }
        }
        if still.is_empty() {
            return;
        }
        let mut pending = self.take_backs.lock().expect("take-backs lock");
        still.append(&mut pending);
        *pending = still;
        drop_oldest_take_backs(&mut pending);
    }

    /// `RevertRecordCopy`: a replica's side of `Records::take_back`.
    pub async fn take_back_copy(
        &self,
        key: Id,
        version: u64,
        write: u64,
        previous: Option<(u64, Record)>,
    ) -> Response {
        let _guard = self.core.store.lock_record(&key).await;
        if self.core.store.record_version(&key) != version
            || self.writes.get(&key) != Some((version, write))
        {
            return Response::Ok;
        }
        self.writes.invalidate(&key);
        match self.restore(key, previous).await {
            Ok(()) => Response::Ok,
            Err(e) => store_error(e),
        }
    }

    /// Puts back the record a taken-back write replaced (none: removes the key). The
    /// caller holds the record's lock.
    async fn restore(&self, key: Id, previous: Option<(u64, Record)>) -> Result<(), StoreError> {
        match previous {
            Some((v, r)) => self.core.store.write_record(key, v, r).await,
            None => self.core.store.delete(&key),
        }
    }
}
