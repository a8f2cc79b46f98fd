//! Record writes at the key's primary, and a replica's side of them.
//!
//! A record changes only by compare-and-set on its version at the key's primary, which
//! holds the key's lock across its own write and its replicas' copies: no other write
//! of that record can send them a different body under the same version. The write is
//! acknowledged once min(R, live) copies are durable; one that falls short is taken back
//! everywhere it may have landed (`take_back.rs`). Before acknowledging, the primary
//! checks with its neighbours that the key is still its to write (`primacy.rs`).

use super::core::{store_error, Core};
use super::take_back::PendingTakeBack;
use crate::id::Id;
use crate::proto::{Edit, EditRefusal, ErrorKind, Kind, Record, Request, Response};
use crate::ring::records::newest_copy;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The record-write subsystem: the protocol's state over the shared core.
pub struct Records {
    pub core: Arc<Core>,
    /// Record copies stored here lately for a primary's write: key -> (version, write
    /// id), so a `RevertRecordCopy` undoes that write's copy and no other.
    pub writes: moka::sync::Cache<Id, (u64, u64)>,
    /// Take-backs of failed record writes that a replica has not confirmed yet, with
    /// the time they were first sent: resent before each repair pass until confirmed
    /// or their patience runs out (see `retry_take_backs`).
    // Never held across an await: taken out, then put back.
    pub take_backs: Mutex<Vec<PendingTakeBack>>,
}

/// What a replica did with a record copy (see [`Records::put_copy`]).
enum CopyFate {
    /// Newer than the copy held: stored.
    Stored,
    /// The very copy held already.
    Held,
    /// Another copy of that version, or a later version, is held (its version).
    Other(u64),
}

impl Records {
    pub fn new(core: Arc<Core>) -> Records {
        Records {
            core,
            writes: moka::sync::Cache::builder()
                .max_capacity(65_536)
                .time_to_live(Duration::from_secs(600))
                .build(),
            take_backs: Mutex::new(Vec::new()),
        }
    }

    /// The newest copy of a record among this node and its replicas, stored here if
    /// newer (the one rule: [`newest_copy`]).
    pub async fn pull(&self, key: Id) -> Option<(u64, Record)> {
        let core = &self.core;
        let local = core.store.get_record_cached(key).await.ok().flatten();
        let targets = core.replica_targets();
        let want = core.cfg.replicas.saturating_sub(1).min(targets.len());
        let calls = targets[..want]
            .iter()
            .map(|p| core.call(p, Request::GetRecord { key, pull: false }));
        let mut copies: Vec<(u64, Record)> = local.iter().cloned().collect();
        for res in futures::future::join_all(calls).await {
            if let Ok(Response::Record { version, record }) = res {
                copies.push((version, record));
            }
        }
        let best = newest_copy(&copies, local.as_ref())?;
        if local.as_ref() != Some(&best) {
            let (v, rec) = best.clone();
            let _guard = core.store.lock_record(&key).await;
            let current = core.store.get_record(key).await.ok().flatten();
            // Unchanged since read, or older: replace it.
            let replace = match &current {
                None => true,
                Some((cv, _)) if *cv < v => true,
                Some(c) => c.0 == v && Some(c) == local.as_ref(),
            };
            if replace {
                let _ = core.store.write_record(key, v, rec).await;
            }
        }
        Some(best)
    }

    /// `GetRecord`: with `pull`, as the primary (caught up from its replicas first).
    pub async fn get(&self, key: Id, pull: bool) -> Response {
        let core = &self.core;
        if pull && !core.is_primary(&key) {
            // Not an authoritative "absent": the caller's view is stale.
            return Response::error(
                ErrorKind::WrongNode,
                format!("{} is not the primary of {key}", core.me.addr),
            );
        }
        let rec = if pull {
            self.pull(key).await
        } else {
            match core.store.get_record_cached(key).await {
                Ok(r) => r,
                Err(e) => return store_error(e),
            }
        };
        match rec {
            Some((version, record)) => Response::Record { version, record },
            None => Response::NotFound,
        }
    }

