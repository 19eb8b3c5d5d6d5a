//! The configuration file: one TOML document. Secrets are never inline; later
//! sections reference them by environment variable or file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use proctor_gateway_core::config::{ResourceConfig, ResourceKind, ResourceProtocol, TlsConfig, validate_resources};
use proctor_gateway_core::control::{ControlConfig, Policies, PolicyConfig};
use proctor_gateway_core::identity::IdentityConfig;
use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, Profile, Profiles};
use proctor_gateway_core::threads::Scheduling;
use proctor_postgres::rules::{RuleSet, RuleSetConfig};
use proctor_recorder::RecorderSettings;
use serde::Deserialize;

use crate::data_dir::GroupRef;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where recordings, keys and state live. Relative paths are taken from
    /// the configuration file's directory.
    pub data_dir: PathBuf,
    /// A local group (name or gid) whose members may read the recording
    /// (`search`, `sessions`, `replay --data-dir`); without it the data
    /// dir is Proctor's account's alone.
    #[serde(default)]
    pub data_dir_group: Option<GroupRef>,
    /// How many threads sessions run on (each session on one of them, for
    /// its whole life); without it, one per core but one (at least one).
    #[serde(default)]
    pub session_threads: Option<usize>,
    /// How the kernel schedules the session threads: `batch` (the default,
    /// `SCHED_BATCH`: a thread woken by a frame does not preempt the task
    /// running on its CPU) or `normal` (the process's own policy, kept).
    #[serde(default)]
    pub session_scheduling: Scheduling,
    #[serde(default)]
    pub recorder: RecorderSettings,
    /// The certificate presented to clients; without it, a self-signed one
    /// is generated in `data_dir/tls/` (dev mode).
    #[serde(default)]
    pub tls: TlsConfig,
    /// The resources Proctor fronts.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// Who may call Proctor's APIs: trusted OIDC issuers, and the embedded
    /// dev issuer (off unless configured).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The replay server's search and replay API (off unless configured).
    #[serde(default)]
    pub replay: Option<ReplayConfig>,
    /// The control API and its store: just-in-time grants (off unless configured).
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Who may request which resources, for how long, with whose approval,
    /// under which statement rules.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Statement rules by name (`[rules.NAME]`): which statement classes
    /// are blocked and which are held for review.
    #[serde(default)]
    pub rules: std::collections::BTreeMap<String, RuleSetConfig>,
    /// SSH rule sets by name (`[ssh_rules.NAME]`): which exec commands are
    /// blocked and which held for review, and whether shells may open.
    #[serde(default)]
    pub ssh_rules: std::collections::BTreeMap<String, proctor_ssh::rules::SshRuleSetConfig>,
    /// Masking profiles (`[masking.profiles.NAME]`), the default one, and
    /// the key of keyed tokens.
    #[serde(default)]
    pub masking: MaskingConfig,
}

/// The `[replay]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Where the API listens (e.g. `127.0.0.1:7070`).
    pub listen: std::net::SocketAddr,
    /// Only members of this group (from the token's groups claim) may search
    /// or read recordings.
    #[serde(default = "default_investigator_group")]
    pub investigator_group: String,
    /// Members of this group may export evidence (`POST /api/exports`,
    /// `proctor export --server`) of recorded sessions, as investigators
    /// may, and search or read nothing else. Unset: only investigators
    /// export.
    #[serde(default)]
    pub compliance_group: Option<String>,
    /// Serve HTTPS with the `[tls]` certificate (or the dev one). Off, the
    /// API speaks plain HTTP: for loopback, or behind a TLS-terminating proxy.
    #[serde(default)]
    pub tls: bool,
    /// The investigators' web console, served beside the API.
    #[serde(default)]
    pub console: ConsoleSettings,
}

fn default_investigator_group() -> String {
    "investigators".to_string()
}

