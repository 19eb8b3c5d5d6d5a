//! Resource configuration: the `[[resources]]` tables and the `[tls]` table.
//! Secrets are referenced (an environment variable or a file), never inline.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use proctor_identity::tls::{TargetTls, TlsConfig};

use crate::GatewayError;

/// The protocol a resource speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceProtocol {
    Postgres,
}

/// One `[[resources]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// The resource's name, as grants and recordings refer to it.
    pub name: String,
    pub protocol: ResourceProtocol,
    /// Where Proctor listens for clients of this resource.
    pub listen: SocketAddr,
    /// The target, `host:port`.
    pub target: String,
    /// The account Proctor uses on the target.
    pub user: String,
    /// The target account's password, from this environment variable ...
    pub password_env: Option<String>,
    /// ... or from this file (its first line).
    pub password_file: Option<PathBuf>,
    /// Whether clients may connect without TLS. Off by default.
    #[serde(default)]
    pub allow_plaintext: bool,
    #[serde(default)]
    pub target_tls: TargetTls,
    /// CA certificates (PEM) to check the target with under `verify-full`.
    pub target_ca_file: Option<PathBuf>,
    /// A shared secret clients may present instead of a grant's credential
    /// (required without `[control]`): from this environment variable ...
    pub client_secret_env: Option<String>,
    /// ... or from this file.
    pub client_secret_file: Option<PathBuf>,
    /// The database named in the credentials URLs of grants (default
    /// `postgres`): the only one a grant's credential opens, with ...
    pub database: Option<String>,
    /// ... these others, if any.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Rows of each result kept as a sample in the recording (0 = none).
    /// Samples are off by default until masking is configured.
    #[serde(default)]
    pub sample_rows: usize,
    /// Bytes of each result kept as a sample, at most.
    #[serde(default = "default_sample_bytes")]
    pub sample_bytes: usize,
}

fn default_sample_bytes() -> usize {
    64 * 1024
}

/// A secret's source.
#[derive(Clone, Debug)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    fn from_pair(
        what: &str,
        resource: &str,
        env: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<SecretRef, GatewayError> {
        match (env, file) {
            (Some(env), None) => Ok(SecretRef::Env(env.clone())),
            (None, Some(file)) => Ok(SecretRef::File(file.clone())),
            (Some(_), Some(_)) => Err(GatewayError::Config(format!(
                "resource {resource}: set either {what}_env or {what}_file, not both"
            ))),
            (None, None) => {
                Err(GatewayError::Config(format!("resource {resource}: {what}_env or {what}_file is required")))
            }
        }
    }

    /// Reads the secret. A file's first line is the secret.
    pub fn resolve(&self) -> Result<String, GatewayError> {
        match self {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                GatewayError::Config(format!("environment variable {name} is not set (it holds a secret)"))
            }),
            SecretRef::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| GatewayError::Config(format!("cannot read secret file {}: {e}", path.display())))?;
                Ok(text.lines().next().unwrap_or_default().to_string())
            }
        }
    }
}

impl ResourceConfig {
    pub fn password(&self) -> Result<SecretRef, GatewayError> {
        SecretRef::from_pair("password", &self.name, &self.password_env, &self.password_file)
    }

    /// The shared secret clients may present, if the resource still has one.
    pub fn client_secret(&self) -> Result<Option<SecretRef>, GatewayError> {
        if self.client_secret_env.is_none() && self.client_secret_file.is_none() {
            return Ok(None);
        }
        SecretRef::from_pair("client_secret", &self.name, &self.client_secret_env, &self.client_secret_file).map(Some)
    }

    /// The database named in grants' credentials URLs.
    pub fn offered_database(&self) -> &str {
        self.database.as_deref().unwrap_or("postgres")
    }

    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(GatewayError::Config(format!(
                "resource name {:?}: use letters, digits, '-', '_' and '.'",
                self.name
            )));
        }
        self.password()?;
        self.client_secret()?;
        if self.target_tls == TargetTls::VerifyFull && self.target_ca_file.is_none() {
            return Err(GatewayError::Config(format!(
                "resource {}: target_tls = \"verify-full\" needs target_ca_file",
                self.name
            )));
        }
        if self.sample_rows > 100_000 {
            return Err(GatewayError::Config(format!("resource {}: sample_rows is at most 100000", self.name)));
        }
        Ok(())
    }
}

/// Checks a set of resources: each valid, names and listen addresses unique.
/// Checks the resources; without grants (`[control]`), each needs a shared
/// secret for its clients.
pub fn validate_resources(resources: &[ResourceConfig], grants: bool) -> Result<(), GatewayError> {
    let mut names = std::collections::HashSet::new();
    let mut listens = std::collections::HashSet::new();
    for resource in resources {
        resource.validate()?;
        if !grants && resource.client_secret()?.is_none() {
            return Err(GatewayError::Config(format!(
                "resource {}: clients need a way in: configure [control] for just-in-time grants, or client_secret_env / client_secret_file",
                resource.name
            )));
        }
        if !names.insert(&resource.name) {
            return Err(GatewayError::Config(format!("resource {} is defined twice", resource.name)));
        }
        if !listens.insert(resource.listen) {
            return Err(GatewayError::Config(format!("two resources listen on {}", resource.listen)));
        }
    }
    Ok(())
}
