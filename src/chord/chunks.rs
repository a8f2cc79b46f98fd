//! Chunk writes and reads. A chunk is immutable and named by its hash, so it needs no
//! lock or version: the primary checks the hash, then writes its copy and its replicas'
//! at once, and acknowledges once min(R, live) copies are durable.

use super::core::{store_error, Core};
use crate::id::Id;
use crate::proto::{ErrorKind, Request, Response};
use crate::store;
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl Core {
    /// `PutChunk`: stored here, and with `replicate` (from a client) on the replicas too.
    pub async fn put_chunk(&self, key: Id, data: Bytes, replicate: bool) -> Response {
        if !replicate {
            return match self.store.put_chunk(key, data).await {
                Ok(_) => Response::Stored { copies: 1 },
                Err(e) => store_error(e),
            };
        }
        // A bad hash must not travel: check it before forwarding anything.
        let actual = Id::hash(&data);
        if actual != key {
            return store_error(store::StoreError::HashMismatch { key, actual });
        }
        let required = self.required_copies();
        // The local copy and the replicas' are written at once: one fsync latency, not two.
        let (local, more) = tokio::join!(
            self.store.put_checked_chunk(key, data.clone()),
            self.replicate_to(required - 1, || Request::PutChunk {
                key,
                data: data.clone(),
                replicate: false,
            })
        );
        if let Err(e) = local {
            return store_error(e);
        }
        let copies = 1 + more.acked.len();
        if copies < required {
            return Response::error(
                ErrorKind::Unavailable,
                format!("only {copies} of {required} copies durable"),
            );
        }
        self.note_short_write(&key, copies);
        Response::Stored {
            copies: copies as u32,
        }
    }

    /// `GetChunk`.
    pub async fn get_chunk(&self, key: Id) -> Response {
        self.counters.chunk_gets.fetch_add(1, Ordering::Relaxed);
        match self.store.get_chunk(key).await {
            Ok(Some(d)) => Response::Chunk(d),
            Ok(None) => Response::NotFound,
            Err(e) => store_error(e),
        }
    }

    /// `CheckChunk`: a client found this node's copy failing its hash. The copy is read
    /// from disk and hashed; a bad one is deleted, and repair brings a good one back.
    pub async fn check_chunk(&self, key: Id) -> Response {
        let held = self.store.meta(&key).is_some();
        match self.store.check_chunk(key).await {
            Ok(Some(_)) => Response::Ok,
            Ok(None) => {
                if held {
                    self.repair_wake.notify_one();
                }
                Response::NotFound
            }
            Err(e) => store_error(e),
        }
    }
}
