//! The whole ring's status: one row a node, gathered by asking each member. Used by
//! `chordfs status` and the sidecar's `/ring`.

use super::{Client, RingView};
use crate::proto::{Request, Response};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub addr: String,
    pub predecessor: Option<String>,
    pub successor: Option<String>,
    pub chunks: Option<u64>,
    pub records: Option<u64>,
    pub bytes: Option<u64>,
    /// Fraction of the id circle this node is primary for.
    pub share: f64,
    pub reachable: bool,
}

/// Fraction of the circle in (from, to].
pub fn arc(from: &crate::id::Id, to: &crate::id::Id) -> f64 {
    let d = to.fraction() - from.fraction();
    if d <= 0.0 {
        d + 1.0
    } else {
        d
    }
}

pub async fn ring_status(client: &Client, view: &RingView) -> Vec<NodeRow> {
    let n = view.peers.len();
    let rows = view.peers.iter().enumerate().map(|(i, p)| async move {
        let prev = &view.peers[(i + n - 1) % n];
        let share = if n == 1 { 1.0 } else { arc(&prev.id, &p.id) };
        let t = client.cfg.rpc_timeout;
        let state = client.net.call(&p.addr, Request::GetState, t).await;
        let stats = client.net.call(&p.addr, Request::Stats, t).await;
        let (predecessor, successor, reachable) = match state {
            Ok(Response::State(s)) => (
                s.predecessor.map(|p| p.id.to_hex()),
                s.successors.first().map(|p| p.id.to_hex()),
                true,
            ),
            _ => (None, None, false),
        };
        let (chunks, records, bytes) = match stats {
            Ok(Response::Stats(s)) => (Some(s.chunks), Some(s.records), Some(s.bytes)),
            _ => (None, None, None),
        };
        NodeRow {
            id: p.id.to_hex(),
            addr: p.addr.clone(),
            predecessor,
            successor,
            chunks,
            records,
            bytes,
            share,
            reachable,
        }
    });
    futures::future::join_all(rows).await
}

impl Client {
    /// Asks one node to run a garbage-collection sweep now; `timeout` bounds the sweep
    /// (it reads every record of the ring).
    pub async fn collect_garbage(
        &self,
        addr: &str,
        timeout: std::time::Duration,
    ) -> Result<crate::proto::GcReport, crate::net::RpcError> {
        match self
            .net
            .call(addr, Request::CollectGarbage, timeout)
            .await?
        {
            Response::Collected(r) => Ok(r),
            other => Err(crate::net::RpcError::unexpected(addr, &other)),
        }
    }
}
