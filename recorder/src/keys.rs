//! The deployment's manifest signing key.
//!
//! Created on first start as `keys/manifest-signing.pem` (PKCS#8, mode 0600),
//! with its public half beside it as `keys/manifest-signing.pub.pem` (SPKI).
//! Auditors pin the public key, or its fingerprint (`SHA256:` and the
//! unpadded base64 of the SHA-256 of the raw 32-byte key, as OpenSSH prints
//! fingerprints), so that a data dir re-signed with another key fails
//! `proctor verify`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::layout::sync_dir;
use crate::{RecorderError, Result};

pub const PRIVATE_KEY_FILE: &str = "manifest-signing.pem";
pub const PUBLIC_KEY_FILE: &str = "manifest-signing.pub.pem";

/// The signing key of a data dir.
pub struct ManifestKey {
    signing: SigningKey,
}

impl ManifestKey {
    pub fn from_signing_key(signing: SigningKey) -> ManifestKey {
        ManifestKey { signing }
    }

    /// A fresh random key (not stored).
    pub fn generate() -> Result<ManifestKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| RecorderError::Key(format!("no randomness for a new key: {e}")))?;
        Ok(ManifestKey { signing: SigningKey::from_bytes(&seed) })
    }

    /// Loads the key in `keys_dir`, creating it (and the directory, 0700) on
    /// first use. A directory shared with the data dir's group (setgid, as
    /// `data_dir_group` leaves it) keeps its group's read access, for the
    /// public half; the private half is 0600 either way.
    pub fn load_or_create(keys_dir: &Path) -> Result<ManifestKey> {
        let private = keys_dir.join(PRIVATE_KEY_FILE);
        if private.exists() {
            let key = ManifestKey::load(keys_dir)?;
            key.restore_public(keys_dir)?;
            return Ok(key);
        }
        fs::create_dir_all(keys_dir).map_err(RecorderError::io("cannot create key directory", keys_dir))?;
        let mode = fs::metadata(keys_dir)
            .map_err(RecorderError::io("cannot read key directory", keys_dir))?
            .permissions()
            .mode();
        let restricted = if mode & 0o2000 != 0 { 0o2750 } else { 0o700 };
        fs::set_permissions(keys_dir, fs::Permissions::from_mode(restricted))
            .map_err(RecorderError::io("cannot restrict key directory", keys_dir))?;
        let key = ManifestKey::generate()?;
        key.store(keys_dir)?;
        tracing::info!(fingerprint = %key.fingerprint(), dir = %keys_dir.display(), "created manifest signing key");
        Ok(key)
    }

    /// Writes the key pair into `keys_dir`; refuses to replace an existing key.
    pub fn store(&self, keys_dir: &Path) -> Result<()> {
        let private_pem = self
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| RecorderError::Key(format!("cannot encode key: {e}")))?;
        let public_pem = self
            .signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| RecorderError::Key(format!("cannot encode public key: {e}")))?;
        // Whole or absent: written and synced under a temporary name, then
        // linked into place (which fails if a key is there), so a start
        // killed meanwhile leaves no torn key for the next one to refuse.
        let private = keys_dir.join(PRIVATE_KEY_FILE);
        let temp = keys_dir.join(format!("{PRIVATE_KEY_FILE}.tmp"));
        let _ = fs::remove_file(&temp);
        write_new(&temp, private_pem.as_bytes(), 0o600)?;
        let linked = fs::hard_link(&temp, &private);
        let _ = fs::remove_file(&temp);
        linked.map_err(RecorderError::io("cannot create key file", &private))?;
        write_new(&keys_dir.join(PUBLIC_KEY_FILE), public_pem.as_bytes(), 0o644)?;
        sync_dir(keys_dir)
    }

    /// Writes the public half again when it is missing or not this key's
    /// (a start killed between writing the two halves): auditors and
    /// `verify` read it. Written to a temporary file and renamed, so it is
    /// whole or absent; the private half is never touched.
    fn restore_public(&self, keys_dir: &Path) -> Result<()> {
        let path = keys_dir.join(PUBLIC_KEY_FILE);
        let public_pem = self
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| RecorderError::Key(format!("cannot encode public key: {e}")))?;
        match fs::read_to_string(&path) {
            Ok(stored) if stored == public_pem => return Ok(()),
            Ok(_) => {
                tracing::warn!(file = %path.display(), "the public key file does not hold this key's public half; written again")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %path.display(), "the public key file was missing; written again from the private key")
            }
            Err(e) => return Err(RecorderError::io("cannot read public key", &path)(e)),
        }
        let temp = keys_dir.join(format!("{PUBLIC_KEY_FILE}.tmp"));
        let _ = fs::remove_file(&temp);
        write_new(&temp, public_pem.as_bytes(), 0o644)?;
        fs::rename(&temp, &path).map_err(RecorderError::io("cannot write public key", &path))?;
        sync_dir(keys_dir)
    }

    pub fn load(keys_dir: &Path) -> Result<ManifestKey> {
        let path = keys_dir.join(PRIVATE_KEY_FILE);
        let pem = fs::read_to_string(&path).map_err(RecorderError::io("cannot read signing key", &path))?;
        let signing = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| RecorderError::Key(format!("{}: not a PKCS#8 ed25519 key: {e}", path.display())))?;
        Ok(ManifestKey { signing })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.verifying_key())
    }

    /// Base64 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.signing.sign(message).to_bytes())
    }
}

