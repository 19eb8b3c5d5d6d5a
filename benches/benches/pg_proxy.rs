//! PostgreSQL through Proctor against the same work without it, side by side
//! in one run: `pgbench -S` (simple and extended protocol, 8 clients and 1)
//! against the server directly, a bare TCP relay (tokio copy_bidirectional:
//! the floor cost of any user-space proxy), pgbouncer in session mode, and
//! Proctor recording every statement and result. Runs alternate, round after
//! round; medians are compared as ratios. Proctor runs twice: recording
//! only, and with statement rules on (every statement classified and
//! decided, as under the demo's agent rules). Then a 10-million-row SELECT
//! streams through Proctor while its resident memory is sampled.
//!
//! `cargo bench -p proctor-benches --bench pg_proxy [-- SECONDS [ROUNDS]]`
//!
//! Then masking off and on side by side: `pgbench -S` and a 1,000-row,
//! 10-column select (`PG_PROXY_ONLY=masking` runs only that).
//!
//! Then as deployed: clients reach the proxy over TLS, the proxy reaches the
//! target over TLS, and Proctor's clients run under the demo agent's
//! statement rules and masking profile (every detector on). Against the
//! target over TLS directly and pgbouncer in session mode terminating TLS on
//! both sides with the same certificate (`PG_PROXY_ONLY=deployed` runs only
//! these, `deployed:8:simple` one load of them).
//!
//! `PG_PROXY_ONLY=8:simple,1:extended` runs only those loads (and skips the
//! 10-million-row SELECT); `PG_PROXY_PROFILE=relay|proctor|deployed[:extended]`
//! runs one proxy alone for a profiler and prints CPU per transaction by thread.
//! Each proxy's row also shows its CPU and its threads' context switches
//! per transaction (from `/proc`: the cost a wake-up adds on a shared host).
//! `PG_PROXY_SESSION_THREADS=N` runs Proctor's sessions on N threads, and
//! `PG_PROXY_SCHEDULING=normal` schedules them as `session_scheduling =
//! "normal"` does, to compare with the default (`batch`); the bare relay
//! runs on the bench's own runtime, under the default policy either way.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proctor_benches::{BenchSink, median};
use proctor_devcluster::{Cluster, Options, free_port, hand_to_cluster_account, run_as_cluster_account};
use proctor_gateway_core::auth::{AuthError, AuthRequest, Authenticator, Identity, SharedSecretAuthenticator};
use proctor_gateway_core::config::{TargetTls, TlsConfig};
use proctor_gateway_core::masking::{MaskingConfig, MaskingKey, Profiles};
use proctor_gateway_core::threads::{Scheduling, SessionThreads};
use proctor_gateway_core::tls::{server_config, target_client_config};
use proctor_postgres::classify::Class;
use proctor_postgres::rules::{RuleSet, RuleSetConfig};
use proctor_postgres::{self as postgres, PgResource, SampleLimits, Shared, StatementPolicy, Target};
use proctor_recorder::{Recorder, RecorderSettings, Sink};
use tokio::net::{TcpListener, TcpStream};

/// The allocator of the `proctor` binary, so that what runs here is what
/// runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PASSWORD: &str = "bench-password";
const SECRET: &str = "bench-secret";
/// Clients connecting as this user run under [`agent_rules`].
const RULED: &str = "ruled";
/// Clients connecting as this user have their values masked (every
/// detector, and column rules), as the demo's agents do.
const MASKED: &str = "masked";
/// Clients connecting as this user have their values masked by column rules
/// alone (the e-mail and phone columns).
const MASKED_BY_COLUMN: &str = "masked_by_column";
/// Clients connecting as this user run as `proctor demo`'s agent does: under
/// [`agent_rules`] and the demo's masking profile (every detector on, card
/// numbers keep their last four digits).
const AGENT: &str = "agent";

fn masking_profiles() -> Profiles {
    let config: MaskingConfig = toml::from_str(
        r#"[profiles.bench]
detectors = ["all"]
actions = { card = "last4" }
[[profiles.bench.columns]]
match = "*password*"
[[profiles.bench.columns]]
match = "ssn"
action = "token"
[[profiles.columns.columns]]
match = "email"
[[profiles.columns.columns]]
match = "phone"
[profiles.demo]
detectors = ["all"]
actions = { card = "last4" }"#,
    )
    .unwrap();
    Profiles::new(&config, MaskingKey::new(vec![7; 32])).unwrap()
}

