//! `proctor demo`: the newcomer's first command. A throw-away PostgreSQL
//! with a small shop schema, Proctor in front of it, and the commands to try.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use proctor_devcluster::{Cluster, Options};
use proctor_gateway_core::config::{PostgresConfig, ResourceConfig, ResourceKind, SshConfig, TargetTls, TlsConfig};
use proctor_gateway_core::identity::{DevIssuer, DevIssuerConfig, IdentityConfig};
use proctor_gateway_core::masking::{Action, MaskingConfig, ProfileConfig};
use proctor_postgres::classify::Class;
use proctor_postgres::rules::RuleSetConfig;
use proctor_recorder::RecorderSettings;
use serde_json::json;

use crate::cli::DemoArgs;
use crate::config::{Config, ConsoleSettings, ReplayConfig};
use proctor_gateway_core::control::{ApprovalConfig, ControlConfig, PolicyConfig};
use proctor_replay_server::client::Client;

const RESOURCE: &str = "demo";
/// The demo's SSH resource, in front of a throw-away OpenSSH server.
const SSH_RESOURCE: &str = "demo-ssh";
const DATABASE: &str = "demo";
const TARGET_ROLE: &str = "app";
/// The demo's agent (group `ci`: grants of the demo resource up to an hour,
/// approved by policy) and approver (group `dba`: decides and revokes).
const AGENT: &str = "demo-agent";
const AGENTS: &str = "ci";
const APPROVER: &str = "demo-dba";
const APPROVERS: &str = "dba";
/// People (group `eng`) need a `dba`'s approval.
const ENGINEERS: &str = "eng";
/// How long the demo's tokens last.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// The demo's investigator, and the group that may search and replay.
const INVESTIGATOR: &str = "demo-investigator";
const INVESTIGATORS: &str = "investigators";

const SEED: &str = r#"
set role app;
create table customers (
    id serial primary key,
    name text not null,
    email text not null,
    card_number text not null,
    country text not null,
    created_at timestamptz not null default now()
);
create table orders (
    id serial primary key,
    customer_id int not null references customers(id),
    total_cents int not null,
    status text not null,
    created_at timestamptz not null default now()
);
insert into customers (name, email, card_number, country, created_at)
select f.first || ' ' || l.last,
       lower(f.first) || '.' || lower(l.last) || i || '@example.com',
       (array['4111 1111 1111 1111', '5555555555554444', '3782 822463 10005', '6011-1111-1111-1117', '4012888888881881'])[1 + i % 5],
       (array['DE', 'FR', 'US', 'JP', 'BR'])[1 + i % 5],
       now() - make_interval(hours => i)
from generate_series(1, 200) as i,
     lateral (select (array['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Ken', 'Margaret', 'Linus', 'Radia'])[1 + i % 10] as first) f,
     lateral (select (array['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Thompson', 'Hamilton', 'Torvalds', 'Perlman'])[1 + (i / 10) % 10] as last) l;
insert into orders (customer_id, total_cents, status, created_at)
select 1 + (i * 7) % 200, 500 + (i * 7919) % 50000,
       (array['paid', 'shipped', 'refunded', 'cancelled'])[1 + i % 4],
       now() - make_interval(mins => i)
from generate_series(1, 1000) as i;
"#;

/// The agents' statement rules: every risky class is held for a `dba`
/// (plain reads and writes with a `WHERE` pass; what cannot be parsed is
/// always blocked).
const AGENT_RULES: &str = "ci";

fn agent_rules() -> RuleSetConfig {
    let hold = Class::ALL
        .iter()
        .filter(|c| !matches!(c, Class::Write | Class::Unparseable))
        .map(|c| c.as_str().to_string())
        .collect();
    RuleSetConfig { block: Vec::new(), hold, approval_group: Some(APPROVERS.to_string()) }
}

/// The agents' SSH rules: shells and ordinary commands pass; a few risky
/// commands, and files uploaded to or removed from `/etc`, wait for a `dba`.
const AGENT_SSH_RULES: &str = "ci-ssh";

fn agent_ssh_rules() -> proctor_ssh::rules::SshRuleSetConfig {
    proctor_ssh::rules::SshRuleSetConfig {
        block: Vec::new(),
        hold: ["sudo", "rm -rf", "systemctl", "shutdown", "reboot", "sftp write /etc/*", "sftp remove /etc/*"]
            .map(String::from)
            .to_vec(),
        approval_group: Some(APPROVERS.to_string()),
        shells: true,
        sftp: Some(true),
        forward: Vec::new(),
        end_session_on: None,
    }
}

/// The agents' masking profile: every detector on (card numbers keep their
/// last four digits), so `select * from customers` shows masking at work.
const AGENT_MASKING: &str = "ci";

