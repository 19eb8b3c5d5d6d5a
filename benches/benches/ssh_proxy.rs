//! SSH through Proctor against OpenSSH without it, side by side in one run,
//! against one throw-away OpenSSH `sshd` on loopback:
//!
//! - **Bulk**: `cat` of a file over exec, read whole by the client (OpenSSH
//!   `ssh`, its default cipher), straight to `sshd`, through an OpenSSH jump
//!   host (`ssh -J`: the lightest SSH proxy there is, recording nothing),
//!   and through Proctor recording every byte; log-like text and
//!   incompressible bytes. Runs alternate round after round; medians are
//!   compared as ratios, with the range per round. After each Proctor run
//!   the sealing still to do is finished before the next run starts (and
//!   charged to Proctor's CPU), so it never slows a baseline.
//! - **Recording size**: what the sealed segments of each kind take, against
//!   the bytes that passed (each kind has its own recorder).
//! - **Keystroke echo**: one byte typed at a terminal (`cat` under a pty,
//!   the kernel echoing), the round trip until its echo is back, by a russh
//!   client, straight and through Proctor, alternating; the p50 and p90 that
//!   Proctor adds.
//! - **Seek**: a recorded terminal session of an hour with 100 MiB of output
//!   (logs in colour, full-screen redraws, an alternate screen now and
//!   then), indexed with its keyframes; then the screen at random moments
//!   as the console asks for it (`screen_at` and its lines), server time,
//!   against playing the session from its start to the same moments.
//!
//! `cargo bench -p proctor-benches --bench ssh_proxy [-- MIB [ROUNDS [ECHOES [SEEK_MIB]]]]`
//! (default 512 MiB per file, 3 rounds, 400 keystrokes, a 100 MiB session;
//! 0 skips a part; `SEEK_PHASES=1` prints where a seek's time goes;
//! `SSH_PROXY_ONLY=text` or `=incompressible` runs only that bulk file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proctor_benches::{BenchSink, dir_size, median, threads_cpu};
use proctor_devcluster::sshd::{self, Sshd};
use proctor_gateway_core::auth::SharedSecretAuthenticator;
use proctor_gateway_core::masking::Profiles;
use proctor_gateway_core::threads::{Scheduling, SessionThreads};
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_ssh::host_key::HostKey;
use proctor_ssh::{SshResource, SshTarget};
use russh::ChannelMsg;
use tokio::net::TcpListener;

/// The allocator of the `proctor` binary, so that what runs here is what
/// runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret";

