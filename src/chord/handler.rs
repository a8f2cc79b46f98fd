//! The answer to every request: match it, refuse what this node's state forbids, and
//! hand it to the subsystem it belongs to.

use super::node::Node;
use crate::proto::{ErrorKind, Held, Request, Response, KEYS_MAX};
use crate::ring::Step;
use crate::store::EntryKind;
use futures::future::BoxFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Node {
    pub async fn dispatch(self: Arc<Self>, req: Request) -> Response {
        let core = &self.core;
        core.counters.requests.fetch_add(1, Ordering::Relaxed);
        if core.is_leaving() && refused_while_leaving(&req) {
            return Response::error(ErrorKind::ShuttingDown, "node is leaving");
        }
        match req {
            Request::Ping => Response::Pong { id: core.me.id },
            // A node still joining knows no ring but itself: its state and lookups would
            // lead others astray (its old neighbours would copy "I am alone", and its
            // join would then find no successor but itself).
            Request::GetState | Request::FindSuccessor { .. } if core.is_joining() => {
                Response::error(ErrorKind::Unavailable, "node is joining")
            }
            Request::GetState => Response::State(core.state()),
            Request::FindSuccessor { key, mut avoid } => {
                if core.is_leaving() {
                    // Answer as the ring will be once this node is gone.
                    avoid.push(core.me.id);
                }
                match core
                    .routing
                    .read()
                    .expect("routing lock")
                    .step(&key, &avoid)
                {
                    Step::Found { from, successors } => Response::Found { from, successors },
                    Step::Next(peer) => Response::Next { peer },
                }
            }
            Request::Notify { candidate } => {
                self.maintenance.notified(&candidate);
                Response::Ok
            }
            Request::Leave {
                peer,
                predecessor,
                successors,
                known,
            } => {
                self.maintenance
                    .neighbour_left(peer, predecessor, successors, known);
                Response::Ok
            }
            Request::PutChunk {
                key,
                data,
                replicate,
            } => {
                if core.is_joining() && replicate {
                    return Response::error(ErrorKind::Unavailable, "node is joining");
                }
                core.counters.chunk_puts.fetch_add(1, Ordering::Relaxed);
                // A writer's store: the chunk is live again, whatever gc freed lately.
                self.gc.forget_freed(&key);
                core.put_chunk(key, data, replicate).await
            }
            Request::GetChunk { key } => core.get_chunk(key).await,
            Request::CheckChunk { key } => core.check_chunk(key).await,
            Request::CasRecord {
                key,
                expect,
                record,
            } => self.records.cas(key, expect, record).await,
            Request::EditRecord { key, edit } => self.records.edit(key, edit).await,
            Request::LookupName { key, name } => self.records.lookup_name(key, &name).await,
            Request::PutRecordCopy {
                key,
                version,
                record,
                write,
            } => self.records.put_copy(key, version, record, write).await,
            Request::RevertRecordCopy {
                key,
                version,
                write,
                previous,
            } => {
                self.records
                    .take_back_copy(key, version, write, previous)
                    .await
            }
            Request::GetRecord { key, pull } => self.records.get(key, pull).await,
            Request::HaveKeys { keys } => Response::Held(self.repair.held(&keys)),
            Request::Stats => Response::Stats(core.stats()),
            Request::ListKeys { after, limit } => {
                let limit = (limit as usize).min(KEYS_MAX);
                let keys = core.store.keys_after(after, limit);
                Response::Keys(
                    keys.into_iter()
                        .map(|(key, m)| crate::proto::KeyInfo {
                            key,
                            size: m.size,
                            version: m.version,
                            chunk: m.kind == EntryKind::Chunk,
                        })
                        .collect(),
                )
            }
            Request::PutChunkCopy { key, data, age_ms } => {
                core.counters.chunk_puts.fetch_add(1, Ordering::Relaxed);
                if self.gc.recently_freed(&key) {
                    return Response::error(
                        ErrorKind::Collected,
                        format!("chunk {} was just garbage-collected here", key.short()),
                    );
                }
                match core
                    .store
                    .put_chunk_copy(key, data, Duration::from_millis(age_ms))
                    .await
                {
                    Ok(_) => Response::Stored { copies: 1 },
                    Err(e) => super::core::store_error(e),
                }
            }
            Request::ListChunkRefs { after, limit } => {
                match self.gc.chunk_refs_page(after, limit).await {
                    Ok((chunks, next)) => Response::ChunkRefs { chunks, next },
                    Err(e) => Response::error(ErrorKind::Storage, e),
                }
            }
            Request::DropChunks { keys, grace_ms } => {
                let (chunks, bytes) = self
                    .gc
                    .drop_chunks(&keys, Duration::from_millis(grace_ms))
                    .await;
                Response::Dropped { chunks, bytes }
            }
            Request::CollectGarbage => self.gc.collect_garbage().await,
            Request::TouchChunks { keys } => {
                let held = core.store.touch_chunks(keys.clone()).await;
                for (key, kept) in keys.iter().zip(&held) {
                    if *kept {
                        // As for a writer's store: the chunk is live again.
                        self.gc.forget_freed(key);
                    }
                }
                Response::Held(
                    held.into_iter()
                        .map(|h| if h { Held::Kept(0) } else { Held::No })
                        .collect(),
                )
            }
            Request::SetLocks {
                key,
                session,
                owner,
                seq,
                held,
                locks,
            } => {
                self.locks
                    .set(&self.records, key, session, owner, seq, held, locks)
                    .await
            }
            Request::TestLock {
                key,
                session,
                owner,
                range,
            } => self.locks.test(key, session, owner, range),
            Request::WaitLock {
                key,
                generation,
                wait_ms,
            } => self.locks.wait(key, generation, wait_ms).await,
            Request::RenewLease { session, files } => {
                self.locks.renew(&self.records, session, files).await
            }
        }
    }
}

/// What a leaving node no longer answers. It still serves reads and lookups (the latter
/// as if it were gone), but claims nothing: it does not answer as alive (Ping, GetState),
/// is not adopted (Notify), is never counted as a holder (HaveKeys) and takes no new
/// copies or writes. Otherwise a peer could re-adopt it, or drop its own copy of a key
/// because the leaver "has" it, moments before the leaver drops it too. Its lock table
/// goes with it, so lock requests go to the successor (which reclaims them in its grace).
fn refused_while_leaving(req: &Request) -> bool {
    matches!(
        req,
        Request::Ping
            | Request::GetState
            | Request::Notify { .. }
            | Request::HaveKeys { .. }
            | Request::PutChunk { .. }
            | Request::PutChunkCopy { .. }
            | Request::PutRecordCopy { .. }
            | Request::RevertRecordCopy { .. }
            | Request::CasRecord { .. }
            | Request::EditRecord { .. }
            | Request::DropChunks { .. }
            | Request::CollectGarbage
            | Request::TouchChunks { .. }
            | Request::SetLocks { .. }
            | Request::TestLock { .. }
            | Request::WaitLock { .. }
            | Request::RenewLease { .. }
    )
}

impl crate::net::Handler for Node {
    fn handle(self: Arc<Self>, req: Request) -> BoxFuture<'static, Response> {
        use tracing::Instrument;
        let span = self.core.span.clone();
        Box::pin(self.dispatch(req).instrument(span))
    }

    fn bad_request(&self) {
        self.core
            .counters
            .bad_requests
            .fetch_add(1, Ordering::Relaxed);
    }
}