/// The `[replay.console]` section: how investigators sign in to the web
/// console (OpenID Connect, authorization code with PKCE).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Off: the replay server serves its API only.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The console's URL as browsers reach it (behind a proxy, say); by
    /// default the replay server's own. The redirect URI registered with the
    /// issuer is `{public_url}/auth/callback`.
    pub public_url: Option<String>,
    /// The issuer to sign in with: its URL (discovery at
    /// `{issuer}/.well-known/openid-configuration`), or `dev` for the
    /// embedded dev issuer (the default while it is on).
    pub issuer: Option<String>,
    #[serde(default = "default_console_client")]
    pub client_id: String,
    /// For a confidential client; none: a public client with PKCE.
    pub client_secret: Option<String>,
    /// Trusted certificates for an `https://` issuer (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// The ID token claim listing groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// How long a sign-in lasts (at most the ID token's own life).
    #[serde(default = "default_console_session", with = "humantime_serde")]
    pub session_ttl: std::time::Duration,
    /// What the dev issuer's sign-in form proposes (it accepts any).
    pub dev_subject: Option<String>,
    #[serde(default)]
    pub dev_groups: Vec<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            public_url: None,
            issuer: None,
            client_id: default_console_client(),
            client_secret: None,
            ca_file: None,
            groups_claim: default_groups_claim(),
            session_ttl: default_console_session(),
            dev_subject: None,
            dev_groups: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_console_client() -> String {
    "proctor-console".to_string()
}

fn default_groups_claim() -> String {
    "groups".to_string()
}

fn default_console_session() -> std::time::Duration {
    std::time::Duration::from_secs(8 * 3600)
}

/// The embedded default configuration, used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../proctor.default.toml");

impl Config {
    /// The embedded default, with relative paths taken from the working directory.
    pub fn embedded_default() -> anyhow::Result<Config> {
        let config: Config = toml::from_str(DEFAULT_CONFIG).context("the embedded default configuration is invalid")?;
        config.recorder.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read configuration {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("invalid configuration {}", path.display()))?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let relative = |p: &mut Option<PathBuf>| {
            if let Some(inner) = p
                && inner.is_relative()
            {
                *inner = base.join(&*inner);
            }
        };
        relative(&mut config.masking.key_file);
        relative(&mut config.tls.cert_file);
        relative(&mut config.tls.key_file);
        for issuer in &mut config.identity.issuers {
            relative(&mut issuer.jwks_file);
            relative(&mut issuer.jwks_ca_file);
        }
        for resource in &mut config.resources {
            match &mut resource.kind {
                ResourceKind::Postgres(postgres) => {
                    relative(&mut postgres.password_file);
                    relative(&mut postgres.client_secret_file);
                    relative(&mut postgres.target_ca_file);
                }
                ResourceKind::Ssh(ssh) => {
                    let mut key_file = Some(std::mem::take(&mut ssh.key_file));
                    relative(&mut key_file);
                    ssh.key_file = key_file.unwrap_or_default();
                    relative(&mut ssh.known_hosts);
                    relative(&mut ssh.client_secret_file);
                }
            }
        }
        config.validate().with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(config)
    }

