//! The status sidecar (placeholder until the full one lands).

use crate::chord::Node;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve(_listener: TcpListener, _node: Arc<Node>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
