//! SHA-256 digests, `sha256:<hex>` content addresses, and a hasher whose state can be saved
//! between the chunks of an upload session (so a resumed upload is never read twice).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

/// A SHA-256 digest. Displays as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub const PREFIX: &'static str = "sha256:";

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of a byte slice held in memory (manifests, tests).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `sha256:<hex>`.
    pub fn content_address(&self) -> String {
        let mut hex = [0u8; 64];
        let mut out = String::with_capacity(Self::PREFIX.len() + hex.len());
        out.push_str(Self::PREFIX);
        out.push_str(self.hex_in(&mut hex));
        out
    }

    /// The hex digits, written into `buf` (no allocation: downloads format this per request).
    pub fn hex_in<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        // Infallible: the buffer has exactly the two digits per byte needed.
        let _ = hex::encode_to_slice(self.0, buf);
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// Parses exactly 64 lowercase hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn from_content_address(text: &str) -> Option<Self> {
        Self::from_hex(text.strip_prefix(Self::PREFIX)?)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::from_hex(s).ok_or(())
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not 64 lowercase hex digits"))
    }
}

/// Incremental SHA-256 (the `sha2` crate, which picks the SHA-NI instructions at run time
/// where the CPU has them), plus the byte count, with a compact saved form.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    inner: Sha256,
    len: u64,
}

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.inner.finalize().into())
    }

    /// The digest of what was hashed so far, leaving the hasher usable.
    pub fn peek(&self) -> Sha256Digest {
        self.clone().finish()
    }

    /// The hasher's state as bytes: 8 bytes of length, then `sha2`'s own serialized state
    /// (chaining value, block count and the partial block). Lets an upload session resume in
    /// another process without re-reading the bytes it already has.
    pub fn save(&self) -> Vec<u8> {
        let state = self.inner.serialize();
        let mut out = Vec::with_capacity(8 + state.len());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&state);
        out
    }

    /// Restores a state written by [`save`](Self::save); `None` if the bytes are not one.
    pub fn restore(saved: &[u8]) -> Option<Self> {
        let (len, state) = saved.split_at_checked(8)?;
        let len = u64::from_le_bytes(len.try_into().ok()?);
        let state = state.try_into().ok()?;
        let inner = Sha256::deserialize(state).ok()?;
        Some(Self { inner, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            Sha256Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Sha256Digest::of(b"abc").content_address(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parsing_is_strict() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            Sha256Digest::from_content_address(&d.content_address()),
            Some(d)
        );
        assert_eq!(Sha256Digest::from_hex(&d.hex()), Some(d));
        assert!(Sha256Digest::from_hex(&d.hex().to_uppercase()).is_none());
        assert!(Sha256Digest::from_hex(&d.hex()[1..]).is_none());
        assert!(Sha256Digest::from_content_address(&d.hex()).is_none());
        assert!(Sha256Digest::from_content_address(&format!("sha512:{}", d.hex())).is_none());
    }

    #[test]
    fn saved_state_resumes_exactly() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [0, 1, 63, 64, 65, 4097, 9999, 10_000] {
            let mut h = Sha256Hasher::new();
            h.update(&data[..split]);
            let saved = h.save();
            let mut resumed = Sha256Hasher::restore(&saved).unwrap();
            assert_eq!(resumed.len(), split as u64);
            resumed.update(&data[split..]);
            assert_eq!(resumed.finish(), Sha256Digest::of(&data));
        }
        assert!(Sha256Hasher::restore(b"short").is_none());
    }
}
