//! The status sidecar: a small HTTP server next to each node (`--http HOST:PORT`).
//!
//! ```text
//! GET /          a page for people: the ring drawn as a circle, each node's share
//! GET /status    this node: id, neighbours, fingers, counts, repair progress (JSON)
//! GET /files     files whose chunks this node holds, walked from the root (JSON)
//! GET /chunks    every key held here with its size and role (JSON)
//! GET /ring      every node of the ring, walking successors (JSON)
//! GET /metrics   Prometheus text format
//! ```
//! Handlers never panic on bad state: failures come back as `{"error": "..."}` with a
//! 4xx/5xx status. `/ring`, `/files` and the page reach the ring through one client
//! connected to this node, made on first use and kept.

use crate::chord::routing::Routing;
use crate::chord::Node;
use crate::client::status::{arc, ring_status, NodeRow};
use crate::client::{Client, ClientConfig};
use crate::id::Id;
use crate::proto::record::root_id;
use crate::proto::{Kind, NodeStats, Peer};
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
        let addr = self.node.me.addr.clone();
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
                .refresh_view_from(&self.node.me.addr)
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
    counters: CountersJson,
}

fn status_of(side: &Sidecar) -> StatusJson {
    let node = &side.node;
    let routing = node.snapshot();
    let stats: NodeStats = node.stats();
    let (mut primary_keys, mut replica_keys) = (0, 0);
    for (key, _) in node.store.keys() {
        match role_of(&routing, &key) {
            "primary" => primary_keys += 1,
            _ => replica_keys += 1,
        }
    }
    let repair = node
        .repair
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let c = &node.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    StatusJson {
        id: node.me.id.to_hex(),
        addr: node.me.addr.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: side.started.elapsed().as_secs(),
        predecessor: routing.predecessor.clone(),
        successors: routing.successors.clone(),
        fingers: routing
            .distinct_fingers()
            .into_iter()
            .map(|(i, p)| FingerJson {
                start_bit: i,
                start: node.me.id.add_pow2(i).to_hex(),
                id: p.id.to_hex(),
                addr: p.addr,
            })
            .collect(),
        replicas: node.cfg.replicas,
        successor_list_len: routing.list_len,
        chunks: stats.chunks,
        records: stats.records,
        bytes: stats.bytes,
        disk_total: stats.disk_total,
        disk_free: stats.disk_free,
        primary_keys,
        replica_keys,
        share: primary_share(&routing),
        leaving: node.leaving.load(Ordering::Acquire),
        repair: RepairJson {
            progress: repair.progress(),
            status: repair,
        },
        counters: CountersJson {
            requests: load(&c.requests),
            chunk_puts: load(&c.chunk_puts),
            chunk_gets: load(&c.chunk_gets),
            record_puts: load(&c.record_puts),
            bad_requests: load(&c.bad_requests),
            lookups: load(&c.lookups),
            lookup_hops: load(&c.lookup_hops),
            corrupt_found: load(&node.store.corrupt_found),
        },
    }
}

async fn status(State(side): State<Sidecar>) -> Json<StatusJson> {
    Json(status_of(&side))
}

// ---------------------------------------------------------------------------------
// GET /chunks

#[derive(Deserialize)]
struct ChunksQuery {
    /// Most entries to list (all when absent).
    limit: Option<usize>,
}

