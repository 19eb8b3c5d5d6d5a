//! Synthetic sessions for `proctor generate`: realistic, deterministic for a
//! given seed, and in a fixed mix so that benchmark figures stay comparable
//! across changes.
//!
//! The mix, by session index `i`:
//! - `i % 10` in 0..=4 (50%): PostgreSQL: parameter reports, 4 to 30
//!   statements (half simple, half extended with bind parameters), results
//!   with masked samples, masking counts, errors with SQLSTATE, the odd
//!   notice, COPY, and risky statements blocked or held by policy;
//! - `i % 10` in 5..=7 (30%): SSH: a pty, a shell with commands typed key by
//!   key (with corrections), coloured output, resizes; or an exec;
//! - `i % 10` in 8..=9 (20%): HTTP: 3 to 15 request/response exchanges with
//!   headers and JSON bodies.
//!
//! Every data session runs under a grant whose request and approval are
//! recorded in one `control` session, which also holds reviews of held
//! statements and investigators' searches. Up to 8 sessions are open at once;
//! their events interleave as real traffic would.

use std::collections::VecDeque;
use std::time::Duration;

use proctor_schemas::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub sessions: u64,
    pub seed: u64,
    /// Time of the first session.
    pub start: Timestamp,
    /// Sessions start evenly spread over this span.
    pub span: Duration,
    /// How many data sessions are open at once.
    pub concurrency: usize,
}

impl SynthConfig {
    pub fn new(sessions: u64, seed: u64, start: Timestamp) -> SynthConfig {
        SynthConfig { sessions, seed, start, span: Duration::from_secs(7 * 24 * 3600), concurrency: 8 }
    }
}

const SUBJECTS: &[(&str, &[&str])] = &[
    ("ci-deploy", &["ci", "deployers"]),
    ("ci-migrate", &["ci"]),
    ("agent-reporting", &["agents", "analytics"]),
    ("ai-sre-assistant", &["agents", "sre"]),
    ("alice@example.com", &["dba", "engineers"]),
    ("bob@example.com", &["engineers"]),
    ("carol@example.com", &["sre", "engineers"]),
];
const APPROVERS: &[&str] = &["dana@example.com", "erin@example.com"];
const DATABASES: &[(&str, &str, &str)] =
    &[("prod-db", "shop", "app_rw"), ("billing-db", "billing", "billing_ro"), ("analytics-db", "warehouse", "analyst")];
const SSH_HOSTS: &[(&str, &str)] = &[("bastion-prod", "deploy"), ("web-01", "ubuntu"), ("db-host-02", "postgres")];
const HTTP_SERVICES: &[(&str, &str)] =
    &[("billing-api", "billing.internal"), ("k8s-api", "kubernetes.default.svc"), ("admin-api", "admin.internal")];
const CLIENTS: &[&str] = &["psql", "pgbench", "psycopg", "PostgreSQL JDBC Driver", "node-postgres"];

struct Query {
    sql: &'static str,
    params: &'static [&'static str],
    columns: &'static [&'static str],
    tag: &'static str,
}

const QUERIES: &[Query] = &[
    Query {
        sql: "select id, email, status from customers where id = $1",
        params: &["id"],
        columns: &["id", "email", "status"],
        tag: "SELECT",
    },
    Query {
        sql: "select o.id, o.total_cents, o.created_at from orders o where o.customer_id = $1 order by o.created_at desc limit 20",
        params: &["id"],
        columns: &["id", "total_cents", "created_at"],
        tag: "SELECT",
    },
    Query {
        sql: "update orders set status = $1 where id = $2",
        params: &["status", "id"],
        columns: &[],
        tag: "UPDATE",
    },
    Query {
        sql: "insert into order_events (order_id, kind, payload) values ($1, $2, $3)",
        params: &["id", "kind", "json"],
        columns: &[],
        tag: "INSERT",
    },
    Query {
        sql: "select count(*) from orders where created_at > now() - interval '1 day'",
        params: &[],
        columns: &["count"],
        tag: "SELECT",
    },
    Query {
        sql: "select id, name, card_number, card_expiry from payment_methods where customer_id = $1",
        params: &["id"],
        columns: &["id", "name", "card_number", "card_expiry"],
        tag: "SELECT",
    },
    Query {
        sql: "select pg_size_pretty(pg_database_size(current_database()))",
        params: &[],
        columns: &["pg_size_pretty"],
        tag: "SELECT",
    },
    Query { sql: "begin", params: &[], columns: &[], tag: "BEGIN" },
    Query { sql: "commit", params: &[], columns: &[], tag: "COMMIT" },
    Query {
        sql: "select sku, sum(quantity) as sold from order_lines where created_at >= $1 group by sku order by sold desc limit 10",
        params: &["date"],
        columns: &["sku", "sold"],
        tag: "SELECT",
    },
    Query { sql: "delete from sessions where expires_at < now()", params: &[], columns: &[], tag: "DELETE" },
    Query {
        sql: "select relname, n_live_tup, n_dead_tup from pg_stat_user_tables order by n_dead_tup desc limit 5",
        params: &[],
        columns: &["relname", "n_live_tup", "n_dead_tup"],
        tag: "SELECT",
    },
];

