//! Scrubbing: a slow walk over everything this node stores, re-reading each copy and
//! checking its hash, so that a copy gone bad on disk is found even if nobody reads it.
//! A bad copy is dropped by the store's verified read; repair then fetches a good one
//! from the other holders (it is woken at once).

use super::repair::Repair;
use crate::store::EntryKind;
use std::sync::atomic::Ordering;

/// Bytes verified per scrub step (one step follows each repair pass).
pub const SCRUB_BYTES_PER_STEP: u64 = 64 * 1024 * 1024;
/// Keys fetched from the index at a time.
const SCRUB_BATCH: usize = 256;

impl Repair {
    /// Verifies up to `budget` bytes of stored copies, resuming after the key where the
    /// previous step stopped. Returns how many bad copies it dropped.
    pub async fn scrub_step(&self, budget: u64) -> u64 {
        let core = &self.core;
        let mut spent = 0u64;
        let mut dropped = 0u64;
        let before = core.store.corrupt_found.load(Ordering::Relaxed);
        while spent < budget && !core.shutdown.is_cancelled() {
            let cursor = self.status.lock().expect("repair lock").scrub_cursor;
            let batch = core.store.keys_after(cursor, SCRUB_BATCH);
            if batch.is_empty() {
                self.update(|s| {
                    s.scrub_cursor = None;
                    s.scrub_passes += 1;
                });
                break;
            }
            for (key, meta) in batch {
                let ok = match meta.kind {
                    EntryKind::Chunk => core.store.check_chunk(key).await.is_ok(),
                    EntryKind::Record => core.store.get_record(key).await.is_ok(),
                };
                if !ok {
                    tracing::warn!("scrub: cannot read {}", key.short());
                }
                spent += meta.size;
                self.update(|s| {
                    s.scrub_cursor = Some(key);
                    s.scrubbed_keys += 1;
                    s.scrubbed_bytes += meta.size;
                });
                if spent >= budget {
                    break;
                }
            }
        }
        let found = core.store.corrupt_found.load(Ordering::Relaxed) - before;
        if found > 0 {
            tracing::warn!("scrub: dropped {found} bad copies; repair will restore them");
            dropped += found;
            core.repair_wake.notify_one();
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use crate::chord::{Node, NodeConfig};
    use crate::id::Id;
    use crate::net::TcpTransport;
    use crate::store::Store;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_copy_gone_bad_unread_is_found_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut keys = Vec::new();
        for i in 0..10u8 {
            let data = Bytes::from(vec![i; 1000]);
            let key = Id::hash(&data);
            store.put_chunk(key, data).await.unwrap();
            keys.push(key);
        }
        let bad = keys[3];
        let hex = bad.to_hex();
        let path = dir.path().join("chunks").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();

        let cfg = NodeConfig::new("127.0.0.1:1".into(), dir.path().to_path_buf());
        let node = Node::new(cfg, Id::hash(b"n"), store.clone(), TcpTransport::new());
        // A small budget: several steps to cover everything, resuming each time.
        let mut dropped = 0;
        for _ in 0..20 {
            dropped += node.repair.scrub_step(3000).await;
        }
        assert_eq!(dropped, 1);
        assert!(store.meta(&bad).is_none(), "the bad copy is gone");
        assert_eq!(store.keys().len(), 9, "the good copies stay");
        let st = node.repair.status();
        assert!(st.scrub_passes >= 1 && st.scrubbed_keys >= 10, "{st:?}");
    }
}
