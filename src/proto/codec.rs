//! Frames: `LengthDelimitedCodec` (4-byte length, capped) around MessagePack bodies.
//!
//! Decoding a body is a pure function over bytes, so it is fuzzed and property-tested
//! without sockets.

use super::{Envelope, FRAME_MAX_BYTES};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("frame does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("frame of {0} bytes exceeds the cap of {FRAME_MAX_BYTES}")]
    TooLarge(usize),
}

/// The framing codec every connection uses: lengths above the cap are an error before
/// any of the frame is buffered.
pub fn framing() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(FRAME_MAX_BYTES)
        .new_codec()
}

pub fn encode<T: Serialize>(id: u64, body: &T) -> Result<Bytes, CodecError> {
    encode_sized(id, body, 0)
}

/// Encodes into a buffer sized for `payload` bytes of data up front, so a chunk is
/// copied into the frame once instead of through a series of growing buffers.
pub fn encode_sized<T: Serialize>(id: u64, body: &T, payload: usize) -> Result<Bytes, CodecError> {
    let mut bytes = Vec::with_capacity(payload + 128);
    rmp_serde::encode::write(&mut bytes, &Envelope { id, body })?;
    if bytes.len() > FRAME_MAX_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(Bytes::from(bytes))
}

pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<Envelope<T>, CodecError> {
    Ok(rmp_serde::from_slice(frame)?)
}

/// The request id of a frame whose body did not decode, when at least that is readable,
/// so the error reply can still be matched by the caller.
pub fn salvage_id(frame: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: u64,
        #[allow(dead_code)]
        body: serde::de::IgnoredAny,
    }
    rmp_serde::from_slice::<IdOnly>(frame).ok().map(|e| e.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::proto::{Request, Response};
    use bytes::BytesMut;
    use proptest::prelude::*;
    use tokio_util::codec::Decoder;

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Ping,
            Request::FindSuccessor {
                key: Id::hash(b"k"),
                avoid: vec![Id::hash(b"x")],
            },
            Request::PutChunk {
                key: Id::hash(b"data"),
                data: Bytes::from_static(b"data"),
                replicate: true,
            },
            Request::HaveKeys {
                keys: vec![Id::ZERO; 3],
            },
        ];
        for (i, r) in reqs.into_iter().enumerate() {
            let f = encode(i as u64, &r).unwrap();
            let e: Envelope<Request> = decode(&f).unwrap();
            assert_eq!(e.id, i as u64);
            assert_eq!(e.body, r);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut codec = framing();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(u32::MAX).to_be_bytes());
        buf.extend_from_slice(b"abc");
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn a_truncated_frame_waits_for_more() {
        let mut codec = framing();
        let f = encode(7, &Request::Ping).unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
        buf.extend_from_slice(&f[..f.len() - 1]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&f[f.len() - 1..]);
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decode::<Request>(&frame).unwrap().id, 7);
    }

    #[test]
    fn an_unknown_message_keeps_its_id() {
        #[derive(serde::Serialize)]
        enum Alien {
            Teleport { to: u32 },
        }
        let f = encode(42, &Alien::Teleport { to: 1 }).unwrap();
        assert!(decode::<Request>(&f).is_err());
        assert_eq!(salvage_id(&f), Some(42));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = salvage_id(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(pos in any::<usize>(), byte in any::<u8>()) {
            let r = Request::CasRecord {
                key: Id::hash(b"k"),
                expect: 3,
                record: crate::proto::Record::Inode(Box::new(crate::proto::Inode::new(
                    crate::proto::Kind::File, 0o644, 0, 0, Id::ZERO, 1 << 20))),
            };
            let mut f = encode(1, &r).unwrap().to_vec();
            let i = pos % f.len();
            f[i] = byte;
            let _ = decode::<Request>(&f);
        }
    }
}