/// One Proctor SSH resource with a recorder of its own.
struct Proctor {
    port: u16,
    data: tempfile::TempDir,
    recorder: Option<Recorder>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Proctor {
    fn start(
        runtime: &tokio::runtime::Runtime,
        target: &Sshd,
        upstream_key: &Path,
        threads: &Arc<SessionThreads>,
    ) -> Proctor {
        let data = tempfile::tempdir().unwrap();
        let recorder = Recorder::open(data.path(), &RecorderSettings::default()).unwrap();
        let host_key = HostKey::load_or_create(&data.path().join("keys")).unwrap();
        let target = SshTarget {
            address: format!("127.0.0.1:{}", target.port),
            user: Sshd::user(),
            key: Arc::new(russh::keys::load_secret_key(upstream_key, None).unwrap()),
            host_keys: vec![russh::keys::load_public_key(&target.host_key_file).unwrap()],
            connect_timeout: Duration::from_secs(10),
        };
        let resource = Arc::new(SshResource::new("box", target, &host_key));
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let auth = SharedSecretAuthenticator::new([("box".to_string(), SECRET.to_string())]);
        runtime.spawn(proctor_ssh::serve(
            resource,
            listener,
            BenchSink(recorder.sink()),
            Arc::new(auth),
            Arc::new(Profiles::none()),
            Some(threads.clone()),
            stopped,
        ));
        // Its host key, for the client to pin.
        std::fs::write(data.path().join("known_hosts"), format!("{}\n", host_key.known_hosts_line("127.0.0.1", port)))
            .unwrap();
        Proctor { port, data, recorder: Some(recorder), stop }
    }

    /// Waits until the WAL files a run filled are sealed, so that Proctor's
    /// sealing is charged to its own run and not done during (slowing) the
    /// next one's.
    fn wait_for_sealer(&self) {
        let Some(sink) = self.recorder.as_ref().map(Recorder::sink) else { return };
        let deadline = Instant::now() + Duration::from_secs(120);
        while sink.unsealed_segments() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops serving and seals what was recorded; the segments' size.
    fn sealed_size(&mut self) -> u64 {
        let _ = self.stop.send(true);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(recorder) = self.recorder.take() {
            recorder.close().unwrap();
        }
        dir_size(&self.data.path().join("segments"))
    }
}

/// Writes `mib` MiB of log-like text (or, not `text`, of incompressible
/// bytes) to `path`.
fn write_file(path: &Path, mib: u64, text: bool) {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let want = mib << 20;
    let mut written = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        // xorshift64*: fast, and nothing a compressor can use.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let paths = ["/v1/orders", "/v1/customers", "/v1/grants", "/healthz", "/v1/search"];
    let levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG"];
    let mut buf = Vec::with_capacity(256);
    while written < want {
        buf.clear();
        if text {
            let r = next();
            let ms = r % 86_400_000;
            writeln!(
                buf,
                "2026-12-07T{:02}:{:02}:{:02}.{:03}Z {} service=api request_id={:016x} method=GET path={}/{} status={} duration_ms={}",
                ms / 3_600_000,
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000,
                levels[(r >> 20) as usize % levels.len()],
                next(),
                paths[(r >> 24) as usize % paths.len()],
                (r >> 32) % 100_000,
                [200, 200, 200, 201, 404, 500][(r >> 40) as usize % 6],
                (r >> 48) % 900
            )
            .unwrap();
        } else {
            for _ in 0..32 {
                buf.extend_from_slice(&next().to_le_bytes());
            }
        }
        let n = buf.len().min((want - written) as usize);
        out.write_all(&buf[..n]).unwrap();
        written += n as u64;
    }
    out.flush().unwrap();
}

/// Proctor's CPU seconds between two readings of [`threads_cpu`], by part:
/// the session threads (relaying, masking, appending to the WAL), the WAL's
/// syncer, the sealer, the runtime's threads (accepting connections). (The
/// main thread is the bench reading the client: not counted.)
fn cpu_by_part(
    before: &std::collections::BTreeMap<String, Duration>,
    after: &std::collections::BTreeMap<String, Duration>,
) -> [f64; 4] {
    let mut parts = [0.0; 4];
    for (name, cpu) in after {
        let part = match name.as_str() {
            n if n.starts_with("proctor-session") => 0,
            n if n.starts_with("proctor-wal") => 1,
            n if n.starts_with("proctor-sealer") => 2,
            n if n.starts_with("tokio") => 3,
            _ => continue,
        };
        parts[part] += cpu.saturating_sub(before.get(name).copied().unwrap_or_default()).as_secs_f64();
    }
    parts
}

/// The machine's CPU time so far, all CPUs: (busy, total), in clock ticks.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are
    // not busy.
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// `ssh -F CONFIG HOST cat FILE`, read whole: the seconds it took and the
/// bytes that came.
fn transfer(config: &Path, askpass: &Path, host: &str, file: &Path) -> (f64, u64) {
    let started = Instant::now();
    let mut child = Command::new("ssh")
        .args(["-F", config.to_str().unwrap(), host, "cat", file.to_str().unwrap()])
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh (openssh-client)");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => panic!("reading ssh: {e}"),
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ssh {host}: {}", String::from_utf8_lossy(&out.stderr));
    (started.elapsed().as_secs_f64(), total)
}

/// Accepts the server's key: the echo client pins nothing (it is not what
/// is measured).
struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A terminal running `cat`: keystrokes typed one at a time.
struct Typing {
    channel: russh::Channel<russh::client::Msg>,
    _client: russh::client::Handle<AnyHost>,
}

impl Typing {
    async fn open(port: u16, login: Login<'_>) -> Typing {
        let config = Arc::new(russh::client::Config::default());
        let mut client = russh::client::connect(config, ("127.0.0.1", port), AnyHost).await.unwrap();
        let done = match login {
            Login::Key(user, key) => {
                let key = russh::keys::PrivateKeyWithHashAlg::new(key, None);
                client.authenticate_publickey(user, key).await.unwrap().success()
            }
            Login::Password(user, password) => client.authenticate_password(user, password).await.unwrap().success(),
        };
        assert!(done, "logged in");
        let channel = client.channel_open_session().await.unwrap();
        channel.request_pty(true, "xterm", 80, 24, 0, 0, &[]).await.unwrap();
        channel.exec(true, "exec cat").await.unwrap();
        let mut typing = Typing { channel, _client: client };
        // The terminal is up once a first keystroke comes back.
        typing.keystroke(b'.').await;
        typing
    }

    /// Types `key`; the time until its echo came back.
    async fn keystroke(&mut self, key: u8) -> Duration {
        let started = Instant::now();
        self.channel.data(&[key][..]).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.channel.wait()).await {
                Ok(Some(ChannelMsg::Data { data })) if data.contains(&key) => return started.elapsed(),
                Ok(Some(_)) => {}
                other => panic!("no echo: {:?}", other.map(|m| m.map(|_| ()))),
            }
        }
    }
}

