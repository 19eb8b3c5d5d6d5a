//! PostgreSQL through Proctor, with real servers (initdb clusters on free
//! ports) and real clients: psql, pgbench, tokio-postgres and psycopg. Each
//! test checks that what the client did is what the recording says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use proctor_recorder::reader::{Reader, SessionSummary};
use proctor_schemas::{EndReason, Event, EventBody};
use proctor_tests::devcluster::{Cluster, Options};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, run_ok};
use tokio_postgres::NoTls;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn tls_cluster() -> Cluster {
    cluster(&Options { tls: true, ..Options::default() })
}

/// Runs a PostgreSQL client binary from the cluster's bin dir.
fn client(cluster: &Cluster, program: &str, args: &[&str]) -> std::process::Output {
    Command::new(cluster.bindir.join(program)).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn psql(cluster: &Cluster, conninfo: &str, commands: &[&str]) -> std::process::Output {
    let mut args = vec!["-X", "-q", "-At", "-d", conninfo];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    client(cluster, "psql", &args)
}

/// Postgres sessions of a data dir that have ended, with their events.
fn ended_sessions(data_dir: &Path) -> Vec<(SessionSummary, Vec<Event>)> {
    let reader = Reader::open(data_dir).unwrap();
    reader
        .sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.protocol.as_deref() == Some("postgres") && s.end_reason.is_some())
        .map(|s| {
            let events = reader.session_events(s.session_id).unwrap();
            (s, events)
        })
        .collect()
}

/// Waits until `count` postgres sessions have ended in the recording.
fn wait_for_sessions(data_dir: &Path, count: usize) -> Vec<(SessionSummary, Vec<Event>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sessions = ended_sessions(data_dir);
        if sessions.len() >= count {
            return sessions;
        }
        assert!(Instant::now() < deadline, "only {} of {count} sessions ended in the recording", sessions.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn statements(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Statement(s) => Some(s.sql.clone()),
            _ => None,
        })
        .collect()
}

fn results(events: &[Event]) -> Vec<(Option<u64>, String, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Result(r) => Some((r.ref_seq, r.command_tag.clone().unwrap_or_default(), r.row_count)),
            _ => None,
        })
        .collect()
}

fn end_reason(events: &[Event]) -> EndReason {
    match events.last().map(|e| &e.body) {
        Some(EventBody::SessionEnd(end)) => end.reason,
        other => panic!("the last event is not a session_end: {other:?}"),
    }
}

fn stop_and_verify(proctor: &mut Proctor) {
    assert!(proctor.stop().success(), "proctor did not stop cleanly");
    run_ok(bin(), &["verify", "--data-dir", proctor.data_dir.to_str().unwrap()]);
}

