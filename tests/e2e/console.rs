//! The investigators' console in a real browser: headless Chromium (Debian's
//! `chromium`, driven over WebDriver by `chromedriver` and fantoccini)
//! against `proctor up` in front of a real cluster. An investigator signs in
//! through the dev issuer's OpenID Connect flow (authorization code with
//! PKCE), finds a statement run through the gateway moments before, opens
//! its session and steps through it with the keyboard; a non-investigator is
//! refused; every page view is recorded. A 100,000-event session opens as
//! fast as a short one: both timings are printed (not asserted), and a
//! screenshot of the session page is kept in `target/test-artifacts/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use proctor_recorder::reader::Reader;
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{Direction, EventBody, NewEvent, SessionId, SessionStart, Statement, StatementResult, Timestamp};
use proctor_tests::devcluster::{Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, dev_token, run, spawn};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_proctor");
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(BIN)
}

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(Path::new(path).exists(), "{path} is missing: scripts/setup installs chromium and chromium-driver");
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < WAIT, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, port, _profile: tempfile::tempdir().unwrap() }
}

/// A headless Chromium at 1280x800, with a fresh profile, and the flags
/// this machine's closed network needs.
async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,800",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
        Ok(element) => element,
        Err(e) => {
            let url = client.current_url().await.map(|u| u.to_string());
            let page = client.source().await.unwrap_or_default();
            panic!("no {css} on {url:?}: {e}\n{page}")
        }
    }
}

async fn script(client: &Client, source: &str) -> Value {
    client.execute(source, Vec::new()).await.unwrap()
}