enum Login<'a> {
    Key(&'a str, Arc<russh::keys::PrivateKey>),
    Password(&'a str, &'a str),
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let mib = args.first().copied().unwrap_or(512);
    let rounds = args.get(1).copied().unwrap_or(3) as usize;
    let echoes = args.get(2).copied().unwrap_or(400) as usize;
    let seek_mib = args.get(3).copied().unwrap_or(100);
    if mib == 0 {
        seek(seek_mib);
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let upstream_key = base.join("upstream");
    sshd::keygen(&upstream_key).unwrap();
    let target = Sshd::start(base, &upstream_key.with_extension("pub")).unwrap();
    let target_host_key = std::fs::read_to_string(&target.host_key_file).unwrap();
    std::fs::write(base.join("target_known_hosts"), format!("[127.0.0.1]:{} {}", target.port, target_host_key.trim()))
        .unwrap();
    let files: Vec<(&str, PathBuf)> =
        vec![("text", base.join("text.log")), ("incompressible", base.join("random.bin"))];
    write_file(&files[0].1, mib, true);
    write_file(&files[1].1, mib, false);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let threads = SessionThreads::start_with(SessionThreads::default_count(), Scheduling::Batch).unwrap();
    // A recorder per kind of data, so that each one's recording is measured apart.
    let mut proctors: Vec<Proctor> =
        files.iter().map(|_| Proctor::start(&runtime, &target, &upstream_key, &threads)).collect();

    let askpass = base.join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho {SECRET}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let user = Sshd::user();
    let mut config = format!(
        "Host target jumped\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
         UserKnownHostsFile {base}/target_known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n\
         Host jumped\n  ProxyJump target\n",
        port = target.port,
        key = upstream_key.display(),
        base = base.display(),
    );
    for (i, proctor) in proctors.iter().enumerate() {
        config.push_str(&format!(
            "Host proctor{i}\n  HostName 127.0.0.1\n  Port {}\n  User agent\n  PubkeyAuthentication no\n  \
             PreferredAuthentications password\n  NumberOfPasswordPrompts 1\n  UserKnownHostsFile {}/known_hosts\n  \
             StrictHostKeyChecking yes\n",
            proctor.port,
            proctor.data.path().display()
        ));
    }
    let config_file = base.join("ssh_config");
    std::fs::write(&config_file, config).unwrap();

    println!("ssh_proxy: {mib} MiB per file, {rounds} rounds alternating, OpenSSH client and sshd on loopback");
    let size = mib << 20;
    let only = std::env::var("SSH_PROXY_ONLY").ok();
    for (kind, (name, file)) in files.iter().enumerate() {
        if only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        let hosts = ["target".to_string(), "jumped".to_string(), format!("proctor{kind}")];
        let mut seconds: Vec<Vec<f64>> = hosts.iter().map(|_| Vec::new()).collect();
        let mut proctor_cpu = Vec::new();
        let mut seal_wait = Vec::new();
        let mut busy_share: Vec<Vec<f64>> = hosts.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for i in 0..hosts.len() {
                let index = (i + round) % hosts.len();
                let cpu = threads_cpu();
                let machine = machine_cpu();
                let (took, bytes) = transfer(&config_file, &askpass, &hosts[index], file);
                assert_eq!(bytes, size, "{} sent all of {name}", hosts[index]);
                seconds[index].push(took);
                let (busy, total) = machine_cpu();
                busy_share[index].push((busy - machine.0) / (total - machine.1).max(f64::MIN_POSITIVE));
                if index == 2 {
                    // Sealing left over when the client has its bytes is
                    // finished before the next run, and charged here.
                    let waited = Instant::now();
                    proctors[kind].wait_for_sealer();
                    seal_wait.push(waited.elapsed().as_secs_f64());
                    proctor_cpu.push(cpu_by_part(&cpu, &threads_cpu()));
                }
            }
        }
        let rate = |s: f64| size as f64 / s / (1 << 20) as f64;
        let m: Vec<f64> = seconds.iter().map(|s| median(s.clone())).collect();
        println!("\nbulk, {name} ({mib} MiB by `cat` over exec), median of {rounds}:");
        println!("  direct              {:6.2} s  {:7.0} MiB/s", m[0], rate(m[0]));
        println!("  ssh -J (jump host)  {:6.2} s  {:7.0} MiB/s", m[1], rate(m[1]));
        println!("  Proctor             {:6.2} s  {:7.0} MiB/s", m[2], rate(m[2]));
        let per_round = |a: usize, b: usize| {
            let mut r: Vec<f64> = seconds[a].iter().zip(&seconds[b]).map(|(x, y)| x / y).collect();
            r.sort_by(f64::total_cmp);
            format!("{:.2}-{:.2}", r[0], r[r.len() - 1])
        };
        println!(
            "  Proctor time / jump host: {:.2}x (per round {}), / direct: {:.2}x (per round {}); jump host / direct: {:.2}x",
            m[2] / m[1],
            per_round(2, 1),
            m[2] / m[0],
            per_round(2, 0),
            m[1] / m[0]
        );
        let busy: Vec<f64> = busy_share.iter().map(|b| median(b.clone()) * 100.0).collect();
        println!(
            "  the machine's CPUs busy meanwhile: direct {:.0}%, jump host {:.0}%, Proctor {:.0}%",
            busy[0], busy[1], busy[2]
        );
        let per_gib = |part: usize| {
            median(proctor_cpu.iter().map(|parts| parts[part]).collect()) * (1u64 << 30) as f64 / size as f64
        };
        println!(
            "  sealing still to do when the client had its bytes: {:.2} s (median), finished before the next run",
            median(seal_wait.clone())
        );
        println!(
            "  Proctor's CPU per GiB: {:.2} s = relay and recording {:.2} + WAL sync {:.2} + sealing {:.2} + accepting {:.2}",
            per_gib(0) + per_gib(1) + per_gib(2) + per_gib(3),
            per_gib(0),
            per_gib(1),
            per_gib(2),
            per_gib(3)
        );
    }

    // Keystroke echo, alternating direct and through Proctor.
    if echoes > 0 {
        echo(&runtime, &target, &upstream_key, &proctors, &user, echoes);
    }

    // What each kind's recording takes, sealed.
    println!("\nrecording size (sealed segments / bytes sent):");
    for ((name, _), proctor) in files.iter().zip(proctors.iter_mut()) {
        let sent = size * rounds as u64;
        let sealed = proctor.sealed_size();
        println!(
            "  {name:<15} {:.3}x  ({} MiB sealed for {} MiB sent)",
            sealed as f64 / sent as f64,
            sealed >> 20,
            sent >> 20
        );
    }
    drop(target);
    seek(seek_mib);
}