const RISKY: &[(&str, &str, PolicyOutcome, &str)] = &[
    ("drop table customers", "ci.block-drop", PolicyOutcome::Block, "DROP TABLE is never allowed for this group"),
    (
        "delete from orders",
        "ci.hold-unbounded-write",
        PolicyOutcome::Hold,
        "DELETE without WHERE needs approval by dba",
    ),
    ("alter table orders add column note text", "ci.hold-ddl", PolicyOutcome::Hold, "DDL needs approval by dba"),
    (
        "select pg_read_file('/etc/passwd')",
        "ci.block-admin-functions",
        PolicyOutcome::Block,
        "file-system functions are not allowed",
    ),
    ("truncate table order_events", "ci.hold-unbounded-write", PolicyOutcome::Hold, "TRUNCATE needs approval by dba"),
];

const SHELL_COMMANDS: &[(&str, &str)] = &[
    ("uptime", " 10:42:01 up 41 days,  3:12,  1 user,  load average: 0.31, 0.28, 0.22\r\n"),
    ("df -h /", "Filesystem      Size  Used Avail Use% Mounted on\r\n/dev/nvme0n1p1  194G   71G  124G  37% /\r\n"),
    (
        "systemctl status app --no-pager",
        "\x1b[0;1;32m●\x1b[0m app.service - shop application\r\n     Loaded: loaded (/etc/systemd/system/app.service; enabled)\r\n     Active: \x1b[0;1;32mactive (running)\x1b[0m since Mon 2026-11-23 07:12:44 UTC; 3 days ago\r\n",
    ),
    (
        "tail -n 3 /var/log/app/app.log",
        "2026-11-26T10:41:57Z INFO request served path=/api/orders status=200 ms=12\r\n2026-11-26T10:41:58Z WARN slow query ms=812\r\n2026-11-26T10:42:00Z INFO request served path=/api/cart status=200 ms=9\r\n",
    ),
    (
        "ls -la /srv/app",
        "total 24\r\ndrwxr-xr-x 5 deploy deploy 4096 Nov 23 07:12 \x1b[01;34m.\x1b[0m\r\n-rw-r--r-- 1 deploy deploy  812 Nov 23 07:12 config.yml\r\ndrwxr-xr-x 2 deploy deploy 4096 Nov 23 07:12 \x1b[01;34mreleases\x1b[0m\r\n",
    ),
    ("sudo systemctl restart app", ""),
    ("psql -c 'select 1'", " ?column? \r\n----------\r\n        1\r\n(1 row)\r\n\r\n"),
    (
        "cat /etc/os-release | head -2",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\r\nNAME=\"Debian GNU/Linux\"\r\n",
    ),
];

const HTTP_CALLS: &[(&str, &str, u16, &str)] = &[
    (
        "GET",
        "/v1/invoices?status=open&limit=20",
        200,
        "{\"data\":[{\"id\":\"inv_1042\",\"amount\":12900,\"currency\":\"EUR\",\"status\":\"open\"}],\"has_more\":false}",
    ),
    ("POST", "/v1/refunds", 201, "{\"id\":\"re_88\",\"invoice\":\"inv_1042\",\"amount\":12900,\"status\":\"pending\"}"),
    (
        "GET",
        "/api/v1/namespaces/prod/pods?labelSelector=app%3Dshop",
        200,
        "{\"kind\":\"PodList\",\"items\":[{\"metadata\":{\"name\":\"shop-7d9f\"},\"status\":{\"phase\":\"Running\"}}]}",
    ),
    (
        "DELETE",
        "/api/v1/namespaces/prod/pods/shop-7d9f",
        200,
        "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"shop-7d9f\",\"deletionTimestamp\":\"2026-11-26T10:42:00Z\"}}",
    ),
    ("GET", "/admin/users/4411", 403, "{\"error\":\"forbidden\",\"message\":\"admin scope required\"}"),
    ("PATCH", "/admin/feature-flags/checkout-v2", 200, "{\"flag\":\"checkout-v2\",\"enabled\":true}"),
    ("GET", "/v1/customers/cus_7731", 404, "{\"error\":\"not_found\"}"),
];