/// Waits until `source` (a script's return value) is `want`.
async fn wait_value(client: &Client, source: &str, want: &Value) {
    let started = Instant::now();
    loop {
        let got = script(client, source).await;
        if &got == want {
            return;
        }
        assert!(started.elapsed() < WAIT, "{source}: {got} after {WAIT:?}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn current(client: &Client) -> Value {
    script(client, "return document.body.dataset.current ? Number(document.body.dataset.current) : null").await
}

/// Presses `keys` on the page (not in an input).
async fn press(client: &Client, keys: &str) {
    client.find(Locator::Css("body")).await.unwrap().send_keys(keys).await.unwrap();
}

/// Signs in on the dev issuer's form as `subject` in `groups`.
async fn sign_in(client: &Client, subject: &str, groups: &str) {
    let field = wait_for(client, "#subject").await;
    field.clear().await.unwrap();
    field.send_keys(subject).await.unwrap();
    let groups_field = client.find(Locator::Css("#groups")).await.unwrap();
    groups_field.clear().await.unwrap();
    groups_field.send_keys(groups).await.unwrap();
    client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("PROCTOR_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("test-artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until the index finds `query` (through the API, with a token).
fn searchable(base: &str, token: &str, query: &str) -> Value {
    let started = Instant::now();
    loop {
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-G",
                &format!("{base}/api/search"),
                "--data-urlencode",
                &format!("q={query}"),
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .output()
            .unwrap();
        let body: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        if body["total"].as_u64().unwrap_or(0) > 0 {
            return body;
        }
        assert!(started.elapsed() < WAIT, "{query:?} not searchable: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn investigators_sign_in_search_and_step_through_a_session_in_a_browser() {
    let cluster = cluster(&Options::default());
    let replay_port = free_port();
    // E-mail addresses masked with keyed tokens: found by value.
    let masking = "[masking]\ndefault_profile = \"pii\"\n\n[masking.profiles.pii]\ndetectors = [\"email\"]\nactions = { email = \"token\" }\n";
    // A control plane: a grant's events on their session's page.
    let api_port = free_port();
    let control = format!(
        "[control]\nlisten = \"127.0.0.1:{api_port}\"\nadmin_group = \"dba\"\n\n[[policies]]\nname = \"agents\"\ngroups = [\"ci\"]\nresources = [\"test-db\"]\nmax_ttl = \"1h\"\n"
    );
    let options = ProctorOptions {
        extra: format!(
            "[identity.dev_issuer]\n\n[replay]\nlisten = \"127.0.0.1:{replay_port}\"\n\n{masking}\n{control}"
        ),
        // Sealed within a second: exports carry sealed, proven events.
        recorder: "segment_max_age = \"1s\"\n".to_string(),
        ..ProctorOptions::default()
    };
    let mut proctor = Proctor::start(bin(), cluster.port, &options);
    let base = format!("http://127.0.0.1:{replay_port}");
    let psql = Command::new(cluster.bindir.join("psql"))
        .args(["-X", "-q", "-At", "-d", &proctor.conninfo("alice", APP_ROLE, "disable")])
        .args(["-c", "select 'larkspur' as flower", "-c", "select 42 as answer", "-c", "select 'foxglove' as flower"])
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", String::from_utf8_lossy(&psql.stderr));
    let mail = Command::new(cluster.bindir.join("psql"))
        .args(["-X", "-q", "-At", "-d", &proctor.conninfo("carol", APP_ROLE, "disable")])
        .args(["-c", "select 'Ada@Example.com' as mail"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&mail.stdout).contains("[email:tok_"), "masked for the client too");
    let token = dev_token(bin(), &proctor.data_dir, "robot", "investigators");
    searchable(&base, &token, "kind:statement subject:carol");
    let agent = dev_token(bin(), &proctor.data_dir, "ci-deploy", "ci");
    let api = format!("http://127.0.0.1:{api_port}");
    let args = ["grant", "request", "--resource", "test-db", "--ttl", "10m", "--reason", "console check"];
    let granted = run(bin(), &[&args[..], &["--api", &api, "--token", &agent]].concat());
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let requested = searchable(&base, &token, "kind:grant_requested");
    let control_session = requested["hits"][0]["session_id"].as_str().unwrap().to_string();
    let request_seq = requested["hits"][0]["seq"].as_u64().unwrap();
    let found = searchable(&base, &token, "larkspur kind:statement");
    let hit_seq = found["hits"][0]["seq"].as_u64().unwrap();
    let session_id = found["hits"][0]["session_id"].as_str().unwrap().to_string();

    let driver = chromedriver();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (search_ms, short_first_ms) = runtime.block_on(async {
        let client = browser(&driver).await;
        // Not signed in: to the issuer's sign-in, then back to the search.
        // (Searches are recorded with their query, so the statement is
        // asked for by kind: the robot's search above holds the word too.)
        client.goto(&format!("{base}/?q=larkspur+kind%3Astatement")).await.unwrap();
        sign_in(&client, "ivy@example.com", "investigators, auditors").await;
        let hit = wait_for(&client, "#hits .hit").await;
        let url = client.current_url().await.unwrap();
        assert_eq!(url.query(), Some("q=larkspur+kind%3Astatement"), "back where sign-in started");
        let snippet = hit.text().await.unwrap();
        assert!(snippet.contains("larkspur") && snippet.contains("alice"), "{snippet}");
        let who = client.find(Locator::Css(".who")).await.unwrap().text().await.unwrap();
        assert_eq!(who, "ivy@example.com");
        let search_ms: f64 = script(&client, "return Number(document.body.dataset.searchMs)").await.as_f64().unwrap();

        // A new query from the box: results without a reload, the URL
        // holding the query; facets counted.
        let query = client.find(Locator::Css("#q")).await.unwrap();
        query.clear().await.unwrap();
        query.send_keys("answer kind:statement\u{E007}").await.unwrap();
        wait_value(&client, "return location.search", &json!("?q=answer%20kind%3Astatement")).await;
        wait_value(
            &client,
            "const h = document.querySelector('#hits .hit'); return h ? h.textContent.includes('select 42') : false",
            &json!(true),
        )
        .await;
        let facets = client.find(Locator::Css("#facets")).await.unwrap().text().await.unwrap();
        assert!(facets.contains("statement") && facets.contains("alice"), "{facets}");
        std::fs::write(artifacts().join("console-search.png"), client.screenshot().await.unwrap()).unwrap();
        // A query with a mistake: the message points at it.
        client.goto(&format!("{base}/?q=kind%3A")).await.unwrap();
        let error = wait_for(&client, "#search-error").await.text().await.unwrap();
        assert!(!error.is_empty(), "a bad query is explained");

        // Exporting the search's sessions: recorded, then saved by the
        // browser, its hash shown (retried until the session is sealed).
        let started = Instant::now();
        let sha256 = loop {
            client.goto(&format!("{base}/?q=larkspur+kind%3Astatement")).await.unwrap();
            wait_for(&client, "#export-form").await;
            client.find(Locator::Css("#export-reason")).await.unwrap().send_keys("console audit").await.unwrap();
            client.find(Locator::Css("#export")).await.unwrap().click().await.unwrap();
            let done = "const s = document.querySelector('#export-status'); return !!s && s.textContent !== '' && !s.textContent.startsWith('Exporting')";
            wait_value(&client, done, &json!(true)).await;
            let shown = script(&client, "const c = document.querySelector('#export-sha256'); return c ? c.textContent : ''").await;
            let shown = shown.as_str().unwrap_or_default().to_string();
            if !shown.is_empty() {
                break shown;
            }
            let status = client.find(Locator::Css("#export-status")).await.unwrap().text().await.unwrap();
            assert!(status.contains("not in the sealed recording"), "{status}");
            assert!(started.elapsed() < WAIT, "never exported: {status}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{sha256}");

        // The hit opens its session at the statement.
        client.goto(&format!("{base}/?q=larkspur+kind%3Astatement")).await.unwrap();
        wait_for(&client, "#hits .hit").await.click().await.unwrap();
        wait_for(&client, ".event.current").await;
        assert_eq!(current(&client).await, json!(hit_seq));
        let row = client.find(Locator::Css(".event.current")).await.unwrap().text().await.unwrap();
        assert!(row.contains("select 'larkspur' as flower"), "{row}");
        let head = wait_for(&client, "#session-head .facts").await.text().await.unwrap();
        assert!(head.contains("alice") && head.contains("test-db"), "{head}");
        let export = wait_for(&client, "#session-head #export").await.text().await.unwrap();
        assert_eq!(export, "Export this session");
        // The server's start-up parameters are folded under the header, not
        // rows of the session.
        wait_value(&client, "return document.querySelectorAll('#parameters [data-seq]').length > 5", &json!(true))
            .await;
        let listed =
            script(&client, "return document.querySelectorAll('#events li[data-kind=parameter_status]').length").await;
        assert_eq!(listed, json!(0));
        let parameters = script(&client, "return document.querySelector('#parameters').textContent").await;
        assert!(parameters.as_str().unwrap().contains("server_version"), "{parameters}");
        let short_first_ms: f64 =
            script(&client, "return Number(document.body.dataset.firstEventsMs)").await.as_f64().unwrap();
        // The timeline marks the three statements; a mark is a way there.
        wait_value(&client, "return document.querySelectorAll('#timeline .mark.statement').length", &json!(3)).await;
        // (Marks of events a moment apart overlap: the last one drawn is on
        // top, and is the one clicked.)
        let last_mark = "#timeline .mark.statement:last-of-type";
        let mark = script(&client, &format!("return Number(document.querySelector('{last_mark}').dataset.seq)")).await;
        client.find(Locator::Css(last_mark)).await.unwrap().click().await.unwrap();
        wait_value(&client, "return Number(document.body.dataset.current)", &mark).await;
        press(&client, "\u{E013}").await; // arrow up
        let before_mark = mark.as_u64().unwrap() - 1;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(before_mark)).await;
        press(&client, "N").await; // the previous match of the search
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(hit_seq)).await;

        // The keyboard: next, previous, next match, start, end.
        press(&client, "j").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(hit_seq + 1)).await;
        press(&client, "\u{E013}").await; // arrow up
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(hit_seq)).await;
        press(&client, "g").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(0)).await;
        let first = client.find(Locator::Css(".event.current")).await.unwrap().text().await.unwrap();
        assert!(first.contains("session_start"), "{first}");
        press(&client, "n").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(hit_seq)).await;
        press(&client, "G").await;
        let last = script(&client, "return Number(document.querySelector('#events li:last-child').dataset.seq)").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &last).await;
        let end = client.find(Locator::Css(".event.current")).await.unwrap().text().await.unwrap();
        assert!(end.contains("session_end"), "{end}");
        // A deep link to an event.
        client.goto(&format!("{base}/sessions/{session_id}#seq={}", hit_seq + 2)).await.unwrap();
        wait_for(&client, ".event.current").await;
        assert_eq!(current(&client).await, json!(hit_seq + 2));
        // A deep link to a moment: the first event at or after it.
        let moment = found["hits"][0]["time"].as_str().unwrap().to_string();
        client.goto(&format!("{base}/sessions/{session_id}#time={moment}")).await.unwrap();
        wait_for(&client, ".event.current").await;
        let at = script(&client, "return document.querySelector('.event.current').dataset.time").await;
        assert!(at.as_str().unwrap().starts_with(&moment[..23]), "{at} for {moment}");
        assert!(current(&client).await.as_u64().unwrap() <= hit_seq);
        client.goto(&format!("{base}/sessions/{session_id}?q=larkspur#seq={hit_seq}")).await.unwrap();
        wait_for(&client, ".event.current").await;
        wait_for(&client, "#timeline .mark.statement").await;
        let png = client.screenshot().await.unwrap();
        let shot = artifacts().join("console-session.png");
        std::fs::write(&shot, png).unwrap();
        println!("screenshot of the session page: {}", shot.display());

        // Who saw a value: the value searched for by its token, never in
        // the address bar.
        client.goto(&format!("{base}/")).await.unwrap();
        let value = wait_for(&client, "#value").await;
        value.send_keys("ada@example.com").await.unwrap();
        client.find(Locator::Css("#value-form button")).await.unwrap().click().await.unwrap();
        wait_value(
            &client,
            "return [...document.querySelectorAll('#hits .hit')].some(h => h.textContent.includes('[email:tok_'))",
            &json!(true),
        )
        .await;
        let summary = client.find(Locator::Css("#summary")).await.unwrap().text().await.unwrap();
        assert!(summary.contains("token is tok_"), "{summary}");
        let hits =
            script(&client, "return [...document.querySelectorAll('#hits .hit')].map(h => h.textContent).join('|')")
                .await;
        assert!(hits.as_str().unwrap().contains("carol"), "{hits}");
        let url = client.current_url().await.unwrap();
        assert!(!url.as_str().to_lowercase().contains("example"), "the value stays out of the URL: {url}");

        // A grant's request on its session's page names who acted, for
        // what and why.
        client.goto(&format!("{base}/sessions/{control_session}#seq={request_seq}")).await.unwrap();
        wait_for(&client, ".event.current").await;
        let row = client.find(Locator::Css(".event.current")).await.unwrap().text().await.unwrap();
        assert!(row.contains("by ci-deploy") && row.contains("test-db") && row.contains("console check"), "{row}");
        let approved = script(
            &client,
            "const r = [...document.querySelectorAll('#events li[data-kind=grant_approved]')]; return r.map(e => e.textContent).join('|')",
        )
        .await;
        assert!(approved.as_str().unwrap().contains("by policy"), "{approved}");

        // Signed out, a non-investigator is refused at sign-in.
        client.delete_all_cookies().await.unwrap();
        client.goto(&format!("{base}/")).await.unwrap();
        sign_in(&client, "mallory@example.com", "engineers").await;
        let refused = wait_for(&client, "#trouble").await.text().await.unwrap();
        assert!(refused.contains("not in the investigator group"), "{refused}");
        client.goto(&format!("{base}/")).await.unwrap();
        wait_for(&client, "#subject").await;
        client.close().await.unwrap();
        (search_ms, short_first_ms)
    });

    // Every search and read the console made is recorded, attributed.
    assert!(proctor.stop().success());
    let reader = Reader::open(&proctor.data_dir).unwrap();
    let mut accesses = Vec::new();
    reader
        .for_each_event(|event| {
            if let EventBody::RecordingAccessed(a) = &event.body
                && a.actor == "ivy@example.com"
            {
                accesses.push((a.operation.clone(), a.target_session.clone()));
            }
            Ok(())
        })
        .unwrap();
    assert!(accesses.iter().any(|(op, _)| op == "search"), "{accesses:?}");
    assert!(accesses.iter().any(|(op, s)| op == "read" && s.as_deref() == Some(session_id.as_str())), "{accesses:?}");
    assert!(accesses.iter().any(|(op, s)| op == "export" && s.as_deref() == Some(session_id.as_str())), "{accesses:?}");

    // A 100,000-event session opens as fast as a short one.
    let long_first_ms = long_session_first_events(&driver, &runtime);
    println!(
        "console timings: search results {search_ms:.0} ms; first events of a {}-event session {short_first_ms:.0} ms, of a 100,000-event session {long_first_ms:.0} ms",
        reader.session(session_id.parse().unwrap()).unwrap().map_or(0, |s| s.events)
    );
}