fn write_new(path: &PathBuf, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(RecorderError::io("cannot create key file", path))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(RecorderError::io("cannot write key file", path))
}

/// `SHA256:<base64>` of the raw public key.
pub fn fingerprint(key: &VerifyingKey) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(key.as_bytes())))
}

/// The public key as PEM (SPKI).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
}

/// Checks a base64 signature of `message`.
pub fn verify_signature(key: &VerifyingKey, message: &[u8], signature_b64: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(signature_b64) else { return false };
    let Ok(signature) = Signature::from_slice(&bytes) else { return false };
    key.verify(message, &signature).is_ok()
}

/// What an auditor pinned: a public key, or only its fingerprint.
#[derive(Clone, Debug)]
pub enum PinnedKey {
    Key(VerifyingKey),
    Fingerprint(String),
}

impl PinnedKey {
    /// Parses `--public-key`: a file holding a PEM public key (or the raw key
    /// in hex or base64), or a fingerprint `SHA256:...`.
    pub fn parse(arg: &str) -> Result<PinnedKey> {
        if arg.starts_with("SHA256:") {
            return Ok(PinnedKey::Fingerprint(arg.to_string()));
        }
        let path = Path::new(arg);
        let text = fs::read_to_string(path).map_err(RecorderError::io("cannot read public key", path))?;
        parse_public_key(text.trim())
            .map(PinnedKey::Key)
            .ok_or_else(|| RecorderError::Key(format!("{arg}: not an ed25519 public key (PEM, hex or base64)")))
    }

    pub fn fingerprint(&self) -> String {
        match self {
            PinnedKey::Key(key) => fingerprint(key),
            PinnedKey::Fingerprint(fp) => fp.clone(),
        }
    }
}

fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).ok();
    }
    let raw = hex::decode(text).ok().or_else(|| STANDARD.decode(text).ok())?;
    let bytes: [u8; 32] = raw.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The public key stored in a data dir's `keys/`.
pub fn load_public_key(keys_dir: &Path) -> Result<VerifyingKey> {
    let path = keys_dir.join(PUBLIC_KEY_FILE);
    let pem = fs::read_to_string(&path).map_err(RecorderError::io("cannot read public key", &path))?;
    VerifyingKey::from_public_key_pem(pem.trim())
        .map_err(|e| RecorderError::Key(format!("{}: not an ed25519 public key: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_reload_identically() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let created = ManifestKey::load_or_create(&keys).unwrap();
        let mode = fs::metadata(keys.join(PRIVATE_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = ManifestKey::load_or_create(&keys).unwrap();
        assert_eq!(created.fingerprint(), loaded.fingerprint());
        assert_eq!(load_public_key(&keys).unwrap(), created.verifying_key());
        let signature = created.sign(b"message");
        assert!(verify_signature(&loaded.verifying_key(), b"message", &signature));
        assert!(!verify_signature(&loaded.verifying_key(), b"messagf", &signature));
        assert!(created.store(&keys).is_err(), "an existing key must never be replaced");
    }

    /// A start killed while writing the private half leaves at most its
    /// temporary file, which the next start replaces; one killed after it
    /// and before the public one: the next start writes the public half
    /// again.
    #[test]
    fn a_lost_or_torn_public_half_is_written_again_from_the_private_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir_all(&keys).unwrap();
        fs::write(keys.join(format!("{PRIVATE_KEY_FILE}.tmp")), "-----BEGIN PRIVATE KEY-----\nMC4C").unwrap();
        let created = ManifestKey::load_or_create(&keys).unwrap();
        assert!(!keys.join(format!("{PRIVATE_KEY_FILE}.tmp")).exists());
        for damage in [None, Some("-----BEGIN PUBLIC KEY-----\nMCowBQ")] {
            match damage {
                None => fs::remove_file(keys.join(PUBLIC_KEY_FILE)).unwrap(),
                Some(torn) => fs::write(keys.join(PUBLIC_KEY_FILE), torn).unwrap(),
            }
            let loaded = ManifestKey::load_or_create(&keys).unwrap();
            assert_eq!(loaded.fingerprint(), created.fingerprint());
            assert_eq!(load_public_key(&keys).unwrap(), created.verifying_key());
        }
    }

    #[test]
    fn a_key_directory_shared_with_a_group_shares_the_public_half_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o2775)).unwrap();
        ManifestKey::load_or_create(&keys).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&keys), 0o2750, "no group write, no world");
        assert_eq!(mode(&keys.join(PRIVATE_KEY_FILE)), 0o600);
        let plain = dir.path().join("plain");
        ManifestKey::load_or_create(&plain).unwrap();
        assert_eq!(mode(&plain), 0o700);
    }

    #[test]
    fn pinned_keys_parse_from_pem_hex_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let key = ManifestKey::generate().unwrap();
        let pem = dir.path().join("key.pem");
        fs::write(&pem, public_key_pem(&key.verifying_key())).unwrap();
        let hexed = dir.path().join("key.hex");
        fs::write(&hexed, hex::encode(key.verifying_key().as_bytes())).unwrap();
        for path in [&pem, &hexed] {
            let pinned = PinnedKey::parse(path.to_str().unwrap()).unwrap();
            assert_eq!(pinned.fingerprint(), key.fingerprint());
        }
        assert!(matches!(PinnedKey::parse(&key.fingerprint()).unwrap(), PinnedKey::Fingerprint(_)));
    }
}