#[derive(Serialize)]
struct KeyJson {
    key: String,
    kind: &'static str,
    size: u64,
    role: &'static str,
    /// Record version; absent for chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

/// A bare list, one entry a key, as the contract reads; the totals travel in headers
/// (`x-chordfs-count`, `x-chordfs-bytes`, `x-chordfs-truncated`).
async fn chunks(State(side): State<Sidecar>, Query(q): Query<ChunksQuery>) -> impl IntoResponse {
    let roles = side.node.roles();
    let count = roles.len();
    let bytes: u64 = roles.iter().map(|(_, m, _)| m.size).sum();
    let limit = q.limit.unwrap_or(usize::MAX);
    let list = roles
        .into_iter()
        .take(limit)
        .map(|(key, meta, role)| KeyJson {
            key: key.to_hex(),
            kind: match meta.kind {
                EntryKind::Chunk => "chunk",
                EntryKind::Record => "record",
            },
            size: meta.size,
            role,
            version: (meta.kind == EntryKind::Record).then_some(meta.version),
        })
        .collect::<Vec<_>>();
    let truncated = list.len() < count;
    (
        [
            ("x-chordfs-count", count.to_string()),
            ("x-chordfs-bytes", bytes.to_string()),
            ("x-chordfs-truncated", truncated.to_string()),
        ],
        Json(list),
    )
}

// ---------------------------------------------------------------------------------
// GET /files

#[derive(Serialize)]
struct HeldChunk {
    hash: String,
    /// Position of the chunk's first use in the file.
    index: usize,
    size: u64,
    role: &'static str,
}

#[derive(Serialize)]
struct FileJson {
    path: String,
    inode: String,
    size: u64,
    /// Distinct data chunks of the file (holes not counted).
    chunks_total: usize,
    chunks_held: usize,
    bytes_held: u64,
    /// This node's role for the file's inode record, when it holds it.
    inode_role: Option<&'static str>,
    chunks: Vec<HeldChunk>,
}

#[derive(Serialize)]
struct FilesJson {
    id: String,
    files: Vec<FileJson>,
    inodes_walked: usize,
    /// The walk stopped early (too many inodes, or too long); the list is partial.
    truncated: bool,
    /// Inodes that could not be read (the walk went on without them).
    errors: Vec<String>,
}

/// Walks the file tree from the root and reports the files whose chunks are held here.
async fn walk_files(node: &Node, client: Arc<Client>) -> Result<FilesJson, ApiError> {
    let started = Instant::now();
    let routing = node.snapshot();
    let mut out = FilesJson {
        id: node.me.id.to_hex(),
        files: Vec::new(),
        inodes_walked: 0,
        truncated: false,
        errors: Vec::new(),
    };
    let root = match client.get_inode_opt(&root_id()).await {
        Ok(Some(r)) => r,
        // No file was ever stored: nothing to list (and no root made from here).
        Ok(None) => return Ok(out),
        Err(e) => return Err(unavailable(format!("cannot read the root directory: {e}"))),
    };
    out.inodes_walked = 1;
    let mut seen: HashSet<Id> = HashSet::from([root.id]);
    let mut queue: VecDeque<(String, Id)> = VecDeque::new();
    let mut enqueue =
        |queue: &mut VecDeque<(String, Id)>, dir: &str, inode: &crate::proto::Inode| {
            for (name, e) in &inode.entries {
                // Only files hold data and only directories lead to more; skip the rest.
                if matches!(e.kind, Kind::File | Kind::Dir) && seen.insert(e.id) {
                    queue.push_back((format!("{}/{name}", dir.trim_end_matches('/')), e.id));
                }
            }
        };
    enqueue(&mut queue, "/", &root.inode);
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < WALK_PARALLEL && !out.truncated {
            if out.inodes_walked + inflight.len() >= MAX_WALK_INODES
                || started.elapsed() >= WALK_DEADLINE
            {
                out.truncated = !queue.is_empty();
                break;
            }
            let Some((path, id)) = queue.pop_front() else {
                break;
            };
            let client = client.clone();
            inflight.push(async move {
                let r = client.get_inode_opt(&id).await;
                (path, id, r)
            });
        }
        let Some((path, id, res)) = inflight.next().await else {
            break;
        };
        out.inodes_walked += 1;
        let ino = match res {
            Ok(Some(r)) => r.inode,
            // A name whose inode is gone (a crash mid-create or mid-delete): skip it.
            Ok(None) => continue,
            Err(e) => {
                if out.errors.len() < MAX_WALK_ERRORS {
                    out.errors
                        .push(format!("{path} (inode {}): {e}", id.short()));
                }
                continue;
            }
        };
        match ino.kind {
            Kind::Dir => enqueue(&mut queue, &path, &ino),
            Kind::File => {
                if let Some(f) = held_file(node, &routing, path, id, &ino) {
                    out.files.push(f);
                }
            }
            _ => {}
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The file's entry when this node holds any of its chunks.
fn held_file(
    node: &Node,
    routing: &Routing,
    path: String,
    id: Id,
    ino: &crate::proto::Inode,
) -> Option<FileJson> {
    let mut distinct: HashSet<Id> = HashSet::new();
    let mut held = Vec::new();
    for (index, key) in ino.chunks.iter().enumerate() {
        if *key == Id::ZERO || !distinct.insert(*key) {
            continue;
        }
        if let Some(meta) = node.store.meta(key) {
            held.push(HeldChunk {
                hash: key.to_hex(),
                index,
                size: meta.size,
                role: role_of(routing, key),
            });
        }
    }
    if held.is_empty() {
        return None;
    }
    Some(FileJson {
        path,
        inode: id.to_hex(),
        size: ino.size,
        chunks_total: distinct.len(),
        chunks_held: held.len(),
        bytes_held: held.iter().map(|c| c.size).sum(),
        inode_role: node.store.meta(&id).map(|_| role_of(routing, &id)),
        chunks: held,
    })
}

/// A bare list of the files with data here; how far the walk got travels in headers
/// (`x-chordfs-inodes-walked`, `x-chordfs-truncated`, `x-chordfs-errors`).
async fn files(State(side): State<Sidecar>) -> Result<impl IntoResponse, ApiError> {
    let client = side.client().await?;
    // Membership may have changed since the client was made.
    let _ = client.refresh_view_from(&side.node.me.addr).await;
    // The walk stops itself at its deadline; this only guards against a stuck read.
    match tokio::time::timeout(WALK_DEADLINE * 2, walk_files(&side.node, client)).await {
        Ok(r) => r.map(|f| {
            let errors = f.errors.len().to_string();
            (
                [
                    ("x-chordfs-inodes-walked", f.inodes_walked.to_string()),
                    ("x-chordfs-truncated", f.truncated.to_string()),
                    ("x-chordfs-errors", errors),
                ],
                Json(f.files),
            )
        }),
        Err(_) => Err(unavailable("walking the file tree timed out".into())),
    }
}

// ---------------------------------------------------------------------------------
// GET /ring

/// A bare list, one entry a node in id order; R travels in `x-chordfs-replicas`.
async fn ring(State(side): State<Sidecar>) -> Result<impl IntoResponse, ApiError> {
    let (nodes, replicas) = side.ring_rows().await?;
    Ok(([("x-chordfs-replicas", replicas.to_string())], Json(nodes)))
}

// ---------------------------------------------------------------------------------
// GET /metrics

struct Metrics(String);

impl Metrics {
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "# HELP chordfs_{name} {help}");
        let _ = writeln!(self.0, "# TYPE chordfs_{name} {kind}");
        let _ = writeln!(self.0, "chordfs_{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.one(name, "gauge", help, value);
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.one(name, "counter", help, value);
    }
}

/// A Prometheus label value, escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(side): State<Sidecar>) -> impl IntoResponse {
    let s = status_of(&side);
    let r = &s.repair;
    let c = &s.counters;
    let mut m = Metrics(String::new());
    let _ = writeln!(m.0, "# HELP chordfs_info This node's identity.");
    let _ = writeln!(m.0, "# TYPE chordfs_info gauge");
    let _ = writeln!(
        m.0,
        "chordfs_info{{id=\"{}\",addr=\"{}\",version=\"{}\"}} 1",
        label(&s.id),
        label(&s.addr),
        label(s.version)
    );
    m.gauge(
        "uptime_seconds",
        "Seconds since the sidecar started.",
        s.uptime_secs,
    );
    m.counter("requests_total", "RPC requests answered.", c.requests);
    m.counter("chunk_puts_total", "Chunk writes received.", c.chunk_puts);
    m.counter("chunk_gets_total", "Chunk reads received.", c.chunk_gets);
    m.counter(
        "record_puts_total",
        "Record compare-and-sets received.",
        c.record_puts,
    );
    m.counter(
        "bad_requests_total",
        "Requests refused as malformed.",
        c.bad_requests,
    );
    m.counter("lookups_total", "Lookups this node completed.", c.lookups);
    m.counter(
        "lookup_hops_total",
        "Hops over all completed lookups.",
        c.lookup_hops,
    );
    m.counter(
        "corrupt_found_total",
        "Bad copies found on disk and dropped.",
        c.corrupt_found,
    );
    m.gauge("chunks", "Chunks stored here.", s.chunks);
    m.gauge("records", "Records stored here.", s.records);
    m.gauge("bytes", "Bytes stored here (chunks and records).", s.bytes);
    m.gauge(
        "primary_keys",
        "Keys held here as their primary.",
        s.primary_keys,
    );
    m.gauge(
        "replica_keys",
        "Keys held here as a replica.",
        s.replica_keys,
    );
    m.gauge(
        "disk_total_bytes",
        "Size of the data dir's filesystem.",
        s.disk_total,
    );
    m.gauge(
        "disk_free_bytes",
        "Free space on the data dir's filesystem.",
        s.disk_free,
    );
    m.gauge("replicas", "Copies kept of every key (R).", s.replicas);
    m.gauge(
        "successors",
        "Entries in the successor list.",
        s.successors.len(),
    );
    m.gauge(
        "fingers_distinct",
        "Distinct peers in the finger table.",
        s.fingers.len(),
    );
    m.gauge(
        "predecessor_known",
        "1 when the predecessor is known.",
        u8::from(s.predecessor.is_some()),
    );
    m.gauge(
        "share",
        "Fraction of the id circle this node is primary for.",
        s.share,
    );
    m.gauge(
        "leaving",
        "1 while the node hands its keys off to leave.",
        u8::from(s.leaving),
    );
    let st = &r.status;
    m.gauge(
        "repair_running",
        "1 while a repair pass runs.",
        u8::from(st.running),
    );
    m.gauge(
        "repair_progress",
        "Fraction of the current repair pass done.",
        r.progress,
    );
    m.counter("repair_passes_total", "Repair passes completed.", st.passes);
    m.gauge(
        "repair_pass_keys",
        "Keys to check in the current or last pass.",
        st.keys_total,
    );
    m.gauge(
        "repair_pass_keys_checked",
        "Keys checked so far in the pass.",
        st.keys_checked,
    );
    m.counter(
        "repair_keys_pushed_total",
        "Copies given to other nodes.",
        st.keys_pushed,
    );
    m.counter(
        "repair_bytes_pushed_total",
        "Bytes of copies given to other nodes.",
        st.bytes_pushed,
    );
    m.counter(
        "repair_keys_dropped_total",
        "Keys dropped here once held elsewhere.",
        st.keys_dropped,
    );
    m.gauge(
        "repair_under_replicated_keys",
        "Keys the last pass could not bring to R copies.",
        st.under_replicated,
    );
    m.gauge(
        "repair_last_pass_seconds",
        "Duration of the last repair pass.",
        st.last_pass_ms as f64 / 1000.0,
    );
    m.gauge(
        "repair_last_pass_failed",
        "1 when the last pass ended in an error.",
        u8::from(st.last_error.is_some()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.0,
    )
}

// ---------------------------------------------------------------------------------
// GET / (the page)

/// `s` made safe inside HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `n` and `word`, plural when `n` is not 1 ("1 chunk", "2 chunks", "3 passes").
fn plural(n: u64, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        _ if word.ends_with('s') => format!("{n} {word}es"),
        _ => format!("{n} {word}s"),
    }
}

/// Bytes in binary units, for people.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn percent(f: f64) -> String {
    if f > 0.0 && f < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", f * 100.0)
    }
}