/// A 1,000-row, 10-column table like a customer list: ids, names,
/// addresses, phone numbers, timestamps, amounts, statuses, notes.
const WIDE: &str = "create table wide as
    select g as id, 'Customer ' || g as name, 'user' || g || '@example.com' as email,
           '+1 415 555 ' || lpad((g % 10000)::text, 4, '0') as phone, (array['Berlin', 'Paris', 'Austin'])[1 + g % 3] as city,
           now() - make_interval(hours => g) as created_at, (g * 7919 % 100000) / 100.0 as amount,
           (array['paid', 'shipped', 'refunded'])[1 + g % 3] as status,
           'left at the front desk, order ' || g as note, md5(g::text) as code
    from generate_series(1, 1000) g";

/// The demo's agent rules: every risky class held, so every statement is
/// classified and decided.
fn agent_rules() -> RuleSet {
    let hold = Class::ALL
        .iter()
        .filter(|c| !matches!(c, Class::Write | Class::Unparseable))
        .map(|c| c.as_str().to_string())
        .collect();
    RuleSet::new("ci", &RuleSetConfig { block: Vec::new(), hold, approval_group: None }).unwrap()
}

/// The shared secret, with statement rules for the [`RULED`] user.
struct WithRules(SharedSecretAuthenticator);

impl Authenticator for WithRules {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Identity, AuthError> {
        let mut identity = self.0.authenticate(request).await?;
        if request.user == RULED {
            identity.rules = Some("ci".to_string());
        }
        if request.user == MASKED {
            identity.masking_profile = Some("bench".to_string());
        }
        if request.user == MASKED_BY_COLUMN {
            identity.masking_profile = Some("columns".to_string());
        }
        if request.user == AGENT {
            identity.rules = Some("ci".to_string());
            identity.masking_profile = Some("demo".to_string());
        }
        Ok(identity)
    }
}

/// Proctor in this process, recording into a temp data dir.
struct Proctor {
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    recorder: Option<Recorder>,
    _dir: tempfile::TempDir,
}

/// Proctor as deployed: TLS towards its clients (with this certificate)
/// and towards the target.
struct Deployed {
    tls: Arc<rustls::ServerConfig>,
}

fn start_proctor(runtime: &tokio::runtime::Runtime, target_port: u16, deployed: Option<&Deployed>) -> Proctor {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = RecorderSettings::default();
    // PG_PROXY_SEGMENT_MIB: the WAL size at which a segment is sealed.
    if let Some(mib) = std::env::var("PG_PROXY_SEGMENT_MIB").ok().and_then(|m| m.parse::<u64>().ok()) {
        settings.segment_max_bytes = proctor_recorder::config::ByteSize(mib << 20);
    }
    // PG_PROXY_FSYNC_MS: the WAL's fsync interval (default 100 ms).
    if let Some(ms) = std::env::var("PG_PROXY_FSYNC_MS").ok().and_then(|m| m.parse::<u64>().ok()) {
        settings.fsync_interval = Duration::from_millis(ms);
    }
    let recorder = Recorder::open(dir.path(), &settings).unwrap();
    let sink = BenchSink(recorder.sink());
    let resource = Arc::new(PgResource {
        name: "bench".into(),
        allow_plaintext: deployed.is_none(),
        target: Target {
            address: format!("127.0.0.1:{target_port}"),
            user: "app".into(),
            password: PASSWORD.into(),
            tls: deployed.map(|_| target_client_config(TargetTls::Require, None).unwrap().unwrap()),
            connect_timeout: Duration::from_secs(10),
        },
        limits: SampleLimits::default(),
        sessions: Default::default(),
        catalog: Default::default(),
        databases: vec!["app".into()],
    });
    let auth = Arc::new(WithRules(SharedSecretAuthenticator::new([("bench".to_string(), SECRET.to_string())])));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(postgres::serve(
        resource,
        listener,
        sink,
        auth,
        deployed.map(|d| d.tls.clone()),
        Shared {
            policy: Arc::new(StatementPolicy::new([agent_rules()])),
            masking: Arc::new(masking_profiles()),
            // As the binary runs them: each session on one thread of its own.
            // PG_PROXY_SESSION_THREADS=N: N session threads instead;
            // PG_PROXY_SCHEDULING=normal: session_scheduling = "normal".
            threads: Some({
                let scheduling = match std::env::var("PG_PROXY_SCHEDULING").as_deref() {
                    Ok("normal") => Scheduling::Normal,
                    Ok("batch") | Err(_) => Scheduling::Batch,
                    Ok(other) => panic!("PG_PROXY_SCHEDULING={other}: say batch or normal"),
                };
                let count = std::env::var("PG_PROXY_SESSION_THREADS").ok().and_then(|n| n.parse().ok());
                SessionThreads::start_with(count.unwrap_or_else(SessionThreads::default_count), scheduling).unwrap()
            }),
            ..Shared::default()
        },
        stopped,
    ));
    Proctor { port, stop, recorder: Some(recorder), _dir: dir }
}

