//! The one client library, shared by the CLI and the FUSE mount: a cached view of the
//! ring, chunk and record operations with replica fallback, and the file tree on top.
//!
//! ```text
//!  files.rs  put/get streams, chunking        tree.rs  paths, inodes, directories
//!        \______________________  ____________________/
//!                               \/
//!  kv.rs     chunks (content-addressed, cached) and records (versioned, CAS)
//!                               |
//!  view.rs   sorted membership: the key's primary in one hop, Chord lookup when stale
//!
//!  locks.rs  a mount's file locks at each file's primary, and their lease
//! ```

pub mod exchange;
pub mod files;
pub mod keep;
pub mod kv;
pub mod locks;
pub mod ranges;
mod retry;
pub mod status;
pub mod tree;
pub mod view;

use crate::net::{RpcError, TcpTransport, Transport};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub use files::Progress;
pub use view::RingView;

/// Default chunk size: 256 KiB measured as fast as 1-8 MiB for put and faster for get
/// here, with 4x less read-modify-write for small random writes (docs/benchmarks.md).
pub const DEFAULT_CHUNK_BYTES: u32 = 256 * 1024;
/// Chunks uploaded or fetched at once by one stream.
pub const DEFAULT_PARALLEL_CHUNKS: usize = 16;
/// Default size of the client's chunk cache.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// The ring address when neither `--ring` nor `$CHORDFS_RING` says otherwise.
pub const DEFAULT_RING: &str = "127.0.0.1:7400";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// An extended attribute the inode does not have.
    #[error("no such attribute: {0}")]
    NoAttribute(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDir(String),
    #[error("is a directory: {0}")]
    IsDir(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no replica answered for {what}: {last}")]
    Unavailable { what: String, last: String },
    #[error("too many concurrent updates of {0}; giving up")]
    Contended(String),
    #[error("ring unreachable at {addr}: {source}")]
    NoRing { addr: String, source: RpcError },
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub ring: String,
    pub chunk_bytes: u32,
    pub parallel_chunks: usize,
    pub cache_bytes: u64,
    /// Per-RPC timeout.
    pub rpc_timeout: Duration,
    /// How long one operation may keep trying other replicas before it fails.
    pub op_timeout: Duration,
    /// The cluster secret (None: the ring has none).
    pub secret: Option<Arc<[u8]>>,
}

impl ClientConfig {
    pub fn new(ring: impl Into<String>) -> ClientConfig {
        ClientConfig {
            ring: ring.into(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            parallel_chunks: DEFAULT_PARALLEL_CHUNKS,
            cache_bytes: DEFAULT_CACHE_BYTES,
            rpc_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(10),
            secret: None,
        }
    }
}

pub struct Client {
    pub cfg: ClientConfig,
    pub(crate) net: Arc<dyn Transport>,
    pub(crate) view: view::ViewCell,
    pub(crate) cache: moka::future::Cache<crate::id::Id, Bytes>,
}

impl Client {
    /// Connects to the ring through `cfg.ring` and learns its membership.
    pub async fn connect(cfg: ClientConfig) -> Result<Arc<Client>> {
        let net = TcpTransport::with_secret(cfg.secret.clone());
        Self::with_transport(cfg, net).await
    }

    pub async fn with_transport(cfg: ClientConfig, net: Arc<dyn Transport>) -> Result<Arc<Client>> {
        if cfg.chunk_bytes == 0 || cfg.chunk_bytes as usize > crate::proto::CHUNK_MAX_BYTES {
            return Err(ClientError::Invalid(format!(
                "chunk size {} must be between 1 and {}",
                cfg.chunk_bytes,
                crate::proto::CHUNK_MAX_BYTES
            )));
        }
        // LRU, not moka's default TinyLFU: TinyLFU refuses a new entry once the cache is
        // full unless it was asked for more often than the one it would evict, so a
        // sequential read's prefetched chunks (each asked for once) were dropped on
        // arrival and fetched again when read: 1,827 fetches for a 1,024-chunk file.
        let cache = moka::future::Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity(cfg.cache_bytes)
            .weigher(|_k: &crate::id::Id, v: &Bytes| v.len().min(u32::MAX as usize) as u32)
            .build();
        let client = Arc::new(Client {
            view: view::ViewCell::default(),
            net,
            cfg,
            cache,
        });
        let seed = client.cfg.ring.clone();
        client
            .refresh_view_from(&seed)
            .await
            .map_err(|source| ClientError::NoRing {
                addr: seed.clone(),
                source,
            })?;
        Ok(client)
    }
}