    /// `CasRecord`.
    pub async fn cas(&self, key: Id, expect: u64, record: Record) -> Response {
        let written = self
            .write_as_primary(key, |current, _| {
                if current != expect {
                    // Behind or ahead of the client: either way it reads again (a read
                    // through the primary catches the primary up from its replicas first).
                    return Err(Box::new(Response::Conflict { current }));
                }
                Ok((record, ()))
            })
            .await;
        match written {
            Ok((_, copies, ())) => Response::Stored { copies },
            Err(answer) => answer,
        }
    }

    /// One name of a directory as held here (see `Request::LookupName`).
    pub async fn lookup_name(&self, key: Id, name: &str) -> Response {
        let store = &self.core.store;
        let held = match store.recent_record(&key) {
            Some(r) => r,
            None => match store.get_record(key).await {
                Ok(Some(r)) => Arc::new(r),
                Ok(None) => return Response::NotFound,
                Err(e) => return store_error(e),
            },
        };
        match &held.1 {
            Record::Inode(dir) if dir.kind == Kind::Dir => Response::Entry {
                version: held.0,
                entry: dir.entries.get(name).copied(),
            },
            Record::Inode(_) => Response::EditRefused(EditRefusal::NotDir),
            Record::Deleted => Response::NotFound,
        }
    }

    /// Applies a directory edit to the version held here, as a compare-and-set made by
    /// the primary itself (see [`Edit`]).
    pub async fn edit(&self, key: Id, edit: Edit) -> Response {
        let written = self
            .write_as_primary(key, |_, previous| {
                edit.apply(previous.map(|(_, r)| r))
                    .map_err(|why| Box::new(Response::EditRefused(why)))
            })
            .await;
        match written {
            Ok((version, _, removed)) => Response::Edited { version, removed },
            Err(answer) => answer,
        }
    }

