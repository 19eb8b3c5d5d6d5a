//! Proctor's SSH user CA: short-lived OpenSSH user certificates for grants,
//! and the check of a certificate a client logs in with.
//!
//! The CA key is created once, as `keys/ssh_user_ca_ed25519_key` (0600),
//! like the host key. A certificate names one principal, the grant, and is
//! valid from a minute before it was signed (clocks differ) until the grant
//! ends, never after. It carries no critical options and only the
//! `permit-pty` extension: what passes is Proctor's policy, not the
//! certificate's. A certificate alone opens nothing: the grant it names is
//! checked live at every connection, so a revoked grant's certificates are
//! refused though they have not expired.

use std::path::Path;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PublicKey};

use proctor_gateway_core::control::Certified;

use crate::host_key::{HostKey, HostKeyError, KeyRole};

/// How far before signing a certificate is valid: a client whose clock is
/// behind Proctor's still accepts it.
const CLOCK_SKEW_SECS: u64 = 60;

/// The gateway's SSH user CA.
pub struct UserCa {
    key: HostKey,
    fingerprint: Fingerprint,
}

impl UserCa {
    /// Loads the CA key in `keys_dir`, creating it on the first start.
    pub fn load_or_create(keys_dir: &Path) -> Result<UserCa, HostKeyError> {
        let key = HostKey::load_or_create_as(keys_dir, KeyRole::UserCa)?;
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        Ok(UserCa { key, fingerprint })
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The CA's public key as an OpenSSH line: what a target's sshd would
    /// trust (`TrustedUserCAKeys`) if it were to accept the certificates
    /// directly.
    pub fn public_line(&self) -> String {
        self.key.public_line()
    }

    /// `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.to_string()
    }

    /// Signs a user certificate for `public_key` (an OpenSSH public key
    /// line), for `principal`, valid until `valid_before` (Unix seconds).
    pub fn certify_at(
        &self,
        public_key: &str,
        principal: &str,
        key_id: &str,
        now: u64,
        valid_before: u64,
    ) -> Result<Certified, String> {
        let subject = PublicKey::from_openssh(public_key.trim())
            .map_err(|e| format!("not an OpenSSH public key ({e}); give the .pub file of the key you log in with"))?;
        if valid_before <= now {
            return Err("the grant has ended".to_string());
        }
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for the certificate: {e}"))?;
        let mut serial = [0u8; 8];
        getrandom::fill(&mut serial).map_err(|e| format!("no randomness for the certificate: {e}"))?;
        let valid_after = now.saturating_sub(CLOCK_SKEW_SECS);
        let mut builder = Builder::new(nonce.to_vec(), subject.key_data().clone(), valid_after, valid_before)
            .map_err(|e| e.to_string())?;
        let serial = u64::from_be_bytes(serial);
        builder
            .serial(serial)
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(key_id))
            .and_then(|b| b.valid_principal(principal))
            .and_then(|b| b.extension("permit-pty", ""))
            .and_then(|b| b.comment(principal))
            .map_err(|e| e.to_string())?;
        let certificate = builder.sign(self.key.private_key()).map_err(|e| format!("cannot sign: {e}"))?;
        Ok(Certified {
            certificate: certificate.to_openssh().map_err(|e| e.to_string())?,
            fingerprint: subject.fingerprint(HashAlg::Sha256).to_string(),
            serial,
        })
    }

    /// Whether this CA signed `certificate` (its signature is checked
    /// with the rest by [`UserCa::check_at`]).
    pub fn signed(&self, certificate: &Certificate) -> bool {
        certificate.signature_key().fingerprint(HashAlg::Sha256) == self.fingerprint
    }

    /// Checks a certificate a client logs in with as `user`: signed by this
    /// CA, a user certificate, valid at `now`, naming `user` as a
    /// principal, no critical option. Returns when it stops being valid
    /// (milliseconds since the epoch), or why it is refused.
    pub fn check_at(&self, certificate: &Certificate, user: &str, now: u64) -> Result<i64, String> {
        certificate.validate_at(now, [&self.fingerprint]).map_err(|_| {
            if certificate.signature_key().fingerprint(HashAlg::Sha256) != self.fingerprint {
                "the certificate is not signed by this gateway's SSH user CA".to_string()
            } else {
                "the certificate is not valid now (expired, or not yet valid)".to_string()
            }
        })?;
        if certificate.cert_type() != CertType::User {
            return Err("a host certificate is not a user's".to_string());
        }
        if !certificate.valid_principals().iter().any(|p| p == user) {
            return Err(format!("the certificate is not for {user:?}: log in as the grant it names"));
        }
        if !certificate.critical_options().is_empty() {
            return Err("the certificate carries critical options this gateway does not honour".to_string());
        }
        let before = i64::try_from(certificate.valid_before()).unwrap_or(i64::MAX);
        Ok(before.saturating_mul(1000))
    }
}

impl proctor_gateway_core::control::SshCertifier for UserCa {
    fn certify(&self, public_key: &str, principal: &str, key_id: &str, valid_before: u64) -> Result<Certified, String> {
        self.certify_at(public_key, principal, key_id, unix_now(), valid_before)
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_key() -> String {
        let seed = [9u8; 32];
        let key =
            russh::keys::ssh_key::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed));
        key.public_key().to_openssh().unwrap()
    }

    #[test]
    fn a_certificate_is_valid_for_its_grant_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let ca = UserCa::load_or_create(dir.path()).unwrap();
        let now = unix_now();
        let certified = ca.certify_at(&user_key(), "g_00000000000000aa", "proctor grant", now, now + 900).unwrap();
        let certificate = Certificate::from_openssh(&certified.certificate).unwrap();
        assert_eq!(certificate.serial(), certified.serial);
        assert!(certified.fingerprint.starts_with("SHA256:"));
        assert_eq!(ca.check_at(&certificate, "g_00000000000000aa", now).unwrap(), ((now + 900) * 1000) as i64);
        // Another principal, a time past its end, before its start.
        assert!(ca.check_at(&certificate, "g_00000000000000bb", now).unwrap_err().contains("not for"));
        assert!(ca.check_at(&certificate, "g_00000000000000aa", now + 900).is_err());
        assert!(ca.check_at(&certificate, "g_00000000000000aa", now - 61).is_err());
        // Another CA's certificate.
        let other_dir = tempfile::tempdir().unwrap();
        let other = UserCa::load_or_create(other_dir.path()).unwrap();
        let forged = other.certify_at(&user_key(), "g_00000000000000aa", "x", now, now + 900).unwrap();
        let forged = Certificate::from_openssh(&forged.certificate).unwrap();
        assert!(ca.check_at(&forged, "g_00000000000000aa", now).unwrap_err().contains("not signed"));
        // The same CA once created.
        assert_eq!(UserCa::load_or_create(dir.path()).unwrap().fingerprint(), ca.fingerprint());
        // Not a key; a grant already over.
        assert!(ca.certify_at("ssh-ed25519 nope", "g", "x", now, now + 1).unwrap_err().contains("not an OpenSSH"));
        assert!(ca.certify_at(&user_key(), "g", "x", now, now).is_err());
    }
}
