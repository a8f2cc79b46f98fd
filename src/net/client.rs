//! The TCP transport: one multiplexed connection per peer, pooled, with a timeout on
//! every call.
//!
//! A connection is a writer task fed by a channel and a reader task that completes the
//! pending calls by request id. When either side fails, every pending call fails with
//! `Disconnected` and the pool opens a fresh connection on the next call.
//!
//! A call that times out on a connection which has heard nothing since the call was sent
//! takes that connection out of the pool: its peer has gone silent (a cut cable, a
//! partition, a frozen process). Kept, every later call would queue behind TCP's
//! retransmission backoff, which reaches tens of seconds, and a healed link would come
//! back that much later. Calls already waiting on it keep it until they end.

use super::{RpcError, Transport};
use crate::proto::{codec, Envelope, Request, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Frames queued for one connection's writer before callers wait.
const WRITE_QUEUE_FRAMES: usize = 256;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

struct Conn {
    tx: mpsc::Sender<Bytes>,
    // Never held across an await: inserted/removed around a send.
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    /// Frames received so far: unchanged over a call, the peer said nothing meanwhile.
    heard: Arc<AtomicU64>,
    /// The reader task, ended with the connection (its socket may never hear again).
    reader: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Default, Clone)]
pub struct TcpTransport {
    inner: Arc<Pool>,
}

#[derive(Default)]
struct Pool {
    /// The cluster secret (empty: none).
    secret: Arc<[u8]>,
    // Never held across an await: connecting happens outside, then the result is stored.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
}

impl TcpTransport {
    pub fn new() -> Arc<TcpTransport> {
        Arc::new(TcpTransport::default())
    }

    /// A transport that authenticates every connection with the cluster secret.
    pub fn with_secret(secret: Option<Arc<[u8]>>) -> Arc<TcpTransport> {
        let pool = Pool {
            secret: secret.unwrap_or_else(|| Arc::from(&[][..])),
            ..Pool::default()
        };
        Arc::new(TcpTransport {
            inner: Arc::new(pool),
        })
    }

    pub async fn request(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        self.inner.request(addr, req, timeout).await
    }
}

impl Pool {
    async fn connect(addr: &str, secret: &[u8]) -> Result<Arc<Conn>, RpcError> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| RpcError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let timeout = std::time::Duration::from_millis(super::auth::HANDSHAKE_TIMEOUT_MS);
        match super::auth::client_handshake(&mut stream, secret, timeout).await {
            Ok(()) => {}
            Err(super::auth::AuthError::Io(reason)) => {
                return Err(RpcError::Connect {
                    addr: addr.to_string(),
                    reason,
                })
            }
            Err(super::auth::AuthError::Timeout) => {
                return Err(RpcError::Timeout {
                    addr: addr.to_string(),
                    ms: super::auth::HANDSHAKE_TIMEOUT_MS,
                })
            }
            Err(e) => {
                return Err(RpcError::Auth {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })
            }
        }
        let (rd, wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_FRAMES);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        let mut sink = FramedWrite::new(wr, codec::framing());
        let closed_w = closed.clone();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            closed_w.store(true, Ordering::Release);
        });

        let mut stream = FramedRead::new(rd, codec::framing());
        let (pending_r, closed_r) = (pending.clone(), closed.clone());
        let heard = Arc::new(AtomicU64::new(0));
        let heard_r = heard.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                heard_r.fetch_add(1, Ordering::AcqRel);
                match codec::decode::<Response>(&frame) {
                    Ok(Envelope { id, body }) => {
                        let waiter = pending_r.lock().expect("pending lock").remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(body);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("undecodable reply: {e}");
                        break;
                    }
                }
            }
            closed_r.store(true, Ordering::Release);
            // Dropping the senders fails every waiter with Disconnected.
            pending_r.lock().expect("pending lock").clear();
        });
        Ok(Arc::new(Conn {
            tx,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            heard,
            reader: reader.abort_handle(),
        }))
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, RpcError> {
        if let Some(c) = self.conns.lock().expect("pool lock").get(addr) {
            if !c.closed.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let c = Self::connect(addr, &self.secret).await?;
        self.conns
            .lock()
            .expect("pool lock")
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Takes a silent connection out of the pool (if it is still the pooled one).
    fn evict(&self, addr: &str, conn: &Arc<Conn>) {
        conn.closed.store(true, Ordering::Release);
        let mut conns = self.conns.lock().expect("pool lock");
        if conns.get(addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(addr);
            tracing::debug!("{addr}: silent connection dropped");
        }
    }

    async fn request(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let ms = timeout.as_millis() as u64;
        let timed_out = || RpcError::Timeout {
            addr: addr.to_string(),
            ms,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = tokio::time::timeout_at(deadline, self.conn(addr))
            .await
            .map_err(|_| timed_out())??;
        let heard_before = conn.heard.load(Ordering::Acquire);
        let fut = async {
            let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
            let frame = codec::encode_sized(id, &req, req.payload_len())
                .map_err(|e| RpcError::Codec(e.to_string()))?;
            let (tx, rx) = oneshot::channel();
            conn.pending.lock().expect("pending lock").insert(id, tx);
            let guard = PendingGuard {
                pending: &conn.pending,
                id,
            };
            if conn.tx.send(frame).await.is_err() {
                return Err(RpcError::Disconnected {
                    addr: addr.to_string(),
                });
            }
            let resp = rx.await.map_err(|_| RpcError::Disconnected {
                addr: addr.to_string(),
            });
            drop(guard);
            resp
        };
        let resp = match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r?,
            Err(_) => {
                if conn.heard.load(Ordering::Acquire) == heard_before {
                    self.evict(addr, &conn);
                }
                return Err(timed_out());
            }
        };
        match resp {
            Response::Error { kind, message } => Err(RpcError::Remote {
                addr: addr.to_string(),
                kind,
                message,
            }),
            r => Ok(r),
        }
    }
}

/// Removes a pending entry when the call ends, whether answered, failed or timed out.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
    }
}

impl Transport for TcpTransport {
    fn call(
        &self,
        addr: &str,
        req: Request,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Response, RpcError>> {
        let inner = self.inner.clone();
        let addr = addr.to_string();
        Box::pin(async move { inner.request(&addr, req, timeout).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::server::{serve, Handler};
    use tokio_util::sync::CancellationToken;

    /// Answers Ping; never answers anything else (a peer gone silent).
    struct Silent;

    impl Handler for Silent {
        fn handle(self: Arc<Self>, req: Request) -> BoxFuture<'static, Response> {
            Box::pin(async move {
                if matches!(req, Request::Ping) {
                    return Response::Pong {
                        id: crate::id::Id::hash(b"silent"),
                    };
                }
                futures::future::pending::<Response>().await
            })
        }
    }

    #[tokio::test]
    async fn a_silent_connection_leaves_the_pool() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(Silent), stop.clone()));
        let net = TcpTransport::new();
        let t = Duration::from_millis(300);
        assert!(matches!(
            net.request(&addr, Request::Ping, t).await,
            Ok(Response::Pong { .. })
        ));
        assert_eq!(
            net.inner.conns.lock().unwrap().len(),
            1,
            "an answering peer stays"
        );
        let r = net.request(&addr, Request::GetState, t).await;
        assert!(matches!(r, Err(RpcError::Timeout { .. })), "{r:?}");
        assert!(
            net.inner.conns.lock().unwrap().is_empty(),
            "a silent one leaves"
        );
        // The next call connects afresh.
        assert!(matches!(
            net.request(&addr, Request::Ping, t).await,
            Ok(Response::Pong { .. })
        ));
        stop.cancel();
    }
}
