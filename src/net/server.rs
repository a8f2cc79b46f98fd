//! The server: accept (bounded), read frames, dispatch each request on its own task,
//! write replies in any order through one writer per connection.
//!
//! A frame that does not decode gets an error reply carrying its request id when that
//! much is readable; a frame over the size cap, or bytes that are not frames at all,
//! close the connection. Neither touches the rest of the node.

use crate::proto::{codec, ErrorKind, Request, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// Requests of one connection in progress at once; the reader pauses beyond that.
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 64;

/// Answers requests. Implemented by the node.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request) -> BoxFuture<'static, Response>;

    /// Told of every frame refused as malformed or out of bounds (for metrics).
    fn bad_request(&self) {}
}

/// Serves `listener` until `shutdown` is cancelled, with no cluster secret.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    serve_with_secret(listener, handler, shutdown, Arc::from(&[][..])).await
}

/// Serves `listener` until `shutdown` is cancelled; every connection must first prove it
/// knows `secret` (empty: no secret) before any request of it is read.
pub async fn serve_with_secret<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    secret: Arc<[u8]>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let (h, s, k) = (handler.clone(), shutdown.clone(), secret.clone());
                tokio::spawn(async move {
                    let mut stream = stream;
                    let timeout =
                        std::time::Duration::from_millis(super::auth::HANDSHAKE_TIMEOUT_MS);
                    if let Err(e) = super::auth::server_handshake(&mut stream, &k, timeout).await {
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        tracing::warn!(%peer, "connection refused: {e}");
                        return;
                    }
                    serve_connection(stream, h, s).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (rd, wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, codec::framing());
    let mut sink = FramedWrite::new(wr, codec::framing());
    let (tx, mut rx) = mpsc::channel::<Bytes>(MAX_INFLIGHT_PER_CONNECTION);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
    });
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_PER_CONNECTION));
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            f = frames.next() => f,
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                handler.bad_request();
                tracing::debug!(%peer, "closing connection: {e}");
                break;
            }
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        match codec::decode::<Request>(&frame) {
            Ok(env) => {
                let (h, tx) = (handler.clone(), tx.clone());
                tokio::spawn(async move {
                    let resp = match env.body.validate() {
                        Ok(()) => h.handle(env.body).await,
                        Err(msg) => {
                            h.bad_request();
                            Response::error(ErrorKind::BadRequest, msg)
                        }
                    };
                    reply(&tx, env.id, &resp).await;
                    drop(permit);
                });
            }
            Err(e) => {
                handler.bad_request();
                tracing::debug!(%peer, "bad frame: {e}");
                let resp = Response::error(ErrorKind::BadRequest, e.to_string());
                match codec::salvage_id(&frame) {
                    Some(id) => reply(&tx, id, &resp).await,
                    None => {
                        // Not even an envelope: the stream cannot be trusted any further.
                        reply(&tx, 0, &resp).await;
                        break;
                    }
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn reply(tx: &mpsc::Sender<Bytes>, id: u64, resp: &Response) {
    let frame = match codec::encode_sized(id, resp, resp.payload_len()) {
        Ok(f) => f,
        Err(e) => match codec::encode(id, &Response::error(ErrorKind::Internal, e.to_string())) {
            Ok(f) => f,
            Err(_) => return,
        },
    };
    let _ = tx.send(frame).await;
}
