//! The clients of a simulated run: workers that put chunks and compare-and-set records
//! through the real client library, and the ledger of what the ring acknowledged.

use super::net::SimNet;
use crate::client::kv::Cas;
use crate::client::{Client, ClientConfig};
use crate::id::Id;
use crate::proto::{Inode, Kind, Record, Timespec};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Record keys the workers contend on.
pub const RECORD_KEYS: usize = 6;
/// Most operations one worker runs (a bound on top of the stop token).
const MAX_OPS_PER_WORKER: usize = 2_000;

/// What the ring acknowledged: only an `Ok` from the client counts.
#[derive(Default)]
pub struct Ledger {
    pub chunks: BTreeMap<Id, Bytes>,
    /// Per record key, every acknowledged (version, record).
    pub records: BTreeMap<Id, Vec<(u64, Record)>>,
    pub ops: u64,
    pub failed_ops: u64,
    /// Record operations as the client saw them, stamped with simulated time.
    pub log: Vec<String>,
}

impl Ledger {
    /// Highest acknowledged version of each record key, with its content.
    pub fn latest_records(&self) -> BTreeMap<Id, (u64, Record)> {
        self.records
            .iter()
            .filter_map(|(k, v)| {
                v.iter()
                    .max_by_key(|(ver, _)| *ver)
                    .map(|x| (*k, x.clone()))
            })
            .collect()
    }
}

pub fn record_key(n: usize) -> Id {
    Id::hash(format!("sim-record-{n}").as_bytes())
}

/// A record whose content names the write that made it (and no wall-clock time).
pub fn make_record(tag: u64) -> Record {
    let mut ino = Inode::new(Kind::File, 0o644, 0, 0, Id::ZERO, 4096);
    let t = Timespec {
        secs: tag as i64,
        nanos: 0,
    };
    ino.atime = t;
    ino.mtime = t;
    ino.ctime = t;
    ino.size = tag;
    Record::Inode(Box::new(ino))
}

/// Client settings for the simulation: short timeouts, as the ring's intervals are short.
pub fn client_config(ring: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(ring);
    cfg.rpc_timeout = Duration::from_millis(500);
    cfg.op_timeout = Duration::from_secs(3);
    cfg
}

/// One worker: a client of its own, random operations until `stop`.
pub async fn worker(
    n: usize,
    net: Arc<SimNet>,
    ring: String,
    mut rng: StdRng,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let client =
        match Client::with_transport(client_config(&ring), net.endpoint(&format!("client{n}")))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("sim worker {n}: no ring: {e}");
                return;
            }
        };
    for op in 0..MAX_OPS_PER_WORKER {
        if stop.is_cancelled() {
            return;
        }
        let pause = rng.random_range(20..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let ok = if rng.random_bool(0.6) {
            let mut data = vec![0u8; rng.random_range(1..=2048)];
            rng.fill_bytes(&mut data);
            let data = Bytes::from(data);
            match client.put_chunk(data.clone()).await {
                Ok(key) => {
                    ledger.lock().expect("ledger").chunks.insert(key, data);
                    true
                }
                Err(_) => false,
            }
        } else {
            let key = record_key(rng.random_range(0..RECORD_KEYS));
            let tag = ((n as u64) << 32) | op as u64;
            match client.get_record(&key).await {
                Ok(cur) => {
                    let expect = cur.map(|(v, _)| v).unwrap_or(0);
                    let rec = make_record(tag);
                    let primary = client
                        .view()
                        .successors_of(&key, 1)
                        .first()
                        .map(|p| p.addr.clone());
                    let res = client.cas_record(&key, expect, rec.clone()).await;
                    let ms = net.now_ms();
                    ledger.lock().expect("ledger").log.push(format!(
                        "{:>4}.{:03}s client{n} record {} read v{expect}, cas (view primary {primary:?}) -> {:?}",
                        ms / 1000,
                        ms % 1000,
                        key.short(),
                        res.as_ref().map_err(|e| e.to_string())
                    ));
                    match res {
                        Ok(Cas::Done(v)) => {
                            let mut l = ledger.lock().expect("ledger");
                            l.records.entry(key).or_default().push((v, rec));
                            true
                        }
                        Ok(Cas::Conflict(_)) => true,
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            }
        };
        let mut l = ledger.lock().expect("ledger");
        l.ops += 1;
        if !ok {
            l.failed_ops += 1;
        }
    }
}
