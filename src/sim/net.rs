//! The simulated network: a [`Transport`] that hands a request to the target node's
//! handler in-process, after a seeded delay, unless the message is lost, the target is
//! down, or a partition separates the two ends. Such a call never answers, so it times
//! out after the caller's timeout, in simulated time.
//!
//! Every node (and the client) gets its own [`SimEndpoint`], so the network knows who
//! sends each message. Each request is served in its own task that dies with the target
//! node's incarnation (its kill token), as a process's threads die with it.

use crate::net::{Handler, RpcError, Transport};
use crate::proto::{ErrorKind, Request, Response};
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Message counters, by outcome and by request kind.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
    pub to_dead: u64,
    pub replies_lost: u64,
    pub timeouts: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

/// How messages travel right now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weather {
    /// Delay of each direction, drawn uniformly from this range (ms).
    pub delay_ms: (u64, u64),
    /// Chance that a request, or its reply, is lost.
    pub loss: f64,
}

impl Weather {
    pub const CALM: Weather = Weather {
        delay_ms: (1, 3),
        loss: 0.0,
    };
}

struct Target {
    handler: Arc<dyn Handler>,
    kill: CancellationToken,
}

struct State {
    rng: StdRng,
    weather: Weather,
    targets: BTreeMap<String, Target>,
    /// Partition: the group of each address; addresses in different groups cannot talk.
    /// Unlisted addresses (the client) reach everyone.
    groups: BTreeMap<String, u32>,
    stats: NetStats,
    /// FNV-1a over every message's fate, for the replay check.
    hash: u64,
    /// Requests a test wants lost: (kind, from, to, how many more).
    doomed: Vec<(&'static str, String, String, u32)>,
    /// How many requests those rules lost: (kind, from, to) -> count.
    lost_on_purpose: BTreeMap<(String, String, String), u32>,
}

// Never held across an await: every access is a short decision or update.
pub struct SimNet {
    state: Mutex<State>,
    t0: Instant,
    /// Hex prefix of a key whose messages are printed (`CHORDFS_SIM_WATCH`), to debug a
    /// failing seed.
    watch: Option<String>,
}

/// The key a request is about, if any, and a short description of it.
fn about(req: &Request) -> Option<(Vec<crate::id::Id>, String)> {
    match req {
        Request::PutChunk { key, replicate, .. } => {
            Some((vec![*key], format!("PutChunk replicate={replicate}")))
        }
        Request::GetChunk { key } => Some((vec![*key], "GetChunk".into())),
        Request::PutChunkCopy { key, .. } => Some((vec![*key], "PutChunkCopy".into())),
        Request::CasRecord { key, expect, .. } => {
            Some((vec![*key], format!("CasRecord expect={expect}")))
        }
        Request::LookupName { key, name } => Some((vec![*key], format!("LookupName {name}"))),
        Request::EditRecord { key, edit } => {
            Some((vec![*key], format!("EditRecord {}", edit.name())))
        }
        Request::PutRecordCopy { key, version, .. } => {
            Some((vec![*key], format!("PutRecordCopy v{version}")))
        }
        Request::RevertRecordCopy { key, version, .. } => {
            Some((vec![*key], format!("RevertRecordCopy v{version}")))
        }
        Request::GetRecord { key, pull } => Some((vec![*key], format!("GetRecord pull={pull}"))),
        Request::HaveKeys { keys } => Some((keys.clone(), format!("HaveKeys ({})", keys.len()))),
        Request::FindSuccessor { key, .. } => Some((vec![*key], "FindSuccessor".into())),
        _ => None,
    }
}

fn describe(resp: &Response) -> String {
    match resp {
        Response::Chunk(b) => format!("Chunk ({} bytes)", b.len()),
        Response::Record { version, .. } => format!("Record v{version}"),
        Response::Held(v) => format!("Held {v:?}"),
        Response::Found { successors, .. } => format!(
            "Found {:?}",
            successors.iter().map(|p| &p.addr).collect::<Vec<_>>()
        ),
        Response::Next { peer } => format!("Next {}", peer.addr),
        other => format!("{other:?}"),
    }
}

/// One sender's handle on the network.
pub struct SimEndpoint {
    net: Arc<SimNet>,
    from: String,
}

pub fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    let mut h = hash;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

pub fn kind_of(req: &Request) -> &'static str {
    match req {
        Request::Ping => "Ping",
        Request::GetState => "GetState",
        Request::FindSuccessor { .. } => "FindSuccessor",
        Request::Notify { .. } => "Notify",
        Request::Leave { .. } => "Leave",
        Request::PutChunk { .. } => "PutChunk",
        Request::GetChunk { .. } => "GetChunk",
        Request::CheckChunk { .. } => "CheckChunk",
        Request::CasRecord { .. } => "CasRecord",
        Request::EditRecord { .. } => "EditRecord",
        Request::LookupName { .. } => "LookupName",
        Request::PutRecordCopy { .. } => "PutRecordCopy",
        Request::RevertRecordCopy { .. } => "RevertRecordCopy",
        Request::GetRecord { .. } => "GetRecord",
        Request::HaveKeys { .. } => "HaveKeys",
        Request::Stats => "Stats",
        Request::ListKeys { .. } => "ListKeys",
        Request::PutChunkCopy { .. } => "PutChunkCopy",
        Request::ListChunkRefs { .. } => "ListChunkRefs",
        Request::DropChunks { .. } => "DropChunks",
        Request::CollectGarbage => "CollectGarbage",
        Request::TouchChunks { .. } => "TouchChunks",
        Request::SetLocks { .. } => "SetLocks",
        Request::TestLock { .. } => "TestLock",
        Request::WaitLock { .. } => "WaitLock",
        Request::RenewLease { .. } => "RenewLease",
    }
}

