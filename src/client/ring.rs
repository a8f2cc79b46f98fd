//! The client's view of the ring: every member sorted by id, so a key's primary and
//! replicas are found without a lookup. Refreshed by walking successor lists; when a
//! node turns out dead or not responsible, the view is refreshed and the call retried.

use super::Client;
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::{NodeState, Peer, Request, Response};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// Most nodes a walk will visit (bounds a walk of a broken or hostile ring).
pub const MAX_RING_WALK: usize = 10_000;

#[derive(Clone, Debug, Default)]
pub struct RingView {
    /// Members sorted by id.
    pub peers: Vec<Peer>,
    pub replicas: usize,
}

impl RingView {
    /// The key's primary and the nodes after it, in ring order (at most `n`).
    pub fn successors_of(&self, key: &Id, n: usize) -> Vec<Peer> {
        if self.peers.is_empty() {
            return vec![];
        }
        let start = self.peers.partition_point(|p| p.id < *key) % self.peers.len();
        (0..n.min(self.peers.len()))
            .map(|i| self.peers[(start + i) % self.peers.len()].clone())
            .collect()
    }
}

#[derive(Default)]
pub struct ViewCell {
    // Never held across an await: replaced whole after a walk.
    inner: RwLock<RingView>,
}

impl ViewCell {
    pub fn get(&self) -> RingView {
        self.inner.read().expect("view lock").clone()
    }

    fn set(&self, v: RingView) {
        *self.inner.write().expect("view lock") = v;
    }

    pub fn forget(&self, id: &Id) {
        let mut v = self.inner.write().expect("view lock");
        if v.peers.len() > 1 {
            v.peers.retain(|p| &p.id != id);
        }
    }
}

impl Client {
    pub fn view(&self) -> RingView {
        self.view.get()
    }

    pub(crate) async fn state_of(&self, addr: &str) -> Result<NodeState, RpcError> {
        match self
            .net
            .call(addr, Request::GetState, self.cfg.rpc_timeout)
            .await?
        {
            Response::State(s) => Ok(s),
            other => Err(RpcError::unexpected(addr, &other)),
        }
    }

    /// Walks the ring from `seed` along successor lists and replaces the view.
    pub async fn refresh_view_from(&self, seed: &str) -> Result<RingView, RpcError> {
        let first = self.state_of(seed).await?;
        let replicas = first.replicas.max(1) as usize;
        let mut members: BTreeMap<Id, Peer> = BTreeMap::new();
        members.insert(first.me.id, first.me.clone());
        let start = first.me.id;
        let mut state = first;
        for _ in 0..MAX_RING_WALK {
            for p in &state.successors {
                members.insert(p.id, p.clone());
            }
            // Jump to the farthest successor that answers, unless the list wrapped home.
            let wrapped = state.successors.iter().any(|p| p.id == start);
            if wrapped || members.len() >= MAX_RING_WALK {
                break;
            }
            let mut next = None;
            for p in state.successors.iter().rev() {
                if let Ok(s) = self.state_of(&p.addr).await {
                    next = Some(s);
                    break;
                }
                members.remove(&p.id);
            }
            match next {
                Some(s) if s.me.id != state.me.id => state = s,
                _ => break,
            }
        }
        let view = RingView {
            peers: members.into_values().collect(),
            replicas,
        };
        self.view.set(view.clone());
        Ok(view)
    }

    /// Refreshes the view through any member that answers.
    pub async fn refresh_view(&self) -> Result<RingView, RpcError> {
        let mut seeds: Vec<String> = self.view.get().peers.into_iter().map(|p| p.addr).collect();
        seeds.push(self.cfg.ring.clone());
        let mut last = None;
        for s in seeds.iter().rev() {
            match self.refresh_view_from(s).await {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(RpcError::Connect {
            addr: self.cfg.ring.clone(),
            reason: "no seed".into(),
        }))
    }

    /// A Chord lookup through any live member: the key's owner and its successors.
    pub async fn lookup(&self, key: &Id) -> Result<Vec<Peer>, RpcError> {
        let view = self.view.get();
        let mut avoid: Vec<Id> = Vec::new();
        let mut cur = view
            .successors_of(key, 1)
            .pop()
            .map(|p| p.addr)
            .unwrap_or_else(|| self.cfg.ring.clone());
        for _ in 0..crate::chord::node::MAX_LOOKUP_HOPS {
            let resp = self
                .net
                .call(
                    &cur,
                    Request::FindSuccessor {
                        key: *key,
                        avoid: avoid.clone(),
                    },
                    self.cfg.rpc_timeout,
                )
                .await;
            match resp {
                Ok(Response::Found { successors, .. }) => return Ok(successors),
                Ok(Response::Next { peer }) => cur = peer.addr,
                Ok(other) => return Err(RpcError::unexpected(&cur, &other)),
                Err(e) if e.is_unreachable() => {
                    if let Some(p) = view.peers.iter().find(|p| p.addr == cur) {
                        avoid.push(p.id);
                    }
                    // Start again from a member not yet found dead. Always going back to
                    // the seed spent every remaining hop on it once the seed itself died.
                    let failed = cur.clone();
                    cur = view
                        .peers
                        .iter()
                        .find(|p| !avoid.contains(&p.id) && p.addr != failed)
                        .map(|p| p.addr.clone())
                        .unwrap_or_else(|| self.cfg.ring.clone());
                }
                Err(e) => return Err(e),
            }
        }
        Err(RpcError::Unexpected {
            addr: cur,
            detail: "lookup did not converge".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_wrap_around_the_ring() {
        let peers: Vec<Peer> = [10u8, 20, 30]
            .iter()
            .map(|b| {
                let mut a = [0u8; 20];
                a[0] = *b;
                Peer {
                    id: Id(a),
                    addr: b.to_string(),
                }
            })
            .collect();
        let v = RingView { peers, replicas: 2 };
        let key = |b: u8| {
            let mut a = [0u8; 20];
            a[0] = b;
            Id(a)
        };
        let addrs = |k| {
            v.successors_of(&key(k), 2)
                .into_iter()
                .map(|p| p.addr)
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(15), ["20", "30"]);
        assert_eq!(addrs(20), ["20", "30"]);
        assert_eq!(addrs(31), ["10", "20"]);
        assert_eq!(v.successors_of(&key(5), 9).len(), 3);
    }
}