/// A generator of events, in the order a gateway would submit them.
pub struct Synth {
    config: SynthConfig,
    rng: ChaCha8Rng,
    started: u64,
    /// Events to submit before anything else (grant events of a new session).
    ready: VecDeque<NewEvent>,
    active: Vec<VecDeque<NewEvent>>,
    control: SessionId,
    control_clock: i64,
    control_done: bool,
}

impl Synth {
    pub fn new(config: SynthConfig) -> Synth {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let control = SessionId::from_parts(millis(config.start), rng.random());
        let mut ready = VecDeque::new();
        ready.push_back(NewEvent::new(
            control,
            config.start,
            Direction::Gateway,
            SessionStart {
                subject: Some("proctor".to_string()),
                message: Some("control plane started".to_string()),
                ..SessionStart::new(Protocol::Control)
            },
        ));
        Synth {
            control_clock: config.start.0,
            config,
            rng,
            started: 0,
            ready,
            active: Vec::new(),
            control,
            control_done: false,
        }
    }

    fn start_session(&mut self) {
        let index = self.started;
        self.started += 1;
        let gap = self.config.span.as_nanos() as i64 / self.config.sessions.max(1) as i64;
        let jitter = if gap > 1 { self.rng.random_range(0..gap / 2 + 1) } else { 0 };
        let start = Timestamp(self.config.start.0 + gap * index as i64 + jitter).max(Timestamp(self.control_clock + 1));
        let mut s = Script::new(ChaCha8Rng::seed_from_u64(self.rng.random()), start);
        let grant_id = format!("g_{:016x}", s.rng_u64());
        let (subject, groups) = SUBJECTS[s.pick(SUBJECTS.len())];
        let protocol = match index % 10 {
            0..=4 => Protocol::Postgres,
            5..=7 => Protocol::Ssh,
            _ => Protocol::Http,
        };
        let resource = match protocol {
            Protocol::Postgres => DATABASES[s.pick(DATABASES.len())].0,
            Protocol::Ssh => SSH_HOSTS[s.pick(SSH_HOSTS.len())].0,
            _ => HTTP_SERVICES[s.pick(HTTP_SERVICES.len())].0,
        };
        // The grant, in the control session, just before the session.
        let ttl = [15, 30, 60][s.pick(3)] as i64 * 60 * 1_000_000_000;
        let requested = Timestamp(start.0 - 2_000_000_000);
        let approved = Timestamp(start.0 - 1_000_000_000);
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let by_approver = groups.iter().any(|g| g == "engineers");
        let grant = |action, actor: Option<String>, message: &str| GrantEvent {
            action,
            grant_id: grant_id.clone(),
            resource: Some(resource.to_string()),
            subject: Some(subject.to_string()),
            groups: groups.clone(),
            actor,
            expires_at: Some(Timestamp(approved.0 + ttl)),
            message: Some(message.to_string()),
        };
        let reason = [
            "deploy release 2026.11.4",
            "investigate slow checkout",
            "nightly report",
            "rotate app config",
            "incident INC-2291",
        ][s.pick(5)];
        self.control_event(requested, grant(GrantAction::Requested, Some(subject.to_string()), reason).into());
        let approver = if by_approver { APPROVERS[s.pick(APPROVERS.len())].to_string() } else { "policy".to_string() };
        self.control_event(approved, grant(GrantAction::Approved, Some(approver), "approved").into());

        let session = SessionId::from_parts(millis(start), s.rng.random());
        let (a, b, c) = (s.pick(200), s.pick(250), 1024 + s.pick(60000));
        let client_addr = format!("10.{}.{}.{}:{}", s.pick(4), a, b, c);
        match protocol {
            Protocol::Postgres => s.postgres(session, subject, &groups, resource, &grant_id, client_addr),
            Protocol::Ssh => s.ssh(session, subject, &groups, resource, &grant_id, client_addr),
            _ => s.http(session, subject, &groups, resource, &grant_id, client_addr),
        }
        let events = std::mem::take(&mut s.out);
        for (review, sql) in std::mem::take(&mut s.reviews) {
            let decided = Timestamp(s.clock + 5_000_000_000);
            let approver = APPROVERS[s.pick(APPROVERS.len())];
            let approve = s.rng.random_bool(0.6);
            let body = ReviewEvent {
                action: if approve { ReviewAction::Approved } else { ReviewAction::Denied },
                review_id: review.clone(),
                grant_id: Some(grant_id.clone()),
                actor: Some(approver.to_string()),
                target_session: Some(session.to_string()),
                ref_seq: None,
                message: Some(if approve { "ok, once" } else { "not during business hours" }.to_string()),
                held: Some(Held::statement(sql.clone())),
            };
            let requested = ReviewEvent {
                action: ReviewAction::Requested,
                actor: Some(subject.to_string()),
                message: Some("held by policy".to_string()),
                ..body.clone()
            };
            self.control_event(Timestamp(decided.0 - 4_000_000_000), requested.into());
            self.control_event(decided, body.into());
        }
        if index % 25 == 24 {
            let query = [
                "kind:statement drop",
                "subject:ci-deploy resource:prod-db",
                "outcome:blocked since:7d",
                "\"restart app\"",
            ][s.pick(4)];
            self.control_event(
                Timestamp(s.clock + 60_000_000_000),
                RecordingAccessed {
                    actor: "ivy@example.com".to_string(),
                    target_session: None,
                    query: Some(query.to_string()),
                    operation: "search".to_string(),
                }
                .into(),
            );
        }
        self.active.push(events);
    }

