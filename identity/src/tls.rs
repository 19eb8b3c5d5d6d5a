//! TLS towards clients (rustls, ring provider) and towards targets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use serde::Deserialize;

use crate::ConfigError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS from Proctor to the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetTls {
    /// Plain TCP (the target is on a trusted network or loopback).
    #[default]
    Disable,
    /// TLS, without checking the target's certificate (libpq's `require`).
    Require,
    /// TLS, checking the certificate against `target_ca_file` and the host name.
    VerifyFull,
}

/// The `[tls]` table: the certificate Proctor presents to clients. Without
/// it, Proctor generates a self-signed certificate in the data dir (dev mode).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn tls_error(context: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Tls(format!("{context}: {e}"))
}

/// The server configuration for client connections: the configured
/// certificate, or a self-signed one kept in `dev_dir` (created on first use),
/// offering the `alpn` protocols (the adapter's own). Returns it with the
/// certificate file's path.
pub fn server_config(
    config: &TlsConfig,
    dev_dir: &Path,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, PathBuf), ConfigError> {
    let (cert_path, key_path) = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => self_signed(dev_dir)?,
        _ => return Err(ConfigError::Config("[tls] needs both cert_file and key_file".to_string())),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|iter| iter.collect())
        .map_err(|e| tls_error(&format!("cannot read certificates from {}", cert_path.display()), e))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_error(&format!("cannot read private key from {}", key_path.display()), e))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("certificate and key do not match", e))?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(server), cert_path))
}

/// The same certificate for an HTTP API (ALPN `http/1.1`).
pub fn http_server_config(config: &TlsConfig, dev_dir: &Path) -> Result<(Arc<ServerConfig>, PathBuf), ConfigError> {
    server_config(config, dev_dir, &[b"http/1.1"])
}

/// A client configuration trusting the certificates in `ca_file` (PEM):
/// for Proctor's own HTTP APIs, whose certificate an operator pins.
pub fn api_client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let roots = roots_from_pem(ca_file)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

/// The certificates of a PEM file, as trust anchors.
fn roots_from_pem(path: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| tls_error(&format!("cannot read certificates from {}", path.display()), e))?;
    for cert in certs {
        roots.add(cert).map_err(|e| tls_error(&format!("unusable certificate in {}", path.display()), e))?;
    }
    Ok(roots)
}

/// A self-signed certificate for `localhost` and loopback addresses, kept in
/// `dir` so clients can pin it across restarts.
fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    let cert_path = dir.join("proctor-dev.crt");
    let key_path = dir.join("proctor-dev.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    // Proctor's account's alone, whatever the umask (a data dir shared
    // with a group of readers shares no key material).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| tls_error(&format!("cannot create {}", dir.display()), e))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| tls_error("cannot generate certificate", e))?;
    // A key left without its certificate by an interrupted first start is
    // replaced.
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes(), true)
        .map_err(|e| tls_error(&format!("cannot write {}", key_path.display()), e))?;
    std::fs::write(&cert_path, certified.cert.pem())
        .map_err(|e| tls_error(&format!("cannot write {}", cert_path.display()), e))?;
    tracing::warn!(cert = %cert_path.display(), "no [tls] certificate configured: using a self-signed one (dev mode)");
    Ok((cert_path, key_path))
}

/// Writes a secret into a file only its owner may read (0600), synced. A
/// file already there is refused, unless `replace`.
pub(crate) fn write_private(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The client configuration for connections to a target.
pub fn target_client_config(mode: TargetTls, ca_file: Option<&Path>) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS versions", e))?;
    let config = match mode {
        TargetTls::Disable => return Ok(None),
        TargetTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth(),
        TargetTls::VerifyFull => {
            let Some(ca_file) = ca_file else {
                return Err(ConfigError::Config("target_tls = \"verify-full\" needs target_ca_file".to_string()));
            };
            builder.with_root_certificates(roots_from_pem(ca_file)?).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Encryption without authentication of the target, as libpq's
/// `sslmode=require`: chosen explicitly with `target_tls = "require"`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
