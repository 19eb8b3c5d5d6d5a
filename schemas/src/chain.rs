//! The per-session hash chain.
//!
//! `head(-1)` is 32 zero bytes; `head(n) = SHA-256("proctor.chain.v1" ||
//! head(n-1) || canonical(event n))`. The canonical encoding includes the
//! session id and seq, so an event cannot be moved to another session or
//! position without changing every later head. Segments do not store a hash
//! per row; manifests carry each session's head, and `verify` recomputes the
//! chain from the rows.

use std::fmt;

use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"proctor.chain.v1";

/// A chain head: the hash after some event of a session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The head before a session's first event.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// The head after an event whose canonical encoding is `canonical`.
    pub fn next(&self, canonical: &[u8]) -> ChainHash {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        hasher.update(self.0);
        hasher.update(canonical);
        ChainHash(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<ChainHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChainHash(out))
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_order_and_content() {
        let a = ChainHash::GENESIS.next(b"a").next(b"b");
        let b = ChainHash::GENESIS.next(b"b").next(b"a");
        let c = ChainHash::GENESIS.next(b"a").next(b"c");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(ChainHash::from_hex(&a.to_hex()), Some(a));
    }
}