    fn control_event(&mut self, time: Timestamp, body: EventBody) {
        // The control session's clock only moves forward.
        self.control_clock = self.control_clock.max(time.0);
        self.ready.push_back(NewEvent::new(self.control, Timestamp(self.control_clock), Direction::Gateway, body));
    }
}

impl Iterator for Synth {
    type Item = NewEvent;

    fn next(&mut self) -> Option<NewEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            while self.active.len() < self.config.concurrency && self.started < self.config.sessions {
                self.start_session();
                if !self.ready.is_empty() {
                    break;
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            if self.active.is_empty() {
                if self.control_done {
                    return None;
                }
                self.control_done = true;
                let end =
                    SessionEnd { reason: EndReason::Completed, message: Some("control plane stopped".to_string()) };
                self.control_event(Timestamp(self.control_clock + 1_000_000), end.into());
                continue;
            }
            let pick = self.rng.random_range(0..self.active.len());
            match self.active[pick].pop_front() {
                Some(event) => return Some(event),
                None => {
                    self.active.swap_remove(pick);
                }
            }
        }
    }
}

fn millis(t: Timestamp) -> u64 {
    (t.0 / 1_000_000).max(0) as u64
}

/// Builds one session's events.
struct Script {
    rng: ChaCha8Rng,
    clock: i64,
    out: VecDeque<NewEvent>,
    session: SessionId,
    seq: u64,
    reviews: Vec<(String, String)>,
}

