//! An investigator's day: a scripted day of PostgreSQL traffic through the
//! real gateway (several subjects and grants, held, approved, blocked and
//! denied statements, a denied grant, a grant revoked during a running
//! query, errors, failed logins, bind values, slow and large results, an
//! application name, COPY, masked values), then the questions an
//! investigator asks about it, each as one query through the CLI against
//! the replay server and through the API, each checked against what the
//! clients saw.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proctor_tests::devcluster::{Cluster, Options, free_port};
use proctor_tests::{APP_ROLE, Proctor, ProctorOptions, cluster, dev_token, run, stderr, stdout};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_proctor");

fn bin() -> &'static Path {
    Path::new(BIN)
}

struct Day {
    cluster: Cluster,
    proctor: Proctor,
    api: String,
    replay: String,
    investigator: String,
}

impl Day {
    fn start() -> Day {
        let cluster = cluster(&Options::default());
        cluster
            .psql(
                APP_ROLE,
                &format!(
                    "create table orders (id int primary key, customer_email text, total int);
                     alter table orders owner to {APP_ROLE}"
                ),
            )
            .unwrap();
        let (api_port, replay_port) = (free_port(), free_port());
        let extra = format!(
            r#"database = "{APP_ROLE}"

[identity.dev_issuer]

[control]
listen = "127.0.0.1:{api_port}"
pending_ttl = "1h"
admin_group = "dba"

[replay]
listen = "127.0.0.1:{replay_port}"

[rules.ci]
block = ["drop", "truncate"]
hold = ["ddl"]
approval_group = "dba"

[masking.profiles.pii]
detectors = ["email"]
actions = {{ email = "token" }}

[[policies]]
name = "agents"
groups = ["ci"]
resources = ["test-db"]
max_ttl = "1h"
rules = "ci"
masking_profile = "pii"

[[policies]]
name = "people"
groups = ["eng"]
resources = ["test-db"]
max_ttl = "30m"
approval = {{ group = "dba", count = 1 }}
"#
        );
        let proctor = Proctor::start(bin(), cluster.port, &ProctorOptions { extra, ..ProctorOptions::default() });
        let investigator = dev_token(bin(), &proctor.data_dir, "ivy", "investigators");
        Day {
            cluster,
            proctor,
            api: format!("http://127.0.0.1:{api_port}"),
            replay: format!("http://127.0.0.1:{replay_port}"),
            investigator,
        }
    }

    fn token(&self, sub: &str, groups: &str) -> String {
        dev_token(bin(), &self.proctor.data_dir, sub, groups)
    }

    /// `proctor COMMAND ARGS --api API --token TOKEN`, as JSON.
    fn control(&self, token: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--json", "--api", &self.api, "--token", token]);
        let out = run(bin(), &all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
    }

    /// A grant requested by `token`: (id, libpq URL).
    fn grant(&self, token: &str, reason: &str) -> (String, String) {
        let granted =
            self.control(token, &["grant", "request", "--resource", "test-db", "--ttl", "30m", "--reason", reason]);
        let id = granted["id"].as_str().unwrap().to_string();
        (id, granted["credentials"]["url"].as_str().unwrap_or_default().to_string())
    }

    fn psql(&self, url: &str, script: &str) -> String {
        let mut child = Command::new(self.cluster.bindir.join("psql"))
            .args(["-X", "-At", "-d", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        format!("{}{}", stdout(&output), stderr(&output))
    }

    /// The CLI's answer (`--server`) and the API's to one query; they must
    /// agree. Returns the API's.
    fn ask(&self, query: &str) -> Value {
        let (status, api) = self.api_search(query);
        assert_eq!(status, 200, "{query}: {api}");
        let cli = run(
            bin(),
            &[
                "search",
                query,
                "--server",
                &self.replay,
                "--token",
                &self.investigator,
                "--json",
                "--facets",
                "--limit",
                "50",
            ],
        );
        assert!(cli.status.success(), "{query}: {}", stderr(&cli));
        let lines: Vec<Value> = stdout(&cli).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (summary, hits) = lines.split_last().unwrap();
        assert_eq!(summary["total"], api["total"], "{query}: the CLI and the API disagree");
        let key = |h: &Value| (h["session_id"].as_str().unwrap_or_default().to_string(), h["seq"].as_u64());
        let api_hits: Vec<_> = api["hits"].as_array().unwrap().iter().map(key).collect();
        assert_eq!(hits.iter().map(key).collect::<Vec<_>>(), api_hits, "{query}: the CLI and the API disagree");
        api
    }

    fn api_search(&self, query: &str) -> (u16, Value) {
        let url = format!("{}/api/search?limit=50&q={}", self.replay, encode(query));
        let output = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "60", &url])
            .args(["-H", &format!("Authorization: Bearer {}", self.investigator)])
            .output()
            .expect("curl (scripts/setup installs it)");
        let text = stdout(&output);
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
    }

    fn api_get(&self, path: &str) -> (u16, Value) {
        let output = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "60", &format!("{}{path}", self.replay)])
            .args(["-H", &format!("Authorization: Bearer {}", self.investigator)])
            .output()
            .expect("curl (scripts/setup installs it)");
        let text = stdout(&output);
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// `proctor search` refusing a query: its exit code and message.
    fn refused(&self, query: &str) -> (Option<i32>, String) {
        let out = run(bin(), &["search", query, "--server", &self.replay, "--token", &self.investigator]);
        (out.status.code(), stderr(&out))
    }

