use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Proctor: an audit-first gateway. Agents and people reach production
/// through it with short-lived credentials; every session is recorded as
/// typed, tamper-evident events.
#[derive(Parser, Debug)]
#[command(name = "proctor", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (e.g. `info`, `proctor=debug`); defaults to $PROCTOR_LOG or `info`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a throw-away PostgreSQL with demo data and Proctor in front of
    /// it, print how to connect, and run until SIGINT or SIGTERM.
    Demo(DemoArgs),
    /// Run Proctor with a configuration file until SIGINT or SIGTERM.
    Up(UpArgs),
    /// Check a data dir: segments against manifests, signatures, manifest
    /// links, and every session's sequence and hash chain; or, with
    /// `--bundle`, an exported bundle, offline.
    Verify(VerifyArgs),
    /// Export whole sessions as a signed evidence bundle that proves exactly
    /// what it carries (`proctor verify --bundle` checks it offline).
    Export(ExportArgs),
    /// Fill a data dir with realistic synthetic sessions of every kind.
    Generate(GenerateArgs),
    /// List recorded sessions (read-only; safe beside a running Proctor).
    Sessions(SessionsArgs),
    /// Print one session's events in order as a readable transcript.
    Replay(ReplayArgs),
    /// Search every recorded event: words, "phrases", field:value, time
    /// bounds (after:, before:, since:), AND/OR/NOT.
    Search(SearchArgs),
    /// Rebuild a data dir's search index from its recordings alone.
    Reindex(ReindexArgs),
    /// Sign a token with the embedded dev issuer (local use and tests).
    Token(TokenArgs),
    /// Just-in-time access through the control API: request a grant,
    /// approve or deny one, revoke, list and show.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// Statements held for review by statement rules: list and show them,
    /// approve one to run once, or deny it.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// The manifest signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo's recordings, keys and secrets are kept.
    #[arg(long, value_name = "DIR", default_value = "./proctor-demo")]
    pub data_dir: PathBuf,
    /// Proctor's port for the demo database (default: a free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub port: u16,
    /// The replay API's port (default: a free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub replay_port: u16,
    /// The control API's port (default: a free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub api_port: u16,
    /// Proctor's port for the demo SSH server (default: a free one).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub ssh_port: u16,
    /// Once ready, print one JSON object on stdout (human text goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The configuration file (TOML). Without it, the embedded default is
    /// used: data dir `./proctor-data`, default recorder settings.
    #[arg(long, short, value_name = "FILE", env = "PROCTOR_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The data dir to check (a live one, or an exported copy).
    #[arg(long, value_name = "DIR", required_unless_present = "bundle", conflicts_with = "bundle")]
    pub data_dir: Option<PathBuf>,
    /// An exported bundle to check instead, with nothing but itself and
    /// the pinned key: its signature and files, each segment root's
    /// signature, each event's proof, each session's completeness.
    #[arg(long, value_name = "PATH")]
    pub bundle: Option<PathBuf>,
    /// The public key to trust: a file (PEM, or the raw key in hex or
    /// base64), or a fingerprint `SHA256:...`. Without it, the key found in the
    /// data dir is trusted, and a re-signed data dir would pass.
    #[arg(long, value_name = "FILE|FINGERPRINT")]
    pub public_key: Option<String>,
    /// A head hash printed by an earlier verify: it must still be in the
    /// manifest chain, so a truncated tail is detected.
    #[arg(long, value_name = "HASH")]
    pub expect_head: Option<String>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A session to export, whole (repeat, or give several).
    #[arg(
        long = "session",
        value_name = "ID",
        num_args = 1..,
        required_unless_present_any = ["query", "subject", "resource", "since", "after", "before"]
    )]
    pub sessions: Vec<String>,
    /// Instead of `--session`: the sessions the hits of this search belong
    /// to (the query language of `proctor search`; with the selectors
    /// below, those of them that match those too).
    #[arg(long, value_name = "QUERY", conflicts_with = "sessions")]
    pub query: Option<String>,
    /// Instead of `--session`: the sessions of this subject (with the other
    /// selectors, those of all of them).
    #[arg(long, value_name = "NAME", conflicts_with = "sessions")]
    pub subject: Option<String>,
    /// The sessions on this resource.
    #[arg(long, value_name = "NAME", conflicts_with = "sessions")]
    pub resource: Option<String>,
    /// The sessions active within this span (e.g. 30m, 12h, 7d).
    #[arg(long, value_name = "SPAN", conflicts_with = "sessions")]
    pub since: Option<String>,
    /// The sessions active at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "sessions")]
    pub after: Option<String>,
    /// The sessions that began before this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "sessions")]
    pub before: Option<String>,
    /// What to write: a new path. A bundle is a directory, or one tar
    /// file when PATH ends in `.tar`; `ocsf` and `csv` are one file each;
    /// `asciicast` is one file for one terminal session when PATH ends in
    /// `.cast`, else a directory of `SESSION.cast` files.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// What to write: `bundle` (signed, with proofs, holding every format
    /// below), `ocsf` (OCSF 1.3.0 JSON lines), `asciicast` (v2, terminal
    /// sessions), `csv` (statements and decisions).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = ExportFormat::Bundle)]
    pub format: ExportFormat,
    /// Why the evidence is exported: kept, signed, in `bundle.json`.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The data dir to export from (its signing key signs the bundle), or
    /// a running replay server (`--server URL --token JWT` of an
    /// investigator or a member of `replay.compliance_group`).
    #[command(flatten)]
    pub source: Source,
    /// Print what was written as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Bundle,
    Ocsf,
    Asciicast,
    Csv,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The data dir to fill (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How many data sessions to generate.
    #[arg(long, value_name = "N")]
    pub sessions: u64,
    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// Time of the first session (RFC 3339); default: 7 days ago.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// Take the `[recorder]` settings from this configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print `SESSION_ID SEQ` on stdout for every event once the recorder has
    /// accepted it (used by crash tests).
    #[arg(long)]
    pub print_acks: bool,
}