/// A distinct color for the `i`-th node (golden-angle hues).
fn color(i: usize) -> String {
    format!("hsl({:.0},62%,48%)", (i as f64 * 137.508 + 210.0) % 360.0)
}

/// The point at `fraction` of the circle (0 at the top, clockwise) on radius `r`.
fn point(cx: f64, cy: f64, r: f64, fraction: f64) -> (f64, f64) {
    let a = fraction * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2;
    (cx + r * a.cos(), cy + r * a.sin())
}

const SVG_W: f64 = 780.0;
const SVG_H: f64 = 580.0;
const CX: f64 = SVG_W / 2.0;
const CY: f64 = SVG_H / 2.0;
const RING_R: f64 = 175.0;
const BAR_MAX: f64 = 55.0;
/// Radius of the circle labels hug (outside the longest bar).
const LABEL_R: f64 = RING_R + 11.0 + BAR_MAX + 18.0;
/// Vertical room a two-line label needs.
const LABEL_GAP: f64 = 36.0;
/// Nodes are labelled in the picture up to this many (this node always is).
const MAX_LABELS: usize = 16;

/// A node's label in the picture: `(px, py)` is what it points at, `y` where it sits.
struct Label {
    y: f64,
    px: f64,
    py: f64,
    right: bool,
    id: String,
    counts: String,
    me: bool,
}

