//! Mutual authentication of a connection by challenge-response over the cluster secret,
//! done before a single request frame is read.
//!
//! ```text
//! client -> server   Hello     { version, nonce_c }
//! server -> client   Challenge { nonce_s, proof_s = HMAC(secret, "server" | nonce_c | nonce_s) }
//! client -> server   Proof     { proof_c = HMAC(secret, "client" | nonce_s | nonce_c) }
//! ```
//! Each side proves it knows the secret without sending it, and fresh nonces on both sides
//! keep a recorded exchange from being replayed. Without a configured secret both sides
//! use the empty key, so a node with a secret refuses a peer without one, and vice versa.
//! Handshake frames are tiny and read with their own 1 KiB cap.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha1::Sha1;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest handshake frame accepted.
const HANDSHAKE_MAX_BYTES: usize = 1024;
/// Time a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
const NONCE_BYTES: usize = 32;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("peer does not know the cluster secret")]
    BadProof,
    #[error("refused by the peer: {0}")]
    Denied(String),
    #[error("handshake protocol error: {0}")]
    Protocol(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("handshake I/O: {0}")]
    Io(String),
}

#[derive(Serialize, Deserialize)]
enum Handshake {
    Hello { version: u32, nonce: ByteBuf },
    Challenge { nonce: ByteBuf, proof: ByteBuf },
    Proof { proof: ByteBuf },
    Denied { reason: String },
}

/// Reads a cluster secret file: its bytes, without a trailing newline. Empty is an error.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the secret file is empty",
        ));
    }
    Ok(bytes)
}

fn proof(secret: &[u8], role: &[u8], first: &[u8], second: &[u8]) -> Hmac<Sha1> {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac
}

async fn send(stream: &mut TcpStream, msg: &Handshake) -> Result<(), AuthError> {
    let body = rmp_serde::to_vec(msg).map_err(|e| AuthError::Protocol(e.to_string()))?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream
        .write_all(&frame)
        .await
        .map_err(|e| AuthError::Io(e.to_string()))
}

async fn recv(stream: &mut TcpStream) -> Result<Handshake, AuthError> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| AuthError::Io(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > HANDSHAKE_MAX_BYTES {
        return Err(AuthError::Protocol(format!(
            "handshake frame of {len} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| AuthError::Io(e.to_string()))?;
    rmp_serde::from_slice(&body).map_err(|e| AuthError::Protocol(e.to_string()))
}

fn nonce() -> ByteBuf {
    ByteBuf::from(rand::random::<[u8; NONCE_BYTES]>().to_vec())
}

/// The connecting side.
pub async fn client_handshake(
    stream: &mut TcpStream,
    secret: &[u8],
    timeout: Duration,
) -> Result<(), AuthError> {
    let run = async {
        let mine = nonce();
        send(
            stream,
            &Handshake::Hello {
                version: crate::proto::PROTOCOL_VERSION,
                nonce: mine.clone(),
            },
        )
        .await?;
        let (theirs, their_proof) = match recv(stream).await? {
            Handshake::Challenge { nonce, proof } => (nonce, proof),
            Handshake::Denied { reason } => return Err(AuthError::Denied(reason)),
            _ => return Err(AuthError::Protocol("expected a challenge".into())),
        };
        if theirs.len() != NONCE_BYTES {
            return Err(AuthError::Protocol("bad nonce".into()));
        }
        proof(secret, b"chordfs-server\0", &mine, &theirs)
            .verify_slice(&their_proof)
            .map_err(|_| AuthError::BadProof)?;
        let p = proof(secret, b"chordfs-client\0", &theirs, &mine)
            .finalize()
            .into_bytes();
        send(
            stream,
            &Handshake::Proof {
                proof: ByteBuf::from(p.to_vec()),
            },
        )
        .await
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| AuthError::Timeout)?
}

/// The accepting side: on failure the peer is told why (without detail that helps an
/// attacker) and the connection is to be closed.
pub async fn server_handshake(
    stream: &mut TcpStream,
    secret: &[u8],
    timeout: Duration,
) -> Result<(), AuthError> {
    let run = async {
        let theirs = match recv(stream).await? {
            Handshake::Hello { nonce, .. } if nonce.len() == NONCE_BYTES => nonce,
            _ => return Err(AuthError::Protocol("expected a hello".into())),
        };
        let mine = nonce();
        let p = proof(secret, b"chordfs-server\0", &theirs, &mine)
            .finalize()
            .into_bytes();
        send(
            stream,
            &Handshake::Challenge {
                nonce: mine.clone(),
                proof: ByteBuf::from(p.to_vec()),
            },
        )
        .await?;
        let their_proof = match recv(stream).await? {
            Handshake::Proof { proof } => proof,
            Handshake::Denied { reason } => return Err(AuthError::Denied(reason)),
            _ => return Err(AuthError::Protocol("expected a proof".into())),
        };
        if proof(secret, b"chordfs-client\0", &mine, &theirs)
            .verify_slice(&their_proof)
            .is_err()
        {
            let _ = send(
                stream,
                &Handshake::Denied {
                    reason: "authentication failed".into(),
                },
            )
            .await;
            return Err(AuthError::BadProof);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| AuthError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        server_secret: &'static [u8],
        client_secret: &'static [u8],
    ) -> (Result<(), AuthError>, Result<(), AuthError>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(5);
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            server_handshake(&mut s, server_secret, t).await
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let client = client_handshake(&mut c, client_secret, t).await;
        drop(c); // as a real client does on failure: the server sees the close at once
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn matching_secrets_pass_both_ways() {
        assert_eq!(pair(b"s3cret", b"s3cret").await, (Ok(()), Ok(())));
        assert_eq!(pair(b"", b"").await, (Ok(()), Ok(())));
    }

    #[tokio::test]
    async fn a_wrong_or_missing_secret_is_refused() {
        let (server, client) = pair(b"s3cret", b"guess").await;
        assert!(server.is_err());
        assert_eq!(
            client,
            Err(AuthError::BadProof),
            "the client detects the server's bad proof"
        );
        let (server, client) = pair(b"s3cret", b"").await;
        assert!(server.is_err() && client.is_err());
        let (server, client) = pair(b"", b"s3cret").await;
        assert!(server.is_err() && client.is_err());
    }

    #[tokio::test]
    async fn a_huge_or_garbage_hello_is_refused_without_allocating() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            server_handshake(&mut s, b"k", Duration::from_secs(5)).await
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(server.await.unwrap(), Err(AuthError::Protocol(_))));
    }
}
