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
    Ssh,
}

impl ResourceProtocol {
    pub const ALL: [ResourceProtocol; 2] = [ResourceProtocol::Postgres, ResourceProtocol::Ssh];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceProtocol::Postgres => "postgres",
            ResourceProtocol::Ssh => "ssh",
        }
    }

    /// Its name with its article, for messages ("a postgres", "an ssh").
    pub fn with_article(self) -> &'static str {
        match self {
            ResourceProtocol::Postgres => "a postgres",
            ResourceProtocol::Ssh => "an ssh",
        }
    }

    /// Where this protocol's rule sets are configured: rules are scoped per
    /// protocol (`[rules.NAME]` are PostgreSQL's statement rules), and a
    /// grant under rules `NAME` opens a resource only if its protocol has a
    /// rule set `NAME`.
    pub const fn rules(self) -> crate::session::RuleScope {
        match self {
            ResourceProtocol::Postgres => crate::session::RuleScope { kind: "statement rules", table: "rules" },
            ResourceProtocol::Ssh => crate::session::RuleScope { kind: "SSH rules", table: "ssh_rules" },
        }
    }

    /// The keys a `[[resources]]` entry of this protocol may have, beside
    /// every resource's own ([`COMMON_KEYS`]).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            ResourceProtocol::Postgres => POSTGRES_KEYS,
            ResourceProtocol::Ssh => SSH_KEYS,
        }
    }
}

/// The keys of every `[[resources]]` entry, whatever its protocol.
pub const COMMON_KEYS: &[&str] = &["name", "protocol", "listen"];

/// The keys of a PostgreSQL resource ([`PostgresConfig`]'s fields).
const POSTGRES_KEYS: &[&str] = &[
    "target",
    "user",
    "password_env",
    "password_file",
    "allow_plaintext",
    "target_tls",
    "target_ca_file",
    "client_secret_env",
    "client_secret_file",
    "database",
    "databases",
    "sample_rows",
    "sample_bytes",
];

/// The keys of an SSH resource ([`SshConfig`]'s fields).
const SSH_KEYS: &[&str] =
    &["target", "user", "key_file", "target_host_key", "known_hosts", "client_secret_env", "client_secret_file"];

/// One `[[resources]]` entry: what every resource has (its name, its
/// protocol, where Proctor listens for its clients) and its protocol's own
/// keys. A key its protocol does not use is refused, named with the
/// protocol: no PostgreSQL key passes for another protocol's, nor the
/// reverse.
#[derive(Clone, Debug)]
pub struct ResourceConfig {
    /// The resource's name, as grants and recordings refer to it.
    pub name: String,
    /// Where Proctor listens for clients of this resource.
    pub listen: SocketAddr,
    /// The protocol, with its keys.
    pub kind: ResourceKind,
}

/// A resource's protocol and the keys only it has.
#[derive(Clone, Debug)]
pub enum ResourceKind {
    Postgres(PostgresConfig),
    Ssh(SshConfig),
}

impl ResourceConfig {
    pub fn protocol(&self) -> ResourceProtocol {
        match self.kind {
            ResourceKind::Postgres(_) => ResourceProtocol::Postgres,
            ResourceKind::Ssh(_) => ResourceProtocol::Ssh,
        }
    }

    /// How a grant's clients reach this resource, when Proctor is reached
    /// at `host:port` (presenting `ssh_host_key`, an OpenSSH public key
    /// line, to SSH clients): the connection offer its credentials come
    /// with.
    pub fn offer(&self, host: String, port: u16, ssh_host_key: Option<&str>) -> crate::control::Offer {
        match &self.kind {
            ResourceKind::Postgres(postgres) => {
                crate::control::Offer::Postgres { host, port, database: postgres.offered_database().to_string() }
            }
            ResourceKind::Ssh(_) => {
                crate::control::Offer::Ssh { host, port, host_key: ssh_host_key.unwrap_or_default().to_string() }
            }
        }
    }

    /// The target Proctor reaches for this resource's clients, as configured.
    pub fn target(&self) -> &str {
        match &self.kind {
            ResourceKind::Postgres(postgres) => &postgres.target,
            ResourceKind::Ssh(ssh) => &ssh.target,
        }
    }
}