/// Spreads each side's labels vertically so that none overlap, keeping their order and
/// staying close to where they point.
fn place_labels(labels: &mut [Label]) {
    let (top, bottom) = (CY - LABEL_R - 8.0, CY + LABEL_R + 8.0);
    for right in [true, false] {
        let mut side: Vec<&mut Label> = labels.iter_mut().filter(|l| l.right == right).collect();
        side.sort_by(|a, b| a.py.total_cmp(&b.py));
        let mut prev = f64::NEG_INFINITY;
        for l in side.iter_mut() {
            l.y = l.py.max(prev + LABEL_GAP).max(top);
            prev = l.y;
        }
        let mut next = f64::INFINITY;
        for l in side.iter_mut().rev() {
            l.y = l.y.min(next - LABEL_GAP).min(bottom);
            next = l.y;
        }
    }
}

/// The ring as inline SVG: each node's range as a wedge and an arc on the circle, its
/// stored bytes as a bar outward from its place, and labels when they fit.
fn ring_svg(rows: &[NodeRow], me: &str, replicas: usize) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg viewBox="0 0 {SVG_W} {SVG_H}" width="100%" role="img" aria-label="The ring" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">"##
    );
    let _ = write!(
        svg,
        r##"<circle cx="{CX}" cy="{CY}" r="{RING_R}" fill="#f8fafc" stroke="#cbd5e1" stroke-width="14"/>"##
    );
    let n = rows.len();
    let max_bytes = rows
        .iter()
        .filter_map(|r| r.bytes)
        .max()
        .unwrap_or(0)
        .max(1);
    let total_bytes: u64 = rows.iter().filter_map(|r| r.bytes).sum();
    let total_chunks: u64 = rows.iter().filter_map(|r| r.chunks).sum();
    let frac = |hex: &str| hex.parse::<Id>().map(|id| id.fraction()).unwrap_or(0.0);
    // Ranges first (so dots and labels draw over them).
    for (i, r) in rows.iter().enumerate() {
        let end = frac(&r.id);
        let share = r.share.clamp(0.0, 1.0);
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let tip = format!(
            "{} {}: primary for {} of the ring",
            &r.id[..r.id.len().min(16)],
            esc(&r.addr),
            percent(share)
        );
        if share >= 0.9999 || n == 1 {
            let _ = write!(
                svg,
                r##"<circle cx="{CX}" cy="{CY}" r="{RING_R}" fill="{col}" fill-opacity="0.13" stroke="{col}" stroke-width="14"><title>{tip}</title></circle>"##
            );
            continue;
        }
        let start = end - share;
        let (x0, y0) = point(CX, CY, RING_R, start);
        let (x1, y1) = point(CX, CY, RING_R, end);
        let large = u8::from(share > 0.5);
        let _ = write!(
            svg,
            r##"<path d="M{CX},{CY} L{x0:.2},{y0:.2} A{RING_R},{RING_R} 0 {large} 1 {x1:.2},{y1:.2} Z" fill="{col}" fill-opacity="0.13"><title>{tip}</title></path>"##
        );
        let _ = write!(
            svg,
            r##"<path d="M{x0:.2},{y0:.2} A{RING_R},{RING_R} 0 {large} 1 {x1:.2},{y1:.2}" fill="none" stroke="{col}" stroke-width="14"{}><title>{tip}</title></path>"##,
            if r.reachable {
                ""
            } else {
                r#" stroke-dasharray="6 4""#
            }
        );
    }
    // Tick at 0 (the top of the circle).
    let _ = write!(
        svg,
        r##"<line x1="{CX}" y1="{}" x2="{CX}" y2="{}" stroke="#64748b" stroke-width="1.5"/><text x="{CX}" y="{}" text-anchor="middle" font-size="11" fill="#64748b">0</text>"##,
        CY - RING_R - 11.0,
        CY - RING_R + 11.0,
        CY - RING_R + 24.0
    );
    let mut labels: Vec<Label> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let f = frac(&r.id);
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let bytes = r.bytes.unwrap_or(0);
        let len = if bytes == 0 {
            0.0
        } else {
            6.0 + (BAR_MAX - 6.0) * bytes as f64 / max_bytes as f64
        };
        let (bx0, by0) = point(CX, CY, RING_R + 11.0, f);
        let (bx1, by1) = point(CX, CY, RING_R + 11.0 + len, f);
        let counts = match (r.chunks, r.bytes) {
            (Some(c), Some(b)) => format!("{} · {}", plural(c, "chunk"), human_bytes(b)),
            _ => "unreachable".to_string(),
        };
        let tip = format!("{} {}: {counts}", &r.id[..r.id.len().min(16)], esc(&r.addr));
        if len > 0.0 {
            let _ = write!(
                svg,
                r##"<line x1="{bx0:.2}" y1="{by0:.2}" x2="{bx1:.2}" y2="{by1:.2}" stroke="{col}" stroke-width="9" stroke-linecap="round"><title>{tip}</title></line>"##
            );
        }
        let (dx, dy) = point(CX, CY, RING_R, f);
        let is_me = r.id == me;
        let _ = write!(
            svg,
            r##"<circle cx="{dx:.2}" cy="{dy:.2}" r="{}" fill="{col}" stroke="{}" stroke-width="{}"><title>{tip}</title></circle>"##,
            if is_me { 11 } else { 8 },
            if is_me { "#0f172a" } else { "#fff" },
            if is_me { 3 } else { 2 }
        );
        if n <= MAX_LABELS || is_me {
            let (px, py) = point(CX, CY, RING_R + 11.0 + len + 6.0, f);
            labels.push(Label {
                y: py,
                px,
                py,
                right: f < 0.5,
                id: r.id[..r.id.len().min(8)].to_string(),
                counts,
                me: is_me,
            });
        }
    }
    place_labels(&mut labels);
    for l in &labels {
        // Labels hug a circle outside the bars, pushed apart vertically so none overlap.
        let dy = l.y - CY;
        let dx = (LABEL_R * LABEL_R - dy * dy).max(0.0).sqrt();
        let (lx, anchor, lead) = if l.right {
            (CX + dx + 4.0, "start", CX + dx)
        } else {
            (CX - dx - 4.0, "end", CX - dx)
        };
        let _ = write!(
            svg,
            r##"<line x1="{:.2}" y1="{:.2}" x2="{lead:.2}" y2="{:.2}" stroke="#94a3b8" stroke-width="1"/>"##,
            l.px, l.py, l.y
        );
        let _ = write!(
            svg,
            r##"<text x="{lx:.2}" y="{:.2}" text-anchor="{anchor}" font-size="14" fill="#0f172a"><tspan font-weight="{}" font-family="ui-monospace, monospace">{}</tspan>{}<tspan x="{lx:.2}" dy="16" fill="#475569">{}</tspan></text>"##,
            l.y - 2.0,
            if l.me { 700 } else { 600 },
            l.id,
            if l.me {
                r##"<tspan fill="#1d4ed8"> · this node</tspan>"##
            } else {
                ""
            },
            esc(&l.counts)
        );
    }
    // The middle: totals.
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="34" font-weight="700" fill="#0f172a">{n} node{}</text>"##,
        CY - 14.0,
        if n == 1 { "" } else { "s" }
    );
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="15" fill="#334155">{} · {}</text>"##,
        CY + 14.0,
        plural(total_chunks, "chunk"),
        human_bytes(total_bytes)
    );
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="13" fill="#64748b">{replicas} cop{} of every key</text>"##,
        CY + 36.0,
        if replicas == 1 { "y" } else { "ies" }
    );
    svg.push_str("</svg>");
    svg
}

