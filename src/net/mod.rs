//! Transport: how a request reaches a peer. The ring and the client speak to a
//! [`Transport`], so a simulated network can stand in for TCP.

pub mod auth;
pub mod client;
pub mod server;

use crate::proto::{ErrorKind, Request, Response};
use futures::future::BoxFuture;
use std::time::Duration;

pub use client::TcpTransport;
pub use server::{serve, serve_with_secret, Handler};

/// Default time an RPC may take before it fails.
pub const RPC_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not answer within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("connection to {addr} lost mid-request")]
    Disconnected { addr: String },
    #[error("{addr} answered with an error ({kind:?}): {message}")]
    Remote {
        addr: String,
        kind: ErrorKind,
        message: String,
    },
    #[error("{addr} sent an unexpected answer: {detail}")]
    Unexpected { addr: String, detail: String },
    #[error("{addr} refused us: {reason}")]
    Auth { addr: String, reason: String },
    #[error("wire error: {0}")]
    Codec(String),
}

impl RpcError {
    /// True when the peer may be down or unreachable, or is leaving the ring (so try
    /// another), as opposed to having answered.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RpcError::Connect { .. }
                | RpcError::Timeout { .. }
                | RpcError::Disconnected { .. }
                | RpcError::Remote {
                    kind: ErrorKind::ShuttingDown,
                    ..
                }
        )
    }

    pub fn unexpected(addr: &str, resp: &Response) -> RpcError {
        let mut detail = format!("{resp:?}");
        detail.truncate(200);
        RpcError::Unexpected {
            addr: addr.to_string(),
            detail,
        }
    }
}

/// Sends one request to `addr` and waits for its answer. An `Error` response comes back
/// as `RpcError::Remote`.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response, RpcError>>;
}
