//! Masking end to end: secrets planted in the target's data are read through
//! the gateway with psql (rows, COPY in text and CSV, errors, literals) and
//! with tokio-postgres (binary rows, bind parameters); the clients see them
//! masked, and afterwards nothing under the data dir — WAL, segments
//! decoded, index, manifests, control store — nor Proctor's log holds any of
//! them raw, while the masked forms are there. A break-glass grant (profile
//! `none`) sees the raw values, and that choice is recorded.

use std::path::Path;
use std::process::{Command, Output};

use proctor_recorder::reader::Reader;
use proctor_schemas::{Event, EventBody};
use proctor_tests::devcluster::{Cluster, Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, dev_token, run, stderr, stdout};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// Secrets planted in the target, none of which may reach the disk raw.
const EMAIL: &str = "zq7x.lindqvist@example.org";
const SSN: &str = "219-09-9999";
const CARD: &str = "4111 1111 1111 1111";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const AWS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SALARY: &str = "918273";
/// A card number stored as a number.
const CARD_NUMBER: &str = "4012888888881881";

struct Setup {
    cluster: Cluster,
    proctor: Proctor,
    api: String,
}

fn start() -> Setup {
    let cluster = cluster(&Options::default());
    let seed = format!(
        "set role {APP_ROLE};
         create table customers (id int primary key, name text, email text unique, ssn text, card text, salary int, note text);
         insert into customers values
           (1, 'Zelda Lindqvist', '{EMAIL}', '{SSN}', '{CARD}', {SALARY}, 'rotated: aws_secret_access_key = {AWS_SECRET} for {AWS_KEY_ID}'),
           (2, 'Ada Lovelace', 'ada@example.com', '078-05-1120', '5555555555554444', 1000, 'no secrets here');
         create table staff (id int, tag text generated always as ('t' || id) stored, salary int, card_number bigint, joined timestamptz);
         insert into staff (id, salary, card_number, joined) values (7, {SALARY}, {CARD_NUMBER}, '2026-01-02 03:04:05+00');"
    );
    cluster.psql(APP_ROLE, &seed).unwrap();
    let api_port = free_port();
    let extra = format!(
        r#"database = "{APP_ROLE}"

[identity.dev_issuer]

[control]
listen = "127.0.0.1:{api_port}"
admin_group = "security"

[masking.profiles.strict]
detectors = ["all"]
actions = {{ card = "last4" }}

[[masking.profiles.strict.columns]]
match = "customers.ssn"
action = "token"

[[masking.profiles.strict.columns]]
match = "salary"

[rules.ci]
hold = ["ddl"]

[[policies]]
name = "agents"
groups = ["ci"]
resources = ["test-db"]
max_ttl = "1h"
masking_profile = "strict"
rules = "ci"

[[policies]]
name = "break-glass"
groups = ["sre"]
resources = ["test-db"]
max_ttl = "15m"
masking_profile = "none"
"#
    );
    // Result samples on: rows are recorded too, which is what must be masked.
    let options = ProctorOptions { extra, sample_rows: 10, ..ProctorOptions::default() };
    let proctor = Proctor::start(bin(), cluster.port, &options);
    Setup { cluster, proctor, api: format!("http://127.0.0.1:{api_port}") }
}