/// The ring as this node alone sees it, for the page when the ring cannot be walked.
fn local_rows(s: &StatusJson) -> Vec<NodeRow> {
    vec![NodeRow {
        id: s.id.clone(),
        addr: s.addr.clone(),
        predecessor: s.predecessor.as_ref().map(|p| p.id.to_hex()),
        successor: s.successors.first().map(|p| p.id.to_hex()),
        chunks: Some(s.chunks),
        records: Some(s.records),
        bytes: Some(s.bytes),
        share: s.share,
        reachable: true,
    }]
}

const PAGE_CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;background:#f1f5f9}
header{background:#0f172a;color:#e2e8f0;padding:14px 24px;display:flex;align-items:baseline;gap:16px;flex-wrap:wrap}
header h1{margin:0;font-size:20px;color:#fff}
header .sub{color:#94a3b8}
main{padding:20px 24px;display:grid;grid-template-columns:minmax(0,1.6fr) minmax(340px,1fr);gap:20px;max-width:1500px}
@media (max-width:900px){main{grid-template-columns:1fr}}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(15,23,42,.12);padding:16px 18px}
.card h2{margin:0 0 10px;font-size:15px;text-transform:uppercase;letter-spacing:.04em;color:#475569}
.wide{grid-column:1/-1}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e2e8f0;vertical-align:middle}
th{font-weight:600;color:#475569;font-size:12.5px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{color:#475569;width:40%}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.bar{background:#e2e8f0;border-radius:4px;height:9px;min-width:90px;overflow:hidden}
.bar>span{display:block;height:100%;border-radius:4px}
.me{background:#eff6ff}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:9px;background:#dbeafe;color:#1e40af;margin-left:6px}
.bad{color:#b91c1c}
.note{color:#64748b;font-size:12.5px}
.legend{display:flex;gap:2px 18px;flex-wrap:wrap;color:#475569;font-size:12.5px;margin-top:4px}
.legend b{color:#0f172a;font-weight:600}
a{color:#1d4ed8}
"#;

async fn page(State(side): State<Sidecar>) -> Html<String> {
    let s = status_of(&side);
    let (rows, replicas, ring_error) = match side.ring_rows().await {
        Ok((rows, r)) if !rows.is_empty() => (rows, r, None),
        Ok(_) => (
            local_rows(&s),
            s.replicas,
            Some("the ring walk found no node".to_string()),
        ),
        Err(e) => (local_rows(&s), s.replicas, Some(e.1)),
    };
    Html(render_page(&s, &rows, replicas, ring_error.as_deref()))
}

fn render_page(
    s: &StatusJson,
    rows: &[NodeRow],
    replicas: usize,
    ring_error: Option<&str>,
) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let short = &s.id[..16];
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="{PAGE_REFRESH_SECS}"><title>chordfs {} · {}</title><style>{PAGE_CSS}</style></head><body>"#,
        &s.id[..8],
        esc(&s.addr)
    );
    let _ = write!(
        h,
        r#"<header><h1>chordfs node</h1><span class="mono">{}</span><span class="sub">{} · up {} · refreshes every {PAGE_REFRESH_SECS} s</span></header><main>"#,
        esc(&s.id),
        esc(&s.addr),
        human_duration(s.uptime_secs)
    );

    // The picture.
    let _ = write!(h, r#"<section class="card"><h2>The ring</h2>"#);
    if let Some(e) = ring_error {
        let _ = write!(
            h,
            r#"<p class="bad">Could not walk the ring ({}); showing this node only.</p>"#,
            esc(e)
        );
    }
    h.push_str(&ring_svg(rows, &s.id, replicas));
    let _ = write!(
        h,
        r#"<div class="legend"><span><b>Dot</b>: a node, placed by its id (0 at the top, clockwise)</span><span><b>Wedge</b>: the keys it is primary for</span><span><b>Bar</b>: the data it stores, primary and replica copies</span></div></section>"#
    );

    // This node.
    let _ = write!(
        h,
        r#"<section class="card"><h2>This node</h2><table class="kv">"#
    );
    let row = |h: &mut String, k: &str, v: String| {
        let _ = write!(h, "<tr><td>{k}</td><td>{v}</td></tr>");
    };
    let peer = |p: &Peer| {
        format!(
            r#"<span class="mono" title="{}">{}</span> {}"#,
            p.id.to_hex(),
            &p.id.to_hex()[..8],
            esc(&p.addr)
        )
    };
    row(
        &mut h,
        "Id",
        format!(r#"<span class="mono">{short}…</span>"#),
    );
    row(&mut h, "Address", esc(&s.addr));
    row(
        &mut h,
        "Predecessor",
        s.predecessor
            .as_ref()
            .map(peer)
            .unwrap_or_else(|| r#"<span class="note">unknown</span>"#.into()),
    );
    row(
        &mut h,
        "Successors",
        s.successors
            .iter()
            .map(peer)
            .collect::<Vec<_>>()
            .join("<br>"),
    );
    row(&mut h, "Distinct fingers", s.fingers.len().to_string());
    row(
        &mut h,
        "Primary for",
        format!("{} of the ring", percent(s.share)),
    );
    row(
        &mut h,
        "Stored",
        format!(
            "{}, {}, {} <span class=\"note\">({} primary, {} replica keys)</span>",
            plural(s.chunks, "chunk"),
            plural(s.records, "record"),
            human_bytes(s.bytes),
            s.primary_keys,
            s.replica_keys
        ),
    );
    row(
        &mut h,
        "Disk",
        format!(
            "{} free of {}",
            human_bytes(s.disk_free),
            human_bytes(s.disk_total)
        ),
    );
    let r = &s.repair;
    let repair_state = if r.status.running {
        format!(
            "running: {} of {} keys ({})",
            r.status.keys_checked,
            r.status.keys_total,
            percent(r.progress)
        )
    } else if r.status.passes == 0 {
        "no pass yet".to_string()
    } else {
        format!(
            "idle; {} done, the last took {} ms",
            plural(r.status.passes, "pass"),
            r.status.last_pass_ms
        )
    };
    row(
        &mut h,
        "Repair",
        format!(
            r#"{repair_state}<div class="bar" style="margin-top:4px"><span style="width:{:.1}%;background:#16a34a"></span></div><span class="note">{} keys pushed ({}), {} dropped, {} under-replicated</span>{}"#,
            r.progress * 100.0,
            r.status.keys_pushed,
            human_bytes(r.status.bytes_pushed),
            r.status.keys_dropped,
            r.status.under_replicated,
            r.status
                .last_error
                .as_deref()
                .map(|e| format!(r#"<br><span class="bad">last error: {}</span>"#, esc(e)))
                .unwrap_or_default()
        ),
    );
    let c = &s.counters;
    row(
        &mut h,
        "Requests",
        format!(
            "{} <span class=\"note\">({} chunk puts, {} chunk gets, {} record puts, {} bad)</span>",
            c.requests, c.chunk_puts, c.chunk_gets, c.record_puts, c.bad_requests
        ),
    );
    let mean = if c.lookups == 0 {
        0.0
    } else {
        c.lookup_hops as f64 / c.lookups as f64
    };
    row(
        &mut h,
        "Lookups",
        format!(
            "{} <span class=\"note\">({mean:.2} hops on average)</span>",
            c.lookups
        ),
    );
    if s.leaving {
        row(
            &mut h,
            "State",
            r#"<span class="bad">leaving: handing keys off</span>"#.into(),
        );
    }
    let _ = write!(
        h,
        r#"</table><p class="note">JSON: <a href="/status">/status</a> · <a href="/ring">/ring</a> · <a href="/files">/files</a> · <a href="/chunks">/chunks</a> · <a href="/metrics">/metrics</a></p></section>"#
    );

    // Every node's share.
    let total_bytes: u64 = rows.iter().filter_map(|r| r.bytes).sum();
    let _ = write!(
        h,
        r#"<section class="card wide"><h2>Each node's share</h2><table><tr><th>Node</th><th>Address</th><th class="num">Range</th><th class="num">Chunks</th><th class="num">Records</th><th class="num">Stored</th><th>Share of the data</th></tr>"#
    );
    for (i, r) in rows.iter().enumerate() {
        let is_me = r.id == s.id;
        let data_share = match r.bytes {
            Some(b) if total_bytes > 0 => b as f64 / total_bytes as f64,
            _ => 0.0,
        };
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        let _ = write!(
            h,
            r#"<tr{}><td><span class="sw" style="background:{col}"></span><span class="mono">{}</span>{}{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><div style="display:flex;align-items:center;gap:8px"><div class="bar" style="flex:1"><span style="width:{:.1}%;background:{col}"></span></div><span class="num" style="min-width:48px;text-align:right">{}</span></div></td></tr>"#,
            if is_me { r#" class="me""# } else { "" },
            &r.id[..r.id.len().min(16)],
            if is_me {
                r#"<span class="tag">this node</span>"#
            } else {
                ""
            },
            if r.reachable {
                ""
            } else {
                r#"<span class="tag bad">unreachable</span>"#
            },
            esc(&r.addr),
            percent(r.share),
            opt(r.chunks),
            opt(r.records),
            r.bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
            data_share * 100.0,
            percent(data_share)
        );
    }
    let _ = write!(
        h,
        r#"</table><p class="note">Range: the fraction of the id circle a node is primary for. Stored counts include replica copies, so they add up to about {}× the data.</p></section></main></body></html>"#,
        replicas.min(rows.len()).max(1)
    );
    h
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_and_labels() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(plural(1, "chunk"), "1 chunk");
        assert_eq!(plural(0, "chunk"), "0 chunks");
        assert_eq!(plural(2, "pass"), "2 passes");
    }

    #[test]
    fn points_start_at_the_top_and_go_clockwise() {
        let (x, y) = point(0.0, 0.0, 10.0, 0.0);
        assert!(x.abs() < 1e-9 && (y + 10.0).abs() < 1e-9);
        let (x, y) = point(0.0, 0.0, 10.0, 0.25);
        assert!((x - 10.0).abs() < 1e-9 && y.abs() < 1e-9);
    }

    #[test]
    fn the_picture_has_a_wedge_per_node() {
        let rows: Vec<NodeRow> = [0x20u8, 0x80, 0xc0]
            .iter()
            .map(|b| {
                let mut a = [0u8; 20];
                a[0] = *b;
                NodeRow {
                    id: Id(a).to_hex(),
                    addr: format!("10.0.0.{b}:7400"),
                    predecessor: None,
                    successor: None,
                    chunks: Some(*b as u64),
                    records: Some(1),
                    bytes: Some(*b as u64 * 1000),
                    share: 0.25,
                    reachable: *b != 0xc0,
                }
            })
            .collect();
        let svg = ring_svg(&rows, &rows[0].id, 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches(" Z\"").count(), 3);
        assert!(svg.contains("3 nodes"));
        assert!(
            svg.contains("stroke-dasharray"),
            "the unreachable node is dashed"
        );
    }
}