impl Script {
    fn new(rng: ChaCha8Rng, start: Timestamp) -> Script {
        Script {
            rng,
            clock: start.0,
            out: VecDeque::new(),
            session: SessionId::from_parts(0, 0),
            seq: 0,
            reviews: Vec::new(),
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn rng_u64(&mut self) -> u64 {
        self.rng.random()
    }

    /// Advances the clock by `min..max` milliseconds.
    fn wait(&mut self, min_ms: u64, max_ms: u64) {
        self.clock += self.rng.random_range(min_ms * 1_000_000..max_ms * 1_000_000 + 1) as i64;
    }

    /// A keystroke at a terminal, recorded as the gateway records one: its
    /// length and a keyed digest (here random: no key is at hand).
    fn keystroke(&mut self, key: &[u8]) {
        let digest: String = (0..32).map(|_| format!("{:02x}", self.rng.random::<u8>())).collect();
        self.emit(
            Direction::ClientToTarget,
            TerminalInput {
                channel_id: Some(0),
                data: Vec::new(),
                byte_count: Some(key.len() as u64),
                digest: Some(digest),
            },
        );
    }

    fn emit(&mut self, direction: Direction, body: impl Into<EventBody>) -> u64 {
        self.out.push_back(NewEvent::new(self.session, Timestamp(self.clock), direction, body));
        self.seq += 1;
        self.seq - 1
    }

    fn start(&mut self, session: SessionId, start: SessionStart) {
        self.session = session;
        self.emit(Direction::Gateway, start);
    }

    fn end(&mut self, reason: EndReason) {
        self.wait(1, 50);
        self.emit(Direction::Gateway, SessionEnd { reason, message: None });
    }

    fn value_for(&mut self, param: &str) -> String {
        match param {
            "id" => self.rng.random_range(1..250_000u32).to_string(),
            "status" => ["paid", "shipped", "cancelled", "refunded"][self.pick(4)].to_string(),
            "kind" => ["status_change", "note", "refund"][self.pick(3)].to_string(),
            "json" => format!("{{\"by\":\"agent\",\"ticket\":{}}}", self.rng.random_range(1000..9999u32)),
            "date" => format!("2026-11-{:02}", self.rng.random_range(1..27u32)),
            _ => "x".to_string(),
        }
    }

    fn cell_for(&mut self, column: &str, row: usize) -> Option<String> {
        Some(match column {
            "id" => (1000 + row * 7 + self.pick(5)).to_string(),
            "email" => "[masked:email]".to_string(),
            "card_number" => format!("[masked:card ****{:04}]", self.rng.random_range(0..10_000u32)),
            "name" => ["A. Jensen", "M. Rossi", "K. Tanaka", "S. Okafor"][self.pick(4)].to_string(),
            "status" => ["active", "paused", "closed"][self.pick(3)].to_string(),
            "total_cents" => self.rng.random_range(100..90_000u32).to_string(),
            "created_at" => format!(
                "2026-11-{:02} {:02}:{:02}:11.5+00",
                self.rng.random_range(1..27u32),
                self.pick(24),
                self.pick(60)
            ),
            "card_expiry" => format!("{:02}/{}", self.rng.random_range(1..13u32), self.rng.random_range(27..32u32)),
            "count" | "sold" | "n_live_tup" | "n_dead_tup" => self.rng.random_range(0..1_000_000u32).to_string(),
            "sku" => format!("SKU-{:05}", self.rng.random_range(0..99_999u32)),
            "relname" => ["orders", "order_lines", "sessions", "customers", "order_events"][self.pick(5)].to_string(),
            "pg_size_pretty" => format!("{} GB", self.rng.random_range(10..500u32)),
            _ => return None,
        })
    }

    fn postgres(
        &mut self,
        session: SessionId,
        subject: &str,
        groups: &[String],
        resource: &str,
        grant: &str,
        client_addr: String,
    ) {
        let (_, database, user) = DATABASES.iter().find(|d| d.0 == resource).copied().unwrap_or(DATABASES[0]);
        let application = CLIENTS[self.pick(CLIENTS.len())];
        self.start(
            session,
            SessionStart {
                protocol: Protocol::Postgres,
                resource: Some(resource.to_string()),
                subject: Some(subject.to_string()),
                groups: groups.to_vec(),
                grant_id: Some(grant.to_string()),
                client_addr: Some(client_addr),
                target_user: Some(user.to_string()),
                database: Some(database.to_string()),
                application_name: Some(application.to_string()),
                tls: Some("TLSv1.3".to_string()),
                masking_profile: Some(if groups.iter().any(|g| g == "dba") { "dba" } else { "default" }.to_string()),
                message: None,
            },
        );
        for (parameter, value) in [
            ("server_version", "17.2"),
            ("client_encoding", "UTF8"),
            ("TimeZone", "UTC"),
            ("application_name", application),
        ] {
            self.emit(
                Direction::TargetToClient,
                ParameterStatus { parameter: parameter.to_string(), value: value.to_string() },
            );
        }
        let statements = self.rng.random_range(4..=30);
        let mut prepared: Vec<usize> = Vec::new();
        for _ in 0..statements {
            self.wait(5, 1500);
            if self.rng.random_bool(0.04) {
                let (sql, rule, outcome, why) = RISKY[self.pick(RISKY.len())];
                let statement = self.emit(
                    Direction::ClientToTarget,
                    Statement { sql: sql.to_string(), statement_name: None, portal: None, params: vec![] },
                );
                let review = (outcome == PolicyOutcome::Hold).then(|| format!("r_{:012x}", self.rng_u64() >> 16));
                self.emit(
                    Direction::Gateway,
                    PolicyDecision {
                        outcome,
                        grant_id: Some(grant.to_string()),
                        rule: Some(rule.to_string()),
                        review_id: review.clone(),
                        ref_seq: Some(statement),
                        message: Some(why.to_string()),
                    },
                );
                let message = match &review {
                    Some(id) => format!("statement held for approval (review {id}): {why}; re-run it once approved"),
                    None => format!("statement blocked by rule {rule}: {why}"),
                };
                self.emit(
                    Direction::Gateway,
                    ErrorReport {
                        ref_seq: Some(statement),
                        severity: Some("ERROR".to_string()),
                        sqlstate: Some("42501".to_string()),
                        message,
                        detail: None,
                    },
                );
                if let Some(id) = review {
                    self.reviews.push((id, sql.to_string()));
                }
                continue;
            }
            let qi = self.pick(QUERIES.len());
            let query = &QUERIES[qi];
            let extended = !query.params.is_empty() && self.rng.random_bool(0.5);
            let params: Vec<Option<String>> = query.params.iter().map(|p| Some(self.value_for(p))).collect();
            let statement = if extended {
                let name = format!("s{qi}");
                if !prepared.contains(&qi) {
                    prepared.push(qi);
                    self.emit(
                        Direction::ClientToTarget,
                        Prepare { statement_name: name.clone(), sql: query.sql.to_string() },
                    );
                }
                self.emit(
                    Direction::ClientToTarget,
                    Statement {
                        sql: query.sql.to_string(),
                        statement_name: Some(name),
                        portal: Some(String::new()),
                        params,
                    },
                )
            } else {
                let mut sql = query.sql.to_string();
                for (i, p) in params.iter().enumerate().rev() {
                    let literal = p.as_deref().unwrap_or("null");
                    let literal = if literal.chars().all(|c| c.is_ascii_digit()) {
                        literal.to_string()
                    } else {
                        format!("'{literal}'")
                    };
                    sql = sql.replace(&format!("${}", i + 1), &literal);
                }
                self.emit(
                    Direction::ClientToTarget,
                    Statement { sql, statement_name: None, portal: None, params: vec![] },
                )
            };
            let duration_ms = self.rng.random_range(0..40u64);
            self.wait(duration_ms, duration_ms + 2);
            if self.rng.random_bool(0.05) {
                let (state, message) = [
                    ("23505", "duplicate key value violates unique constraint \"order_events_pkey\""),
                    ("40001", "could not serialize access due to concurrent update"),
                    ("57014", "canceling statement due to statement timeout"),
                    ("42P01", "relation \"order_line\" does not exist"),
                ][self.pick(4)];
                self.emit(
                    Direction::TargetToClient,
                    ErrorReport {
                        ref_seq: Some(statement),
                        severity: Some("ERROR".to_string()),
                        sqlstate: Some(state.to_string()),
                        message: message.to_string(),
                        detail: None,
                    },
                );
                continue;
            }
            let rows = match query.tag {
                "SELECT" => self.rng.random_range(0..=if query.columns.len() > 1 { 50u64 } else { 1 }),
                "UPDATE" | "DELETE" => self.rng.random_range(0..=3),
                "INSERT" => 1,
                _ => 0,
            };
            let sample: Vec<Vec<Option<String>>> = (0..rows.min(3) as usize)
                .map(|r| query.columns.iter().map(|c| self.cell_for(c, r)).collect())
                .collect();
            let tag = match query.tag {
                "SELECT" | "UPDATE" | "DELETE" => format!("{} {rows}", query.tag),
                "INSERT" => "INSERT 0 1".to_string(),
                other => other.to_string(),
            };
            let duration_ns = duration_ms * 1_000_000 + self.rng.random_range(0..999_999u64);
            let masked_cells =
                query.columns.iter().filter(|c| matches!(**c, "email" | "card_number")).count() as u64 * rows.min(3);
            self.emit(
                Direction::TargetToClient,
                StatementResult {
                    ref_seq: Some(statement),
                    command_tag: Some(tag),
                    columns: query.columns.iter().map(|c| c.to_string()).collect(),
                    row_count: rows,
                    byte_count: rows * 18 * query.columns.len().max(1) as u64,
                    duration_ns,
                    sample_rows: sample,
                    sample_truncated: rows > 3,
                    ..Default::default()
                },
            );
            if masked_cells > 0 {
                let rule = if query.columns.contains(&"email") { "email" } else { "card_number" };
                self.emit(
                    Direction::Gateway,
                    MaskingApplied {
                        masking_profile: Some("default".to_string()),
                        ref_seq: Some(statement),
                        masked: vec![RuleCount { rule: rule.to_string(), count: masked_cells }],
                        ..Default::default()
                    },
                );
            }
            if self.rng.random_bool(0.02) {
                self.emit(
                    Direction::TargetToClient,
                    Notice {
                        severity: Some("WARNING".to_string()),
                        sqlstate: Some("25P01".to_string()),
                        message: "there is no transaction in progress".to_string(),
                        detail: None,
                    },
                );
            }
            if self.rng.random_bool(0.01) {
                let rows = self.rng.random_range(100..50_000u64);
                let copy = self.emit(
                    Direction::ClientToTarget,
                    Statement {
                        sql: "copy order_events to stdout with (format csv)".to_string(),
                        statement_name: None,
                        portal: None,
                        params: vec![],
                    },
                );
                self.wait(10, 400);
                self.emit(
                    Direction::TargetToClient,
                    CopySummary {
                        ref_seq: Some(copy),
                        format: "csv".to_string(),
                        row_count: Some(rows),
                        byte_count: rows * 61,
                        duration_ns: Some(rows * 900),
                    },
                );
            }
        }
        let reason = if self.rng.random_bool(0.95) { EndReason::ClientClosed } else { EndReason::GrantExpired };
        self.end(reason)
    }

    fn ssh(
        &mut self,
        session: SessionId,
        subject: &str,
        groups: &[String],
        resource: &str,
        grant: &str,
        client_addr: String,
    ) {
        let (_, user) = SSH_HOSTS.iter().find(|h| h.0 == resource).copied().unwrap_or(SSH_HOSTS[0]);
        self.start(
            session,
            SessionStart {
                protocol: Protocol::Ssh,
                resource: Some(resource.to_string()),
                subject: Some(subject.to_string()),
                groups: groups.to_vec(),
                grant_id: Some(grant.to_string()),
                client_addr: Some(client_addr),
                target_user: Some(user.to_string()),
                database: None,
                application_name: Some("OpenSSH_9.2p1".to_string()),
                tls: None,
                masking_profile: Some("default".to_string()),
                message: None,
            },
        );
        if self.rng.random_bool(0.3) {
            let (command, output) = SHELL_COMMANDS[self.pick(SHELL_COMMANDS.len())];
            self.emit(Direction::ClientToTarget, Exec { channel_id: Some(0), command: command.to_string() });
            self.wait(5, 300);
            if !output.is_empty() {
                self.emit(
                    Direction::TargetToClient,
                    TerminalOutput {
                        channel_id: Some(0),
                        stream: OutputStream::Stdout,
                        data: output.as_bytes().to_vec(),
                    },
                );
            }
            self.emit(
                Direction::TargetToClient,
                ExitStatus { channel_id: Some(0), exit_code: Some(0), exit_signal: None, message: None },
            );
            self.end(EndReason::ClientClosed);
            return;
        }
        let (width, height) = [(120, 40), (80, 24), (200, 50)][self.pick(3)];
        self.emit(
            Direction::ClientToTarget,
            PtyRequest { channel_id: Some(0), term: "xterm-256color".to_string(), width, height },
        );
        self.emit(Direction::ClientToTarget, Shell { channel_id: Some(0) });
        let prompt = format!("\x1b[01;32m{user}@{resource}\x1b[00m:\x1b[01;34m~\x1b[00m$ ");
        self.emit(
            Direction::TargetToClient,
            TerminalOutput {
                channel_id: Some(0),
                stream: OutputStream::Stdout,
                data: format!(
                    "Linux {resource} 6.1.0-27-amd64 x86_64\r\nLast login: Tue Nov 24 08:01:12 2026\r\n{prompt}"
                )
                .into_bytes(),
            },
        );
        let commands = self.rng.random_range(2..=8);
        for _ in 0..commands {
            let (command, output) = SHELL_COMMANDS[self.pick(SHELL_COMMANDS.len())];
            // Typed key by key, sometimes with a slip corrected by backspace.
            let slip = self.rng.random_bool(0.2).then(|| self.pick(command.len()));
            for (i, ch) in command.char_indices() {
                self.wait(40, 220);
                if slip == Some(i) {
                    self.keystroke(b"x");
                    self.emit(
                        Direction::TargetToClient,
                        TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data: b"x".to_vec() },
                    );
                    self.wait(100, 400);
                    self.keystroke(&[0x7f]);
                    self.emit(
                        Direction::TargetToClient,
                        TerminalOutput {
                            channel_id: Some(0),
                            stream: OutputStream::Stdout,
                            data: b"\x08 \x08".to_vec(),
                        },
                    );
                }
                let mut key = [0u8; 4];
                let key = ch.encode_utf8(&mut key).as_bytes().to_vec();
                self.keystroke(&key);
                self.emit(
                    Direction::TargetToClient,
                    TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data: key },
                );
            }
            self.wait(50, 300);
            self.keystroke(b"\r");
            // The line's echo was all seen: it is a command as Enter is typed.
            self.emit(Direction::ClientToTarget, Command { channel_id: Some(0), command: command.to_string() });
            self.wait(5, 900);
            self.emit(
                Direction::TargetToClient,
                TerminalOutput {
                    channel_id: Some(0),
                    stream: OutputStream::Stdout,
                    data: format!("\r\n{output}{prompt}").into_bytes(),
                },
            );
            if self.rng.random_bool(0.1) {
                let (width, height) = [(160, 48), (100, 30)][self.pick(2)];
                self.emit(Direction::ClientToTarget, Resize { channel_id: Some(0), width, height });
            }
        }
        for ch in "exit\r".bytes() {
            self.wait(40, 200);
            self.keystroke(&[ch]);
            if ch != b'\r' {
                self.emit(
                    Direction::TargetToClient,
                    TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data: vec![ch] },
                );
            }
        }
        self.emit(Direction::ClientToTarget, Command { channel_id: Some(0), command: "exit".to_string() });
        self.emit(
            Direction::TargetToClient,
            TerminalOutput { channel_id: Some(0), stream: OutputStream::Stdout, data: b"\r\nlogout\r\n".to_vec() },
        );
        self.emit(
            Direction::TargetToClient,
            ExitStatus { channel_id: Some(0), exit_code: Some(0), exit_signal: None, message: None },
        );
        self.end(EndReason::ClientClosed)
    }

    fn http(
        &mut self,
        session: SessionId,
        subject: &str,
        groups: &[String],
        resource: &str,
        grant: &str,
        client_addr: String,
    ) {
        let (_, host) = HTTP_SERVICES.iter().find(|s| s.0 == resource).copied().unwrap_or(HTTP_SERVICES[0]);
        let agent = ["curl/7.88.1", "kubectl/v1.31.2", "python-requests/2.32.3"][self.pick(3)];
        self.start(
            session,
            SessionStart {
                protocol: Protocol::Http,
                resource: Some(resource.to_string()),
                subject: Some(subject.to_string()),
                groups: groups.to_vec(),
                grant_id: Some(grant.to_string()),
                client_addr: Some(client_addr),
                target_user: None,
                database: None,
                application_name: Some(agent.to_string()),
                tls: Some("TLSv1.3".to_string()),
                masking_profile: Some("default".to_string()),
                message: None,
            },
        );
        let exchanges = self.rng.random_range(3..=15);
        for _ in 0..exchanges {
            self.wait(20, 3000);
            let (method, path, status, body) = HTTP_CALLS[self.pick(HTTP_CALLS.len())];
            let request_body: Vec<u8> = match method {
                "POST" => b"{\"invoice\":\"inv_1042\",\"reason\":\"duplicate charge\"}".to_vec(),
                "PATCH" => b"{\"enabled\":true}".to_vec(),
                _ => Vec::new(),
            };
            let mut headers = vec![
                Header { name: "host".to_string(), value: host.to_string() },
                Header { name: "user-agent".to_string(), value: "curl/7.88.1".to_string() },
                Header { name: "authorization".to_string(), value: "Bearer [masked:jwt]".to_string() },
                Header { name: "accept".to_string(), value: "application/json".to_string() },
            ];
            if !request_body.is_empty() {
                headers.push(Header { name: "content-type".to_string(), value: "application/json".to_string() });
            }
            let request = self.emit(
                Direction::ClientToTarget,
                HttpRequest {
                    method: method.to_string(),
                    host: Some(host.to_string()),
                    path: path.to_string(),
                    headers,
                    byte_count: request_body.len() as u64,
                    body: request_body,
                    truncated: false,
                },
            );
            let duration_ms = self.rng.random_range(2..400u64);
            self.wait(duration_ms, duration_ms);
            let request_id = format!("{:016x}", self.rng_u64());
            self.emit(
                Direction::TargetToClient,
                HttpResponse {
                    ref_seq: Some(request),
                    status,
                    headers: vec![
                        Header { name: "content-type".to_string(), value: "application/json".to_string() },
                        Header { name: "x-request-id".to_string(), value: request_id },
                    ],
                    body: body.as_bytes().to_vec(),
                    byte_count: body.len() as u64,
                    truncated: false,
                    duration_ns: Some(duration_ms * 1_000_000),
                },
            );
        }
        self.end(EndReason::ClientClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let config = SynthConfig::new(40, 7, Timestamp(1_764_000_000_000_000_000));
        let a: Vec<NewEvent> = Synth::new(config.clone()).collect();
        let b: Vec<NewEvent> = Synth::new(config).collect();
        assert_eq!(a, b);
        assert!(a.len() > 40 * 10, "{} events", a.len());
    }

    #[test]
    fn every_session_starts_first_and_ends_last() {
        let events: Vec<NewEvent> = Synth::new(SynthConfig::new(60, 3, Timestamp(1_764_000_000_000_000_000))).collect();
        let mut open = std::collections::HashSet::new();
        let mut ended = std::collections::HashSet::new();
        for event in &events {
            match event.body.kind() {
                EventKind::SessionStart => assert!(open.insert(event.session_id)),
                EventKind::SessionEnd => {
                    assert!(open.remove(&event.session_id));
                    ended.insert(event.session_id);
                }
                _ => assert!(open.contains(&event.session_id), "event outside its session"),
            }
        }
        assert!(open.is_empty());
        assert_eq!(ended.len(), 61, "60 data sessions and the control session");
    }
}
