//! Keeping chunks that a record is about to name: the client's half of a server-side
//! copy (the mount's `copy_file_range`), which shares chunks between files instead of
//! moving their bytes.
//!
//! Garbage collection may delete a chunk that no record names and that was last stored
//! longer than its grace ago (`src/chord/gc.rs`). A copy names, in the new record,
//! chunks its writer did not store: the source's. Were the source removed while a mark
//! runs (the mark read the copy's record before the copy, the source's after the
//! removal), those chunks would look unreferenced and old. So before the record is
//! written, each chunk is touched on its holders (`TouchChunks`: its age refreshed,
//! under the lock a delete takes), and a chunk no holder confirms is fetched and stored
//! again, as any writer would. The invariant of `gc.rs` then holds for copies too: every
//! chunk a new record names was stored, or touched, by its writer within the grace.
//! Pinned by `a_touched_chunk_outlives_its_only_record` (tests/gc.rs).

use super::{Client, Result};
use crate::id::Id;
use crate::proto::{Held, Request, Response, KEYS_MAX};
use std::collections::{BTreeMap, HashSet};

impl Client {
    /// Touches `keys` on their holders in this client's view; returns the keys that no
    /// holder confirmed it holds (absent, unreachable, or a node that does not know the
    /// request). Holes (`Id::ZERO`) are never asked about.
    pub async fn touch_chunks(&self, keys: &[Id]) -> Vec<Id> {
        let view = self.view.get();
        let mut by_peer: BTreeMap<String, Vec<Id>> = BTreeMap::new();
        let wanted: Vec<Id> = {
            let mut seen = HashSet::new();
            keys.iter()
                .copied()
                .filter(|k| *k != Id::ZERO && seen.insert(*k))
                .collect()
        };
        for key in &wanted {
            for peer in view.successors_of(key, view.replicas.max(1)) {
                by_peer.entry(peer.addr).or_default().push(*key);
            }
        }
        let calls = by_peer.into_iter().flat_map(|(addr, keys)| {
            keys.chunks(KEYS_MAX)
                .map(|batch| (addr.clone(), batch.to_vec()))
                .collect::<Vec<_>>()
        });
        let answers = futures::future::join_all(calls.map(|(addr, keys)| async move {
            let req = Request::TouchChunks { keys: keys.clone() };
            let got = self.net.call(&addr, req, self.cfg.rpc_timeout).await;
            (keys, got)
        }))
        .await;
        let mut confirmed: HashSet<Id> = HashSet::new();
        for (keys, got) in answers {
            match got {
                Ok(Response::Held(held)) if held.len() == keys.len() => {
                    for (k, h) in keys.iter().zip(held) {
                        if matches!(h, Held::Kept(_)) {
                            confirmed.insert(*k);
                        }
                    }
                }
                Ok(other) => tracing::debug!("touch of {} chunks: {other:?}", keys.len()),
                Err(e) => tracing::debug!("touch of {} chunks: {e}", keys.len()),
            }
        }
        wanted
            .into_iter()
            .filter(|k| !confirmed.contains(k))
            .collect()
    }

    /// Makes sure garbage collection keeps `keys` until a record written within its
    /// grace names them: touched where they are held, fetched and stored again where no
    /// holder confirms them. Fails only when a chunk can be neither (then no copy of it
    /// is readable either).
    pub async fn keep_chunks(&self, keys: &[Id]) -> Result<()> {
        for key in self.touch_chunks(keys).await {
            let data = self.get_chunk(&key).await?;
            self.put_chunk(data).await?;
        }
        Ok(())
    }
}