impl<'de> Deserialize<'de> for ResourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ResourceConfig, D::Error> {
        use serde::de::Error;
        let mut entry = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let name = match entry.remove("name") {
            Some(serde_json::Value::String(name)) => name,
            Some(other) => return Err(D::Error::custom(format!("a resource's `name` is a string, not {other}"))),
            None => return Err(D::Error::custom("a resource needs a `name`")),
        };
        let known =
            || ResourceProtocol::ALL.iter().map(|p| format!("\"{}\"", p.as_str())).collect::<Vec<_>>().join(", ");
        let protocol = match entry.remove("protocol") {
            Some(value) => serde_json::from_value::<ResourceProtocol>(value.clone()).map_err(|_| {
                D::Error::custom(format!(
                    "resource {name}: protocol {value} is not one Proctor fronts (it fronts {})",
                    known()
                ))
            })?,
            None => {
                return Err(D::Error::custom(format!("resource {name}: `protocol` is required (one of {})", known())));
            }
        };
        let listen = match entry.remove("listen") {
            Some(value) => serde_json::from_value::<SocketAddr>(value.clone()).map_err(|_| {
                D::Error::custom(format!("resource {name}: listen = {value} is not an address like \"127.0.0.1:6432\""))
            })?,
            None => return Err(D::Error::custom(format!("resource {name}: `listen` is required"))),
        };
        // TOML's `nan` and `inf` arrive as nothing: a key set to them is
        // refused, not taken as unset.
        if let Some((key, _)) = entry.iter().find(|(_, value)| value.is_null()) {
            return Err(D::Error::custom(format!("resource {name}: `{key}` has no usable value")));
        }
        if let Some(key) = entry.keys().find(|key| !protocol.keys().contains(&key.as_str())) {
            let elsewhere = ResourceProtocol::ALL
                .iter()
                .filter(|other| **other != protocol && other.keys().contains(&key.as_str()))
                .map(|other| format!(" (it is a key of {} resources)", other.as_str()))
                .collect::<String>();
            return Err(D::Error::custom(format!(
                "resource {name}: `{key}` is not a key of {} resource{elsewhere}; its keys are {}",
                protocol.with_article(),
                COMMON_KEYS.iter().chain(protocol.keys()).copied().collect::<Vec<_>>().join(", ")
            )));
        }
        let keys = serde_json::Value::Object(entry);
        let wrong = |e: serde_path_to_error::Error<serde_json::Error>| {
            let protocol = protocol.with_article();
            match e.path().to_string().as_str() {
                "." => D::Error::custom(format!("resource {name} ({protocol} resource): {}", e.inner())),
                key => D::Error::custom(format!("resource {name}: `{key}` of {protocol} resource: {}", e.inner())),
            }
        };
        let kind = match protocol {
            ResourceProtocol::Postgres => {
                ResourceKind::Postgres(serde_path_to_error::deserialize(keys).map_err(wrong)?)
            }
            ResourceProtocol::Ssh => ResourceKind::Ssh(serde_path_to_error::deserialize(keys).map_err(wrong)?),
        };
        Ok(ResourceConfig { name, listen, kind })
    }
}

/// The keys of a PostgreSQL resource.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
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

/// The keys of an SSH resource.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The target's sshd, `host:port`.
    pub target: String,
    /// The account Proctor logs in as on the target.
    pub user: String,
    /// Proctor's private key for that account (OpenSSH format, no
    /// passphrase, readable by Proctor's account only). Clients never see it.
    pub key_file: PathBuf,
    /// The target's host key, pinned: an OpenSSH public key line
    /// (`ssh-ed25519 AAAA…`) ...
    pub target_host_key: Option<String>,
    /// ... or a `known_hosts` file holding it under the target's address.
    pub known_hosts: Option<PathBuf>,
    /// A shared secret clients may present instead of a grant's credential
    /// (required without `[control]`): from this environment variable ...
    pub client_secret_env: Option<String>,
    /// ... or from this file.
    pub client_secret_file: Option<PathBuf>,
}

impl SshConfig {
    fn validate(&self, name: &str) -> Result<(), GatewayError> {
        let port = self.target.rsplit_once(':').and_then(|(host, port)| {
            let bracketed = host.starts_with('[') && host.ends_with(']');
            (!host.is_empty() && (bracketed || !host.contains(':'))).then_some(port)
        });
        if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
            return Err(GatewayError::Config(format!(
                "resource {name}: target {:?} is not host:port (an IPv6 address in brackets: [::1]:22)",
                self.target
            )));
        }
        match (&self.target_host_key, &self.known_hosts) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err(GatewayError::Config(format!(
                "resource {name}: pin the target's host key with target_host_key or known_hosts, not both"
            ))),
            (None, None) => Err(GatewayError::Config(format!(
                "resource {name}: the target's host key must be pinned: set target_host_key (its public key line) or known_hosts (a file holding it)"
            ))),
        }
    }
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

impl PostgresConfig {
    /// The target account's password, by reference, for resource `name`.
    pub fn password(&self, name: &str) -> Result<SecretRef, GatewayError> {
        SecretRef::from_pair("password", name, &self.password_env, &self.password_file)
    }

    /// The database named in grants' credentials URLs.
    pub fn offered_database(&self) -> &str {
        self.database.as_deref().unwrap_or("postgres")
    }

    fn validate(&self, name: &str) -> Result<(), GatewayError> {
        self.password(name)?;
        if self.target_tls == TargetTls::VerifyFull && self.target_ca_file.is_none() {
            return Err(GatewayError::Config(format!(
                "resource {name}: target_tls = \"verify-full\" needs target_ca_file"
            )));
        }
        if self.sample_rows > 100_000 {
            return Err(GatewayError::Config(format!("resource {name}: sample_rows is at most 100000")));
        }
        Ok(())
    }
}

impl ResourceConfig {
    /// The shared secret clients may present, if the resource still has one.
    pub fn client_secret(&self) -> Result<Option<SecretRef>, GatewayError> {
        let (env, file) = match &self.kind {
            ResourceKind::Postgres(postgres) => (&postgres.client_secret_env, &postgres.client_secret_file),
            ResourceKind::Ssh(ssh) => (&ssh.client_secret_env, &ssh.client_secret_file),
        };
        if env.is_none() && file.is_none() {
            return Ok(None);
        }
        SecretRef::from_pair("client_secret", &self.name, env, file).map(Some)
    }

    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(GatewayError::Config(format!(
                "resource name {:?}: use letters, digits, '-', '_' and '.'",
                self.name
            )));
        }
        self.client_secret()?;
        match &self.kind {
            ResourceKind::Postgres(postgres) => postgres.validate(&self.name),
            ResourceKind::Ssh(ssh) => ssh.validate(&self.name),
        }
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