#[test]
fn psql_over_tls_is_recorded_statement_by_statement() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(
        bin(),
        cluster.port,
        &ProctorOptions { allow_plaintext: false, sample_rows: 5, ..Default::default() },
    );
    let output = psql(
        &cluster,
        &proctor.conninfo("alice", APP_ROLE, "require"),
        &[
            "create table pets (id int primary key, name text)",
            "insert into pets values (1, 'rex'), (2, 'tom'), (3, null)",
            "select id, name from pets order by id",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1|rex\n2|tom\n3|\n");

    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let (summary, events) = &sessions[0];
    assert_eq!(summary.subject.as_deref(), Some("alice"));
    assert_eq!(summary.resource.as_deref(), Some("test-db"));
    let EventBody::SessionStart(start) = &events[0].body else { panic!() };
    assert_eq!(start.tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(start.database.as_deref(), Some(APP_ROLE));
    assert_eq!(start.target_user.as_deref(), Some(APP_ROLE));
    assert_eq!(start.application_name.as_deref(), Some("psql"));
    assert!(start.client_addr.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(
        statements(events),
        vec![
            "create table pets (id int primary key, name text)",
            "insert into pets values (1, 'rex'), (2, 'tom'), (3, null)",
            "select id, name from pets order by id"
        ]
    );
    let tags: Vec<(String, u64)> = results(events).into_iter().map(|(_, tag, rows)| (tag, rows)).collect();
    assert_eq!(tags, vec![("CREATE TABLE".into(), 0), ("INSERT 0 3".into(), 3), ("SELECT 3".into(), 3)]);
    let sample = events.iter().find_map(|e| match &e.body {
        EventBody::Result(r) if !r.sample_rows.is_empty() => Some(r.clone()),
        _ => None,
    });
    let sample = sample.expect("the select's sample");
    assert_eq!(sample.columns, vec!["id", "name"]);
    assert_eq!(
        sample.sample_rows,
        vec![
            vec![Some("1".into()), Some("rex".into())],
            vec![Some("2".into()), Some("tom".into())],
            vec![Some("3".into()), None]
        ]
    );
    // Every result names the statement it answers.
    for (ref_seq, _, _) in results(events) {
        let ref_seq = ref_seq.expect("ref_seq") as usize;
        assert!(matches!(events[ref_seq].body, EventBody::Statement(_)));
    }
    assert_eq!(end_reason(events), EndReason::ClientClosed);
    stop_and_verify(&mut proctor);
}

#[test]
fn an_interactive_psql_script_records_errors_and_transactions() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let script = "\\set ON_ERROR_STOP 0\nbegin;\ncreate table ledger (n int);\ninsert into ledger values (1);\nselect 1/0;\nrollback;\nselect count(*) from pg_class where relname = 'ledger';\n\\q\n";
    let mut child = Command::new(cluster.bindir.join("psql"))
        .args(["-X", "-d", &proctor.conninfo("bob", APP_ROLE, "require")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(" 0\n"), "the rolled-back table does not exist");

    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let events = &sessions[0].1;
    assert_eq!(
        statements(events),
        vec![
            "begin;",
            "create table ledger (n int);",
            "insert into ledger values (1);",
            "select 1/0;",
            "rollback;",
            "select count(*) from pg_class where relname = 'ledger';"
        ]
    );
    let error = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Error(err) => Some(err.clone()),
            _ => None,
        })
        .expect("the division error");
    assert_eq!(error.sqlstate.as_deref(), Some("22012"));
    assert_eq!(error.message, "division by zero");
    let failed = &events[error.ref_seq.unwrap() as usize];
    assert!(matches!(&failed.body, EventBody::Statement(s) if s.sql == "select 1/0;"));
    stop_and_verify(&mut proctor);
}

#[test]
fn notifications_large_objects_md5_targets_and_a_configured_certificate() {
    // A target that authenticates with md5, and a certificate from the
    // configuration that clients verify.
    let cluster = cluster(&Options { tls: true, auth_method: "md5", ..Options::default() });
    let certs = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (certs.path().join("proctor.crt"), certs.path().join("proctor.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls =
        format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", cert.display().to_string(), key.display().to_string());
    let mut proctor = Proctor::start(
        bin(),
        cluster.port,
        &ProctorOptions { allow_plaintext: false, extra: tls, ..Default::default() },
    );
    let verified = format!(
        "host=localhost port={} user=grace password={} dbname={APP_ROLE} sslmode=verify-full sslrootcert={}",
        proctor.port,
        proctor.secret,
        cert.display()
    );
    let lo_file = certs.path().join("object.txt");
    std::fs::write(&lo_file, "large object contents").unwrap();
    let output = psql(
        &cluster,
        &verified,
        &["listen jobs", "notify jobs, 'job 7 done'", &format!("\\lo_import {}", lo_file.display()), "select 'ok'"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("job 7 done") && stdout.contains("ok"), "{stdout}");

    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let events = &sessions[0].1;
    let notification = events.iter().find_map(|e| match &e.body {
        EventBody::Notification(n) => Some(n.clone()),
        _ => None,
    });
    let notification = notification.expect("the notification");
    assert_eq!((notification.channel.as_str(), notification.payload.as_str()), ("jobs", "job 7 done"));
    // libpq's large-object calls use the FunctionCall message, which is
    // relayed and recorded raw.
    let calls = events.iter().filter(|e| matches!(&e.body, EventBody::RawFrame(r) if r.frame_tag == "F")).count();
    assert!(calls >= 3, "lo_import's function calls are recorded: {calls}");
    stop_and_verify(&mut proctor);
}

#[test]
fn pgbench_initialises_and_runs_in_both_protocols() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let conninfo = proctor.conninfo("bench", APP_ROLE, "disable");
    let init = client(&cluster, "pgbench", &["-i", "-s", "1", "-q", &conninfo]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    for mode in ["simple", "extended"] {
        let run = client(&cluster, "pgbench", &["-n", "-S", "-c", "4", "-j", "2", "-t", "50", "-M", mode, &conninfo]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stdout).contains("number of transactions actually processed: 200/200"));
    }
    // pgbench -i opens one connection; each run opens one to read the scale
    // and then one per client. Wait for all of them: a run's clients may still
    // be closing when pgbench itself has exited.
    let sessions = wait_for_sessions(&proctor.data_dir, 1 + 2 * (1 + 4));
    let all: Vec<&Event> = sessions.iter().flat_map(|(_, e)| e).collect();
    // pgbench -i loads pgbench_accounts with COPY.
    let copy = all.iter().find_map(|e| match &e.body {
        EventBody::Copy(c) => Some(c.clone()),
        _ => None,
    });
    let copy = copy.expect("pgbench -i's COPY");
    assert_eq!(copy.row_count, Some(100_000));
    let selects = |extended: bool| {
        all.iter()
            .filter(|e| {
                matches!(&e.body, EventBody::Statement(s)
                if s.sql.starts_with("SELECT abalance FROM pgbench_accounts WHERE aid =") && (s.statement_name.is_some() == extended))
            })
            .count()
    };
    assert_eq!(selects(false), 200, "simple protocol transactions");
    assert_eq!(selects(true), 200, "extended protocol transactions");
    let with_params = all.iter().any(|e| {
        matches!(&e.body, EventBody::Statement(s) if s.statement_name.is_some() && s.params.len() == 1 && s.params[0].as_deref().is_some_and(|p| p.parse::<u32>().is_ok()))
    });
    assert!(with_params, "extended-protocol statements carry their bind parameter");
    stop_and_verify(&mut proctor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_pipelined_binary_copy_and_cancel() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions { sample_rows: 10, ..Default::default() });
    let (client, connection) =
        tokio_postgres::connect(&proctor.conninfo("carol", APP_ROLE, "disable"), NoTls).await.unwrap();
    let connection = tokio::spawn(connection);

    // Extended protocol with binary parameters and results.
    client.batch_execute("create table items (id int primary key, label text, price numeric(10,2))").await.unwrap();
    let insert = client.prepare("insert into items values ($1, $2, $3::text::numeric)").await.unwrap();
    client.execute(&insert, &[&42i32, &"widget", &"9.99"]).await.unwrap();
    let row = client.query_one("select id, label from items where id = $1", &[&42i32]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, &str>(1)), (42, "widget"));

    // Pipelining: three queries in flight at once.
    let (a, b, c) = tokio::join!(
        client.query("select $1::int + 1", &[&1i32]),
        client.query("select $1::text || '!'", &[&"hi"]),
        client.query("select count(*) from items", &[]),
    );
    assert_eq!(a.unwrap()[0].get::<_, i32>(0), 2);
    assert_eq!(b.unwrap()[0].get::<_, &str>(0), "hi!");
    assert_eq!(c.unwrap()[0].get::<_, i64>(0), 1);

    // COPY in and out.
    let sink = client.copy_in("copy items (id, label, price) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tone\t1.00\n2\ttwo\t2.00\n3\tthree\t3.00\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    let stream = client.copy_out("copy (select id from items order by id) to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut copied = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        copied.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(copied, b"1\n2\n3\n42\n");

    // Cancel: through Proctor's key, to the right backend.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.query("select pg_sleep(30)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_secs(10), sleeper).await.expect("the cancel took effect").unwrap();
    let error = cancelled.unwrap_err();
    assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{error}");
    drop(connection);

    let sessions = tokio::task::spawn_blocking({
        let data = proctor.data_dir.clone();
        move || wait_for_sessions(&data, 1)
    })
    .await
    .unwrap();
    let events = &sessions[0].1;
    let find = |sql: &str| {
        events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::Statement(s) if s.sql == sql => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no statement {sql:?} in {:#?}", statements(events)))
    };
    let insert = find("insert into items values ($1, $2, $3::text::numeric)");
    assert_eq!(insert.params, vec![Some("42".into()), Some("widget".into()), Some("9.99".into())]);
    assert_eq!(find("select $1::text || '!'").params, vec![Some("hi".into())]);
    let binary_sample = events.iter().find_map(|e| match &e.body {
        EventBody::Result(r) if r.columns == ["id", "label"] => Some(r.sample_rows.clone()),
        _ => None,
    });
    assert_eq!(
        binary_sample,
        Some(vec![vec![Some("42".into()), Some("widget".into())]]),
        "binary results render as text"
    );
    let copies: Vec<(u64, Option<u64>, proctor_schemas::Direction)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Copy(c) => Some((c.byte_count, c.row_count, e.direction)),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies,
        vec![
            (35, Some(3), proctor_schemas::Direction::ClientToTarget),
            (9, Some(4), proctor_schemas::Direction::TargetToClient)
        ]
    );
    let cancel = events.iter().position(|e| matches!(e.body, EventBody::Cancel(_))).expect("a cancel event");
    let cancelled_error = events
        .iter()
        .position(|e| matches!(&e.body, EventBody::Error(err) if err.sqlstate.as_deref() == Some("57014")));
    assert!(cancelled_error.is_some_and(|i| i > cancel), "the cancel is recorded before the error it caused");
    stop_and_verify(&mut proctor);
}

#[test]
fn psycopg_connects_with_postgresql_17_direct_tls() {
    let cluster = tls_cluster();
    let mut proctor =
        Proctor::start(bin(), cluster.port, &ProctorOptions { allow_plaintext: false, ..Default::default() });
    let script = format!(
        "import psycopg\nwith psycopg.connect({:?}) as conn:\n    cur = conn.execute('select %s::int * 2', (21,))\n    print(cur.fetchone()[0])\n    print(conn.pgconn.ssl_in_use)\n",
        format!("{} sslnegotiation=direct", proctor.conninfo("dave", APP_ROLE, "require"))
    );
    let output = Command::new("python3").arg("-c").arg(&script).output().unwrap();
    assert!(
        output.status.success(),
        "psycopg failed (scripts/setup installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "42\nTrue\n");
    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let events = &sessions[0].1;
    let EventBody::SessionStart(start) = &events[0].body else { panic!() };
    assert_eq!(start.tls.as_deref(), Some("TLSv1.3"));
    let statement = events.iter().find_map(|e| match &e.body {
        EventBody::Statement(s) if s.sql.starts_with("select") => Some(s.clone()),
        _ => None,
    });
    let statement = statement.unwrap_or_else(|| panic!("{:#?}", statements(events)));
    assert_eq!(statement.sql, "select $1::int * 2");
    assert_eq!(statement.params, vec![Some("21".into())]);
    stop_and_verify(&mut proctor);
}

fn raw_exchange(port: u16, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    stream.write_all(bytes).unwrap();
    if close_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn bad_input_gets_a_clean_error_and_a_recorded_end() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());

    // Garbage instead of a startup packet.
    let answer = raw_exchange(proctor.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse");
    assert!(String::from_utf8_lossy(&answer).contains("08P01"));

    // A startup packet cut short.
    let answer = raw_exchange(proctor.port, &[0, 0, 0, 100, 0, 3, 0, 0, b'u'], true);
    assert!(answer.is_empty() || answer[0] == b'E', "{answer:?}");

    // A wrong credential.
    let wrong =
        format!("host=127.0.0.1 port={} user=eve password=guess dbname={APP_ROLE} sslmode=disable", proctor.port);
    let output = psql(&cluster, &wrong, &["select 1"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("password authentication failed for user \"eve\""));

    // An unknown database.
    let output = psql(&cluster, &proctor.conninfo("eve", "nowhere", "disable"), &["select 1"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("database \"nowhere\" does not exist"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Still serving.
    let output = psql(&cluster, &proctor.conninfo("eve", APP_ROLE, "disable"), &["select 'still here'"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "still here\n");

    let sessions = wait_for_sessions(&proctor.data_dir, 5);
    let reasons: Vec<EndReason> = sessions.iter().map(|(_, events)| end_reason(events)).collect();
    assert_eq!(
        reasons,
        vec![
            EndReason::ClientError,
            EndReason::ClientError,
            EndReason::AuthFailed,
            EndReason::ClientError,
            EndReason::ClientClosed
        ]
    );
    let errors: Vec<String> = sessions
        .iter()
        .filter_map(|(_, events)| {
            events.iter().find_map(|e| match &e.body {
                EventBody::Error(err) => err.sqlstate.clone(),
                _ => None,
            })
        })
        .collect();
    assert_eq!(errors, vec!["08P01", "08P01", "28P01", "3D000"]);
    assert!(proctor.is_running());
    stop_and_verify(&mut proctor);
}

#[test]
fn a_target_that_dies_mid_query_ends_the_session_cleanly() {
    let mut cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let conninfo = proctor.conninfo("frank", APP_ROLE, "disable");
    let psql_path = cluster.bindir.join("psql");
    let query = std::thread::spawn(move || {
        Command::new(psql_path).args(["-X", "-d", &conninfo, "-c", "select pg_sleep(20)"]).output().unwrap()
    });
    std::thread::sleep(Duration::from_millis(700));
    cluster.kill().unwrap();
    let output = query.join().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("terminat") || stderr.contains("closed"), "{stderr}");

    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let events = &sessions[0].1;
    assert!(matches!(end_reason(events), EndReason::TargetClosed | EndReason::TargetError), "{events:#?}");
    assert!(statements(events).contains(&"select pg_sleep(20)".to_string()));
    assert!(proctor.is_running());
    stop_and_verify(&mut proctor);
}

/// A PostgreSQL client speaking the wire protocol by hand, for what real
/// drivers will not do: stop reading, or show every frame.
struct RawClient {
    stream: TcpStream,
    pid: i32,
    secret: i32,
}

impl RawClient {
    /// Connects and starts up; stops after the password request when
    /// `password` is None.
    fn start(port: u16, user: &str, password: Option<&str>, params: &[(&str, &str)]) -> RawClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (key, value) in [("user", user), ("database", APP_ROLE)].iter().chain(params) {
            for s in [key, value] {
                body.extend(s.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        stream.write_all(&((body.len() + 4) as i32).to_be_bytes()).unwrap();
        stream.write_all(&body).unwrap();
        let mut client = RawClient { stream, pid: 0, secret: 0 };
        let (tag, request) = client.frame().expect("an authentication request");
        assert_eq!((tag, request.as_slice()), (b'R', &3i32.to_be_bytes()[..]), "a cleartext password request");
        let Some(password) = password else { return client };
        let mut p = password.as_bytes().to_vec();
        p.push(0);
        client.send(b'p', &p);
        loop {
            match client.frame() {
                Some((b'K', key)) => {
                    client.pid = i32::from_be_bytes(key[..4].try_into().unwrap());
                    client.secret = i32::from_be_bytes(key[4..8].try_into().unwrap());
                }
                Some((b'Z', _)) => return client,
                Some((b'E', error)) => panic!("start-up failed: {}", String::from_utf8_lossy(&error)),
                Some(_) => {}
                None => panic!("the connection closed during start-up"),
            }
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        self.stream.write_all(&[tag]).unwrap();
        self.stream.write_all(&((body.len() + 4) as i32).to_be_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
    }

    fn query(&mut self, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body);
    }

    /// The next frame, or None at the end of the connection.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header).ok()?;
        let length = i32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; length - 4];
        self.stream.read_exact(&mut body).ok()?;
        Some((header[0], body))
    }

    /// Sends a cancel request for this connection; returns once Proctor
    /// has closed the cancel connection, as PostgreSQL does when done.
    fn cancel(&self, port: u16, limit: Duration) -> Result<(), String> {
        let mut request = 16i32.to_be_bytes().to_vec();
        request.extend(80_877_102i32.to_be_bytes());
        request.extend(self.pid.to_be_bytes());
        request.extend(self.secret.to_be_bytes());
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(limit)).unwrap();
        stream.write_all(&request).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map(|_| ()).map_err(|e| format!("the cancel connection stayed open: {e}"))
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

#[test]
fn a_cancel_reaches_a_query_whose_client_has_stopped_reading() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let params = [("application_name", "raw-client"), ("options", "-c work_mem=8MB")];
    let mut client = RawClient::start(proctor.port, "heidi", Some(&proctor.secret), &params);
    // Far more output than the sockets between here and the database hold,
    // streamed as it is produced.
    client.query("select repeat('x', 1000) from pg_class a, pg_class b, pg_class c");
    std::thread::sleep(Duration::from_secs(2));
    // Proctor is stuck writing rows nobody reads; the cancel must still be
    // recorded and delivered, and its connection answered.
    client.cancel(proctor.port, Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rows = 0u64;
    let error = loop {
        assert!(Instant::now() < deadline, "the query was not cancelled ({rows} rows read)");
        match client.frame() {
            Some((b'D', _)) => rows += 1,
            Some((b'E', body)) => break sqlstate(&body),
            Some(_) => {}
            None => panic!("the connection closed after {rows} rows"),
        }
    };
    assert_eq!(error, "57014", "canceling statement due to user request");
    assert!(matches!(client.frame(), Some((b'Z', _))));
    client.send(b'X', b"");

    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    let events = &sessions[0].1;
    let position = |wanted: &dyn Fn(&EventBody) -> bool| events.iter().position(|e| wanted(&e.body));
    let statement = position(&|b| matches!(b, EventBody::Statement(_))).expect("the query");
    let cancel = position(&|b| matches!(b, EventBody::Cancel(_))).expect("the cancel request");
    let failed = position(&|b| matches!(b, EventBody::Error(e) if e.sqlstate.as_deref() == Some("57014")));
    assert!(statement < cancel && cancel < failed.expect("the cancellation"), "{events:#?}");
    // The start-up parameters the target was given are in the recording.
    let given: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.direction == proctor_schemas::Direction::ClientToTarget)
        .filter_map(|e| match &e.body {
            EventBody::ParameterStatus(p) => Some((p.parameter.clone(), p.value.clone())),
            _ => None,
        })
        .collect();
    assert!(given.contains(&("options".into(), "-c work_mem=8MB".into())), "{given:?}");
    assert!(given.contains(&("application_name".into(), "raw-client".into())), "{given:?}");
    stop_and_verify(&mut proctor);
}

#[test]
fn a_backend_terminated_by_an_administrator_reaches_the_client_once() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    let mut client = RawClient::start(proctor.port, "ivan", Some(&proctor.secret), &[("application_name", "doomed")]);
    client.query("select pg_sleep(60)");
    std::thread::sleep(Duration::from_millis(500));
    cluster
        .psql("postgres", "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'doomed'")
        .unwrap();
    let mut errors = Vec::new();
    while let Some((tag, body)) = client.frame() {
        if tag == b'E' {
            errors.push(sqlstate(&body));
        }
    }
    // PostgreSQL's own FATAL says why; Proctor adds no second error.
    assert_eq!(errors, vec!["57P01"]);
    let sessions = wait_for_sessions(&proctor.data_dir, 1);
    assert_eq!(end_reason(&sessions[0].1), EndReason::TargetClosed);
    stop_and_verify(&mut proctor);
}

#[test]
fn shutdown_does_not_wait_for_a_client_stuck_in_start_up() {
    let cluster = tls_cluster();
    let mut proctor = Proctor::start(bin(), cluster.port, &ProctorOptions::default());
    // Asked for a password, never gives one.
    let mut client = RawClient::start(proctor.port, "judy", None, &[]);
    let started = Instant::now();
    assert!(proctor.stop().success());
    let stopped = started.elapsed();
    // Start-up may take 30 s; shutting down must not wait for it.
    assert!(stopped < Duration::from_secs(15), "shutdown took {stopped:?}");
    let answer = client.frame().expect("an error before the connection closes");
    assert_eq!((answer.0, sqlstate(&answer.1).as_str()), (b'E', "57P01"));
    let sessions = ended_sessions(&proctor.data_dir);
    assert_eq!(sessions.len(), 1);
    assert_eq!(end_reason(&sessions[0].1), EndReason::Shutdown);
    run_ok(bin(), &["verify", "--data-dir", proctor.data_dir.to_str().unwrap()]);
}