    /// Waits until a query has at least `want` hits (the index follows the
    /// recording within seconds; the bound only catches a hang).
    fn until(&self, query: &str, want: u64) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.api_search(query);
            if status == 200 && body["total"].as_u64().unwrap_or(0) >= want {
                return body;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{query}: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the index holds every event recorded so far: the count
    /// of all events stands still for a second (the last sessions' ends and
    /// the control plane's events are still arriving just after the day's
    /// last statement). Comparisons of the CLI's and the API's answers need
    /// an index that does not grow between the two.
    fn settled(&self) {
        let started = Instant::now();
        let mut last = None;
        loop {
            let (status, body) = self.api_search("session:*");
            let total = (status == 200).then(|| body["total"].as_u64()).flatten();
            if total.is_some() && total == last {
                return;
            }
            last = total;
            assert!(started.elapsed() < Duration::from_secs(60), "the index kept growing: {body}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hits(answer: &Value) -> Vec<Value> {
    answer["hits"].as_array().cloned().unwrap_or_default()
}

fn field(hit: &Value, name: &str) -> String {
    hit[name].as_str().unwrap_or_default().to_string()
}

/// The texts of the hits (their first lines).
fn texts(answer: &Value) -> Vec<String> {
    hits(answer).iter().map(|h| field(h, "text").lines().next().unwrap_or_default().to_string()).collect()
}

fn sessions(answer: &Value) -> BTreeSet<String> {
    hits(answer).iter().map(|h| field(h, "session_id")).collect()
}

fn review_id(text: &str) -> String {
    let at = text.find("review r_").unwrap_or_else(|| panic!("no review id in {text}")) + "review ".len();
    text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

fn with_app(url: &str, app: &str) -> String {
    format!("{url}{}application_name={app}", if url.contains('?') { "&" } else { "?" })
}

#[test]
fn every_investigator_question_is_one_query_with_the_right_names_on_every_hit() {
    let day = Day::start();
    let agent = day.token("ci-deploy", "ci");
    let dana = day.token("dana", "dba");
    let eve = day.token("eve", "eng");
    let bob = day.token("bob", "eng");

    // Morning: the deploy bot's grant, approved by policy, and its work.
    let (deploy_grant, url) = day.grant(&agent, "deploy 2026.12");
    let bot = day.psql(
        &with_app(&url, "deploy-bot"),
        "insert into orders values (1, 'ada@example.com', 100), (2, 'bob@example.com', 200), (3, 'cy@example.com', 300);
         update orders set total = total + 1 where id <= 2;
         update orders set total = 0 where id = 999;
         select pg_sleep(1.2);
         select count(*) from (select g from generate_series(1, 2000) g) s;
         select g, repeat('x', 20) from generate_series(1, 2000) g;
         select 1/0;
         drop table orders;
         select customer_email from orders where id = 1;
         select 'user' || g || '@example.com' as mail from generate_series(1, 20) g;
         copy orders to stdout;
         alter table orders add column note text;
        ",
    );
    assert!(bot.contains("INSERT 0 3") && bot.contains("UPDATE 2") && bot.contains("UPDATE 0"), "{bot}");
    assert!(bot.contains("division by zero"), "{bot}");
    assert!(bot.contains("rule ci/drop"), "{bot}");
    assert!(!bot.contains("ada@example.com"), "masked for the agent: {bot}");
    let held = review_id(&bot);

    // A driver's bind values (the extended protocol).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bound = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&url.replace("sslmode=require", "sslmode=disable"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let row = client.query_one("select $1::text as needle", &[&"needle-4711"]).await.unwrap();
        // Refused at Parse: a driver's prepared statement is decided on too.
        let refused = client.query("truncate orders", &[]).await.unwrap_err();
        assert_eq!(refused.as_db_error().map(|e| e.code().code()), Some("42501"), "{refused}");
        row.get::<_, String>(0)
    });
    assert_eq!(bound, "needle-4711");

    // The DBA approves the held ALTER TABLE; the bot runs it again.
    day.control(&dana, &["review", "approve", &held, "--reason", "column is additive"]);
    let again = day.psql(&with_app(&url, "deploy-bot"), "alter table orders add column note text;");
    assert!(!again.contains("ERROR"), "{again}");
    let columns =
        day.cluster.psql(APP_ROLE, "select count(*) from information_schema.columns where column_name = 'note'");
    assert_eq!(columns.unwrap().trim(), "1");

    // Eve's request is denied; Bob's, citing a ticket, approved.
    let eve_request =
        day.control(&eve, &["grant", "request", "--resource", "test-db", "--ttl", "30m", "--reason", "look around"]);
    let eve_grant = field(&eve_request, "id");
    day.control(&dana, &["grant", "deny", &eve_grant, "--reason", "no ticket"]);
    let bob_request = day
        .control(&bob, &["grant", "request", "--resource", "test-db", "--ttl", "30m", "--reason", "ticket INC-4242"]);
    let bob_grant = field(&bob_request, "id");
    day.control(&dana, &["grant", "approve", &bob_grant]);
    let bob_url = field(&day.control(&bob, &["grant", "show", &bob_grant])["credentials"], "url");
    assert!(!bob_url.is_empty(), "the requester sees the credential once");

    // Someone tries Bob's grant with a wrong password.
    let wrong = bob_url.replacen(&format!("{bob_grant}:"), &format!("{bob_grant}:wrong-"), 1);
    let failed = day.psql(&wrong, "select 1;");
    assert!(failed.contains("password authentication failed"), "{failed}");

    // Bob runs a long query; the DBA revokes his grant while it runs.
    let seen = day.psql(&with_app(&bob_url, "bobs-shell"), "select 'bob-visible' as w;");
    assert!(seen.contains("bob-visible"), "{seen}");
    let mut long = Command::new(day.cluster.bindir.join("psql"))
        .args(["-X", "-At", "-d", &with_app(&bob_url, "bobs-shell"), "-c", "select pg_sleep(30) as long_wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    day.until("kind:statement long_wait", 1);
    day.control(&dana, &["grant", "revoke", &bob_grant, "--reason", "incident over"]);
    let ended = proctor_tests::wait_with_timeout(&mut long, Duration::from_secs(30));
    assert!(!ended.success(), "the revoked query ends");

    // End of day.
    let last = day.psql(&url, "select 'end-of-day' as marker;");
    assert!(last.contains("end-of-day"), "{last}");
    day.until("kind:statement end-of-day outcome:allow", 1);
    day.until("kind:session_end end_reason:grant_revoked", 1);
    day.settled();

    let mut answered = 0;
    let mut check = |what: &str, ok: bool, detail: &dyn std::fmt::Debug| {
        assert!(ok, "{what}: {detail:?}");
        answered += 1;
    };

    // 1. Who approved the held ALTER TABLE?
    let a = day.ask(&format!("kind:review_approved review:{held}"));
    let hit = &hits(&a)[0];
    check("who approved the held statement", field(hit, "actor") == "dana", hit);
    check("the approval names the requester", field(hit, "subject") == "ci-deploy", hit);

    // 2. Which statement was held, and by which rule?
    let a = day.ask("kind:statement outcome:hold");
    check("the held statement", texts(&a).iter().any(|t| t.contains("alter table orders")), &texts(&a));
    check("its review on the hit", hits(&a).iter().any(|h| field(h, "review_id") == held), &a);

    // 3. Whose grant request was denied, and why?
    let a = day.ask("kind:grant_denied");
    let hit = &hits(&a)[0];
    check("whose request was denied", field(hit, "subject") == "eve", hit);
    check("who denied it", field(hit, "actor") == "dana", hit);
    check("why", field(hit, "text").contains("no ticket"), hit);
    check("its grant", field(hit, "grant_id") == eve_grant, hit);

    // 4. Who cited ticket INC-4242?
    let a = day.ask("kind:grant_requested INC-4242");
    check("who cited the ticket", hits(&a).iter().map(|h| field(h, "subject")).eq(["bob"]), &a);
    check("on which resource", field(&hits(&a)[0], "resource") == "test-db", &a);

    // 5. The control events carry their own names: facets by requester.
    let a = day.ask("kind:grant_requested");
    let subjects = &a["facets"]["subject"];
    check("requests by subject", subjects["ci-deploy"] == 1 && subjects["eve"] == 1 && subjects["bob"] == 1, subjects);

    // 6. What was the revoked agent running when its grant was revoked?
    let a = day.ask("kind:statement end_reason:grant_revoked");
    check("what ran when revoked", texts(&a) == ["select pg_sleep(30) as long_wait"], &texts(&a));
    check("whose", field(&hits(&a)[0], "subject") == "bob", &a);
    let bobs_session = field(&hits(&a)[0], "session_id");

    // 7. Who revoked Bob's grant?
    let a = day.ask(&format!("kind:grant_revoked grant:{bob_grant}"));
    check("who revoked", field(&hits(&a)[0], "actor") == "dana", &a);

    // 8. Which statements ran longer than a second?
    let a = day.ask("kind:statement duration:>1s");
    check("slow statements", texts(&a) == ["select pg_sleep(1.2);"], &texts(&a));
    check("their duration", hits(&a)[0]["duration_ns"].as_u64().unwrap_or(0) >= 1_200_000_000, &a);

    // 9. Which results were large?
    let a = day.ask("kind:result rows:>=500");
    check("large results", hits(&a).len() == 1 && hits(&a)[0]["rows"] == 2000, &a);
    let a = day.ask("kind:statement bytes:[10KB TO 10MB]");
    check("by bytes", texts(&a).iter().any(|t| t.contains("repeat('x', 20)")), &texts(&a));

    // 10. Which subjects actually changed rows in orders?
    let a = day.ask("kind:statement orders outcome:allow rows:>0 (tag:INSERT OR tag:UPDATE OR tag:DELETE)");
    let mut changed = texts(&a);
    changed.sort();
    check(
        "writes that changed rows",
        changed.len() == 2
            && changed[0].starts_with("insert into orders")
            && changed[1].starts_with("update orders set total = total + 1"),
        &changed,
    );
    check("by whom", hits(&a).iter().all(|h| field(h, "subject") == "ci-deploy"), &a);
    check("with their tags", hits(&a).iter().any(|h| field(h, "tag") == "INSERT 0 3"), &a);

    // 11. Which statements were blocked?
    let a = day.ask("kind:statement outcome:block");
    check("blocked", texts(&a) == ["drop table orders;"], &texts(&a));
    check("by which rule", field(&hits(&a)[0], "rule") == "ci/drop", &a);

    // 12. The README's example, in either spelling.
    let a = day.ask("outcome:blocked OR outcome:held");
    check("synonyms are read and said", !a["notices"].as_array().unwrap().is_empty(), &a["notices"]);
    check("and find", a["total"].as_u64().unwrap_or(0) >= 4, &a["total"]);

    // 13. Which statements failed with division by zero?
    let a = day.ask("kind:statement sqlstate:22012");
    check("failed statements", texts(&a) == ["select 1/0;"], &texts(&a));

    // 14. What did the deploy bot's application run?
    let a = day.ask("application:deploy-bot kind:statement alter");
    check("by application", texts(&a).len() == 2, &texts(&a));

    // 14b. A driver's statement refused at Parse.
    let a = day.ask("kind:prepare outcome:block");
    check("refused at Parse", texts(&a) == ["truncate orders"], &texts(&a));
    check("by its rule", field(&hits(&a)[0], "rule") == "ci/truncate", &a);
    check(
        "and its bind values' statement allowed",
        day.ask("kind:statement needle-4711 outcome:allow")["total"] == 1,
        &"needle",
    );

    // 15. Which sessions came from 127.0.0.1 (without the port)? From 127/8?
    let by_host = day.ask("kind:session_start client:127.0.0.1");
    let by_network = day.ask("kind:session_start client:127.0.0.0/8");
    check("by host", by_host["total"].as_u64().unwrap_or(0) >= 4, &by_host["total"]);
    check("by network", sessions(&by_host) == sessions(&by_network), &by_network["total"]);
    check("elsewhere", day.ask("client:10.0.0.0/8")["total"] == 0, &"client:10.0.0.0/8");
    check("an IPv6 network", day.ask("client:\"::/0\"")["total"] == 0, &"client:\"::/0\"");
    let session = field(&hits(&by_host)[0], "session_id");
    let (status, shown) = day.api_get(&format!("/api/sessions/{session}"));
    let address = shown["start_event"]["client_addr"].as_str().unwrap_or_default().to_string();
    check("a session's address has a port", status == 200 && address.starts_with("127.0.0.1:"), &shown);
    let a = day.ask(&format!("kind:session_start client:\"{address}\""));
    check("by address and port", sessions(&a) == BTreeSet::from([session.clone()]), &a);
    let port_query = day.ask("kind:session_start client:*");
    check("client:* on every start", port_query["total"] == by_host["total"], &port_query["total"]);

    // 16. The failed attempts on Bob's grant, by grant and by subject.
    let a = day.ask(&format!("kind:session_end end_reason:auth_failed grant:{bob_grant}"));
    check("failed logins by grant", hits(&a).len() == 1, &a);
    check("named", field(&hits(&a)[0], "subject") == "bob", &a);
    let b = day.ask("kind:session_start subject:bob end_reason:auth_failed");
    check("failed logins by subject", sessions(&a) == sessions(&b), &b);

    // 17. Which statements were run with a given bind value?
    let a = day.ask("kind:statement needle-4711");
    check("by bind value", texts(&a).iter().any(|t| t.contains("$1::text")), &texts(&a));

    // 18. COPY out of orders.
    let a = day.ask("kind:statement tag:COPY");
    check("copies", texts(&a).iter().any(|t| t.starts_with("copy orders to stdout")), &texts(&a));
    check("how many rows", hits(&a)[0]["rows"] == 3, &a);

    // 19. Where was the e-mail rule applied?
    let a = day.ask("kind:masking_applied email");
    check("masking by rule", a["total"].as_u64().unwrap_or(0) >= 1, &a);
    let b = day.ask("kind:masking_applied rule:email");
    check("masking by rule field", a["total"] == b["total"], &b);

    // 20. What did the database see: sessions by database and user.
    let a = day.ask(&format!("kind:session_start database:{APP_ROLE}"));
    check("by database", a["total"].as_u64().unwrap_or(0) >= 4, &a["total"]);
    let a = day.ask(&format!("kind:statement user:{APP_ROLE} long_wait"));
    check("by target user", texts(&a).len() == 1, &texts(&a));

    // 21. Everything Dana did.
    let a = day.ask("actor:dana");
    let kinds: BTreeSet<String> = hits(&a).iter().map(|h| field(h, "kind")).collect();
    for kind in ["review_approved", "grant_denied", "grant_approved", "grant_revoked"] {
        check("dana's actions", kinds.contains(kind), &kinds);
    }

    // 22. Any value: every field answers `field:*`.
    for query in ["actor:*", "end_reason:*", "tag:*", "application:*", "client:*", "protocol:*", "group:*", "grant:*"] {
        let (status, body) = day.api_search(query);
        check("field:* answers", status == 200 && body["total"].as_u64().unwrap_or(0) > 0, &(query, body));
    }

    // 23. How Bob's revoked session went, in order (one millisecond may hold several events).
    let a = day.ask(&format!("session:{bobs_session}"));
    let seqs: Vec<u64> = hits(&a).iter().rev().map(|h| h["seq"].as_u64().unwrap()).collect();
    check("newest first, by seq within a millisecond", seqs.windows(2).all(|w| w[0] < w[1]), &seqs);

    // 24. A query starting with `-` is a query, not an option.
    let out = run(
        bin(),
        &["search", "-kind:parameter_status", "--server", &day.replay, "--token", &day.investigator, "--limit", "1"],
    );
    check("leading dash", out.status.success() && stdout(&out).contains("hits"), &stderr(&out));

    let out = run(
        bin(),
        &[
            "search",
            "--server",
            &day.replay,
            "--token",
            &day.investigator,
            "--limit",
            "1",
            "--",
            "-kind:parameter_status",
        ],
    );
    check("leading dash after --", out.status.success() && stdout(&out).contains("hits"), &stderr(&out));

    // 25. The statements that ended the day's sessions with a grant end reason, by tag and end.
    let a = day.ask("kind:statement tag:\"ALTER TABLE\"");
    check("the approved ALTER TABLE ran", texts(&a).iter().any(|t| t.starts_with("alter table orders")), &texts(&a));

    // 26. Hold, approve and run: the review's whole story in one query.
    let a = day.ask(&format!("review:{held}"));
    let kinds: BTreeSet<String> = hits(&a).iter().map(|h| field(h, "kind")).collect();
    check("review story", kinds.contains("review_requested") && kinds.contains("review_approved"), &kinds);

    // 27. The deploy grant's sessions, and nobody else's.
    let a = day.ask(&format!("kind:session_start grant:{deploy_grant}"));
    check("by grant", hits(&a).iter().all(|h| field(h, "subject") == "ci-deploy") && hits(&a).len() >= 3, &a);

    // 28. Results are sampled where a masking profile applies (masked
    // before recording), and not where none does.
    let a = day.ask("kind:result customer_email tok");
    check("a masked sample", texts(&a).len() == 1 && field(&hits(&a)[0], "text").contains("[email:tok_"), &a);
    check("no sample without a profile", day.ask("kind:result bob-visible")["total"] == 0, &"bob-visible");
    check("the statement is there", day.ask("kind:statement bob-visible")["total"] == 1, &"bob-visible");

    // 29. Who saw this customer's e-mail address? Found by its token, the
    // value never stored; the search recorded with the token.
    let found = run(
        bin(),
        &["search", "--value", "Ada@Example.com", "--server", &day.replay, "--token", &day.investigator, "--json"],
    );
    assert!(found.status.success(), "{}", stderr(&found));
    let by_value: Vec<Value> = stdout(&found).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: BTreeSet<String> = by_value.iter().map(|h| field(h, "kind")).collect();
    check("by value: the insert and the result", kinds.contains("statement") && kinds.contains("result"), &kinds);
    check("whose", by_value.iter().all(|h| field(h, "subject") == "ci-deploy"), &by_value);
    let body = serde_json::json!({ "value": "ada@example.com" }).to_string();
    let posted = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-X", "POST", "-H", "Content-Type: application/json", "--data", &body])
        .args(["-H", &format!("Authorization: Bearer {}", day.investigator)])
        .arg(format!("{}/api/search/value", day.replay))
        .output()
        .unwrap();
    let posted: Value = serde_json::from_str(&stdout(&posted)).unwrap();
    let token = field(&posted, "token");
    check("the API finds the same", posted["total"].as_u64() == Some(by_value.len() as u64), &posted);
    // A value in a row beyond the sample: found by the tokens its result
    // recorded.
    let found = run(
        bin(),
        &["search", "--value", "user17@example.com", "--server", &day.replay, "--token", &day.investigator, "--json"],
    );
    let in_rows: Vec<Value> = stdout(&found).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    check(
        "a value in a row not sampled",
        in_rows.len() == 1 && field(&in_rows[0], "kind") == "result" && field(&in_rows[0], "subject") == "ci-deploy",
        &in_rows,
    );
    check("not in the sample", !field(&in_rows[0], "text").contains("user17"), &in_rows);
    check(
        "another value finds nothing",
        {
            let other = run(
                bin(),
                &[
                    "search",
                    "--value",
                    "nobody@example.com",
                    "--server",
                    &day.replay,
                    "--token",
                    &day.investigator,
                    "--json",
                ],
            );
            other.status.success() && stdout(&other).trim().is_empty()
        },
        &"nobody@example.com",
    );
    let recording = proctor_recorder::reader::Reader::open(&day.proctor.data_dir).unwrap();
    let mut raw = 0;
    let mut searched_by_token = 0;
    recording
        .for_each_event(|event| {
            let text = format!("{event:?}").to_lowercase();
            raw += usize::from(text.contains("ada@example.com"));
            let access = matches!(event.body, proctor_schemas::EventBody::RecordingAccessed(_));
            searched_by_token += usize::from(access && text.contains(&token));
            Ok(())
        })
        .unwrap();
    check("the value never reached the recording", raw == 0, &raw);
    check("the searches are recorded with the token", searched_by_token >= 2, &searched_by_token);

    // The README's examples, each answered on this day.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let examples =
        readme.split("<!-- search examples -->").nth(1).unwrap().split("<!-- end of search examples -->").next();
    let examples: Vec<&str> = examples
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split_once("` |").map(|(query, _)| query))
        .collect();
    assert!(examples.len() >= 10, "{examples:?}");
    for query in examples {
        let a = day.ask(query);
        assert!(a["total"].as_u64().unwrap_or(0) > 0, "the README's example {query:?} finds nothing: {a}");
    }

    // A value search keeps its time bounds and its query.
    let out = run(
        bin(),
        &[
            "search",
            "--value",
            "ada@example.com",
            "--since",
            "1d",
            "--server",
            &day.replay,
            "--token",
            &day.investigator,
            "kind:result",
        ],
    );
    // (The COPY's result carries the address's token too: the address
    // passed there as well.)
    let shown = stdout(&out);
    check(
        "--value with --since and a query",
        out.status.success() && shown.contains("customer_email") && shown.contains("2 of 2 hits"),
        &(shown.clone(), stderr(&out)),
    );
    check("session:*", day.ask("session:*")["total"].as_u64().unwrap_or(0) > 50, &"session:*");

    // Mistakes are told, with exit code 2 and a 400, never internal text.
    for (query, says) in [
        ("kind:bogus", "statement"),
        ("outcome:maybe", "allow, block, hold"),
        ("duration:>1000", "needs a unit"),
        ("bytes:>1XB", "not a unit of size"),
        ("subject:[a TO b]", "not ranges"),
        ("text:*", "not a condition"),
        ("client:10.0.0.0/99", "network"),
        ("colour:red", "unknown field"),
    ] {
        let (code, message) = day.refused(query);
        check("refused with 2", code == Some(2) && message.contains(says), &(query, &message));
        let (status, body) = day.api_search(query);
        let error = body["error"].as_str().unwrap_or_default();
        check("refused with 400", status == 400 && error.contains(says) && !error.contains("fast field"), &body);
    }

    // On the data dir too.
    let data_dir = day.proctor.data_dir.to_str().unwrap();
    let out = run(bin(), &["search", "kind:bogus", "--data-dir", data_dir]);
    check("data dir refuses with 2", out.status.code() == Some(2), &stderr(&out));

    assert!(answered >= 25, "{answered} questions");
}