/// Records one 100,000-event session into a fresh data dir, serves it, and
/// opens its page: milliseconds until its first events are shown.
fn long_session_first_events(driver: &Driver, runtime: &tokio::runtime::Runtime) -> f64 {
    const EVENTS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let session = SessionId::new();
    {
        let recorder = Recorder::open(&data_dir, &RecorderSettings::default()).unwrap();
        let sink = recorder.sink();
        let start = Timestamp(Timestamp::now().0 - 3_600_000_000_000);
        let at = |i: u64| Timestamp(start.0 + i as i64 * 20_000_000);
        let mut batch = vec![NewEvent::new(
            session,
            at(0),
            Direction::Gateway,
            SessionStart {
                protocol: proctor_schemas::Protocol::Postgres,
                resource: Some("warehouse".into()),
                subject: Some("ci-backfill".into()),
                groups: vec!["ci".into()],
                grant_id: None,
                client_addr: Some("10.0.0.7:51234".into()),
                target_user: Some("app".into()),
                database: Some("app".into()),
                application_name: Some("backfill".into()),
                tls: Some("TLSv1.3".into()),
                masking_profile: None,
                message: None,
            },
        )];
        for i in 1..EVENTS - 1 {
            let body: EventBody = if i % 2 == 1 {
                Statement {
                    sql: "update orders set status = $1 where id = $2".into(),
                    statement_name: None,
                    portal: None,
                    params: vec![Some("shipped".into()), Some(i.to_string())],
                }
                .into()
            } else {
                StatementResult {
                    ref_seq: Some(i - 1),
                    command_tag: Some("UPDATE 1".into()),
                    row_count: 1,
                    duration_ns: 180_000,
                    ..StatementResult::default()
                }
                .into()
            };
            batch.push(NewEvent::new(session, at(i), Direction::ClientToTarget, body));
            if batch.len() == 1024 {
                sink.blocking_append_batch(std::mem::take(&mut batch)).unwrap();
            }
        }
        batch.push(NewEvent::new(
            session,
            at(EVENTS - 1),
            Direction::Gateway,
            proctor_schemas::SessionEnd { reason: proctor_schemas::EndReason::Completed, message: None },
        ));
        sink.blocking_append_batch(batch).unwrap();
        drop(sink);
        recorder.close().unwrap();
    }
    let port = free_port();
    let config = dir.path().join("proctor.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[identity.dev_issuer]\n\n[replay]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut child = spawn(bin(), &["up", "--config", config.to_str().unwrap()]);
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < WAIT, "proctor did not serve the long session");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Measured in a steady state: once the indexer has caught up with the
    // recording it found at start.
    let token = dev_token(bin(), &data_dir, "robot", "investigators");
    let indexed = searchable(&base, &token, &format!("session:{session} kind:session_end"));
    assert_eq!(indexed["total"], 1);
    let first_ms = runtime.block_on(async {
        let client = browser(driver).await;
        // A link to an event, followed before signing in: it lands there.
        client.goto(&format!("{base}/sessions/{session}#seq=50000")).await.unwrap();
        sign_in(&client, "ivy@example.com", "investigators").await;
        wait_for(&client, "#events li").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(50_000)).await;
        // Measured on a page load of its own, signed in.
        client.goto(&format!("{base}/sessions/{session}")).await.unwrap();
        wait_value(&client, "return document.body.dataset.firstEventsMs !== undefined", &json!(true)).await;
        let ms = script(&client, "return Number(document.body.dataset.firstEventsMs)").await.as_f64().unwrap();
        // The end is one key away.
        press(&client, "G").await;
        wait_value(&client, "return Number(document.body.dataset.current)", &json!(EVENTS - 1)).await;
        client.close().await.unwrap();
        ms
    });
    let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    first_ms
}

