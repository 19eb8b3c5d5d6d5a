//! `proctor demo`: the newcomer's first command. A throw-away PostgreSQL
//! with a small shop schema, Proctor in front of it, and the commands to try.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use proctor_devcluster::{Cluster, Options};
use proctor_gateway_core::config::{ResourceConfig, ResourceProtocol, TargetTls, TlsConfig};
use proctor_gateway_core::identity::{DevIssuer, DevIssuerConfig, IdentityConfig};
use proctor_recorder::RecorderSettings;
use serde_json::json;

use crate::cli::DemoArgs;
use crate::config::{Config, ReplayConfig};

const RESOURCE: &str = "demo";
const DATABASE: &str = "demo";
const TARGET_ROLE: &str = "app";
/// The name demo clients give; the shared secret is their password.
const DEMO_USER: &str = "demo";
/// The demo's investigator, and the group that may search and replay.
const INVESTIGATOR: &str = "demo-investigator";
const INVESTIGATORS: &str = "investigators";
const INVESTIGATOR_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

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
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    eprintln!("proctor demo: starting a throw-away PostgreSQL cluster ...");
    let superuser_password = random_secret()?;
    let cluster = Cluster::start(&Options { tls: true, superuser_password, ..Options::default() })
        .context("cannot start the demo's PostgreSQL")?;
    let target_password = random_secret()?;
    cluster.psql("postgres", &format!("create role {TARGET_ROLE} login password '{target_password}'"))?;
    cluster.psql("postgres", &format!("create database {DATABASE} owner {TARGET_ROLE}"))?;
    cluster.psql(DATABASE, SEED).context("cannot load the demo data")?;

    // Secrets live in files, referenced by the configuration, never inline.
    let secrets = data_dir.join("demo");
    std::fs::create_dir_all(&secrets)?;
    let client_secret = random_secret()?;
    write_secret(&secrets.join("target-password"), &target_password)?;
    write_secret(&secrets.join("client-secret"), &client_secret)?;
    let config = Config {
        data_dir: data_dir.clone(),
        recorder: RecorderSettings::default(),
        tls: TlsConfig::default(),
        resources: vec![ResourceConfig {
            name: RESOURCE.to_string(),
            protocol: ResourceProtocol::Postgres,
            listen: format!("127.0.0.1:{}", args.port).parse()?,
            target: format!("127.0.0.1:{}", cluster.port),
            user: TARGET_ROLE.to_string(),
            password_env: None,
            password_file: Some(secrets.join("target-password")),
            allow_plaintext: false,
            target_tls: TargetTls::Require,
            target_ca_file: None,
            client_secret_env: None,
            client_secret_file: Some(secrets.join("client-secret")),
            database: Some(DATABASE.to_string()),
            sample_rows: 0,
            sample_bytes: 64 * 1024,
        }],
        identity: IdentityConfig { issuers: Vec::new(), dev_issuer: Some(DevIssuerConfig::default()) },
        replay: Some(ReplayConfig {
            listen: format!("127.0.0.1:{}", args.replay_port).parse()?,
            investigator_group: INVESTIGATORS.to_string(),
            tls: false,
        }),
        control: None,
        policies: Vec::new(),
    };
    let dev_issuer = DevIssuer::open_or_create(&data_dir, &DevIssuerConfig::default())?;
    let investigator_token = dev_issuer.sign(INVESTIGATOR, &[INVESTIGATORS.to_string()], INVESTIGATOR_TTL)?;
    let target_url = cluster.url(TARGET_ROLE, &target_password, DATABASE, "require");
    let json_output = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(super::up::serve(config, "proctor demo", |ready| {
        let (_, addr) = ready.listeners.first().context("the demo resource did not start")?;
        let replay_url = ready.replay_url.clone().context("the demo's replay API did not start")?;
        let postgres_url = format!("postgres://{DEMO_USER}:{client_secret}@{addr}/{DATABASE}?sslmode=require");
        let data = data_dir.display();
        eprintln!(
            "\nProctor is in front of a throw-away PostgreSQL with demo data (customers, orders).\n\n\
             Connect through Proctor (every statement and result is recorded):\n\n  psql \"{postgres_url}\"\n\n\
             Try:  select * from customers limit 5;\n      select status, count(*) from orders group by 1;\n\n\
             Then look at the recording (in another terminal):\n\n  proctor sessions --data-dir {data}\n  proctor search 'customers kind:statement' --data-dir {data}\n  proctor replay SESSION_ID --data-dir {data}\n  proctor verify --data-dir {data}\n\n\
             or through the replay API at {replay_url}, as the demo investigator:\n\n  export PROCTOR_SERVER={replay_url} PROCTOR_TOKEN={investigator_token}\n  proctor search 'customers kind:statement'\n\n\
             Compare with the target directly: psql \"{target_url}\"\n\
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
                "investigator_token": investigator_token,
            });
            println!("{line}");
            std::io::stdout().flush()?;
        }
        Ok(())
    }))?;
    drop(cluster);
    eprintln!("proctor demo: stopped; the recording is in {}", data_dir.display());
    Ok(ExitCode::SUCCESS)
}
