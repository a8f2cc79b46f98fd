//! Chunks and records on the ring, with replica fallback and retries bounded in time.

use super::{Client, ClientError, Result};
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::{ErrorKind, Peer, Record, Request, Response};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock, so op timeouts follow paused (simulated) time in tests.
use tokio::time::Instant;

/// Outcome of a compare-and-set.
#[derive(Debug, PartialEq)]
pub enum Cas {
    /// Written as this version.
    Done(u64),
    /// Someone else wrote first; this version is current.
    Conflict(u64),
}

impl Client {
    /// Where to try `key`: its R holders first, then the nodes after them (which held it
    /// before a join, or hold it after a failure), then a Chord lookup's answer.
    fn candidates(&self, key: &Id) -> Vec<Peer> {
        let view = self.view.get();
        view.successors_of(key, view.replicas + 2)
    }

    async fn backoff(&self, started: Instant, attempt: u32, what: &str, last: &str) -> Result<()> {
        if started.elapsed() >= self.cfg.op_timeout {
            return Err(ClientError::Unavailable {
                what: what.to_string(),
                last: last.to_string(),
            });
        }
        let ms = (20u64 << attempt.min(6)).min(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        // Membership may have changed: look again before the next try.
        let _ = self.refresh_view().await;
        Ok(())
    }

    async fn call(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        self.net.call(&peer.addr, req, self.cfg.rpc_timeout).await
    }

    /// Stores a chunk and returns its key once min(R, live) copies are durable.
    pub async fn put_chunk(&self, data: Bytes) -> Result<Id> {
        let key = Id::hash(&data);
        let started = Instant::now();
        let mut last = String::new();
        for attempt in 0.. {
            for peer in self.candidates(&key).into_iter().take(2) {
                let req = Request::PutChunk {
                    key,
                    data: data.clone(),
                    replicate: true,
                };
                match self.call(&peer, req).await {
                    Ok(Response::Stored { .. }) => return Ok(key),
                    Ok(other) => last = format!("{} answered {other:?}", peer.addr),
                    Err(e) => {
                        if e.is_unreachable() {
                            self.view.forget(&peer.id);
                        }
                        last = e.to_string();
                    }
                }
            }
            self.backoff(started, attempt, &format!("chunk {}", key.short()), &last)
                .await?;
        }
        unreachable!("the retry loop returns")
    }

    /// Fetches a chunk, verifying its hash; a bad or missing copy sends the read to the
    /// next replica.
    ///
    /// Concurrent reads of one chunk share one fetch: the mount's readahead and a read
    /// that catches up with it used to fetch the same chunk twice.
    pub async fn get_chunk(&self, key: &Id) -> Result<Bytes> {
        self.cache
            .try_get_with(*key, self.fetch_chunk(key))
            .await
            .map_err(|e| {
                Arc::try_unwrap(e).unwrap_or_else(|shared| ClientError::Unavailable {
                    what: format!("chunk {}", key.short()),
                    last: shared.to_string(),
                })
            })
    }

    /// One fetch of a chunk from its holders, for [`Client::get_chunk`].
    async fn fetch_chunk(&self, key: &Id) -> Result<Bytes> {
        let started = Instant::now();
        let mut last = String::from("not found on any replica");
        for attempt in 0..4u32 {
            let mut peers = self.candidates(key);
            if attempt > 0 {
                if let Ok(found) = self.lookup(key).await {
                    for p in found {
                        if !peers.iter().any(|q| q.id == p.id) {
                            peers.push(p);
                        }
                    }
                }
            }
            for peer in peers {
                match self.call(&peer, Request::GetChunk { key: *key }).await {
                    Ok(Response::Chunk(data)) => {
                        if Id::hash(&data) == *key {
                            return Ok(data);
                        }
                        last = format!("{} sent a copy that fails its hash", peer.addr);
                        // The node serves copies it checked once without hashing them
                        // again: tell it, so it checks the disk and repairs.
                        let _ = self.call(&peer, Request::CheckChunk { key: *key }).await;
                    }
                    Ok(Response::NotFound) => {}
                    Ok(other) => last = format!("{} answered {other:?}", peer.addr),
                    Err(e) => {
                        if e.is_unreachable() {
                            self.view.forget(&peer.id);
                        }
                        last = e.to_string();
                    }
                }
            }
            self.backoff(started, attempt, &format!("chunk {}", key.short()), &last)
                .await?;
        }
        Err(ClientError::Unavailable {
            what: format!("chunk {}", key.short()),
            last,
        })
    }

    /// Reads a record from its primary (which first catches up from its replicas), or,
    /// when the primary is down, the newest copy among the replicas.
    pub async fn get_record(&self, key: &Id) -> Result<Option<(u64, Record)>> {
        let started = Instant::now();
        let mut last: String;
        for attempt in 0.. {
            let peers = self.candidates(key);
            let Some(primary) = peers.first().cloned() else {
                self.backoff(started, attempt, "record", "empty ring view")
                    .await?;
                continue;
            };
            match self
                .call(
                    &primary,
                    Request::GetRecord {
                        key: *key,
                        pull: true,
                    },
                )
                .await
            {
                Ok(Response::Record { version, record }) => return Ok(Some((version, record))),
                Ok(Response::NotFound) => return Ok(None),
                Ok(other) => last = format!("{} answered {other:?}", primary.addr),
                Err(RpcError::Remote {
                    kind: ErrorKind::WrongNode,
                    message,
                    ..
                }) => last = message,
                Err(e) if e.is_unreachable() => {
                    self.view.forget(&primary.id);
                    last = e.to_string();
                    // Primary down: the newest replica copy is the record.
                    let mut best: Option<(u64, Record)> = None;
                    let mut answered = 0;
                    for p in peers.iter().skip(1) {
                        if let Ok(Response::Record { version, record }) = self
                            .call(
                                p,
                                Request::GetRecord {
                                    key: *key,
                                    pull: false,
                                },
                            )
                            .await
                        {
                            answered += 1;
                            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                                best = Some((version, record));
                            }
                        }
                    }
                    if answered > 0 {
                        return Ok(best);
                    }
                }
                Err(e) => last = e.to_string(),
            }
            self.backoff(started, attempt, &format!("record {}", key.short()), &last)
                .await?;
        }
        unreachable!("the retry loop returns")
    }

