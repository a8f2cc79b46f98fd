//! The client's view of the ring: every member sorted by id, so a key's primary and
//! replicas are found without a lookup. Refreshed by walking successor lists; when a
//! node turns out dead or not responsible, the view is refreshed and the call retried.

use super::Client;
use crate::id::Id;
use crate::net::RpcError;
use crate::proto::{NodeState, Peer, Request, Response};
use crate::ring::lookup::{Action, Walk};
use crate::ring::walk::{MemberWalk, Next};
use crate::ring::{placement, Step};
use std::sync::RwLock;

#[derive(Clone, Debug, Default)]
pub struct RingView {
    /// Members sorted by id.
    pub peers: Vec<Peer>,
    pub replicas: usize,
}

impl RingView {
    /// The key's primary and the nodes after it, in ring order (at most `n`).
    pub fn successors_of(&self, key: &Id, n: usize) -> Vec<Peer> {
        placement::holders(&self.peers, key, n).cloned().collect()
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

    /// Walks the ring from `seed` along successor lists and replaces the view (see
    /// [`MemberWalk::leaping`]).
    pub async fn refresh_view_from(&self, seed: &str) -> Result<RingView, RpcError> {
        let first = self.state_of(seed).await?;
        let replicas = first.replicas.max(1) as usize;
        let mut walk = MemberWalk::leaping(first);
        let peers = loop {
            match walk.next_action() {
                Next::Ask(p) => match self.state_of(&p.addr).await {
                    Ok(s) => walk.answered(s),
                    Err(e) => walk.silent(e.to_string()),
                },
                Next::Done(peers) => break peers,
                // A leaping walk neither comes home nor fails: what it found is the view.
                Next::Home | Next::Failed(_) => break walk.members().cloned().collect(),
            }
        };
        let view = RingView { peers, replicas };
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

    /// A Chord lookup through any live member: the key's owner and its successors (see
    /// [`Walk::from_client`]).
    pub async fn lookup(&self, key: &Id) -> Result<Vec<Peer>, RpcError> {
        let view = self.view.get();
        let first = view
            .successors_of(key, 1)
            .pop()
            .map(|p| p.addr)
            .unwrap_or_else(|| self.cfg.ring.clone());
        let mut walk = Walk::from_client(*key, first, view.peers, self.cfg.ring.clone());
        loop {
            let cur = match walk.next_action() {
                Action::Ask(addr) => addr,
                Action::Found { successors, .. } => return Ok(successors),
                Action::Local | Action::NotConverged => {
                    return Err(RpcError::Unexpected {
                        addr: walk.asked().to_string(),
                        detail: "lookup did not converge".into(),
                    })
                }
            };
            let req = Request::FindSuccessor {
                key: *key,
                avoid: walk.avoid().to_vec(),
            };
            match self.net.call(&cur, req, self.cfg.rpc_timeout).await {
                Ok(Response::Found { from, successors }) => {
                    walk.stepped(Step::Found { from, successors })
                }
                Ok(Response::Next { peer }) => walk.stepped(Step::Next(peer)),
                Ok(other) => return Err(RpcError::unexpected(&cur, &other)),
                Err(e) if e.is_unreachable() => walk.unreachable(),
                Err(e) => return Err(e),
            }
        }
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