impl Proctor {
    /// Waits until the WAL files this run filled are sealed, so that
    /// Proctor's sealing is not done during (and charged to) the next
    /// target's run.
    fn wait_for_sealer(&self) {
        let Some(sink) = self.recorder.as_ref().map(Recorder::sink) else { return };
        let deadline = Instant::now() + Duration::from_secs(60);
        while sink.unsealed_segments() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proctor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        std::thread::sleep(Duration::from_millis(200));
        if let Some(recorder) = self.recorder.take() {
            let _ = recorder.close();
        }
    }
}

/// The bare relay: accept, connect, copy both ways.
fn start_relay(runtime: &tokio::runtime::Runtime, target_port: u16) -> u16 {
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target_port)).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

/// pgbouncer in session mode, run as the cluster's account; as deployed,
/// terminating TLS from clients with `tls` (certificate, key) and
/// requiring it towards the target.
fn start_pgbouncer(dir: &Path, target_port: u16, tls: Option<(&Path, &Path)>) -> (Child, u16) {
    let port = free_port();
    let tls = match tls {
        Some((cert, key)) => {
            let (cert_copy, key_copy) = (dir.join("client.crt"), dir.join("client.key"));
            std::fs::copy(cert, &cert_copy).unwrap();
            std::fs::copy(key, &key_copy).unwrap();
            hand_to_cluster_account(&cert_copy).unwrap();
            hand_to_cluster_account(&key_copy).unwrap();
            format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\nserver_tls_sslmode = require\n",
                cert_copy.display(),
                key_copy.display()
            )
        }
        None => String::new(),
    };
    let conf = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    std::fs::write(&users, format!("\"app\" \"{PASSWORD}\"\n")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "[databases]\napp = host=127.0.0.1 port={target_port} dbname=app user=app password={PASSWORD}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = plain\nauth_file = {}\npool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\nlogfile = {}\npidfile = {}\n{tls}",
            users.display(),
            dir.join("pgbouncer.log").display(),
            dir.join("pgbouncer.pid").display()
        ),
    )
    .unwrap();
    hand_to_cluster_account(dir).unwrap();
    hand_to_cluster_account(&conf).unwrap();
    hand_to_cluster_account(&users).unwrap();
    let mut command = Command::new(
        ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("pgbouncer"),
    );
    command.arg(&conf).stdout(Stdio::null()).stderr(Stdio::null());
    run_as_cluster_account(&mut command).unwrap();
    let mut child = command.spawn().expect("pgbouncer (scripts/setup installs it)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("pgbouncer did not start; see {}", dir.join("pgbouncer.log").display());
}

struct Run {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU the proxy used per transaction (µs), where it can be measured.
    proxy_cpu_us: f64,
    /// Times the proxy's threads were switched out per transaction (waiting
    /// for input, or preempted), where it can be measured.
    proxy_switches: f64,
}

