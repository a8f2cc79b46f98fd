//! The status sidecar: a small HTTP server next to each node (`--http HOST:PORT`).
//!
//! ```text
//! GET /          a page for people: the ring drawn as a circle, each node's share
//! GET /status    this node: id, neighbours, fingers, counts, repair, gc and locks (JSON)
//! GET /files     files whose chunks this node holds, walked from the root (JSON)
//! GET /chunks    every key held here with its size and role (JSON)
//! GET /ring      every node of the ring, walking successors (JSON)
//! GET /metrics   Prometheus text format
//! ```
//! Handlers never panic on bad state: failures come back as `{"error": "..."}` with a
//! 4xx/5xx status. `/ring`, `/files` and the page reach the ring through one client
//! connected to this node, made on first use and kept.

use crate::chord::Node;
use crate::client::status::{arc, ring_status, NodeRow};
use crate::client::{Client, ClientConfig};
use crate::id::Id;
use crate::proto::record::root_id;
use crate::proto::{Kind, NodeStats, Peer};
use crate::ring::Routing;
use crate::store::EntryKind;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

mod data;
mod metrics;
mod page;

use data::{chunks, files, ring};
use metrics::metrics;
use page::page;

/// Most inodes one `/files` walk reads before it stops and says `truncated`.
pub const MAX_WALK_INODES: usize = 100_000;
/// Inode reads in flight at once during a walk.
const WALK_PARALLEL: usize = 16;
/// Longest a `/files` walk may take before it stops and says `truncated`.
const WALK_DEADLINE: Duration = Duration::from_secs(30);
/// Longest `/ring` (and the page's view of the ring) may take.
const RING_DEADLINE: Duration = Duration::from_secs(15);
/// The page reloads itself this often.
const PAGE_REFRESH_SECS: u32 = 5;
/// Errors kept in a `/files` answer (the walk goes on past them).
const MAX_WALK_ERRORS: usize = 20;

#[derive(Clone)]
struct Sidecar {
    node: Arc<Node>,
    client: Arc<OnceCell<Arc<Client>>>,
    started: Instant,
}

/// Serves the sidecar on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let app = router(node);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!("http sidecar stopped: {e}");
    }
}