/// The dev issuer's sign-in form lets anyone choose who they are: a console
/// signing in with it is not served beyond loopback.
#[test]
fn the_dev_issuers_sign_in_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proctor.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[identity.dev_issuer]\n\n[replay]\nlisten = \"0.0.0.0:{port}\"\n"),
    )
    .unwrap();
    let output = run(bin(), &["up", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("served on a loopback address only"), "{stderr}");
}

/// `curl` with a cookie jar: the response's status line, headers and body.
fn curl(jar: &Path, args: &[&str]) -> String {
    let jar = jar.to_str().unwrap();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-c", jar, "-b", jar, "-o", "/dev/stdout", "-D", "/dev/stdout"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn location(response: &str) -> String {
    let line = response.lines().find(|l| l.to_ascii_lowercase().starts_with("location:")).unwrap_or_default();
    line.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_else(|| panic!("no redirect: {response}"))
}

/// The body of a response `curl` printed with its headers, as JSON.
fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// The red team's finding: the API honoured the console's session cookie on
/// any request without `Sec-Fetch-Site` (curl, older browsers, some
/// embedded clients), so whatever made a signed-in investigator's browser
/// or client send the cookie could search and read in their name, and the
/// reads were recorded as theirs. The cookie now counts only with the
/// session's CSRF token in `X-Proctor-CSRF`, which the console's page
/// holds and sends; without it (or with another) the answer is 403, with
/// what to do, and nothing is read or recorded.
#[test]
fn a_console_session_cookie_without_its_csrf_header_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("proctor.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"data\"\n[identity.dev_issuer]\n\n[replay]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut child = spawn(bin(), &["up", "--config", config.to_str().unwrap()]);
    let log = proctor_tests::collect_lines(child.stderr.take().unwrap());
    proctor_tests::wait_for_line(&log, "proctor is up", WAIT);
    let base = format!("http://127.0.0.1:{port}");

    // Signed in through the dev issuer, as a browser would be.
    let jar = dir.path().join("cookies");
    let to_issuer = location(&curl(&jar, &[&format!("{base}/login?next=%2F")]));
    let (_, query) = to_issuer.split_once('?').unwrap();
    let posted = curl(
        &jar,
        &[
            "--data",
            &format!("{query}&subject=ivy@example.com&groups=investigators"),
            &format!("{base}/dev-issuer/authorize"),
        ],
    );
    assert_eq!(location(&curl(&jar, &[&location(&posted)])), "/");
    let page = curl(&jar, &[&format!("{base}/")]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let csrf = page
        .split("<meta name=\"proctor-csrf\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the page carries no CSRF token: {page}"))
        .to_string();
    assert!(csrf.len() >= 40, "{csrf}");

    let sessions = format!("{base}/api/sessions");
    // The cookie alone, as any request a browser or client attaches it to.
    for extra in [&[][..], &["-H", "Sec-Fetch-Site: none"], &["-H", "Sec-Fetch-Site: same-origin"]] {
        let refused = curl(&jar, &[extra, &[sessions.as_str()]].concat());
        assert!(refused.starts_with("HTTP/1.1 403"), "{extra:?}: {refused}");
        let error = json_body(&refused)["error"].as_str().unwrap().to_string();
        assert!(error.contains("X-Proctor-CSRF") && error.contains("bearer token"), "{error}");
    }
    let forged = curl(&jar, &["-H", "X-Proctor-CSRF: forged", &sessions]);
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    // With the page's token, as the console's script sends it.
    let read = curl(&jar, &["-H", &format!("X-Proctor-CSRF: {csrf}"), &sessions]);
    assert!(read.starts_with("HTTP/1.1 200"), "{read}");
    assert!(json_body(&read)["sessions"].is_array(), "{read}");
    // Bearer tokens are unaffected.
    let data_dir = dir.path().join("data");
    let token = dev_token(bin(), &data_dir, "robot", "investigators");
    let bearer = curl(&jar, &["-H", &format!("Authorization: Bearer {token}"), &sessions]);
    assert!(bearer.starts_with("HTTP/1.1 200"), "{bearer}");

    // Only the reads answered were recorded: one each, ivy's and the robot's.
    let _ = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(proctor_tests::wait_with_timeout(&mut child, WAIT).success());
    let mut actors = Vec::new();
    Reader::open(&data_dir)
        .unwrap()
        .for_each_event(|event| {
            if let EventBody::RecordingAccessed(a) = &event.body {
                actors.push(a.actor.clone());
            }
            Ok(())
        })
        .unwrap();
    actors.sort();
    assert_eq!(actors, ["ivy@example.com", "robot"]);
}