/// Where recordings are read: a data dir, or a running replay server.
#[derive(Args, Debug)]
pub struct Source {
    /// The data dir (a live one, or an exported copy). `search` brings its
    /// index up to date first unless a running Proctor keeps it. Given, it
    /// is read whatever `--server` or `$PROCTOR_SERVER` says.
    #[arg(long, value_name = "DIR", required_unless_present = "server")]
    pub data_dir: Option<PathBuf>,
    /// A running replay server to ask instead of a data dir (e.g. the
    /// demo's `replay_url`).
    // No clap conflict with `--data-dir`: clap counts a value from the
    // environment as given, so an exported `$PROCTOR_SERVER` would refuse
    // every `--data-dir`. `Source::remote` decides instead.
    #[arg(long, value_name = "URL", env = "PROCTOR_SERVER")]
    pub server: Option<String>,
    /// The OIDC token to present to `--server` (an investigator's).
    #[arg(long, value_name = "JWT", env = "PROCTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an `https://` server: the certificate(s) to trust (PEM), e.g.
    /// the server's own or its CA.
    #[arg(long, value_name = "FILE", env = "PROCTOR_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl Source {
    /// The replay server to ask, unless a data dir was named.
    pub fn remote(&self) -> Option<&str> {
        self.server.as_deref().filter(|_| self.data_dir.is_none())
    }
}

#[derive(Args, Debug)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub source: Source,
    /// Only sessions of this subject.
    #[arg(long, value_name = "NAME")]
    pub subject: Option<String>,
    /// Only sessions on this resource.
    #[arg(long, value_name = "NAME")]
    pub resource: Option<String>,
    /// Only sessions of this protocol (postgres, ssh, http, control, system).
    #[arg(long, value_name = "NAME")]
    pub protocol: Option<String>,
    /// Only sessions active within this span (e.g. 30m, 12h, 7d).
    #[arg(long, value_name = "SPAN")]
    pub since: Option<String>,
    /// Only sessions still open.
    #[arg(long)]
    pub live: bool,
    /// Print one JSON object per session.
    #[arg(long)]
    pub json: bool,
}