/// The sidecar's routes.
pub fn router(node: Arc<Node>) -> Router {
    let state = Sidecar {
        node,
        client: Arc::new(OnceCell::new()),
        started: Instant::now(),
    };
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/files", get(files))
        .route("/chunks", get(chunks))
        .route("/ring", get(ring))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A failed request: its status and a message, sent as `{"error": message}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl Sidecar {
    /// The client connected to this node, made on first use.
    async fn client(&self) -> Result<Arc<Client>, ApiError> {
        let addr = self.node.me().addr.clone();
        self.client
            .get_or_try_init(|| async {
                let mut cfg = ClientConfig::new(addr.clone());
                // The sidecar reads records only: keep the chunk cache small.
                cfg.cache_bytes = 1024 * 1024;
                cfg.rpc_timeout = Duration::from_secs(3);
                cfg.op_timeout = Duration::from_secs(5);
                Client::connect(cfg).await
            })
            .await
            .cloned()
            .map_err(|e| unavailable(format!("cannot reach the ring through {addr}: {e}")))
    }

    /// Every node of the ring, walking successors from this node.
    async fn ring_rows(&self) -> Result<(Vec<NodeRow>, usize), ApiError> {
        let work = async {
            let client = self.client().await?;
            let view = client
                .refresh_view_from(&self.node.me().addr)
                .await
                .map_err(|e| unavailable(format!("cannot walk the ring: {e}")))?;
            let rows = ring_status(&client, &view).await;
            Ok((rows, view.replicas))
        };
        match tokio::time::timeout(RING_DEADLINE, work).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!(
                "walking the ring took over {} s",
                RING_DEADLINE.as_secs()
            ))),
        }
    }
}

fn unavailable(msg: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, msg)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no such page: {} (try /, /status, /files, /chunks, /ring, /metrics)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} only answers GET", uri.path()),
    )
}

/// This node's role for `key`: primary when it falls in (predecessor, me], as the
/// node's own table sees it (a node without a predecessor is primary for everything).
fn role_of(routing: &Routing, key: &Id) -> &'static str {
    match &routing.predecessor {
        Some(p) if !key.in_open_closed(&p.id, &routing.me.id) => "replica",
        _ => "primary",
    }
}

/// Fraction of the circle this node is primary for.
fn primary_share(routing: &Routing) -> f64 {
    match &routing.predecessor {
        Some(p) if p.id != routing.me.id => arc(&p.id, &routing.me.id),
        _ => 1.0,
    }
}

// ---------------------------------------------------------------------------------
// GET /status

#[derive(Serialize)]
struct FingerJson {
    /// The finger covers starts from `me + 2^start_bit` up to the next listed finger.
    start_bit: usize,
    /// `me + 2^start_bit`.
    start: String,
    id: String,
    addr: String,
}

#[derive(Serialize)]
struct RepairJson {
    #[serde(flatten)]
    status: crate::chord::repair::RepairStatus,
    /// Fraction of the current pass done; 1.0 when idle.
    progress: f64,
}

#[derive(Serialize)]
struct CountersJson {
    requests: u64,
    chunk_puts: u64,
    chunk_gets: u64,
    record_puts: u64,
    bad_requests: u64,
    lookups: u64,
    lookup_hops: u64,
    corrupt_found: u64,
}

#[derive(Serialize)]
struct StatusJson {
    id: String,
    addr: String,
    version: &'static str,
    uptime_secs: u64,
    predecessor: Option<Peer>,
    successors: Vec<Peer>,
    fingers: Vec<FingerJson>,
    /// Copies kept of every key (R).
    replicas: usize,
    successor_list_len: usize,
    chunks: u64,
    records: u64,
    bytes: u64,
    disk_total: u64,
    disk_free: u64,
    primary_keys: u64,
    replica_keys: u64,
    /// Fraction of the id circle this node is primary for.
    share: f64,
    leaving: bool,
    repair: RepairJson,
    /// Garbage collection: last run (unix seconds), chunks and bytes freed since start.
    gc: crate::chord::gc::GcStatus,
    /// File locks held here as the files' primary (docs/locks.md).
    locks: LocksJson,
    counters: CountersJson,
}

#[derive(Serialize)]
struct LocksJson {
    /// Files with locks held here.
    files: usize,
    /// Mount sessions with a lease here.
    sessions: usize,
    lease_ms: u64,
}

fn status_of(side: &Sidecar) -> StatusJson {
    let node = &side.node;
    let routing = node.snapshot();
    let stats: NodeStats = node.stats();
    let (mut primary_keys, mut replica_keys) = (0, 0);
    for (key, _) in node.store().keys() {
        match role_of(&routing, &key) {
            "primary" => primary_keys += 1,
            _ => replica_keys += 1,
        }
    }
    let repair = node.repair.status();
    let c = &node.core.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    StatusJson {
        id: node.me().id.to_hex(),
        addr: node.me().addr.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: side.started.elapsed().as_secs(),
        predecessor: routing.predecessor.clone(),
        successors: routing.successors.clone(),
        fingers: routing
            .distinct_fingers()
            .into_iter()
            .map(|(i, p)| FingerJson {
                start_bit: i,
                start: node.me().id.add_pow2(i).to_hex(),
                id: p.id.to_hex(),
                addr: p.addr,
            })
            .collect(),
        replicas: node.cfg().replicas,
        successor_list_len: routing.list_len,
        chunks: stats.chunks,
        records: stats.records,
        bytes: stats.bytes,
        disk_total: stats.disk_total,
        disk_free: stats.disk_free,
        primary_keys,
        replica_keys,
        share: primary_share(&routing),
        leaving: node.core.is_leaving(),
        repair: RepairJson {
            progress: repair.progress(),
            status: repair,
        },
        gc: node.gc.status(),
        locks: {
            let (files, sessions) = node.locks.counts();
            LocksJson {
                files,
                sessions,
                lease_ms: node.cfg().lock_lease.as_millis() as u64,
            }
        },
        counters: CountersJson {
            requests: load(&c.requests),
            chunk_puts: load(&c.chunk_puts),
            chunk_gets: load(&c.chunk_gets),
            record_puts: load(&c.record_puts),
            bad_requests: load(&c.bad_requests),
            lookups: load(&c.lookups),
            lookup_hops: load(&c.lookup_hops),
            corrupt_found: load(&node.store().corrupt_found),
        },
    }
}

async fn status(State(side): State<Sidecar>) -> Json<StatusJson> {
    Json(status_of(&side))
}