/// A shell typed through `proctor demo`'s SSH resource plays in the
/// console: a search hit lands on its moment with the screen as it was
/// (colours included), the player steps from command to command, plays
/// at 16× to the end, and a `#time=` link shows the screen of its moment.
#[test]
fn a_terminal_session_plays_in_the_console_from_any_moment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let mut demo = spawn(bin(), &["demo", "--data-dir", data.to_str().unwrap(), "--json"]);
    let stdout = proctor_tests::collect_lines(demo.stdout.take().unwrap());
    let _stderr = proctor_tests::collect_lines(demo.stderr.take().unwrap());
    let line = stdout.recv_timeout(Duration::from_secs(120)).expect("the demo printed its JSON line");
    let ready: Value = serde_json::from_str(&line).unwrap();
    let ssh_command = ready["ssh_command"].as_str().unwrap().replacen("ssh ", "ssh -F /dev/null ", 1);
    let base = ready["replay_url"].as_str().unwrap().to_string();
    let token = ready["investigator_token"].as_str().unwrap().to_string();

    // Typed at a terminal (`-tt`): a line in red, two more commands, exit.
    let mut shell = Command::new("sh")
        .args(["-c", &format!("{ssh_command} -tt")])
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keys = shell.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let typed: [&[u8]; 4] =
        [b"printf '\\033[31mred alert\\033[0m\\n'\r", b"echo second-step\r", b"echo third-step\r", b"exit\r"];
    for keys_of_line in typed {
        std::io::Write::write_all(&mut keys, keys_of_line).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(proctor_tests::wait_with_timeout(&mut shell, Duration::from_secs(30)).success());

    let found = searchable(&base, &token, "kind:command second-step");
    let session_id = found["hits"][0]["session_id"].as_str().unwrap().to_string();
    let second = found["hits"][0]["seq"].as_u64().unwrap();
    let third = searchable(&base, &token, "kind:command third-step")["hits"][0]["seq"].as_u64().unwrap();
    let red = searchable(&base, &token, "kind:command printf")["hits"][0]["seq"].as_u64().unwrap();
    assert!(red < second && second < third);
    // The API the player reads: the screen at a moment, by seq or time,
    // and the frames that follow one.
    let screen_text = |screen: &Value| -> String {
        let lines = screen["lines"].as_array().unwrap();
        let text = |line: &Value| {
            line.as_array().unwrap().iter().map(|r| r["t"].as_str().unwrap().to_string()).collect::<String>()
        };
        lines.iter().map(text).collect::<Vec<_>>().join("\n")
    };
    let at_second = api_get(&base, &token, &format!("/api/sessions/{session_id}/screen?seq={second}"));
    assert_eq!(at_second["seq"], json!(second));
    assert!(screen_text(&at_second).contains("# echo second-step"), "{at_second}");
    let second_time = api_get(&base, &token, &format!("/api/sessions/{session_id}/events?from_seq={second}&limit=1"))["events"][0]["time"]
        .as_str()
        .unwrap()
        .to_string();
    let by_time = api_get(&base, &token, &format!("/api/sessions/{session_id}/screen?time={second_time}"));
    assert!(by_time["seq"].as_u64().unwrap() >= second, "the last event at or before the moment: {by_time}");
    assert!(screen_text(&by_time).contains("# echo second-step"));
    let page = api_get(&base, &token, &format!("/api/sessions/{session_id}/frames?after_seq={red}"));
    assert_eq!(page["start"]["seq"], json!(red));
    let changed: String = page["frames"].as_array().unwrap().iter().map(|f| f["changed"].to_string()).collect();
    assert!(changed.contains("second-step") && changed.contains("third-step"), "{page}");
    assert_eq!(page["next_seq"], Value::Null, "the page reaches the end of the recording");

    let driver = chromedriver();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver).await;
        // The search hit opens the session at the command, the screen as
        // it was then: the red line drawn in red.
        client.goto(&format!("{base}/?q=kind%3Acommand+second-step")).await.unwrap();
        sign_in(&client, "demo-investigator", "investigators").await;
        wait_for(&client, "#hits .hit").await.click().await.unwrap();
        wait_for(&client, "#player:not([hidden]) .term-row").await;
        wait_value(&client, "return Number(document.body.dataset.screenSeq)", &json!(second)).await;
        let screen = script(&client, "return [...document.querySelectorAll('#term .term-row')].map((r) => r.dataset.text).join('\\n')").await;
        let screen = screen.as_str().unwrap().to_string();
        assert!(screen.contains("red alert"), "{screen}");
        assert!(!screen.contains("second-step\r\nsecond-step") && !screen.contains("third-step"), "not yet run: {screen}");
        let colour = script(
            &client,
            "const s = [...document.querySelectorAll('#term .term-row span')].find((n) => n.textContent.trim() === 'red alert'); return s ? getComputedStyle(s).color : null",
        )
        .await;
        assert_eq!(colour, json!("rgb(205, 49, 49)"), "the red line in red");
        let server_ms: f64 = script(&client, "return Number(document.body.dataset.screenMs)").await.as_f64().unwrap();
        eprintln!("screen at a search hit: {server_ms:.1} ms server time");

        // From command to command: the next one, then back.
        client.find(Locator::Css("#next-command")).await.unwrap().click().await.unwrap();
        wait_value(&client, "return Number(document.body.dataset.screenSeq)", &json!(third)).await;
        assert_eq!(current(&client).await, json!(third), "the event list follows the player");
        client.find(Locator::Css("#prev-command")).await.unwrap().click().await.unwrap();
        wait_value(&client, "return Number(document.body.dataset.screenSeq)", &json!(second)).await;

        // Played at 16× to the end of the recording: the exit on screen.
        client.find(Locator::Css("#speed")).await.unwrap().select_by_value("16").await.unwrap();
        client.find(Locator::Css("#play")).await.unwrap().click().await.unwrap();
        wait_value(&client, "return document.body.dataset.playing", &json!("false")).await;
        let end = script(&client, "return [...document.querySelectorAll('#term .term-row')].map((r) => r.dataset.text).join('\\n')").await;
        assert!(end.as_str().unwrap().contains("third-step\nthird-step") || end.as_str().unwrap().contains("exit"), "{end}");
        assert!(script(&client, "return Number(document.body.dataset.screenSeq)").await.as_u64().unwrap() > third);
        std::fs::write(artifacts().join("console-terminal.png"), client.screenshot().await.unwrap()).unwrap();

        // A #time= link lands on its moment, the screen with it.
        let events = api_get(&base, &token, &format!("/api/sessions/{session_id}/events?from_seq={red}&limit=1"));
        let time = events["events"][0]["time"].as_str().unwrap().to_string();
        client.goto(&format!("{base}/sessions/{session_id}#time={time}")).await.unwrap();
        // (The first event of that millisecond: the link holds no more.)
        wait_value(
            &client,
            "return document.body.dataset.current !== undefined && document.body.dataset.screenSeq === document.body.dataset.current",
            &json!(true),
        )
        .await;
        let landed = current(&client).await.as_u64().unwrap();
        assert!(landed <= red && red - landed <= 3, "landed on {landed} for the moment of {red}");
        client.close().await.unwrap();
    });
    proctor_tests::signal(&demo, libc::SIGTERM);
    proctor_tests::wait_with_timeout(&mut demo, Duration::from_secs(60));
}

/// `GET base+path` with a bearer token, as JSON.
fn api_get(base: &str, token: &str, path: &str) -> Value {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("{base}{path}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&output.stdout)))
}