/// Times a process's threads have been switched out so far (voluntary and
/// involuntary context switches). For this process (Proctor and the relay
/// run in it) every thread it ever had counts, as in its CPU; for another
/// (pgbouncer, single-threaded) its live threads.
fn process_switches_of(pid: u32) -> u64 {
    if pid == std::process::id() {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            return (usage.ru_nvcsw + usage.ru_nivcsw) as u64;
        }
    }
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some((key, value)) = line.split_once(':')
                && key.ends_with("voluntary_ctxt_switches")
            {
                switches += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    switches
}

/// What the proxy's switches and CPU per transaction print as.
fn proxy_costs(runs: &[Run]) -> String {
    let cpu = median(runs.iter().map(|r| r.proxy_cpu_us).collect());
    if cpu.is_nan() {
        return "proxy CPU/tx       -   switches/tx     -".to_string();
    }
    let switches = median(runs.iter().map(|r| r.proxy_switches).collect());
    format!("proxy CPU/tx {cpu:5.1} µs   switches/tx {switches:5.3}")
}

/// CPU seconds used so far by a process (user + system).
fn process_cpu_of(pid: u32) -> f64 {
    process_cpu_of_path(&format!("/proc/{pid}/stat"))
}

fn process_cpu_of_path(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds used so far by each of this process's threads, summed by
/// thread name.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
        *by_name.entry(name).or_insert(0.0) += thread_cpu_of(tid);
    }
    by_name
}

fn thread_cpu_of(tid: u32) -> f64 {
    process_cpu_of_path(&format!("/proc/self/task/{tid}/stat"))
}

/// One pgbench configuration: `pgbench -S`, or `script` when given.
struct Load<'a> {
    clients: usize,
    mode: &'a str,
    seconds: u64,
    script: Option<&'a Path>,
    /// libpq's `sslmode` (`disable` or `require`).
    sslmode: &'a str,
}

