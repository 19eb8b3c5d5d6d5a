//! The manifest of a sealed segment: what the segment holds, how to check it,
//! and the link to the manifest before it. The recorder signs it with the
//! deployment's ed25519 key; `proctor verify` checks it.

use serde::{Deserialize, Serialize};

/// Version of the manifest format this build writes. Format 2 adds the
/// segment's Merkle root over its events ([`crate::merkle`]) and the root's
/// own signature ([`RootStatement`]); format 1 manifests still verify.
pub const MANIFEST_FORMAT: u32 = 2;

/// The oldest manifest format this build reads.
pub const OLDEST_MANIFEST_FORMAT: u32 = 1;

/// Prefix of the bytes a root statement's signature covers.
pub const ROOT_SIGNING_DOMAIN: &[u8] = b"proctor.segment-root.v1\n";

/// Prefix of the bytes a manifest signature covers.
pub const SIGNING_DOMAIN: &[u8] = b"proctor.manifest.v1\n";

/// One sealed segment's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The segment's number; segments are numbered in the order they were
    /// opened, and a manifest shares its segment's number.
    pub segment_id: u64,
    /// The segment file, relative to the data dir.
    pub path: String,
    /// SHA-256 of the segment file, hex.
    pub file_sha256: String,
    pub file_bytes: u64,
    /// Event schema version of the rows.
    pub schema_version: u32,
    pub row_count: u64,
    /// Earliest and latest event time in the segment (RFC 3339, UTC).
    pub min_time: String,
    pub max_time: String,
    /// Every session with rows in the segment, sorted by id.
    pub sessions: Vec<ManifestSession>,
    /// SHA-256 of the previous manifest file (hex); `None` for the first.
    pub prev_manifest_sha256: Option<String>,
    /// When the segment was sealed (RFC 3339, UTC).
    pub sealed_at: String,
    /// Fingerprint of the key that signed this manifest.
    pub key_fingerprint: String,
    /// Root (hex) of the Merkle tree over the segment's events in row order,
    /// each leaf its chain head ([`crate::merkle`]); format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    /// The random salt (hex, 32 bytes) the leaves' nonces derive from: kept
    /// here, and out of the root statement, so that a proof of one event
    /// shows nothing of the leaves around it; format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_salt: Option<String>,
    /// Base64 ed25519 signature over [`Manifest::root_statement`]'s signing
    /// bytes: what proves events of the segment without the manifest, whose
    /// sessions name everyone recorded in it; format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_signature: Option<String>,
    /// Base64 ed25519 signature over [`Manifest::signing_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A session's part of one segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSession {
    pub session_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u64,
    /// The chain head before `first_seq` (hex), `None` when `first_seq` is 0.
    pub chain_in: Option<String>,
    /// The chain head after `last_seq` (hex).
    pub chain_head: String,
    pub first_time: String,
    pub last_time: String,
    /// From the session's `session_start`, when it is in this segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// From the session's `session_end`, when it is in this segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

impl Manifest {
    /// The bytes the signature covers: the domain prefix and the manifest's
    /// JSON without its signature. Serialisation is deterministic (fixed
    /// field order, no maps, no floats), so a verifier re-derives them from
    /// the parsed manifest.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        signing_bytes(SIGNING_DOMAIN, &unsigned)
    }

    /// The manifest file's content.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn from_file_bytes(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// What the root signature covers: the segment, its size and its root;
    /// `None` without a root (format 1).
    pub fn root_statement(&self) -> Option<RootStatement> {
        Some(RootStatement {
            segment_id: self.segment_id,
            row_count: self.row_count,
            schema_version: self.schema_version,
            merkle_root: self.merkle_root.clone()?,
            key_fingerprint: self.key_fingerprint.clone(),
        })
    }
}

/// A segment's Merkle root, signed apart from its manifest: an exported
/// bundle carries it, and inclusion proofs against it, for the events it
/// exports, and nothing of the other sessions of the segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootStatement {
    pub segment_id: u64,
    /// How many events (leaves) the tree has.
    pub row_count: u64,
    pub schema_version: u32,
    /// Hex.
    pub merkle_root: String,
    /// The key that signed it.
    pub key_fingerprint: String,
}

impl RootStatement {
    /// The bytes its signature covers: the domain prefix and its JSON
    /// (fixed field order, no maps, no floats: deterministic).
    pub fn signing_bytes(&self) -> Vec<u8> {
        signing_bytes(ROOT_SIGNING_DOMAIN, self)
    }
}

/// What a signature over `value` covers: `domain`, then `value`'s JSON
/// (plain structs of strings and integers: deterministic, and their
/// serialisation cannot fail).
pub fn signing_bytes(domain: &[u8], value: &impl Serialize) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend(serde_json::to_vec(value).unwrap_or_default());
    out
}
