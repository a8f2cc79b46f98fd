//! `/chunks`, `/files` and `/ring`: what this node holds, and the whole ring.

use super::*;

// ---------------------------------------------------------------------------------
// GET /chunks

#[derive(Deserialize)]
pub(super) struct ChunksQuery {
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
pub(super) async fn chunks(
    State(side): State<Sidecar>,
    Query(q): Query<ChunksQuery>,
) -> impl IntoResponse {
    let roles = side.node.repair.roles();
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
        id: node.me().id.to_hex(),
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
        if let Some(meta) = node.store().meta(key) {
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
        inode_role: node.store().meta(&id).map(|_| role_of(routing, &id)),
        chunks: held,
    })
}

/// A bare list of the files with data here; how far the walk got travels in headers
/// (`x-chordfs-inodes-walked`, `x-chordfs-truncated`, `x-chordfs-errors`).
pub(super) async fn files(State(side): State<Sidecar>) -> Result<impl IntoResponse, ApiError> {
    let client = side.client().await?;
    // Membership may have changed since the client was made.
    let _ = client.refresh_view_from(&side.node.me().addr).await;
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
pub(super) async fn ring(State(side): State<Sidecar>) -> Result<impl IntoResponse, ApiError> {
    let (nodes, replicas) = side.ring_rows().await?;
    Ok(([("x-chordfs-replicas", replicas.to_string())], Json(nodes)))
}

// ---------------------------------------------------------------------------------