/// A grant's libpq URL for a subject in `groups`.
fn grant_url(setup: &Setup, sub: &str, groups: &str) -> String {
    let token = dev_token(bin(), &setup.proctor.data_dir, sub, groups);
    let out = run(
        bin(),
        &[
            "grant",
            "request",
            "--resource",
            "test-db",
            "--ttl",
            "10m",
            "--reason",
            "read customers",
            "--json",
            "--api",
            &setup.api,
            "--token",
            &token,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let grant: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    grant["credentials"]["url"].as_str().unwrap().to_string()
}

fn psql(cluster: &Cluster, url: &str, sql: &str) -> Output {
    Command::new(cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", url, "-c", sql])
        .env("PGTZ", "UTC")
        .output()
        .unwrap()
}

fn all_output(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn postgres_events(data_dir: &Path) -> Vec<Event> {
    let reader = Reader::open(data_dir).unwrap();
    reader.sessions().unwrap().into_iter().flat_map(|s| reader.session_events(s.session_id).unwrap()).collect()
}

#[test]
fn secrets_are_masked_for_the_client_and_never_reach_the_disk_raw() {
    let mut setup = start();
    let url = grant_url(&setup, "ci-report", "ci");
    let mut client_output = String::new();

    // psql: rows, a literal, an error, COPY in text and CSV, binary COPY refused.
    let rows = psql(&setup.cluster, &url, "select * from customers order by id");
    assert!(rows.status.success(), "{}", stderr(&rows));
    let rows = stdout(&rows);
    let first = rows.lines().next().unwrap();
    assert!(first.starts_with("1|Zelda Lindqvist|[email:masked]|[column:customers.ssn:tok_"), "{first}");
    assert!(
        first.contains(
            "|**** **** **** 1111||rotated: aws_secret_access_key = [aws_secret_key:masked] for [aws_access_key:masked]"
        ),
        "salary withheld as NULL: {first}"
    );
    client_output.push_str(&rows);
    let literal = psql(&setup.cluster, &url, &format!("select '{EMAIL}' as e"));
    assert_eq!(stdout(&literal).trim(), "[email:masked]");
    client_output.push_str(&all_output(&literal));
    let duplicate = psql(&setup.cluster, &url, &format!("insert into customers (id, email) values (3, '{EMAIL}')"));
    let error = stderr(&duplicate);
    assert!(error.contains("Key (email)=([email:masked]) already exists"), "{error}");
    client_output.push_str(&error);
    let copy = psql(&setup.cluster, &url, "copy customers (id, email, ssn, salary) to stdout");
    let copied = stdout(&copy);
    assert!(copied.starts_with("1\t[email:masked]\t[column:customers.ssn:tok_"), "{copied}");
    assert!(copied.lines().next().unwrap().ends_with("\t\\N"), "an int under a rule is NULL in COPY too: {copied}");
    client_output.push_str(&all_output(&copy));
    let csv =
        psql(&setup.cluster, &url, "copy (select email, note from customers) to stdout with (format csv, header)");
    let csv_text = stdout(&csv);
    assert!(csv_text.starts_with("email,note\n[email:masked],"), "{csv_text}");
    client_output.push_str(&all_output(&csv));
    // Column rules follow the column, not its name in the result: aliases
    // keep them; a whole table's COPY (generated columns left out) lines
    // its fields up with the right columns; a card number stored as a
    // number is found; timestamps are left alone.
    let aliased = psql(&setup.cluster, &url, "select salary as pay, ssn as x, id from customers where id = 1");
    let aliased_text = stdout(&aliased);
    assert!(
        aliased_text.starts_with("|[column:customers.ssn:tok_") && aliased_text.trim_end().ends_with("|1"),
        "{aliased_text}"
    );
    client_output.push_str(&all_output(&aliased));
    let whole = psql(&setup.cluster, &url, "copy staff to stdout");
    assert_eq!(stdout(&whole), "7\t\\N\t\\N\t2026-01-02 03:04:05+00\n", "{}", stderr(&whole));
    client_output.push_str(&all_output(&whole));
    // A second table of that name: the name alone could mean another table
    // in the session (its search_path, a temporary table) than the one
    // Proctor reads, so it must be qualified.
    setup
        .cluster
        .psql(APP_ROLE, &format!("set role {APP_ROLE}; create schema archive; create table archive.staff (id int)"))
        .unwrap();
    let ambiguous = psql(&setup.cluster, &url, "copy staff to stdout");
    assert!(stderr(&ambiguous).contains("2 tables or views are named \"staff\""), "{}", stderr(&ambiguous));
    assert!(stdout(&ambiguous).is_empty());
    let qualified = psql(&setup.cluster, &url, "copy public.staff to stdout");
    assert_eq!(stdout(&qualified), stdout(&whole), "{}", stderr(&qualified));
    let numbers = psql(&setup.cluster, &url, "select card_number, joined, tag from staff");
    assert_eq!(stdout(&numbers).trim(), "|2026-01-02 03:04:05+00|t7");
    client_output.push_str(&all_output(&numbers));
    // Start-up parameters and settings the client sets: the target gets
    // them, the client and the recording see them masked.
    let named = Command::new(setup.cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", &url, "-c", "show application_name"])
        .args(["-c", &format!("set application_name = 'then {EMAIL}'")])
        .args(["-c", "select count(*) from pg_stat_activity where application_name like 'then %@example.org'"])
        .env("PGAPPNAME", format!("report for {EMAIL}"))
        .output()
        .unwrap();
    assert_eq!(stdout(&named), "report for [email:masked]\nSET\n1\n", "{}", stderr(&named));
    client_output.push_str(&all_output(&named));
    let binary = psql(&setup.cluster, &url, "copy customers to stdout (format binary)");
    assert!(stderr(&binary).contains("binary COPY cannot be masked"), "{}", stderr(&binary));

    // FunctionCall messages (libpq's large objects) are refused (here by the
    // rules first; masking refuses them too).
    let file = setup.proctor.data_dir.parent().unwrap().join("object.txt");
    std::fs::write(&file, "contents").unwrap();
    let lo = Command::new(setup.cluster.bindir.join("psql"))
        .args(["-X", "-d", &url, "-c", &format!("\\lo_import {}", file.display())])
        .output()
        .unwrap();
    assert!(stderr(&lo).contains("a FunctionCall message"), "{}", stderr(&lo));

    // A held statement: reviewers read it masked (the control store keeps
    // it masked), while the hash that lets it run once is of the real text.
    let held = psql(&setup.cluster, &url, &format!("create table leak as select '{EMAIL}' as e"));
    let held_error = stderr(&held);
    assert!(held_error.contains("holding this statement for approval"), "{held_error}");
    assert!(!held_error.contains(EMAIL), "{held_error}");
    client_output.push_str(&held_error);

    // A private key's header in a literal once swallowed the rest of the
    // statement as reviewers and the recording saw it: the DDL after it
    // was invisible. Each token is masked alone now.
    let pem = "select '-----BEGIN PRIVATE KEY-----' as note; create table hidden_behind_a_key (a int)";
    let held = psql(&setup.cluster, &url, pem);
    assert!(stderr(&held).contains("holding this statement for approval"), "{}", stderr(&held));

    // A body in dollar quotes is masked inside them; a value of its own
    // masked there leaves the statement reviewable.
    let function = format!("create function leak() returns text language sql as $$ select '{EMAIL}' $$");
    let held = stderr(&psql(&setup.cluster, &url, &function));
    assert!(held.contains("holding this statement for approval"), "{held}");
    client_output.push_str(&held);
    // A private key's header in a body runs over the rest of it, a DROP
    // included: reviewers would approve what they cannot see, so such a
    // held statement is refused instead.
    let hidden = "create function hidden() returns void language plpgsql as \
                  'begin raise notice ''-----BEGIN PRIVATE KEY-----''; drop table customers; end'";
    let error = stderr(&psql(&setup.cluster, &url, hidden));
    assert!(error.contains("masking hides part of it from its reviewers"), "{error}");
    assert!(error.contains("rule ci/ddl holds it for review") && error.contains("inside a string"), "{error}");
    let exists = setup.cluster.psql(APP_ROLE, "select count(*) from pg_proc where proname = 'hidden'").unwrap();
    assert_eq!(exists.trim(), "0", "nothing refused ran");

    // What a client types before it is admitted, and a column alias, are
    // recorded masked: a user name that is no grant's, a database name.
    let grant_id = url.split("//").nth(1).and_then(|rest| rest.split(':').next()).unwrap().to_string();
    let stranger = psql(&setup.cluster, &url.replacen(&grant_id, AWS_KEY_ID, 1), "select 1");
    assert!(!stranger.status.success());
    client_output.push_str(&stdout(&stranger));
    let elsewhere = url.replacen(&format!("/{APP_ROLE}?"), "/zq7x.lindqvist%40example.org?", 1);
    let refused = psql(&setup.cluster, &elsewhere, "select 1");
    assert!(stderr(&refused).contains("opens database"), "{}", stderr(&refused));
    let alias = psql(&setup.cluster, &url, &format!("select 1 as \"{EMAIL}\""));
    assert_eq!(stdout(&alias).trim(), "1", "{}", stderr(&alias));

    // tokio-postgres: binary rows and a bind parameter.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let extended_copy = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&plain, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let row =
            client.query_one("select email, ssn, salary, card from customers where id = $1", &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "[email:masked]");
        assert!(row.get::<_, String>(1).starts_with("[column:customers.ssn:tok_"));
        assert_eq!(row.get::<_, Option<i32>>(2), None);
        assert_eq!(row.get::<_, String>(3), "**** **** **** 1111");
        let staff = client.query_one("select card_number, salary as pay, joined from staff", &[]).await.unwrap();
        assert_eq!(staff.get::<_, Option<i64>>(0), None, "a card number in a binary int8 is withheld");
        assert_eq!(staff.get::<_, Option<i32>>(1), None, "an aliased column keeps its rule");
        assert!(staff.get::<_, Option<std::time::SystemTime>>(2).is_some(), "timestamps are not read");
        let again = client.query_one("select ssn from customers where id = 1", &[]).await.unwrap();
        assert_eq!(again.get::<_, String>(0), row.get::<_, String>(1), "tokens are deterministic");
        let by_param = client.query_one("select count(*) from customers where email = $1", &[&EMAIL]).await.unwrap();
        assert_eq!(by_param.get::<_, i64>(0), 1, "the target got the real parameter");
        // COPY through the extended protocol (Parse, Bind, Execute) is planned too.
        use futures_util::TryStreamExt;
        let stream = client.copy_out("copy customers (id, email, ssn) to stdout").await.unwrap();
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
        let copied: String = chunks.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        assert!(copied.starts_with("1\t[email:masked]\t[column:customers.ssn:tok_"), "{copied}");
        copied
    });
    client_output.push_str(&extended_copy);

    // Everything on disk, once sealed, and the log.
    assert!(setup.proctor.stop().success());
    let data_dir = setup.proctor.data_dir.clone();
    let mut log = String::new();
    while let Ok(line) = setup.proctor.log.try_recv() {
        log.push_str(&line);
        log.push('\n');
    }
    let events = postgres_events(&data_dir);
    let decoded: String = events.iter().map(|e| format!("{:?}\n", e.body)).collect();
    let secrets = [EMAIL, SSN, CARD, AWS_SECRET, AWS_KEY_ID, "4111111111111111", CARD_NUMBER];
    for secret in secrets {
        assert!(!client_output.contains(secret), "the client saw {secret}");
        assert!(!decoded.contains(secret), "a recorded event holds {secret}");
        assert!(!log.contains(secret), "the log holds {secret}");
        for (path, bytes) in files(&data_dir) {
            assert!(!contains(&bytes, secret), "{} holds {secret}", path.display());
        }
    }
    assert!(!decoded.contains(&format!("salary: {SALARY}")) && !decoded.contains(&format!("\"{SALARY}\"")));
    assert!(
        decoded.contains("select '[private_key:masked]' as note; create table hidden_behind_a_key (a int)"),
        "the held statement keeps its structure"
    );
    assert!(decoded.contains("[aws_access_key:masked]") && decoded.contains("refused; the client gave user name"));
    // The rows are recorded (sampled), masked; and how many values each
    // rule masked.
    assert!(decoded.contains("Zelda Lindqvist"), "result samples are recorded");
    assert!(decoded.contains("[email:masked]"), "masked values are recorded");
    let files_scanned = files(&data_dir).len();
    assert!(files_scanned > 5, "{files_scanned} files under the data dir");
    let masked: Vec<(String, u64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::MaskingApplied(m) => {
                Some(m.masked.iter().map(|r| (r.rule.clone(), r.count)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    for rule in ["email", "column:customers.ssn", "column:salary", "card", "aws_secret_key", "aws_access_key"] {
        assert!(masked.iter().any(|(r, n)| r == rule && *n > 0), "{rule} missing from {masked:?}");
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, EventBody::SessionStart(s) if s.masking_profile.as_deref() == Some("strict"))),
        "the profile is recorded with the session"
    );
    // The index: no hit for the secret's words.
    let search = run(bin(), &["search", "zq7x", "--data-dir", data_dir.to_str().unwrap(), "--json"]);
    assert!(search.status.success(), "{}", stderr(&search));
    assert!(stdout(&search).trim().is_empty(), "the index finds the raw e-mail: {}", stdout(&search));
}

#[test]
fn a_break_glass_grant_sees_raw_values_and_the_choice_is_recorded() {
    let mut setup = start();
    let url = grant_url(&setup, "oncall", "sre");
    let out = psql(&setup.cluster, &url, "select email from customers where id = 1");
    assert_eq!(stdout(&out).trim(), EMAIL, "{}", stderr(&out));
    assert!(setup.proctor.stop().success());
    let events = postgres_events(&setup.proctor.data_dir);
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, EventBody::SessionStart(s) if s.masking_profile.as_deref() == Some("none"))),
        "break-glass is on the record"
    );
}
