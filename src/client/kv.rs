//! Chunks and records on the ring, with replica fallback and retries bounded in time.

use super::retry::Retry;
use super::{Client, ClientError, Result};
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::{ErrorKind, Peer, Record, Request, Response};
use crate::ring::records::newest_copy;
use bytes::Bytes;
use std::sync::Arc;

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

    async fn call(&self, peer: &Peer, req: Request) -> Result<Response, RpcError> {
        self.net.call(&peer.addr, req, self.cfg.rpc_timeout).await
    }

    /// Stores a chunk and returns its key once min(R, live) copies are durable.
    pub async fn put_chunk(&self, data: Bytes) -> Result<Id> {
        let key = Id::hash(&data);
        let mut retry = Retry::new(self, format!("chunk {}", key.short()), "");
        loop {
            for peer in self.candidates(&key).into_iter().take(2) {
                let req = Request::PutChunk {
                    key,
                    data: data.clone(),
                    replicate: true,
                };
                match self.call(&peer, req).await {
                    Ok(Response::Stored { .. }) => return Ok(key),
                    Ok(other) => retry.unexpected(&peer, &other),
                    Err(e) => retry.failed(&peer, &e),
                }
            }
            retry.pause().await?;
        }
    }

    /// Fetches a chunk, verifying its hash; a bad or missing copy sends the read to the
    /// next replica.
    ///
    /// Concurrent reads of one chunk share one fetch (the mount's readahead and a read
    /// that catches up with it would otherwise fetch it twice).
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
        let mut retry = Retry::new(
            self,
            format!("chunk {}", key.short()),
            "not found on any replica",
        );
        for _ in 0..4u32 {
            let mut peers = self.candidates(key);
            if retry.attempt > 0 {
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
                        retry.last = format!("{} sent a copy that fails its hash", peer.addr);
                        // The node serves copies it checked once without hashing them
                        // again: tell it, so it checks the disk and repairs.
                        let _ = self.call(&peer, Request::CheckChunk { key: *key }).await;
                    }
                    Ok(Response::NotFound) => {}
                    Ok(other) => retry.unexpected(&peer, &other),
                    Err(e) => retry.failed(&peer, &e),
                }
            }
            retry.pause().await?;
        }
        Err(retry.unavailable())
    }

    /// Reads a record from its primary (which first catches up from its replicas), or,
    /// when the primary is down, the newest copy among the replicas.
    pub async fn get_record(&self, key: &Id) -> Result<Option<(u64, Record)>> {
        let mut retry = Retry::new(self, format!("record {}", key.short()), "");
        loop {
            let peers = self.candidates(key);
            let Some(primary) = peers.first().cloned() else {
                retry.last = "empty ring view".into();
                retry.pause().await?;
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
                Ok(other) => retry.unexpected(&primary, &other),
                Err(RpcError::Remote {
                    kind: ErrorKind::WrongNode,
                    message,
                    ..
                }) => retry.last = message,
                Err(e) if e.is_unreachable() => {
                    retry.failed(&primary, &e);
                    // Primary down: the replicas' copies decide, by the rule the
                    // primary itself keeps when it catches up (`newest_copy`: within the
                    // highest version, the body most copies hold). Pinned by
                    // `a_reader_of_replicas_gets_the_body_most_of_them_hold`.
                    let mut copies: Vec<(u64, Record)> = Vec::new();
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
                            copies.push((version, record));
                        }
                    }
                    if !copies.is_empty() {
                        return Ok(newest_copy(&copies, None));
                    }
                }
                Err(e) => retry.failed(&primary, &e),
            }
            retry.pause().await?;
        }
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
        let mut retry = Retry::new(self, format!("record {}", key.short()), "");
        // An earlier attempt may have been applied although its answer never came (the
        // primary died or timed out after writing).
        let mut maybe_applied = false;
        loop {
            let Some(primary) = self.candidates(key).first().cloned() else {
                retry.last = "empty ring view".into();
                retry.pause().await?;
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
                    // The retry met our own write (its first answer was lost): done, not a
                    // conflict, or a create fails with EEXIST on a name nobody else made
                    // (scripts/chaos.sh; docs/findings.md). That write may be on fewer than R nodes (its primary may have died
                    // before replicating), so it is written once more on top of itself,
                    // replicated as any write: same body, next version.
                    if maybe_applied && current == expect + 1 {
                        if let Ok(Some((v, held))) = self.get_record(key).await {
                            if v == current && held == record {
                                expect = current;
                                maybe_applied = false;
                                retry.again();
                                continue;
                            }
                        }
                    }
                    tracing::debug!(key = %key.short(), expect, current, attempt = retry.attempt, "cas conflict");
                    return Ok(Cas::Conflict(current));
                }
                Ok(other) => retry.unexpected(&primary, &other),
                Err(e) => {
                    // Refused before acting: the request was not applied.
                    let refused = matches!(&e, RpcError::Connect { .. } | RpcError::Auth { .. });
                    maybe_applied |= !refused;
                    retry.failed(&primary, &e);
                }
            }
            tracing::debug!(key = %key.short(), attempt = retry.attempt, "cas retry: {}", retry.last);
            retry.pause().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Transport;
    use crate::proto::NodeState;
    use crate::ring::testing::{peer, record as rec};
    use futures::future::BoxFuture;
    use std::time::Duration;

    /// Four nodes 10..40; the key's primary (10) is down; its replicas hold version 4,
    /// one (20, met first) with a failed write's body, two with the acknowledged one.
    struct Ring;

    impl Transport for Ring {
        fn call(
            &self,
            addr: &str,
            req: Request,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<Response, RpcError>> {
            let n: u8 = addr[1..].parse().expect("nN");
            let answer = match req {
                _ if n == 10 => Err(RpcError::Connect {
                    addr: addr.into(),
                    reason: "down".into(),
                }),
                Request::GetState => {
                    let next = |k: u8| peer((n / 10 + k - 1) % 4 * 10 + 10);
                    Ok(Response::State(NodeState {
                        me: peer(n),
                        predecessor: Some(next(3)),
                        successors: vec![next(1), next(2), next(3)],
                        replicas: 3,
                        lost: vec![],
                    }))
                }
                Request::GetRecord { .. } => Ok(Response::Record {
                    version: 4,
                    record: rec(if n == 20 { 9 } else { 7 }),
                }),
                other => Ok(Response::error(
                    ErrorKind::Storage,
                    format!("unexpected {other:?}"),
                )),
            };
            Box::pin(async move { answer })
        }
    }

    #[tokio::test]
    async fn a_reader_of_replicas_gets_the_body_most_of_them_hold() {
        let mut cfg = crate::client::ClientConfig::new("n20");
        cfg.op_timeout = Duration::from_secs(1);
        let client = Client::with_transport(cfg, Arc::new(Ring)).await.unwrap();
        // A key whose primary is 10: just after 40, wrapping.
        let mut key = peer(41).id;
        key.0[19] = 1;
        assert_eq!(client.view().successors_of(&key, 1)[0].addr, "n10");
        let got = client.get_record(&key).await.unwrap();
        assert_eq!(
            got,
            Some((4, rec(7))),
            "the acknowledged body, not the first met"
        );
    }
}
