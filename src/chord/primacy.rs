//! The primary's check, before it acknowledges a record write, that the key is still its
//! to write: it asks its neighbours for their views and decides with the rules of
//! [`crate::ring::primacy`].

use super::records::Records;
use crate::id::Id;
use crate::proto::{Peer, Request, Response};
use crate::ring::primacy::neighbour_doubt;
use std::time::Duration;

impl Records {
    /// Checks, with this node's neighbours, that it may act as the primary of `key` with
    /// its current successors as replicas; returns why not, if not. A node that may be
    /// cut off from most of the ring, a live peer met lately inside the key's range, a
    /// neighbour's view that disagrees ([`neighbour_doubt`]) or a neighbour that does not
    /// answer are doubts: a predecessor that missed the question may be the one that
    /// knows better, and the write waits until check_predecessor has settled who it is.
    pub(super) async fn primacy_doubt(&self, key: &Id) -> Option<String> {
        let core = &self.core;
        if let Some((live, lost)) = core.outnumbered() {
            return Some(format!(
                "it sees {live} live nodes and has lost {lost}: it may be cut off from most of the ring"
            ));
        }
        let (pred, succ) = {
            let r = core.routing.read().expect("routing lock");
            (r.predecessor.clone(), r.successor().clone())
        };
        let ask = |p: Option<Peer>| async move {
            match p {
                Some(p) if p.id != core.me.id => match core.call(&p, Request::GetState).await {
                    Ok(Response::State(st)) => Ok(Some((p, st))),
                    _ => Err(p.addr),
                },
                _ => Ok(None),
            }
        };
        let (from_pred, from_succ, inside) =
            tokio::join!(ask(pred), ask(Some(succ)), self.live_peer_before(key));
        if let Some(peer) = inside {
            return Some(format!(
                "{} answers, and its id lies between the key and this node",
                peer.addr
            ));
        }
        let (from_pred, from_succ) = match (from_pred, from_succ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(addr), _) | (_, Err(addr)) => {
                return Some(format!("its neighbour {addr} did not answer"))
            }
        };
        let replicas: Vec<Id> = core.replica_targets().iter().map(|p| p.id).collect();
        let want = core.cfg.replicas.saturating_sub(1);
        neighbour_doubt(
            &core.me.id,
            key,
            from_pred.as_ref(),
            from_succ.as_ref(),
            &replicas,
            want,
        )
    }

    /// A peer met lately (not lost) whose id lies between `key` and this node, and that
    /// answers a ping: the key is then not in this node's range, whatever its neighbours
    /// say (a few nodes can share a view that skips live ones, and each neighbour check
    /// passes inside it). Peers that do not answer leave the list of peers met, so that
    /// a dead one costs one short wait, not one per write.
    async fn live_peer_before(&self, key: &Id) -> Option<Peer> {
        let core = &self.core;
        let inside: Vec<Peer> = {
            let book = core.book();
            book.seen()
                .iter()
                .filter(|p| p.id != core.me.id && (p.id == *key || p.id.in_open(key, &core.me.id)))
                .filter(|p| !book.is_lost(&p.id))
                .take(4)
                .cloned()
                .collect()
        };
        if inside.is_empty() {
            return None;
        }
        let wait = core.cfg.rpc_timeout.min(Duration::from_millis(500));
        let pings = inside
            .iter()
            .map(|p| async move { (p, core.net.call(&p.addr, Request::Ping, wait).await) });
        let mut live = None;
        for (p, res) in futures::future::join_all(pings).await {
            match res {
                Ok(Response::Pong { id }) if id == p.id => live = live.or(Some(p.clone())),
                Ok(_) => {}
                Err(_) => core.book().forget_seen(&p.id),
            }
        }
        live
    }
}