fn pgbench(
    cluster: &Cluster,
    (port, user, password): (u16, &str, &str),
    load: &Load<'_>,
    log_dir: &Path,
    proxy_pid: Option<u32>,
) -> Run {
    let Load { clients, mode, seconds, script, sslmode } = *load;
    let cpu_before = proxy_pid.map(process_cpu_of);
    let switches_before = proxy_pid.map(process_switches_of);
    let prefix = log_dir.join(format!("log-{port}-{clients}-{mode}-{}", Instant::now().elapsed().as_nanos()));
    for entry in std::fs::read_dir(log_dir).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let threads = clients.min(2).to_string();
    let output = Command::new(cluster.bindir.join("pgbench"))
        .args(match script {
            Some(script) => vec!["-f".to_string(), script.display().to_string()],
            None => vec!["-S".to_string()],
        })
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads,
            "-T",
            &seconds.to_string(),
            "-M",
            mode,
            "-l",
            "--log-prefix",
            prefix.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "app",
        ])
        .current_dir(log_dir)
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", sslmode)
        .output()
        .unwrap();
    let cpu = proxy_pid.zip(cpu_before).map(|(pid, before)| process_cpu_of(pid) - before);
    let switches = proxy_pid.zip(switches_before).map(|(pid, before)| process_switches_of(pid).saturating_sub(before));
    assert!(output.status.success(), "pgbench failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l[6..].split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{stdout}"));
    let mut latencies: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(log_dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<f64>().ok()) {
                latencies.push(us / 1000.0);
            }
        }
    }
    let transactions = latencies.len() as f64;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(f64::NAN);
    let proxy_cpu_us = cpu.map_or(f64::NAN, |seconds| seconds * 1e6 / transactions.max(1.0));
    let proxy_switches = switches.map_or(f64::NAN, |switches| switches as f64 / transactions.max(1.0));
    Run { tps, p50_ms: pct(0.50), p99_ms: pct(0.99), proxy_cpu_us, proxy_switches }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let seconds = args.first().copied().unwrap_or(10);
    let rounds = args.get(1).copied().unwrap_or(3) as usize;
    let cluster = Cluster::start(&Options {
        tls: true,
        settings: vec![("shared_buffers".into(), "'256MB'".into())],
        ..Options::default()
    })
    .unwrap();
    cluster.psql("postgres", &format!("create role app login password '{PASSWORD}'")).unwrap();
    cluster.psql("postgres", "create database app owner app").unwrap();
    let init = Command::new(cluster.bindir.join("pgbench"))
        .args(["-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let workers = std::env::var("PG_PROXY_WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
    let work = tempfile::tempdir().unwrap();
    // Like with like: no TLS anywhere in the first comparisons.
    let proctor = start_proctor(&runtime, cluster.port, None);
    let relay = start_relay(&runtime, cluster.port);
    let bouncer_dir = tempfile::tempdir().unwrap();
    let (mut bouncer, bouncer_port) = start_pgbouncer(bouncer_dir.path(), cluster.port, None);
    // As deployed: one certificate for Proctor and pgbouncer.
    let cert_dir = tempfile::tempdir().unwrap();
    let (server_tls, cert) =
        server_config(&TlsConfig { cert_file: None, key_file: None }, cert_dir.path(), &[postgres::ALPN_POSTGRESQL])
            .unwrap();
    let key = cert_dir.path().join("proctor-dev.key");
    let deployed = start_proctor(&runtime, cluster.port, Some(&Deployed { tls: server_tls }));
    let deployed_bouncer_dir = tempfile::tempdir().unwrap();
    let (mut deployed_bouncer, deployed_bouncer_port) =
        start_pgbouncer(deployed_bouncer_dir.path(), cluster.port, Some((&cert, &key)));
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    let me = Some(std::process::id());
    // PG_PROXY_PROFILE=relay|proctor[:extended]: only that proxy, 8 clients,
    // for a profiler attached to this process.
    if let Ok(profile) = std::env::var("PG_PROXY_PROFILE") {
        let (only, mode) = profile.split_once(':').unwrap_or((&profile, "simple"));
        let (port, user, password, sslmode) = match only {
            "relay" => (relay, "app", PASSWORD, "disable"),
            "deployed" => (deployed.port, AGENT, SECRET, "require"),
            _ => (proctor.port, "bench", SECRET, "disable"),
        };
        println!("profiling {only}: pid {}", std::process::id());
        let load = Load { clients: 8, mode, seconds, script: None, sslmode };
        let recording = if only == "deployed" { &deployed } else { &proctor };
        let sink = recording.recorder.as_ref().map(Recorder::sink);
        let counters = || sink.as_ref().map(Sink::stats).map_or((0, 0), |s| (s.events, s.wal_bytes));
        let (events_before, bytes_before) = counters();
        let before = thread_cpu();
        let run = pgbench(&cluster, (port, user, password), &load, &logs, me);
        let after = thread_cpu();
        let (events_after, bytes_after) = counters();
        println!("{only} ({mode}): {:.0} tps, proxy CPU/tx {:.1} µs", run.tps, run.proxy_cpu_us);
        let transactions = run.tps * seconds as f64;
        if events_after > events_before {
            let events = (events_after - events_before) as f64;
            println!(
                "  recorded {:.2} events/tx, {:.0} WAL bytes/event",
                events / transactions.max(1.0),
                (bytes_after - bytes_before) as f64 / events
            );
        }
        for (name, cpu) in &after {
            let used = cpu - before.get(name).copied().unwrap_or(0.0);
            println!("  {name:<20} {:6.2} µs/tx", used * 1e6 / transactions.max(1.0));
        }
        stop(&mut bouncer);
        stop(&mut deployed_bouncer);
        return;
    }
    let targets: Vec<Compared<'_>> = vec![
        ("direct", cluster.port, "app", PASSWORD, None),
        ("tokio relay", relay, "app", PASSWORD, me),
        ("pgbouncer (session)", bouncer_port, "app", PASSWORD, Some(bouncer.id())),
        ("proctor (recording)", proctor.port, "bench", SECRET, me),
        ("proctor (rules on)", proctor.port, RULED, SECRET, me),
    ];
    println!(
        "pgbench -S, scale 10, {seconds}s per run, {rounds} rounds alternating targets, on {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // PG_PROXY_ONLY=8:simple,1:extended: only those loads, and no 10M-row SELECT.
    let only = std::env::var("PG_PROXY_ONLY").ok();
    let loads = [(8, "simple"), (8, "extended"), (1, "simple"), (1, "extended")];
    for (clients, mode) in loads
        .into_iter()
        .filter(|(c, m)| only.as_deref().is_none_or(|only| only.split(',').any(|o| o == format!("{c}:{m}"))))
    {
        let load = Load { clients, mode, seconds, script: None, sslmode: "disable" };
        let results = alternate(&cluster, &targets, &load, rounds, &logs, &proctor);
        let tps: Vec<f64> = results.iter().map(|runs| median(runs.iter().map(|r| r.tps).collect())).collect();
        println!("\n{clients} client(s), {mode} protocol:");
        for (i, (name, ..)) in targets.iter().enumerate() {
            let p50 = median(results[i].iter().map(|r| r.p50_ms).collect());
            let p99 = median(results[i].iter().map(|r| r.p99_ms).collect());
            let costs = proxy_costs(&results[i]);
            println!(
                "  {name:<22} {:>8.0} tps  {:>5.3}x direct  {:>5.3}x relay  {:>5.3}x pgbouncer   p50 {p50:.3} ms  p99 {p99:.3} ms   {costs}",
                tps[i],
                tps[i] / tps[0],
                tps[i] / tps[1],
                tps[i] / tps[2]
            );
        }
        // The machine's noise: Proctor against each baseline round by round
        // (a round runs every target once, back to back).
        let per_round = |of: usize, baseline: usize| per_round(&results[of], &results[baseline]);
        println!(
            "  proctor per round: {}x direct, {}x relay, {}x pgbouncer",
            per_round(3, 0),
            per_round(3, 1),
            per_round(3, 2)
        );
        println!("  rules on vs off: {:.3}x (median), {}x per round", tps[4] / tps[3], per_round(4, 3));
    }

    // Masking off and on, side by side: pgbench -S, and a wide-row select.
    if only.as_deref().is_none_or(|o| o.split(',').any(|l| l == "masking")) {
        cluster.psql("app", &format!("set role app; {WIDE}")).unwrap();
        let wide = work.path().join("wide.sql");
        std::fs::write(&wide, "select * from wide;\n").unwrap();
        let users = [("off", "bench"), ("every detector", MASKED), ("column rules", MASKED_BY_COLUMN)];
        println!("\nmasking, {seconds}s per run, {rounds} rounds alternating, 8 clients, extended protocol:");
        for (label, script) in [("pgbench -S", None), ("wide select (1000 rows x 10 columns)", Some(wide.as_path()))] {
            let mut runs: Vec<Vec<Run>> = users.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                for i in 0..users.len() {
                    let index = (i + round) % users.len();
                    let load = Load { clients: 8, mode: "extended", seconds, script, sslmode: "disable" };
                    runs[index].push(pgbench(&cluster, (proctor.port, users[index].1, SECRET), &load, &logs, me));
                    proctor.wait_for_sealer();
                }
            }
            println!("  {label}:");
            for (index, (name, _)) in users.iter().enumerate() {
                let tps = median(runs[index].iter().map(|r| r.tps).collect());
                let off = median(runs[0].iter().map(|r| r.tps).collect());
                let cpu = median(runs[index].iter().map(|r| r.proxy_cpu_us).collect());
                let mut ratios: Vec<f64> = runs[index].iter().zip(&runs[0]).map(|(on, off)| on.tps / off.tps).collect();
                ratios.sort_by(f64::total_cmp);
                println!(
                    "    masking {name:<15} {tps:>8.1} tps  {:.3}x off (per round {:.3}-{:.3})   proxy CPU/tx {cpu:>7.1} µs",
                    tps / off,
                    ratios[0],
                    ratios[ratios.len() - 1]
                );
            }
        }
    }

    // As deployed: TLS on both sides, the demo agent's rules and masking.
    let wanted = |c: usize, m: &str| {
        only.as_deref().is_none_or(|only| only.split(',').any(|o| o == "deployed" || o == format!("deployed:{c}:{m}")))
    };
    let deployed_targets: Vec<Compared<'_>> = vec![
        ("direct (TLS)", cluster.port, "app", PASSWORD, None),
        ("pgbouncer (TLS, session)", deployed_bouncer_port, "app", PASSWORD, Some(deployed_bouncer.id())),
        ("proctor (as deployed)", deployed.port, AGENT, SECRET, me),
    ];
    for (clients, mode) in loads.into_iter().filter(|(c, m)| wanted(*c, m)) {
        let load = Load { clients, mode, seconds, script: None, sslmode: "require" };
        let results = alternate(&cluster, &deployed_targets, &load, rounds, &logs, &deployed);
        let tps: Vec<f64> = results.iter().map(|runs| median(runs.iter().map(|r| r.tps).collect())).collect();
        println!(
            "\nas deployed (TLS both sides; Proctor under the demo agent's rules and masking), {clients} client(s), {mode} protocol:"
        );
        for (i, (name, ..)) in deployed_targets.iter().enumerate() {
            let p50 = median(results[i].iter().map(|r| r.p50_ms).collect());
            let p99 = median(results[i].iter().map(|r| r.p99_ms).collect());
            let costs = proxy_costs(&results[i]);
            println!(
                "  {name:<26} {:>8.0} tps  {:>5.3}x direct  {:>5.3}x pgbouncer   p50 {p50:.3} ms  p99 {p99:.3} ms   {costs}",
                tps[i],
                tps[i] / tps[0],
                tps[i] / tps[1],
            );
        }
        let per_round = |of: usize, baseline: usize| per_round(&results[of], &results[baseline]);
        println!(
            "  per round: proctor {}x pgbouncer, {}x direct; pgbouncer {}x direct",
            per_round(2, 1),
            per_round(2, 0),
            per_round(1, 0)
        );
    }

    if only.is_some() {
        stop(&mut bouncer);
        stop(&mut deployed_bouncer);
        return;
    }
    // A 10-million-row SELECT streams through; psql holds the rows, Proctor must not.
    let pid = std::process::id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid);
    let mut psql = Command::new(cluster.bindir.join("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &proctor.port.to_string(),
            "-U",
            "bench",
            "-c",
            "select g, 'row ' || g from generate_series(1, 10000000) g",
            "app",
        ])
        .env("PGPASSWORD", SECRET)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut peak = idle;
    while psql.try_wait().unwrap().is_none() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(psql.wait().unwrap().success());
    println!(
        "\n10,000,000-row SELECT through Proctor in {:.1}s: RSS idle {:.1} MiB, peak {:.1} MiB, {:.1} MiB above idle",
        started.elapsed().as_secs_f64(),
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak - idle) as f64 / 1024.0
    );
    stop(&mut bouncer);
    stop(&mut deployed_bouncer);
    drop(proctor);
    drop(deployed);
}