    /// A record write at its primary: under the key's lock, `decide` sees the version
    /// held (0: none) and the record, and returns the next version's body (or the
    /// answer to give instead, boxed); the body goes to this node and its replicas at
    /// once and is acknowledged when min(R, live) copies are durable. Returns the
    /// version written, the copies made and what `decide` returned with the body.
    async fn write_as_primary<T>(
        &self,
        key: Id,
        decide: impl FnOnce(u64, Option<&(u64, Record)>) -> Result<(Record, T), Box<Response>>,
    ) -> Result<(u64, u32, T), Response> {
        let core = &self.core;
        core.counters.record_puts.fetch_add(1, Ordering::Relaxed);
        if !core.is_primary(&key) {
            return Err(Response::error(
                ErrorKind::WrongNode,
                format!("{} is not the primary of {key}", core.me.addr),
            ));
        }
        // Refuse before writing anything when R copies are out of reach (this node is
        // cut off from its ring): a write that fails after its local step stays behind
        // and, once the ring heals, could shadow an acknowledged write of the same
        // version made on the other side. Pinned by
        // `the_small_side_of_a_long_partition_keeps_refusing_writes` (tests/netns.rs).
        let required = core.required_copies();
        let reachable = 1 + core.replica_targets().len();
        if reachable < required {
            return Err(Response::error(
                ErrorKind::Unavailable,
                format!("only {reachable} of {required} copies reachable"),
            ));
        }
        // The stripe stays locked until the replicas have answered: no other write to
        // this record can send them a different body under the same version.
        let _guard = core.store.lock_record(&key).await;
        let current = core.store.record_version(&key);
        // Shared, not copied: it is only needed again if the write is taken back.
        let held = match core.store.get_record_shared(key).await {
            Ok(p) => p,
            Err(e) => return Err(store_error(e)),
        };
        let (record, out) = decide(current, held.as_deref()).map_err(|answer| *answer)?;
        let previous = || held.as_deref().cloned();
        let version = current + 1;
        let new = Arc::new((version, record));
        let required = core.required_copies();
        let write = rand::random::<u64>() | 1;
        // One round: the local copy, the replicas' copies and the check that this node
        // is still the primary go out at once (one fsync latency, not two). A write that
        // turns out not to be this node's to make is taken back like any write that
        // missed its copies. A replica holding a newer version, or another body of this
        // one, answers Conflict (see `put_copy`): how a primary that is behind its
        // replicas (back from a restart, or new to the range) learns it.
        let (local, sent, doubt) = tokio::join!(
            core.store.write_record_shared(key, new.clone()),
            core.replicate_to(required - 1, || Request::PutRecordCopy {
                key,
                version,
                record: new.1.clone(),
                write,
            }),
            self.primacy_doubt(&key)
        );
        if let Some(why) = doubt {
            self.take_back(key, version, write, previous(), local.is_ok(), sent)
                .await;
            return Err(Response::error(
                ErrorKind::WrongNode,
                format!("{} is not the primary of {key} now: {why}", core.me.addr),
            ));
        }
        let copies = usize::from(local.is_ok()) + sent.acked.len();
        if let Some((current, holder)) = sent.newer.clone() {
            // A replica is ahead of this primary: the version read here was stale. Take
            // the write back, learn the newer record, and let the client read again.
            self.take_back(key, version, write, previous(), local.is_ok(), sent)
                .await;
            if let Ok(Response::Record {
                version: v,
                record: r,
            }) = core
                .call(&holder, Request::GetRecord { key, pull: false })
                .await
            {
                if v > core.store.record_version(&key) {
                    if let Err(e) = core.store.write_record(key, v, r).await {
                        return Err(store_error(e));
                    }
                }
            }
            return Err(Response::Conflict {
                current: current.max(core.store.record_version(&key)),
            });
        }
        if copies < required {
            // Not acknowledged: take the write back everywhere it may have landed. Left
            // in place, this version could later meet an acknowledged write of the same
            // number made elsewhere and win over it as the holder's own copy
            // (tests/netns.rs).
            self.take_back(key, version, write, previous(), local.is_ok(), sent)
                .await;
            return Err(match local {
                Err(e) => store_error(e),
                Ok(()) => Response::error(
                    ErrorKind::Unavailable,
                    format!("only {copies} of {required} copies durable"),
                ),
            });
        }
        core.note_short_write(&key, copies);
        Ok((version, copies as u32, out))
    }

    /// `PutRecordCopy`: a replica stores a primary's (or repair's, `write` 0) copy when
    /// it is newer than the one held. Any other body of that version, or a later
    /// version, is answered `Conflict`, so the primary does not count it towards an
    /// acknowledgement (sim: a restarted primary with a stale version had its write
    /// "replicated" to replicas holding another write of that version).
    pub async fn put_copy(&self, key: Id, version: u64, record: Record, write: u64) -> Response {
        let store = &self.core.store;
        let _guard = store.lock_record(&key).await;
        let current = store.record_version(&key);
        let stored = if version > current {
            store
                .write_record(key, version, record)
                .await
                .map(|()| CopyFate::Stored)
        } else {
            match store.get_record_shared(key).await {
                Ok(Some(held)) if held.0 == version && held.1 == record => Ok(CopyFate::Held),
                _ => Ok(CopyFate::Other(current)),
            }
        };
        // The copy held now belongs to this write (a retry that meets its earlier
        // attempt's copy adopts it), or to none (repair).
        let adopt = || {
            if write != 0 {
                self.writes.insert(key, (version, write));
            } else {
                self.writes.invalidate(&key);
            }
        };
        match stored {
            Ok(CopyFate::Stored) | Ok(CopyFate::Held) => {
                adopt();
                Response::Ok
            }
            Ok(CopyFate::Other(current)) => Response::Conflict { current },
            Err(e) => store_error(e),
        }
    }
}