    /// Checks what serde cannot: settings' ranges, names that must match.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.recorder.validate()?;
        anyhow::ensure!(
            self.session_threads.is_none_or(|n| (1..=1024).contains(&n)),
            "session_threads must be between 1 and 1024 (or left out: one per core but one)"
        );
        validate_resources(&self.resources, self.control.is_some())?;
        Policies::new(self.policies.clone())?;
        for (name, rules) in &self.rules {
            RuleSet::new(name, rules)?;
        }
        for (name, rules) in &self.ssh_rules {
            proctor_ssh::rules::SshRuleSet::new(name, rules).map_err(|e| anyhow::anyhow!(e))?;
        }
        // Profiles checked without a key (tokens are not made here).
        let profiles = Profiles::new(&self.masking, MaskingKey::new(Vec::new()))?;
        for (name, profile) in &self.masking.profiles {
            Profile::new(name, profile)?;
        }
        for policy in &self.policies {
            for profile in policy.masking_profile.iter().chain(policy.masking_profiles.values()) {
                profiles.check(profile).map_err(|e| anyhow::anyhow!("policy {:?}: {e}", policy.name))?;
            }
            if let Some(rules) = &policy.rules {
                anyhow::ensure!(
                    self.rules.contains_key(rules) || self.ssh_rules.contains_key(rules),
                    "policy {:?} names rules {rules:?}, which are not configured: add a [rules.{rules}] table (or, for SSH resources, [ssh_rules.{rules}])",
                    policy.name
                );
                // Rules are scoped per protocol: each resource the policy
                // opens needs a rule set of that name in its protocol's table.
                for resource in
                    self.resources.iter().filter(|r| policy.resources.iter().any(|p| p == "*" || *p == r.name))
                {
                    let protocol = resource.protocol();
                    let scope = protocol.rules();
                    anyhow::ensure!(
                        self.rule_sets(protocol).any(|name| name == rules),
                        "policy {:?} names rules {rules:?} and opens {} resource {:?}, whose protocol has no {} of that name: add a [{}.{rules}] table",
                        policy.name,
                        protocol.as_str(),
                        resource.name,
                        scope.kind,
                        scope.table
                    );
                }
            }
            for resource in &policy.resources {
                anyhow::ensure!(
                    resource == "*" || self.resources.iter().any(|r| &r.name == resource),
                    "policy {:?} names resource {resource:?}, which is not configured",
                    policy.name
                );
            }
        }
        anyhow::ensure!(
            self.policies.is_empty() || self.control.is_some(),
            "[[policies]] are given but [control] is not: grants are requested through the control API"
        );
        Ok(())
    }

    /// The names of the rule sets configured for `protocol`'s sessions.
    pub fn rule_sets(&self, protocol: ResourceProtocol) -> impl Iterator<Item = &str> {
        match protocol {
            ResourceProtocol::Postgres => {
                Box::new(self.rules.keys().map(String::as_str)) as Box<dyn Iterator<Item = &str>>
            }
            ResourceProtocol::Ssh => Box::new(self.ssh_rules.keys().map(String::as_str)),
        }
    }

    /// The masking profiles, with their key (read, or created on first start
    /// when profiles are configured).
    pub fn masking_profiles(&self) -> anyhow::Result<Profiles> {
        if self.masking.profiles.is_empty() && self.masking.default_profile.is_none() {
            return Ok(Profiles::none());
        }
        let path = self.masking.key_file.clone().unwrap_or_else(|| self.data_dir.join("keys").join("masking.key"));
        let key = MaskingKey::load_or_create(&path)?;
        Ok(Profiles::new(&self.masking, key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_threads_are_left_to_the_host_unless_set() {
        let config = |text: &str| toml::from_str::<Config>(&format!("data_dir = \"d\"\n{text}")).unwrap();
        assert_eq!(config("").session_threads, None);
        assert_eq!(config("session_threads = 3").session_threads, Some(3));
        config("session_threads = 3").validate().unwrap();
        let error = config("session_threads = 0").validate().unwrap_err().to_string();
        assert!(error.contains("session_threads must be between 1 and 1024"), "{error}");
    }

    #[test]
    fn session_threads_are_scheduled_as_batch_unless_set() {
        let config = |text: &str| toml::from_str::<Config>(&format!("data_dir = \"d\"\n{text}"));
        assert_eq!(config("").unwrap().session_scheduling, Scheduling::Batch);
        assert_eq!(config("session_scheduling = \"normal\"").unwrap().session_scheduling, Scheduling::Normal);
        let error = config("session_scheduling = \"realtime\"").unwrap_err().to_string();
        assert!(error.contains("unknown variant `realtime`, expected `batch` or `normal`"), "{error}");
    }

    #[test]
    fn data_dir_group_is_a_name_or_a_number() {
        for (text, want) in [("\"readers\"", GroupRef::Name("readers".into())), ("4242", GroupRef::Id(4242))] {
            let config: Config = toml::from_str(&format!("data_dir = \"d\"\ndata_dir_group = {text}\n")).unwrap();
            assert_eq!(config.data_dir_group, Some(want));
        }
        assert_eq!(Config::embedded_default().unwrap().data_dir_group, None);
    }

    #[test]
    fn the_embedded_default_is_valid_and_matches_the_built_in_settings() {
        let config = Config::embedded_default().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("proctor-data"));
        let defaults = RecorderSettings::default();
        assert_eq!(
            format!("{:?}", config.recorder),
            format!("{defaults:?}"),
            "proctor.default.toml documents the defaults"
        );
    }
}