/// A target of a comparison: name, port, user, password, and the pid whose
/// CPU is the proxy's (none for the server itself).
type Compared<'a> = (&'a str, u16, &'a str, &'a str, Option<u32>);

/// Runs `load` against every target, `rounds` times, each round starting one
/// target later; runs through `proctor` are charged the CPU of sealing what
/// they recorded. Runs by target.
fn alternate(
    cluster: &Cluster,
    targets: &[Compared<'_>],
    load: &Load<'_>,
    rounds: usize,
    logs: &Path,
    proctor: &Proctor,
) -> Vec<Vec<Run>> {
    let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in 0..targets.len() {
            let index = (i + round) % targets.len();
            let (_, port, user, password, pid) = targets[index];
            results[index].push(pgbench(cluster, (port, user, password), load, logs, pid));
            if port == proctor.port {
                // Sealing what this run recorded is part of its cost.
                let before = process_cpu_of(std::process::id());
                proctor.wait_for_sealer();
                let sealing = process_cpu_of(std::process::id()) - before;
                let run = results[index].last_mut().unwrap();
                run.proxy_cpu_us += sealing * 1e6 / (run.tps * load.seconds as f64).max(1.0);
            }
        }
    }
    results
}

/// The lowest and highest ratio of `of` to `baseline`, round by round.
fn per_round(of: &[Run], baseline: &[Run]) -> String {
    let mut ratios: Vec<f64> = of.iter().zip(baseline).map(|(p, b)| p.tps / b.tps).collect();
    ratios.sort_by(f64::total_cmp);
    format!("{:.3}-{:.3}", ratios[0], ratios[ratios.len() - 1])
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