fn agent_masking() -> ProfileConfig {
    ProfileConfig {
        detectors: vec!["all".to_string()],
        actions: [("card".to_string(), Action::Last4), ("email".to_string(), Action::Token)].into(),
        columns: Vec::new(),
    }
}

/// The demo's SSH target: a throw-away OpenSSH `sshd` on loopback (killed
/// with the demo), Proctor's key for it, and the demo agent's own key.
struct SshTarget {
    sshd: proctor_devcluster::sshd::Sshd,
    /// Proctor's key for the target (what `ssh_target_command` uses too).
    upstream_key: std::path::PathBuf,
    /// The target's host key, pinned under its address.
    known_hosts: std::path::PathBuf,
    /// The demo agent's key, certified for its grant.
    agent_key: std::path::PathBuf,
    /// Where it all is; removed last, once the server is stopped.
    _dir: tempfile::TempDir,
}

impl SshTarget {
    fn start() -> anyhow::Result<SshTarget> {
        use proctor_devcluster::sshd::{self, Sshd};
        let dir = tempfile::Builder::new().prefix("proctor-demo-ssh").tempdir()?;
        let upstream_key = dir.path().join("proctor_key");
        sshd::keygen(&upstream_key)?;
        let agent_key = dir.path().join("agent_key");
        sshd::keygen(&agent_key)?;
        let sshd = Sshd::start(dir.path(), &upstream_key.with_extension("pub"))?;
        let host_key = std::fs::read_to_string(&sshd.host_key_file)?;
        let known_hosts = dir.path().join("target_known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, host_key.trim()))?;
        Ok(SshTarget { sshd, upstream_key, known_hosts, agent_key, _dir: dir })
    }

    fn resource(&self, port: u16) -> anyhow::Result<ResourceConfig> {
        Ok(ResourceConfig {
            name: SSH_RESOURCE.to_string(),
            listen: format!("127.0.0.1:{port}").parse()?,
            kind: ResourceKind::Ssh(SshConfig {
                target: format!("127.0.0.1:{}", self.sshd.port),
                user: proctor_devcluster::sshd::Sshd::user(),
                key_file: self.upstream_key.clone(),
                target_host_key: None,
                known_hosts: Some(self.known_hosts.clone()),
                client_secret_env: None,
                client_secret_file: None,
            }),
        })
    }

    /// The same target straight, with Proctor's key for it: to compare.
    fn direct_command(&self) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {} {}@127.0.0.1",
            self.upstream_key.display(),
            self.known_hosts.display(),
            self.sshd.port,
            proctor_devcluster::sshd::Sshd::user()
        )
    }
}

fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // Before anything is written: the data dir is the demo's account's alone.
    crate::data_dir::prepare(&args.data_dir, None)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    eprintln!("proctor demo: starting a throw-away PostgreSQL cluster ...");
    let superuser_password = random_secret()?;
    let cluster = Cluster::start(&Options { tls: true, superuser_password, ..Options::default() })
        .context("cannot start the demo's PostgreSQL")?;
    let target_password = random_secret()?;
    cluster.psql("postgres", &format!("create role {TARGET_ROLE} login password '{target_password}'"))?;
    cluster.psql("postgres", &format!("create database {DATABASE} owner {TARGET_ROLE}"))?;
    cluster.psql(DATABASE, SEED).context("cannot load the demo data")?;

    // A throw-away OpenSSH server too, where one can be started.
    let ssh = match SshTarget::start() {
        Ok(ssh) => Some(ssh),
        Err(error) => {
            eprintln!("proctor demo: no SSH resource ({error:#}); scripts/setup installs openssh-server");
            None
        }
    };

    // Secrets live in files, referenced by the configuration, never inline.
    let secrets = data_dir.join("demo");
    std::fs::create_dir_all(&secrets)?;
    write_secret(&secrets.join("target-password"), &target_password)?;
    let config = Config {
        data_dir: data_dir.clone(),
        data_dir_group: None,
        session_threads: None,
        session_scheduling: Default::default(),
        recorder: RecorderSettings::default(),
        tls: TlsConfig::default(),
        resources: std::iter::once(ResourceConfig {
            name: RESOURCE.to_string(),
            listen: format!("127.0.0.1:{}", args.port).parse()?,
            kind: ResourceKind::Postgres(PostgresConfig {
                target: format!("127.0.0.1:{}", cluster.port),
                user: TARGET_ROLE.to_string(),
                password_env: None,
                password_file: Some(secrets.join("target-password")),
                allow_plaintext: false,
                target_tls: TargetTls::Require,
                target_ca_file: None,
                // No shared secret: only grants open the demo resource.
                client_secret_env: None,
                client_secret_file: None,
                database: Some(DATABASE.to_string()),
                databases: Vec::new(),
                sample_rows: 0,
                sample_bytes: 64 * 1024,
            }),
        })
        .chain(ssh.as_ref().map(|ssh| ssh.resource(args.ssh_port)).transpose()?)
        .collect(),
        identity: IdentityConfig { issuers: Vec::new(), dev_issuer: Some(DevIssuerConfig::default()) },
        replay: Some(ReplayConfig {
            listen: format!("127.0.0.1:{}", args.replay_port).parse()?,
            investigator_group: INVESTIGATORS.to_string(),
            compliance_group: None,
            tls: false,
            console: ConsoleSettings {
                dev_subject: Some(INVESTIGATOR.to_string()),
                dev_groups: vec![INVESTIGATORS.to_string()],
                ..ConsoleSettings::default()
            },
        }),
        control: Some(ControlConfig {
            listen: format!("127.0.0.1:{}", args.api_port).parse()?,
            store: "sqlite".to_string(),
            tls: false,
            pending_ttl: std::time::Duration::from_secs(3600),
            public_host: None,
            admin_group: APPROVERS.to_string(),
        }),
        policies: vec![
            // Shells and ordinary commands on the SSH resource, recorded.
            PolicyConfig {
                name: "ci-agents-ssh".to_string(),
                groups: vec![AGENTS.to_string()],
                resources: vec![SSH_RESOURCE.to_string()],
                max_ttl: std::time::Duration::from_secs(3600),
                approval: None,
                rules: Some(AGENT_SSH_RULES.to_string()),
                masking_profile: None,
                masking_profiles: Default::default(),
                sample_rows: None,
            },
            PolicyConfig {
                name: "ci-agents".to_string(),
                groups: vec![AGENTS.to_string()],
                resources: vec![RESOURCE.to_string()],
                max_ttl: std::time::Duration::from_secs(3600),
                approval: None,
                rules: Some(AGENT_RULES.to_string()),
                masking_profile: Some(AGENT_MASKING.to_string()),
                masking_profiles: Default::default(),
                sample_rows: None,
            },
            PolicyConfig {
                name: "engineers".to_string(),
                groups: vec![ENGINEERS.to_string()],
                resources: vec![RESOURCE.to_string()],
                max_ttl: std::time::Duration::from_secs(1800),
                approval: Some(ApprovalConfig { group: APPROVERS.to_string(), count: 1 }),
                rules: None,
                masking_profile: None,
                masking_profiles: Default::default(),
                sample_rows: None,
            },
        ],
        rules: [(AGENT_RULES.to_string(), agent_rules())].into(),
        ssh_rules: [(AGENT_SSH_RULES.to_string(), agent_ssh_rules())].into(),
        masking: MaskingConfig {
            key_file: None,
            default_profile: None,
            profiles: [(AGENT_MASKING.to_string(), agent_masking())].into(),
        },
    };
    let dev_issuer = DevIssuer::open_or_create(&data_dir, &DevIssuerConfig::default())?;
    let investigator_token = dev_issuer.sign(INVESTIGATOR, &[INVESTIGATORS.to_string()], TOKEN_TTL)?;
    let agent_token = dev_issuer.sign(AGENT, &[AGENTS.to_string()], TOKEN_TTL)?;
    let approver_token = dev_issuer.sign(APPROVER, &[APPROVERS.to_string()], TOKEN_TTL)?;
    let target_url = cluster.url(TARGET_ROLE, &target_password, DATABASE, "require");
    let json_output = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(super::up::serve(config, "proctor demo", |ready| {
        let replay_url = ready.replay_url.clone().context("the demo's replay API did not start")?;
        let api_url = ready.api_url.clone().context("the demo's control API did not start")?;
        // The agent asks for its grant the way any client does: through the
        // control API (from a thread of its own: the client blocks).
        let grant = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let client = Client::named(&api_url, &agent_token, None, "control API", "--api")?;
                    let body = json!({ "resource": RESOURCE, "ttl": "1h", "reason": "proctor demo" });
                    anyhow::Ok(client.post_json("/v1/grants", &body)?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the demo's grant request failed"))?
        })?;
        // And, with its own key, a certificate for a grant on the SSH
        // resource: a command line that asks for nothing.
        let ssh_command = match &ssh {
            None => None,
            Some(ssh) => Some(std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let client = Client::named(&api_url, &agent_token, None, "control API", "--api")?;
                        let body = json!({ "resource": SSH_RESOURCE, "ttl": "1h", "reason": "proctor demo" });
                        let mut grant = client.post_json("/v1/grants", &body)?;
                        let public = ssh.agent_key.with_extension("pub");
                        super::grant::certify(&client, &mut grant, &public, true)?;
                        grant["ssh_certificate"]["command"]
                            .as_str()
                            .map(str::to_string)
                            .with_context(|| format!("the demo's SSH grant has no certificate: {grant}"))
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("the demo's SSH grant request failed"))?
            })?),
        };
        let postgres_url = grant["credentials"]["url"]
            .as_str()
            .with_context(|| format!("the demo's grant has no credentials: {grant}"))?
            .to_string();
        let grant_id = grant["id"].as_str().unwrap_or_default().to_string();
        let data = data_dir.display();
        let ssh_text = match (&ssh, &ssh_command) {
            (Some(ssh), Some(command)) => format!(
                "\nAnd a throw-away OpenSSH server behind resource {SSH_RESOURCE}: the agent's certificate (valid until its\n\
                 grant ends, no password) opens it; shells and commands are recorded, commands typed found by kind:command:\n\n  \
                 {command} 'uname -a'\n  {command}\n\n  proctor search 'kind:command' --data-dir {data}\n\n\
                 Its rules ({AGENT_SSH_RULES}) hold sudo, rm -rf, systemctl, shutdown and reboot for a dba. Try:\n\n  \
                 {command} 'systemctl --version'\n\n\
                 It is held with a review id (r_...); approve it as above (proctor review approve), run it again: it runs once.\n\
                 Find it: proctor search 'kind:policy_decision outcome:hold' --data-dir {data}\n\n\
                 Straight to the same server, to compare: {}\n",
                ssh.direct_command()
            ),
            _ => String::new(),
        };
        eprintln!(
            "\nProctor is in front of a throw-away PostgreSQL with demo data (customers, orders).\n\n\
             Connect through Proctor as {AGENT}, with the credential of its one-hour grant {grant_id}\n\
             (every statement and result is recorded):\n\n  psql \"{postgres_url}\"\n\n\
             Try:  select * from customers limit 5;\n      select status, count(*) from orders group by 1;\n\n\
             E-mail addresses and card numbers come back masked (profile {AGENT_MASKING}: every detector on),\n\
             and are recorded masked: nothing raw reaches the recording or the index.\n\n\
             Then look at the recording in the investigators' console: open {replay_url}/ in a browser and\n\
             sign in as {INVESTIGATOR} (the dev issuer's form proposes it); search customers kind:statement.\n\n\
             Or from another terminal:\n\n  proctor sessions --data-dir {data}\n  proctor search 'customers kind:statement' --data-dir {data}\n  proctor replay SESSION_ID --data-dir {data}\n  proctor verify --data-dir {data}\n\n\
             or through the replay API at {replay_url}, as the demo investigator:\n\n  export PROCTOR_SERVER={replay_url} PROCTOR_TOKEN={investigator_token}\n  proctor search 'customers kind:statement'\n\n\
             Grants come from the control API at {api_url}. As the agent (group ci, approved by policy):\n\n  proctor grant request --api {api_url} --token {agent_token} --resource {RESOURCE} --ttl 15m --reason 'try it'\n\n\
             The agent's statements run under rules {AGENT_RULES}: risky ones wait for a dba. Try, in psql:\n\n      create index on orders (status);\n\n\
             It is held with a review id (r_...). As the approver (group dba), look and allow it; then run it again, once:\n\n  proctor review list --api {api_url} --token {approver_token}\n  proctor review approve REVIEW_ID --api {api_url} --token {approver_token}\n\n\
             As the approver, end the agent's grant: its session ends within a second:\n\n  proctor grant revoke {grant_id} --api {api_url} --token {approver_token} --reason 'demo over'\n\n\
             Compare with the target directly: psql \"{target_url}\"\n{ssh_text}\
             Ctrl-C ends the demo: sessions end, the recording is sealed, the cluster is removed.\n"
        );
        if json_output {
            let line = json!({
                "postgres_url": postgres_url,
                "target_url": target_url,
                "data_dir": data_dir,
                "resource": RESOURCE,
                "key_fingerprint": ready.key_fingerprint,
                "replay_url": replay_url,
                "console_url": format!("{replay_url}/"),
                "investigator_token": investigator_token,
                "api_url": api_url,
                "agent_token": agent_token,
                "approver_token": approver_token,
                "grant_id": grant_id,
                "ssh_resource": ssh.as_ref().map(|_| SSH_RESOURCE),
                "ssh_command": ssh_command,
                "ssh_target_command": ssh.as_ref().map(SshTarget::direct_command),
            });
            println!("{line}");
            std::io::stdout().flush()?;
        }
        Ok(())
    }))?;
    drop(cluster);
    drop(ssh);
    eprintln!("proctor demo: stopped; the recording is in {}", data_dir.display());
    Ok(ExitCode::SUCCESS)
}
