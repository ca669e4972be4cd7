//! Content checksums: BLAKE3, 32 bytes, printed as 64 lower-case hex digits.
//!
//! BLAKE3 is a cryptographic hash that runs at several GB/s on one core, so
//! checksumming every byte costs less than reading it.

use std::fmt;
use std::str::FromStr;

/// The BLAKE3 hash of an object's raw (uncompressed, unencrypted) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    pub fn of(data: &[u8]) -> Checksum {
        Checksum(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid checksum \"{0}\": expected 64 hex digits")]
pub struct ChecksumParseError(String);

impl FromStr for Checksum {
    type Err = ChecksumParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ChecksumParseError(s.to_string()))?;
        Ok(Checksum(out))
    }
}

impl serde::Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental checksum that also counts the bytes it saw.
#[derive(Default)]
pub struct Hasher {
    inner: blake3::Hasher,
    len: u64,
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(&self) -> Checksum {
        Checksum(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_one_shot_and_round_trips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Hasher::new();
        for part in data.chunks(999) {
            h.update(part);
        }
        assert_eq!(h.len(), data.len() as u64);
        let sum = h.finish();
        assert_eq!(sum, Checksum::of(&data));
        assert_eq!(sum.to_hex().parse::<Checksum>().unwrap(), sum);
        let json = serde_json::to_string(&sum).unwrap();
        assert_eq!(serde_json::from_str::<Checksum>(&json).unwrap(), sum);
        assert!("abc".parse::<Checksum>().is_err());
    }
}
