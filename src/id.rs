//! 160-bit identifiers on the Chord ring: SHA-1 of a name or of content.
//!
//! Ring arithmetic is modulo 2^160. Intervals follow the paper: `(a, b]` with `a == b`
//! covering the whole ring, so a lone node is responsible for every key.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha1::{Digest, Sha1};
use std::fmt;
use std::str::FromStr;

/// Bytes in an id (SHA-1 digest size).
pub const ID_BYTES: usize = 20;
/// Bits in an id, and so fingers in a finger table.
pub const ID_BITS: usize = ID_BYTES * 8;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; ID_BYTES]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a 40-digit hex id: {0:?}")]
pub struct ParseIdError(pub String);

impl Id {
    pub const ZERO: Id = Id([0; ID_BYTES]);

    /// SHA-1 of `data`.
    pub fn hash(data: &[u8]) -> Id {
        Id(Sha1::digest(data).into())
    }

    pub fn random() -> Id {
        Id(rand::random())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 16 hex digits, for logs and pages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }

    /// The top 64 bits, as a number (for FUSE inode numbers and pictures).
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// Position on the ring as a fraction of the circle in [0, 1).
    pub fn fraction(&self) -> f64 {
        self.prefix_u64() as f64 / 18_446_744_073_709_551_616.0
    }

    /// `self + 2^bit` modulo 2^160.
    pub fn add_pow2(&self, bit: usize) -> Id {
        assert!(bit < ID_BITS, "bit {bit} out of range");
        let mut out = self.0;
        let mut byte = ID_BYTES - 1 - bit / 8;
        let mut carry = 1u16 << (bit % 8);
        loop {
            let sum = out[byte] as u16 + carry;
            out[byte] = sum as u8;
            carry = sum >> 8;
            if carry == 0 || byte == 0 {
                break;
            }
            byte -= 1;
        }
        Id(out)
    }

    /// `self - 1` modulo 2^160.
    pub fn pred(&self) -> Id {
        let mut out = self.0;
        for b in out.iter_mut().rev() {
            let (v, borrow) = b.overflowing_sub(1);
            *b = v;
            if !borrow {
                break;
            }
        }
        Id(out)
    }

    /// True when `self` lies in the ring interval `(a, b]`. `a == b` is the whole ring.
    pub fn in_open_closed(&self, a: &Id, b: &Id) -> bool {
        if a == b {
            return true;
        }
        if a < b {
            a < self && self <= b
        } else {
            self > a || self <= b
        }
    }

    /// True when `self` lies in the open ring interval `(a, b)`. `a == b` is the ring but `a`.
    pub fn in_open(&self, a: &Id, b: &Id) -> bool {
        if a == b {
            return self != a;
        }
        if a < b {
            a < self && self < b
        } else {
            self > a || self < b
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| ParseIdError(s.to_string()))?;
        let arr: [u8; ID_BYTES] = bytes.try_into().map_err(|_| ParseIdError(s.to_string()))?;
        Ok(Id(arr))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let b: serde_bytes::ByteBuf = serde_bytes::ByteBuf::deserialize(d)?;
            let arr: [u8; ID_BYTES] = b
                .into_vec()
                .try_into()
                .map_err(|v: Vec<u8>| D::Error::invalid_length(v.len(), &"20 bytes"))?;
            Ok(Id(arr))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> Id {
        let mut a = [0u8; ID_BYTES];
        a[ID_BYTES - 1] = n;
        Id(a)
    }

    #[test]
    fn intervals_wrap_around() {
        assert!(id(5).in_open_closed(&id(3), &id(5)));
        assert!(!id(3).in_open_closed(&id(3), &id(5)));
        // wrapping interval (200, 10]
        assert!(id(250).in_open_closed(&id(200), &id(10)));
        assert!(id(0).in_open_closed(&id(200), &id(10)));
        assert!(id(10).in_open_closed(&id(200), &id(10)));
        assert!(!id(100).in_open_closed(&id(200), &id(10)));
        // a == b is the whole ring
        assert!(id(7).in_open_closed(&id(9), &id(9)));
        assert!(!id(9).in_open(&id(9), &id(9)));
        assert!(id(8).in_open(&id(9), &id(9)));
    }

    #[test]
    fn add_pow2_carries_and_wraps() {
        assert_eq!(id(1).add_pow2(0), id(2));
        assert_eq!(id(255).add_pow2(0).0[ID_BYTES - 2], 1);
        let max = Id([0xff; ID_BYTES]);
        assert_eq!(max.add_pow2(0), Id::ZERO);
        let top = Id::ZERO.add_pow2(ID_BITS - 1);
        assert_eq!(top.0[0], 0x80);
        assert_eq!(Id::ZERO.pred(), max);
    }

    #[test]
    fn hex_and_msgpack_round_trip() {
        let a = Id::hash(b"hello");
        assert_eq!(a.to_hex(), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(a.to_hex().parse::<Id>().unwrap(), a);
        let bytes = rmp_serde::to_vec(&a).unwrap();
        assert_eq!(bytes.len(), 22, "ids travel as 20 raw bytes");
        assert_eq!(rmp_serde::from_slice::<Id>(&bytes).unwrap(), a);
        assert!("zz".parse::<Id>().is_err());
    }

    proptest! {
        #[test]
        fn exactly_one_side_of_a_split(x in any::<[u8; 20]>(), a in any::<[u8; 20]>(), b in any::<[u8; 20]>()) {
            let (x, a, b) = (Id(x), Id(a), Id(b));
            prop_assume!(a != b);
            // (a, b] and (b, a] partition the ring.
            prop_assert!(x.in_open_closed(&a, &b) ^ x.in_open_closed(&b, &a));
        }
    }
}