impl SimNet {
    pub fn new(rng: StdRng) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                rng,
                weather: Weather::CALM,
                targets: BTreeMap::new(),
                groups: BTreeMap::new(),
                stats: NetStats::default(),
                hash: FNV_START,
                doomed: Vec::new(),
                lost_on_purpose: BTreeMap::new(),
            }),
            t0: Instant::now(),
            watch: std::env::var("CHORDFS_SIM_WATCH")
                .ok()
                .map(|s| s.to_lowercase()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("simnet lock")
    }

    /// The handle `from` sends through.
    pub fn endpoint(self: &Arc<Self>, from: &str) -> Arc<SimEndpoint> {
        Arc::new(SimEndpoint {
            net: self.clone(),
            from: from.to_string(),
        })
    }

    /// Starts delivering to `addr`; requests run until `kill` is cancelled.
    pub fn attach(&self, addr: &str, handler: Arc<dyn Handler>, kill: CancellationToken) {
        self.lock()
            .targets
            .insert(addr.to_string(), Target { handler, kill });
    }

    /// Stops delivering to `addr` (a crash or the end of a leave).
    pub fn detach(&self, addr: &str) {
        self.lock().targets.remove(addr);
    }

    pub fn set_weather(&self, w: Weather) {
        self.lock().weather = w;
    }

    /// Cuts the network into the given groups (addresses not named reach everyone).
    pub fn partition(&self, groups: &[Vec<String>]) {
        let mut s = self.lock();
        s.groups.clear();
        for (g, members) in groups.iter().enumerate() {
            for a in members {
                s.groups.insert(a.clone(), g as u32);
            }
        }
    }

    /// While a partition holds, puts `addr` on the side of `like` (a node starting up
    /// joins through a member it can reach, and stays on that side).
    pub fn join_side(&self, addr: &str, like: &str) {
        let mut s = self.lock();
        s.groups.remove(addr);
        if let Some(g) = s.groups.get(like).copied() {
            s.groups.insert(addr.to_string(), g);
        }
    }

    /// Loses the next `count` requests of `kind` (see [`kind_of`]) from `from` to `to`,
    /// whatever the weather: a test's way to lose one chosen message.
    pub fn lose_requests(&self, kind: &'static str, from: &str, to: &str, count: u32) {
        self.lock()
            .doomed
            .push((kind, from.to_string(), to.to_string(), count));
    }

    /// How many requests `lose_requests` has lost so far of `kind` from `from` to `to`.
    pub fn lost_on_purpose(&self, kind: &str, from: &str, to: &str) -> u32 {
        self.lock()
            .lost_on_purpose
            .get(&(kind.to_string(), from.to_string(), to.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn doomed(s: &mut State, kind: &str, from: &str, to: &str) -> bool {
        match s
            .doomed
            .iter_mut()
            .find(|(k, f, t, n)| *k == kind && f == from && t == to && *n > 0)
        {
            Some(rule) => {
                rule.3 -= 1;
                *s.lost_on_purpose
                    .entry((kind.to_string(), from.to_string(), to.to_string()))
                    .or_default() += 1;
                true
            }
            None => false,
        }
    }

    pub fn heal(&self) {
        self.lock().groups.clear();
    }

    /// How many addresses each side of the current partition holds (empty when none).
    pub fn side_sizes(&self) -> Vec<usize> {
        let s = self.lock();
        let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
        for g in s.groups.values() {
            *sizes.entry(*g).or_default() += 1;
        }
        sizes.into_values().collect()
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    pub fn trace_hash(&self) -> u64 {
        self.lock().hash
    }

    /// Milliseconds of simulated time since the network was made.
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn reachable(s: &State, from: &str, to: &str) -> bool {
        match (s.groups.get(from), s.groups.get(to)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    fn note(&self, s: &mut State, what: &[&[u8]]) {
        let mut h = fnv(s.hash, &self.now_ms().to_le_bytes());
        for w in what {
            h = fnv(h, w);
        }
        s.hash = h;
    }

    async fn deliver(
        self: Arc<Self>,
        from: String,
        to: String,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let kind = kind_of(&req);
        // Draw this message's fate at its first poll (a fixed order), so a seed replays exactly.
        let (there, back, lose_req, lose_reply) = {
            let mut guard = self.lock();
            let s = &mut *guard;
            let (lo, hi) = s.weather.delay_ms;
            let loss = s.weather.loss;
            let there = s.rng.random_range(lo..=hi.max(lo));
            let back = s.rng.random_range(lo..=hi.max(lo));
            let lose_req = loss > 0.0 && s.rng.random_bool(loss);
            let lose_reply = loss > 0.0 && s.rng.random_bool(loss);
            s.stats.sent += 1;
            *s.stats.by_kind.entry(kind).or_default() += 1;
            let t = (there as u32).to_le_bytes();
            self.note(
                s,
                &[b"send", from.as_bytes(), to.as_bytes(), kind.as_bytes(), &t],
            );
            (there, back, lose_req, lose_reply)
        };
        let net = self.clone();
        let (from2, to2) = (from.clone(), to.clone());
        let exchange = async move {
            tokio::time::sleep(Duration::from_millis(there)).await;
            let target = {
                let mut guard = net.lock();
                let s = &mut *guard;
                let reachable = Self::reachable(s, &from2, &to2);
                let doomed = Self::doomed(s, kind, &from2, &to2);
                let fate: &[u8] = match s.targets.get(&to2) {
                    _ if lose_req || doomed => {
                        s.stats.lost += 1;
                        b"lost"
                    }
                    _ if !reachable => {
                        s.stats.cut += 1;
                        b"cut"
                    }
                    None => {
                        s.stats.to_dead += 1;
                        b"dead"
                    }
                    Some(_) => {
                        s.stats.delivered += 1;
                        b"delivered"
                    }
                };
                net.note(s, &[fate, from2.as_bytes(), to2.as_bytes()]);
                if fate == b"delivered" {
                    s.targets
                        .get(&to2)
                        .map(|t| (t.handler.clone(), t.kill.clone()))
                } else {
                    None
                }
            };
            let Some((handler, kill)) = target else {
                return std::future::pending::<Response>().await;
            };
            let watched = net.watch.as_ref().and_then(|w| {
                let (keys, what) = about(&req)?;
                keys.iter()
                    .any(|k| k.to_hex().starts_with(w.as_str()))
                    .then_some(what)
            });
            let resp = match req.validate() {
                Err(msg) => Response::error(ErrorKind::BadRequest, msg),
                Ok(()) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        tokio::select! {
                            biased;
                            _ = kill.cancelled() => {}
                            resp = handler.handle(req) => { let _ = tx.send(resp); }
                        }
                    });
                    match rx.await {
                        Ok(r) => r,
                        // The target crashed mid-request: no answer, ever.
                        Err(_) => return std::future::pending::<Response>().await,
                    }
                }
            };
            if let Some(what) = watched {
                eprintln!(
                    "watch {:>6} ms {from2} -> {to2}: {what} => {}",
                    net.now_ms(),
                    describe(&resp)
                );
            }
            tokio::time::sleep(Duration::from_millis(back)).await;
            let lost = {
                let mut guard = net.lock();
                let s = &mut *guard;
                let lost = lose_reply || !Self::reachable(s, &from2, &to2);
                if lost {
                    s.stats.replies_lost += 1;
                }
                let fate: &[u8] = if lost { b"reply lost" } else { b"reply" };
                net.note(s, &[fate, from2.as_bytes(), to2.as_bytes()]);
                lost
            };
            if lost {
                return std::future::pending::<Response>().await;
            }
            resp
        };
        let resp = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                let mut guard = self.lock();
                guard.stats.timeouts += 1;
                self.note(&mut guard, &[b"timeout", from.as_bytes(), to.as_bytes()]);
                return Err(RpcError::Timeout {
                    addr: to,
                    ms: timeout.as_millis() as u64,
                });
            }
        };
        match resp {
            Response::Error { kind, message } => Err(RpcError::Remote {
                addr: to,
                kind,
                message,
            }),
            r => Ok(r),
        }
    }
}

impl Transport for SimEndpoint {
    fn call(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        Box::pin(
            self.net
                .clone()
                .deliver(self.from.clone(), addr.to_string(), req, timeout),
        )
    }
}