    /// A record as the key's primary holds it, without its catch-up from the replicas:
    /// one read on one node, for checks that a later compare-and-set confirms (the
    /// primary holds the newest version unless it just took over the key). Anything
    /// but an answer from the primary falls back to [`Client::get_record`].
    pub async fn peek_record(&self, key: &Id) -> Result<Option<(u64, Record)>> {
        if let Some(primary) = self.candidates(key).first() {
            let req = Request::GetRecord {
                key: *key,
                pull: false,
            };
            if let Ok(Response::Record { version, record }) = self.call(primary, req).await {
                return Ok(Some((version, record)));
            }
        }
        self.get_record(key).await
    }

    /// Compare-and-set at the key's primary: `expect` is the version read (0: absent).
    pub async fn cas_record(&self, key: &Id, expect: u64, record: Record) -> Result<Cas> {
        let mut expect = expect;
        let started = Instant::now();
        let mut last: String;
        // An earlier attempt may have been applied although its answer never came (the
        // primary died or timed out after writing).
        let mut maybe_applied = false;
        for attempt in 0.. {
            let Some(primary) = self.candidates(key).first().cloned() else {
                self.backoff(started, attempt, "record", "empty ring view")
                    .await?;
                continue;
            };
            let req = Request::CasRecord {
                key: *key,
                expect,
                record: record.clone(),
            };
            match self.call(&primary, req).await {
                Ok(Response::Stored { .. }) => return Ok(Cas::Done(expect + 1)),
                Ok(Response::Conflict { current }) => {
                    // The retry met our own write: done, not a conflict (found by
                    // scripts/chaos.sh: a create whose first answer was lost failed with
                    // EEXIST on a name nobody else had made).
                    // That write may be on fewer than R nodes (its primary may have died
                    // before replicating), so it is written once more on top of itself,
                    // replicated as any write: same body, next version.
                    if maybe_applied && current == expect + 1 {
                        if let Ok(Some((v, held))) = self.get_record(key).await {
                            if v == current && held == record {
                                expect = current;
                                maybe_applied = false;
                                continue;
                            }
                        }
                    }
                    tracing::debug!(key = %key.short(), expect, current, attempt, "cas conflict");
                    return Ok(Cas::Conflict(current));
                }
                Ok(other) => last = format!("{} answered {other:?}", primary.addr),
                Err(e) => {
                    // Refused before acting: the request was not applied.
                    let refused = matches!(
                        &e,
                        crate::net::RpcError::Connect { .. } | crate::net::RpcError::Auth { .. }
                    );
                    maybe_applied |= !refused;
                    if e.is_unreachable() {
                        self.view.forget(&primary.id);
                    }
                    last = e.to_string();
                }
            }
            tracing::debug!(key = %key.short(), attempt, "cas retry: {last}");
            self.backoff(started, attempt, &format!("record {}", key.short()), &last)
                .await?;
        }
        unreachable!("the retry loop returns")
    }
}