/// Keystroke echo round trips, alternating direct and through Proctor.
fn echo(
    runtime: &tokio::runtime::Runtime,
    target: &Sshd,
    upstream_key: &Path,
    proctors: &[Proctor],
    user: &str,
    echoes: usize,
) {
    let key = Arc::new(russh::keys::load_secret_key(upstream_key, None).unwrap());
    let (direct_rtt, proctor_rtt) = runtime.block_on(async {
        let mut direct = Typing::open(target.port, Login::Key(user, key.clone())).await;
        let mut through = Typing::open(proctors[0].port, Login::Password("agent", SECRET)).await;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..echoes {
            let key = b'a' + (i % 26) as u8;
            a.push(direct.keystroke(key).await.as_secs_f64() * 1e3);
            b.push(through.keystroke(key).await.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (a, b)
    });
    let (d50, d90) = (percentile(direct_rtt.clone(), 0.5), percentile(direct_rtt, 0.9));
    let (p50, p90) = (percentile(proctor_rtt.clone(), 0.5), percentile(proctor_rtt, 0.9));
    println!("\nkeystroke echo round trip ({echoes} keystrokes at a pty, alternating):");
    println!("  direct   p50 {d50:.3} ms  p90 {d90:.3} ms");
    println!("  Proctor  p50 {p50:.3} ms  p90 {p90:.3} ms");
    println!("  Proctor adds {:.3} ms at p50, {:.3} ms at p90", p50 - d50, p90 - d90);
}

/// Output as a terminal shows it over an hour: coloured log lines, now and
/// then a full-screen program's redraws on the alternate screen.
fn terminal_output(rng: &mut u64, line: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let mut out = Vec::with_capacity(4200);
    if next() % 400 == 0 {
        // A `top`-like program: a few full redraws, then back.
        out.extend_from_slice(b"\x1b[?1049h");
        for frame in 0..4 {
            out.extend_from_slice(b"\x1b[H\x1b[2J\x1b[7m  PID USER      %CPU %MEM COMMAND\x1b[0m\r\n");
            for row in 0..20 {
                out.extend_from_slice(
                    format!(
                        "{:5} app       {:4.1} {:4.1} worker-{frame}-{row}\r\n",
                        1000 + row,
                        (next() % 1000) as f64 / 10.0,
                        (next() % 100) as f64 / 10.0
                    )
                    .as_bytes(),
                );
            }
        }
        out.extend_from_slice(b"\x1b[?1049l");
    }
    while out.len() < 4096 {
        *line += 1;
        let level: &[u8] = match next() % 10 {
            0 => b"\x1b[31mERROR\x1b[0m",
            1 | 2 => b"\x1b[33mWARN \x1b[0m",
            _ => b"\x1b[32mINFO \x1b[0m",
        };
        out.extend_from_slice(format!("2026-12-07T10:{:02}:{:02}Z ", (*line / 60) % 60, *line % 60).as_bytes());
        out.extend_from_slice(level);
        out.extend_from_slice(
            format!(" payments: request {:x} served in {} ms for tenant {}\r\n", next(), next() % 900, next() % 50)
                .as_bytes(),
        );
    }
    out
}

/// The screen at random moments of an hour-long 100 MiB terminal session,
/// from its keyframes, against playing from the start.
fn seek(mib: u64) {
    use proctor_indexer::keyframes::{KeyframeStore, screen_at};
    use proctor_schemas::*;
    use std::ops::ControlFlow;
    if mib == 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::open(dir.path(), &RecorderSettings::default()).unwrap();
    let sink = recorder.sink();
    let session = SessionId::new();
    let start = Timestamp::now().0 - 3_600_000_000_000;
    let chunks = (mib << 20) / 4096;
    let step = 3_600_000_000_000 / chunks as i64;
    let mut batch = vec![
        NewEvent::new(session, Timestamp(start), Direction::Gateway, SessionStart::new(Protocol::Ssh)),
        NewEvent::new(
            session,
            Timestamp(start),
            Direction::ClientToTarget,
            PtyRequest { channel_id: Some(0), term: "xterm-256color".into(), width: 160, height: 48 },
        ),
    ];
    let (mut rng, mut line, mut bytes) = (0x9e37_79b9_7f4a_7c15u64, 0u64, 0u64);
    for i in 0..chunks {
        let data = terminal_output(&mut rng, &mut line);
        bytes += data.len() as u64;
        let out = TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data };
        batch.push(NewEvent::new(session, Timestamp(start + i as i64 * step), Direction::TargetToClient, out));
        if batch.len() == 256 {
            sink.blocking_append_batch(std::mem::take(&mut batch)).unwrap();
        }
    }
    sink.blocking_append_batch(batch).unwrap();
    drop(sink);
    recorder.close().unwrap();
    let events = chunks + 2;

    let started = Instant::now();
    let mut indexer = proctor_indexer::Indexer::open(dir.path()).unwrap();
    indexer.catch_up().unwrap();
    indexer.finish().unwrap();
    let indexing = started.elapsed().as_secs_f64();
    let keyframes_size = dir_size(&proctor_indexer::index::index_dir(dir.path()).join("keyframes"));

    let reader = proctor_recorder::reader::Reader::open(dir.path()).unwrap();
    let store = KeyframeStore::of_data_dir(dir.path());
    let moments: Vec<u64> = (0..60).map(|i| 2 + (i * 7919 * 104_729) % (events - 2)).collect();
    let mut fast = Vec::new();
    for &seq in &moments {
        let at = Instant::now();
        let shown = screen_at(&reader, &store, session, None, seq).unwrap().expect("a terminal");
        let view = shown.view();
        fast.push(at.elapsed().as_secs_f64() * 1e3);
        assert_eq!(view.seq, seq);
    }
    if std::env::var_os("SEEK_PHASES").is_some() {
        for &seq in moments.iter().take(10) {
            let t = Instant::now();
            let k = store.latest(session, None, seq).unwrap().unwrap();
            let t_latest = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let mut screen = proctor_terminal::Screen::restore(k.rows.into(), k.cols.into(), &k.state);
            let t_restore = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let mut datas = Vec::new();
            reader
                .for_each_session_event(session, k.seq + 1, |event| {
                    if event.seq > seq {
                        return Ok(ControlFlow::Break(()));
                    }
                    if let EventBody::TerminalOutput(o) = event.body {
                        datas.push(o.data);
                    }
                    Ok(ControlFlow::Continue(()))
                })
                .unwrap();
            let t_read = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            for d in &datas {
                screen.feed(d);
            }
            let t_feed = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let _ = screen.lines();
            let t_lines = t.elapsed().as_secs_f64() * 1e3;
            println!(
                "  phases at {seq}: latest {t_latest:.1} restore {t_restore:.1} read {t_read:.1} ({} events) feed {t_feed:.1} lines {t_lines:.1} ms",
                datas.len()
            );
        }
    }
    // The plain path: play from the start (a few moments: it is slow).
    let mut slow = Vec::new();
    for &seq in moments.iter().take(3) {
        let at = Instant::now();
        let mut screen: Option<proctor_terminal::Screen> = None;
        reader
            .for_each_session_event(session, 0, |event| {
                if event.seq > seq {
                    return Ok(ControlFlow::Break(()));
                }
                match &event.body {
                    EventBody::PtyRequest(p) => screen = Some(proctor_terminal::Screen::new(p.height, p.width)),
                    EventBody::TerminalOutput(o) => screen.as_mut().unwrap().feed(&o.data),
                    _ => {}
                }
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
        let lines = screen.unwrap().lines();
        slow.push(at.elapsed().as_secs_f64() * 1e3);
        let fast_lines = screen_at(&reader, &store, session, None, seq).unwrap().unwrap().screen.lines();
        assert_eq!(lines, fast_lines, "the same screen both ways at seq {seq}");
    }
    println!(
        "\nseek: a 1-hour terminal session, {} MiB of output in {events} events; indexed with keyframes in {indexing:.1} s ({:.0} MiB/s), keyframes {:.2} MiB",
        bytes >> 20,
        bytes as f64 / indexing / (1 << 20) as f64,
        keyframes_size as f64 / (1 << 20) as f64
    );
    println!(
        "  the screen at a moment (60 moments): p50 {:.1} ms  p95 {:.1} ms  max {:.1} ms server time",
        percentile(fast.clone(), 0.5),
        percentile(fast.clone(), 0.95),
        fast.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  played from the start instead (3 moments): median {:.0} ms, {:.0}x the keyframes' median",
        median(slow.clone()),
        median(slow) / percentile(fast, 0.5)
    );
}
