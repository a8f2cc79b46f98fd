//! Running a node process: bind, open the store, join, serve RPCs and the sidecar, run
//! maintenance and repair, and leave gracefully on SIGTERM/SIGINT.

use crate::chord::load_or_create_id;
use crate::chord::{Node, NodeConfig};
use crate::net::{self, TcpTransport};
use crate::store::Store;
use serde::Serialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::Instrument;

/// How long a node started with `--join` keeps trying to join. The member it joins
/// through may itself be starting; a node restarted on its old address may find its old
/// neighbours still listing the dead incarnation (a lookup then names no successor but
/// itself) until their next few stabilize rounds.
pub const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);
/// Bound on the join attempts within [`JOIN_PATIENCE`].
const JOIN_ATTEMPTS_MAX: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("data dir: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("node id file: {0}")]
    Id(std::io::Error),
    #[error("cannot join the ring through {via}: {source}")]
    Join { via: String, source: net::RpcError },
}

/// Written to `DATA_DIR/node.json` once the node serves, so scripts and tests that let
/// the OS choose ports can find them.
#[derive(Serialize)]
pub struct Endpoints {
    pub id: String,
    pub addr: String,
    pub http: Option<String>,
    pub pid: u32,
}

pub struct Running {
    pub node: Arc<Node>,
    pub http_addr: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct StartOptions {
    pub listen: String,
    pub join: Option<String>,
    pub http: Option<String>,
    pub cfg: NodeConfig,
}

/// Starts a node and returns once it serves (and has joined, when asked to).
pub async fn start(mut opts: StartOptions) -> Result<Running, DaemonError> {
    let listener = TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: opts.listen.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Bind {
            addr: opts.listen.clone(),
            source,
        })?
        .to_string();
    opts.cfg.addr = addr.clone();
    let store = Store::open(&opts.cfg.data_dir)?;
    let id = load_or_create_id(&opts.cfg.data_dir, &addr).map_err(DaemonError::Id)?;
    let secret = opts.cfg.secret.clone();
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    if secret.is_none() && !loopback {
        tracing::warn!("no cluster secret on a non-loopback address");
        eprintln!(
            "WARNING: chordfs node on {addr} runs WITHOUT a cluster secret: anyone who can \
             reach it can join the ring, read and write. Start every node, mount and CLI \
             with --secret-file."
        );
    }
    let node = Node::new(
        opts.cfg.clone(),
        id,
        store,
        TcpTransport::with_secret(secret.clone()),
    );
    if opts.join.is_some() {
        // Not a ring of its own to anyone who calls before the join is done.
        node.core
            .joining
            .store(true, std::sync::atomic::Ordering::Release);
    }
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(net::serve_with_secret(
        listener,
        node.clone(),
        node.core.shutdown.clone(),
        secret.unwrap_or_else(|| Arc::from(&[][..])),
    )));

    let mut http_addr = None;
    if let Some(h) = &opts.http {
        let l = TcpListener::bind(h)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: h.clone(),
                source,
            })?;
        http_addr = l.local_addr().ok().map(|a| a.to_string());
        tasks.push(tokio::spawn(
            crate::http::serve(l, node.clone(), node.core.shutdown.clone())
                .instrument(node.core.span.clone()),
        ));
    }

    if let Some(via) = &opts.join {
        join_patiently(&node, via).await?;
    }
    tasks.push(tokio::spawn(node.clone().run_maintenance()));
    tasks.push(tokio::spawn(node.clone().run_repair()));
    tasks.push(tokio::spawn(node.clone().run_gc()));
    tasks.push(tokio::spawn(node.clone().run_locks()));

    let endpoints = Endpoints {
        id: id.to_hex(),
        addr,
        http: http_addr.clone(),
        pid: std::process::id(),
    };
    let json = serde_json::to_string_pretty(&endpoints).expect("endpoints serialize");
    let path = opts.cfg.data_dir.join("node.json");
    let tmp = opts.cfg.data_dir.join("node.json.tmp");
    if std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .is_err()
    {
        tracing::warn!("could not write {}", path.display());
    }
    Ok(Running {
        node,
        http_addr,
        tasks,
    })
}

impl Running {
    /// Graceful leave: hand every key to its next holders, then stop serving.
    pub async fn leave(self) {
        self.node.leave().await;
        self.stop().await;
    }

    /// Stops at once (tests use this to simulate a crash of an in-process node).
    pub async fn stop(self) {
        self.node.shut_down();
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
        let _ = std::fs::remove_file(self.node.cfg().data_dir.join("node.json"));
    }
}

/// Joins through `via`, retrying with pauses from 250 ms doubling to 2 s for up to
/// [`JOIN_PATIENCE`]; each failure is logged. A refusal of this node's credentials
/// ends it at once: no retry will change the secret.
async fn join_patiently(node: &Node, via: &str) -> Result<(), DaemonError> {
    use std::time::Duration;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match node.join(via).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let hopeless = matches!(err, net::RpcError::Auth { .. })
            || attempt >= JOIN_ATTEMPTS_MAX
            || started.elapsed() + pause > JOIN_PATIENCE;
        if hopeless {
            node.shut_down();
            return Err(DaemonError::Join {
                via: via.to_string(),
                source: err,
            });
        }
        tracing::warn!(
            "join through {via} failed (attempt {attempt}): {err}; retrying in {} ms",
            pause.as_millis()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