impl SessionsArgs {
    pub fn filter(&self) -> proctor_replay_server::SessionFilter {
        proctor_replay_server::SessionFilter {
            subject: self.subject.clone(),
            resource: self.resource.clone(),
            protocol: self.protocol.clone(),
            since: self.since.clone(),
            live: self.live,
        }
    }
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The session to print.
    #[arg(value_name = "SESSION_ID")]
    pub session_id: proctor_schemas::SessionId,
    #[command(flatten)]
    pub source: Source,
    /// Start at this seq (a page of a long session; 0: the start).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub from_seq: u64,
    /// Print at most this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print one JSON object per event, with every non-null column.
    #[arg(long)]
    pub json: bool,
    /// Print a terminal session as asciicast v2 (`asciinema play` plays
    /// it): its output, resizes, and the command lines typed as markers.
    #[arg(long, conflicts_with_all = ["json", "from_seq", "limit"])]
    pub asciicast: bool,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The query, e.g. `"drop table" subject:ci-deploy since:7d` (it may
    /// start with `-`: `-kind:parameter_status`).
    #[arg(value_name = "QUERY", default_value = "", allow_hyphen_values = true)]
    pub query: String,
    #[command(flatten)]
    pub source: Source,
    /// Only events this recent (e.g. 30m, 12h, 7d, 2w).
    #[arg(long, value_name = "SPAN")]
    pub since: Option<String>,
    /// Every event where this value passed masked with a keyed token (an
    /// e-mail address, a card number...): the value is turned into its
    /// token with the deployment's masking key, and the token searched for
    /// (QUERY narrows it). `-` reads the value from stdin (kept out of the
    /// shell's history). Only investigators may; the search is recorded
    /// with the token, never the value.
    #[arg(long, value_name = "VALUE")]
    pub value: Option<String>,
    /// How many hits to print.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Skip this many hits first (pagination).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Print one JSON object per hit (`session_id`, `seq`, `time`, `kind`,
    /// `text`, `snippet`, ...).
    #[arg(long)]
    pub json: bool,
    /// With `--json`, end with one object holding the total and the facet
    /// counts.
    #[arg(long)]
    pub facets: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The subject (`sub`) the token names.
    #[arg(long, value_name = "NAME")]
    pub sub: String,
    /// Its groups, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// How long it is valid (e.g. 15m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// The configuration whose `[identity.dev_issuer]` signs (and whose data
    /// dir holds its key).
    #[arg(long, short, value_name = "FILE", env = "PROCTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sign with the dev issuer key of this data dir, default settings
    /// (wins over `--config` and `$PROCTOR_CONFIG`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object (`token`, `sub`, `groups`, `expires_at`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ReindexArgs {
    /// The data dir whose index to rebuild.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Print the public key and its fingerprint, for auditors to pin.
    Show {
        #[command(flatten)]
        location: DataDirArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct DataDirArgs {
    /// The data dir.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Take the data dir from this configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The control API to ask, and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Api {
    /// The control API's URL (e.g. the demo's `api_url`).
    #[arg(long, value_name = "URL", env = "PROCTOR_API")]
    pub api: Option<String>,
    /// The caller's OIDC token.
    #[arg(long, value_name = "JWT", env = "PROCTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an `https://` API: the certificate(s) to trust (PEM).
    #[arg(long, value_name = "FILE", env = "PROCTOR_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON: one object per grant or review.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum GrantCommand {
    /// Ask for access to one resource for a while; prints the grant, and
    /// its credentials when it is active.
    Request(GrantRequestArgs),
    /// Approve a pending grant (never your own).
    Approve(GrantDecideArgs),
    /// Deny a pending grant.
    Deny(GrantDecideArgs),
    /// End a grant now: its live sessions end within a second.
    Revoke(GrantDecideArgs),
    /// Your grants, and those you decide.
    List(GrantListArgs),
    /// One grant. A grant approved after its request shows its
    /// credentials here, once, to its requester.
    Show(GrantShowArgs),
}

#[derive(Args, Debug)]
pub struct GrantRequestArgs {
    #[command(flatten)]
    pub api: Api,
    /// The resource to reach.
    #[arg(long, value_name = "NAME")]
    pub resource: String,
    /// For how long (e.g. 15m, 1h); policies set the most.
    #[arg(long, value_name = "DURATION")]
    pub ttl: String,
    /// Why: recorded, and shown to approvers.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Wait until the grant is decided (approved, denied or expired).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub wait_timeout: std::time::Duration,
    /// For an SSH resource: an OpenSSH public key (`id_ed25519.pub`) to get
    /// a certificate for, valid until the grant ends, written beside it as
    /// `id_ed25519-cert.pub` with a ready `ssh` command line.
    #[arg(long, value_name = "FILE")]
    pub ssh_public_key: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct GrantDecideArgs {
    #[command(flatten)]
    pub api: Api,
    /// The grant's id (`g_...`).
    pub id: String,
    /// Why: recorded with the decision.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct GrantListArgs {
    #[command(flatten)]
    pub api: Api,
    /// Only grants in this state: pending, active, denied, expired, revoked.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only grants for this resource.
    #[arg(long, value_name = "NAME")]
    pub resource: Option<String>,
    /// Only grants of this subject.
    #[arg(long, value_name = "NAME")]
    pub subject: Option<String>,
}

#[derive(Args, Debug)]
pub struct GrantShowArgs {
    #[command(flatten)]
    pub api: Api,
    /// The grant's id (`g_...`).
    pub id: String,
    /// For an active grant on an SSH resource: a certificate for this
    /// OpenSSH public key, as `grant request --ssh-public-key` gives one.
    #[arg(long, value_name = "FILE")]
    pub ssh_public_key: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ReviewCommand {
    /// Reviews of your own held statements, and those you decide.
    List(ReviewListArgs),
    /// One review, with its statement in full.
    Show(ReviewShowArgs),
    /// Let a held statement run once, when its sender sends it again (never
    /// your own).
    Approve(ReviewDecideArgs),
    /// Refuse a held statement.
    Deny(ReviewDecideArgs),
}

#[derive(Args, Debug)]
pub struct ReviewListArgs {
    #[command(flatten)]
    pub api: Api,
    /// Only reviews in this state: pending, approved, denied, expired, used.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only reviews of statements sent under this grant (`g_...`).
    #[arg(long, value_name = "GRANT_ID")]
    pub grant: Option<String>,
    /// At most this many, newest first (1-1000; default 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<i64>,
}

#[derive(Args, Debug)]
pub struct ReviewShowArgs {
    #[command(flatten)]
    pub api: Api,
    /// The review's id (`r_...`).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ReviewDecideArgs {
    #[command(flatten)]
    pub api: Api,
    /// The review's id (`r_...`).
    pub id: String,
    /// Why: recorded with the decision, and shown to the statement's sender.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}
