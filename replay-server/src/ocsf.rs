//! Recorded events as OCSF 1.3.0 objects (JSON lines), for the security
//! data lakes and SIEMs auditors already query.
//!
//! One object per event, in the class that fits it:
//!
//! | events | class |
//! | --- | --- |
//! | a PostgreSQL or HTTP session's start and end | 3002 Authentication (Logon, Logoff) |
//! | an SSH session's start and end, terminal traffic, signals, exit status, port forwards | 4007 SSH Activity |
//! | statements, prepares, results, errors, COPY and the rest of a PostgreSQL session | 6005 Datastore Activity |
//! | exec requests and commands typed at a terminal | 1007 Process Activity |
//! | SFTP and scp operations | 1001 File System Activity |
//! | HTTP requests and responses, reads of recordings | 6003 API Activity |
//! | grants and reviews | 3003 Authorize Session |
//! | Proctor's own housekeeping | 0 Base Event |
//!
//! Policy decisions carry `action_id` and `disposition_id` (the security
//! control profile, named in `metadata.profiles`). Proctor's session id and
//! seq are `metadata.correlation_uid` and `metadata.sequence` (with
//! `metadata.uid` = `SESSION/SEQ`); what OCSF has no attribute for is under
//! `unmapped.proctor`. Texts are as recorded: masked values stay masked.

use std::collections::HashMap;

use proctor_schemas::{
    Direction, EndReason, Event, EventBody, GrantAction, PolicyOutcome, Protocol, ReviewAction, SessionId, SessionStart,
};
use serde_json::{Map, Value, json};

/// The OCSF version the objects follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// The session starts of a whole export, read once: what every object of a
/// session, and a review or grant about it, names its subject and resource
/// from.
pub struct Starts<'a>(HashMap<SessionId, &'a SessionStart>);

impl<'a> Starts<'a> {
    pub fn of(all: &'a [Event]) -> Starts<'a> {
        Starts(
            all.iter()
                .filter_map(|e| match &e.body {
                    EventBody::SessionStart(s) => Some((e.session_id, s)),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// The OCSF JSON lines of `events`, a part of the export whose session
/// starts are `starts`, appended to `out` (a buffer used again keeps its
/// memory).
pub fn jsonl_into(events: &[Event], starts: &Starts<'_>, out: &mut Vec<u8>) {
    let starts = &starts.0;
    let mut sessions: HashMap<SessionId, SessionParts> = HashMap::new();
    let product = serde_json::to_string(&json!({
        "name": "Proctor",
        "vendor_name": "Proctor",
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .unwrap_or_default();
    out.reserve(events.len() * 800);
    for event in events {
        let parts = sessions.entry(event.session_id).or_insert_with(|| SessionParts::of(event.session_id, starts));
        write_object(out, event, starts, parts, &product);
        out.push(b'\n');
    }
}

/// What every object of a session repeats, serialised once.
struct SessionParts {
    id: String,
    /// `"actor"`, `"src_endpoint"` and `"dst_endpoint"`, from its start.
    actor: Option<String>,
    src_endpoint: Option<String>,
    dst_endpoint: Option<String>,
}

impl SessionParts {
    fn of(session: SessionId, starts: &HashMap<SessionId, &SessionStart>) -> SessionParts {
        let start = starts.get(&session);
        let text = |value: Value| serde_json::to_string(&value).unwrap_or_default();
        SessionParts {
            id: session.to_string(),
            actor: start.map(|s| text(actor(s.subject.as_deref(), &s.groups))),
            src_endpoint: start.map(|s| text(endpoint(s.client_addr.as_deref()))),
            dst_endpoint: start.and_then(|s| s.resource.as_ref()).map(|r| text(json!({ "svc_name": r }))),
        }
    }
}

/// `,"key":` and `value` as JSON.
fn field(out: &mut Vec<u8>, key: &str, value: &impl serde::Serialize) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // A `Value`, a string or a number always serialises.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `,"key":` and JSON already serialised.
fn raw_field(out: &mut Vec<u8>, key: &str, json: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json.as_bytes());
}

/// Writes the OCSF object of one event: its class's attributes, the
/// session's subject and endpoints where the class has them, and
/// `unmapped.proctor`.
fn write_object(
    out: &mut Vec<u8>,
    event: &Event,
    starts: &HashMap<SessionId, &SessionStart>,
    session: &SessionParts,
    product: &str,
) {
    use std::io::Write as _;
    let start = starts.get(&event.session_id).copied();
    let protocol = start.map(|s| s.protocol);
    let mut proctor = Map::new();
    proctor.insert("direction".into(), json!(event.direction.as_str()));
    if let Some(start) = start {
        insert_opt(&mut proctor, "resource", &start.resource);
        insert_opt(&mut proctor, "grant_id", &start.grant_id);
    }
    let mapped = map_body(event, start, protocol, starts, &mut proctor);
    let class = mapped.class;
    let _ = write!(
        out,
        "{{\"class_uid\":{},\"class_name\":\"{}\",\"category_uid\":{},\"activity_id\":{}",
        class.uid, class.name, class.category, mapped.activity.0
    );
    field(out, "activity_name", &mapped.activity.1);
    let _ = write!(
        out,
        ",\"type_uid\":{},\"time\":{},\"severity_id\":{}",
        u64::from(class.uid) * 100 + u64::from(mapped.activity.0),
        event.time.0.div_euclid(1_000_000),
        mapped.severity
    );
    if let Some(status) = mapped.status {
        let name = if status == SUCCESS { "Success" } else { "Failure" };
        let _ = write!(out, ",\"status_id\":{status},\"status\":\"{name}\"");
    }
    let _ = write!(
        out,
        ",\"metadata\":{{\"version\":\"{OCSF_VERSION}\",\"product\":{product},\"uid\":\"{}/{}\",\"correlation_uid\":\"{}\",\"sequence\":{},\"event_code\":\"{}\"",
        session.id,
        event.seq,
        session.id,
        event.seq,
        event.body.kind().as_str()
    );
    if mapped.fields.contains_key("action_id") {
        out.extend_from_slice(b",\"profiles\":[\"security_control\"]");
    }
    out.push(b'}');
    // The session's subject and origin, where the class has them and the
    // event did not name its own.
    if class.actor
        && !mapped.fields.contains_key("actor")
        && let Some(actor) = &session.actor
    {
        raw_field(out, "actor", actor);
    }
    if class.endpoints {
        if !mapped.fields.contains_key("src_endpoint")
            && let Some(src) = &session.src_endpoint
        {
            raw_field(out, "src_endpoint", src);
        }
        if !mapped.fields.contains_key("dst_endpoint")
            && let Some(dst) = &session.dst_endpoint
        {
            raw_field(out, "dst_endpoint", dst);
        }
    }
    for (key, value) in &mapped.fields {
        field(out, key, value);
    }
    out.extend_from_slice(b",\"unmapped\":{\"proctor\":");
    let _ = serde_json::to_writer(&mut *out, &proctor);
    out.extend_from_slice(b"}}");
}

/// A class of OCSF 1.3.0 and its category.
#[derive(Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category: u32,
    /// Whether the class has `src_endpoint` and `dst_endpoint`, and `actor`.
    endpoints: bool,
    actor: bool,
    /// Whether the class takes the security control profile's
    /// `action_id` and `disposition_id`.
    security_control: bool,
}

const fn class(uid: u32, name: &'static str) -> Class {
    Class { uid, name, category: uid / 1000, endpoints: true, actor: true, security_control: false }
}
const AUTHENTICATION: Class = class(3002, "Authentication");
const AUTHORIZE_SESSION: Class = class(3003, "Authorize Session");
const SSH_ACTIVITY: Class = Class { security_control: true, ..class(4007, "SSH Activity") };
const DATASTORE_ACTIVITY: Class = Class { security_control: true, ..class(6005, "Datastore Activity") };
const API_ACTIVITY: Class = class(6003, "API Activity");
const PROCESS_ACTIVITY: Class = Class { endpoints: false, security_control: true, ..class(1007, "Process Activity") };
const FILE_ACTIVITY: Class = Class { endpoints: false, security_control: true, ..class(1001, "File System Activity") };
const BASE_EVENT: Class = Class { endpoints: false, actor: false, ..class(0, "Base Event") };

/// Statuses (`status_id`).
const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;

/// What one event becomes: its class, activity, status, and the class's
/// own attributes.
struct Mapped {
    class: Class,
    activity: (u32, &'static str),
    status: Option<u8>,
    severity: u8,
    fields: Map<String, Value>,
}

impl Mapped {
    fn new(class: Class, activity: (u32, &'static str)) -> Mapped {
        Mapped { class, activity, status: None, severity: 1, fields: Map::new() }
    }

    fn set(mut self, key: &str, value: Value) -> Mapped {
        self.fields.insert(key.to_string(), value);
        self
    }

    fn status(mut self, status: u8) -> Mapped {
        self.status = Some(status);
        self
    }
}

const OTHER: (u32, &str) = (99, "Other");

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        map.insert(key.to_string(), json!(value));
    }
}

fn user(name: Option<&str>, groups: &[String]) -> Value {
    let mut user = Map::new();
    if let Some(name) = name {
        user.insert("name".into(), json!(name));
    }
    if !groups.is_empty() {
        user.insert("groups".into(), Value::Array(groups.iter().map(|g| json!({ "name": g })).collect()));
    }
    Value::Object(user)
}

fn actor(name: Option<&str>, groups: &[String]) -> Value {
    json!({ "user": user(name, groups) })
}

/// `ip:port` as an OCSF network endpoint; anything else by name.
fn endpoint(addr: Option<&str>) -> Value {
    match addr.map(|a| (a, a.parse::<std::net::SocketAddr>())) {
        Some((_, Ok(socket))) => json!({ "ip": socket.ip().to_string(), "port": socket.port() }),
        Some((text, Err(_))) => json!({ "name": text }),
        None => json!({}),
    }
}

fn database(start: Option<&SessionStart>) -> Value {
    let mut database = json!({ "type_id": 1, "type": "Relational" });
    if let Some(name) = start.and_then(|s| s.database.as_deref()) {
        database["name"] = json!(name);
    }
    database
}

fn query(text: &str) -> Value {
    json!({ "query_string": text })
}

fn device(start: Option<&SessionStart>) -> Value {
    let mut device = json!({ "type_id": 1, "type": "Server" });
    if let Some(resource) = start.and_then(|s| s.resource.as_deref()) {
        device["name"] = json!(resource);
        device["hostname"] = json!(resource);
    }
    device
}

/// `action_id` and `disposition_id` of a policy outcome.
fn disposition(outcome: PolicyOutcome) -> (u8, &'static str, u8, &'static str) {
    match outcome {
        PolicyOutcome::Allow => (1, "Allowed", 1, "Allowed"),
        PolicyOutcome::Block => (2, "Denied", 2, "Blocked"),
        PolicyOutcome::Hold => (2, "Denied", 14, "Delayed"),
        PolicyOutcome::Flag => (1, "Allowed", 18, "Tagged"),
    }
}

fn map_body(
    event: &Event,
    start: Option<&SessionStart>,
    protocol: Option<Protocol>,
    starts: &HashMap<SessionId, &SessionStart>,
    proctor: &mut Map<String, Value>,
) -> Mapped {
    let terminal = protocol == Some(Protocol::Ssh);
    // The class an event of this session falls in when nothing more
    // specific fits.
    let session_class = match protocol {
        Some(Protocol::Ssh) => SSH_ACTIVITY,
        Some(Protocol::Http | Protocol::Kubernetes) => API_ACTIVITY,
        Some(Protocol::Postgres) => DATASTORE_ACTIVITY,
        _ => BASE_EVENT,
    };
    let other = |name: &'static str| {
        let mut mapped = Mapped::new(session_class, (99, name));
        if session_class.uid == API_ACTIVITY.uid {
            mapped.fields.insert("api".into(), json!({ "operation": name }));
        }
        if session_class.uid == DATASTORE_ACTIVITY.uid {
            mapped.fields.insert("database".into(), database(start));
            mapped.fields.insert("type_id".into(), json!(1));
        }
        mapped
    };
    let datastore = |activity: (u32, &'static str)| {
        Mapped::new(DATASTORE_ACTIVITY, activity).set("database", database(start)).set("type_id", json!(1))
    };
    match &event.body {
        EventBody::SessionStart(s) => {
            insert_opt(proctor, "target_user", &s.target_user);
            insert_opt(proctor, "tls", &s.tls);
            insert_opt(proctor, "masking_profile", &s.masking_profile);
            insert_opt(proctor, "application_name", &s.application_name);
            let session = json!({ "uid": event.session_id.to_string(), "is_remote": true });
            if session_class.uid == BASE_EVENT.uid {
                // A gateway run's control session, or Proctor's housekeeping.
                Mapped::new(BASE_EVENT, (99, "Session Start"))
            } else if terminal {
                Mapped::new(SSH_ACTIVITY, (1, "Open")).status(SUCCESS)
            } else {
                Mapped::new(AUTHENTICATION, (1, "Logon"))
                    .status(SUCCESS)
                    .set("user", user(s.subject.as_deref(), &s.groups))
                    .set("session", session)
                    .set("is_remote", json!(true))
            }
        }
        EventBody::SessionEnd(e) => {
            proctor.insert("end_reason".into(), json!(e.reason.as_str()));
            let failed = matches!(
                e.reason,
                EndReason::AuthFailed
                    | EndReason::ClientError
                    | EndReason::TargetError
                    | EndReason::RecorderUnavailable
                    | EndReason::InternalError
            );
            let mut mapped = if session_class.uid == BASE_EVENT.uid {
                Mapped::new(BASE_EVENT, (99, "Session End"))
            } else if terminal {
                let activity = if e.reason == EndReason::AuthFailed { (5, "Refuse") } else { (2, "Close") };
                Mapped::new(SSH_ACTIVITY, activity)
            } else {
                // A session refused at authentication never logged on.
                let activity = if e.reason == EndReason::AuthFailed { (1, "Logon") } else { (2, "Logoff") };
                Mapped::new(AUTHENTICATION, activity)
                    .set("user", user(start.and_then(|s| s.subject.as_deref()), &[]))
                    .set("session", json!({ "uid": event.session_id.to_string() }))
            };
            mapped = mapped.status(if failed { FAILURE } else { SUCCESS });
            if failed {
                mapped.severity = 2;
            }
            let detail = e.message.clone().unwrap_or_else(|| e.reason.as_str().to_string());
            mapped.set("status_detail", json!(detail))
        }
        EventBody::Statement(s) => {
            insert_opt(proctor, "statement_name", &s.statement_name);
            insert_opt(proctor, "portal", &s.portal);
            if !s.params.is_empty() {
                proctor.insert("params".into(), json!(s.params));
            }
            datastore((4, "Query")).set("query_info", query(&s.sql))
        }
        EventBody::Prepare(p) => {
            let mut info = query(&p.sql);
            info["name"] = json!(p.statement_name);
            datastore((99, "Prepare")).set("query_info", info)
        }
        EventBody::Result(r) => {
            insert_opt(proctor, "command_tag", &r.command_tag);
            proctor.insert("row_count".into(), json!(r.row_count));
            proctor.insert("duration_ns".into(), json!(r.duration_ns));
            if let Some(seq) = r.ref_seq {
                proctor.insert("ref_seq".into(), json!(seq));
            }
            datastore((4, "Query"))
                .status(SUCCESS)
                .set("count", json!(r.row_count))
                .set("duration", json!(r.duration_ns / 1_000_000))
                .set("status_detail", json!(r.command_tag.clone().unwrap_or_default()))
        }
        EventBody::Error(e) => {
            if let Some(seq) = e.ref_seq {
                proctor.insert("ref_seq".into(), json!(seq));
            }
            let mut mapped =
                if protocol == Some(Protocol::Postgres) { datastore((4, "Query")) } else { other("Error") };
            mapped = mapped.status(FAILURE).set("status_detail", json!(e.message));
            mapped.severity = 2;
            if let Some(code) = &e.sqlstate {
                mapped = mapped.set("status_code", json!(code));
            }
            mapped.set("message", json!(e.message))
        }
        EventBody::Copy(c) => {
            proctor.insert("format".into(), json!(c.format));
            proctor.insert("byte_count".into(), json!(c.byte_count));
            let activity = if event.direction == Direction::TargetToClient { (1, "Read") } else { (5, "Write") };
            let mut mapped = datastore(activity);
            if let Some(rows) = c.row_count {
                mapped = mapped.set("count", json!(rows));
            }
            mapped
        }
        EventBody::Notice(n) => other("Notice").set("message", json!(n.message)),
        EventBody::Notification(n) => {
            proctor.insert("channel".into(), json!(n.channel));
            proctor.insert("payload".into(), json!(n.payload));
            other("Notification")
        }
        EventBody::ParameterStatus(p) => {
            proctor.insert("parameter".into(), json!(p.parameter));
            proctor.insert("value".into(), json!(p.value));
            other("Parameter Status")
        }
        EventBody::Cancel(c) => {
            let mapped = other("Cancel");
            match &c.message {
                Some(message) => mapped.set("message", json!(message)),
                None => mapped,
            }
        }
        EventBody::RawFrame(f) => {
            proctor.insert("frame_tag".into(), json!(f.frame_tag));
            proctor.insert("byte_count".into(), json!(f.byte_count));
            other("Raw Frame")
        }
        EventBody::PtyRequest(p) => {
            proctor.insert("term".into(), json!(p.term));
            proctor.insert("size".into(), json!(format!("{}x{}", p.width, p.height)));
            Mapped::new(SSH_ACTIVITY, (6, "Traffic"))
        }
        EventBody::TerminalInput(i) => {
            // Keystrokes are recorded as lengths: so they stay here.
            let bytes = i.byte_count.unwrap_or(i.data.len() as u64);
            Mapped::new(SSH_ACTIVITY, (6, "Traffic")).set("traffic", json!({ "bytes_out": bytes }))
        }
        EventBody::TerminalOutput(o) => {
            proctor.insert("stream".into(), json!(o.stream.as_str()));
            Mapped::new(SSH_ACTIVITY, (6, "Traffic")).set("traffic", json!({ "bytes_in": o.data.len() }))
        }
        EventBody::Resize(r) => {
            proctor.insert("size".into(), json!(format!("{}x{}", r.width, r.height)));
            Mapped::new(SSH_ACTIVITY, (6, "Traffic"))
        }
        EventBody::Shell(_) => Mapped::new(SSH_ACTIVITY, (6, "Traffic")),
        EventBody::Signal(s) => {
            proctor.insert("signal".into(), json!(s.signal));
            Mapped::new(SSH_ACTIVITY, (6, "Traffic"))
        }
        EventBody::ExitStatus(x) => {
            if let Some(code) = x.exit_code {
                proctor.insert("exit_code".into(), json!(code));
            }
            insert_opt(proctor, "exit_signal", &x.exit_signal);
            let ok = x.exit_code == Some(0);
            Mapped::new(SSH_ACTIVITY, (6, "Traffic")).status(if ok { SUCCESS } else { FAILURE })
        }
        EventBody::Exec(x) => process(start, &x.command, (1, "Launch")),
        EventBody::Command(c) => process(start, &c.command, (1, "Launch")),
        EventBody::FileTransfer(f) => file(start, f, proctor),
        EventBody::PortForward(p) => {
            proctor.insert("operation".into(), json!(p.operation));
            insert_opt(proctor, "host", &p.host);
            if let Some(port) = p.port {
                proctor.insert("port".into(), json!(port));
            }
            let mut mapped = Mapped::new(SSH_ACTIVITY, (6, "Traffic"));
            if let Some(outcome) = p.outcome {
                mapped = decided(mapped, outcome, proctor);
            }
            mapped.set(
                "traffic",
                json!({ "bytes_out": p.bytes_to_target.unwrap_or(0), "bytes_in": p.bytes_to_client.unwrap_or(0) }),
            )
        }
        EventBody::HttpRequest(r) => {
            let activity = match r.method.as_str() {
                "POST" => (1, "Create"),
                "GET" | "HEAD" | "OPTIONS" => (2, "Read"),
                "PUT" | "PATCH" => (3, "Update"),
                "DELETE" => (4, "Delete"),
                _ => OTHER,
            };
            let mut url = json!({ "path": r.path });
            if let Some(host) = &r.host {
                url["hostname"] = json!(host);
            }
            let mut request = json!({ "url": url, "length": r.byte_count });
            // OCSF 1.3.0 lists these methods only; any other is in `api.operation`.
            if ["OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT"].contains(&r.method.as_str()) {
                request["http_method"] = json!(r.method);
            }
            Mapped::new(API_ACTIVITY, activity)
                .set("api", json!({ "operation": format!("{} {}", r.method, r.path) }))
                .set("http_request", request)
        }
        EventBody::HttpResponse(r) => {
            let ok = r.status < 400;
            Mapped::new(API_ACTIVITY, OTHER)
                .status(if ok { SUCCESS } else { FAILURE })
                .set("status_code", json!(r.status.to_string()))
                .set("api", json!({ "operation": "response", "response": { "code": r.status } }))
        }
        EventBody::PolicyDecision(d) => {
            insert_opt(proctor, "rule", &d.rule);
            insert_opt(proctor, "review_id", &d.review_id);
            if let Some(seq) = d.ref_seq {
                proctor.insert("ref_seq".into(), json!(seq));
            }
            let mapped = match protocol {
                Some(Protocol::Postgres) => datastore((4, "Query")),
                _ => other("Policy Decision"),
            };
            let mapped = decided(mapped, d.outcome, proctor);
            let mapped = match &d.message {
                Some(message) => mapped.set("message", json!(message)),
                None => mapped,
            };
            match &d.rule {
                Some(rule) if mapped.class.security_control => mapped.set("firewall_rule", json!({ "name": rule })),
                _ => mapped,
            }
        }
        EventBody::MaskingApplied(m) => {
            insert_opt(proctor, "masking_profile", &m.masking_profile);
            let counts: Map<String, Value> = m.masked.iter().map(|r| (r.rule.clone(), json!(r.count))).collect();
            proctor.insert("masked".into(), Value::Object(counts));
            other("Masking Applied")
        }
        EventBody::Grant(g) => {
            proctor.insert("grant_id".into(), json!(g.grant_id));
            insert_opt(proctor, "resource", &g.resource);
            if let Some(expires) = g.expires_at {
                proctor.insert("expires_at".into(), json!(expires.to_rfc3339()));
            }
            let (activity, status) = match g.action {
                GrantAction::Approved => ((1, "Assign Privileges"), Some(SUCCESS)),
                GrantAction::Requested => ((99, "Grant Requested"), None),
                GrantAction::PartiallyApproved => ((99, "Grant Partially Approved"), None),
                GrantAction::Denied => ((99, "Grant Denied"), Some(FAILURE)),
                GrantAction::Expired => ((99, "Grant Expired"), None),
                GrantAction::Revoked => ((99, "Grant Revoked"), None),
                GrantAction::Certified => ((99, "Grant Certified"), Some(SUCCESS)),
            };
            let mut mapped = Mapped::new(AUTHORIZE_SESSION, activity)
                .set("user", user(g.subject.as_deref(), &g.groups))
                .set("actor", actor(g.actor.as_deref(), &[]));
            if let Some(resource) = &g.resource {
                mapped = mapped.set("privileges", json!([format!("connect:{resource}")]));
                mapped = mapped.set("dst_endpoint", json!({ "svc_name": resource }));
            }
            if let Some(status) = status {
                mapped = mapped.status(status);
            }
            match &g.message {
                Some(message) => mapped.set("message", json!(message)),
                None => mapped,
            }
        }
        EventBody::Review(r) => {
            proctor.insert("review_id".into(), json!(r.review_id));
            insert_opt(proctor, "grant_id", &r.grant_id);
            insert_opt(proctor, "target_session", &r.target_session);
            if let Some(seq) = r.ref_seq {
                proctor.insert("ref_seq".into(), json!(seq));
            }
            if let Some(held) = &r.held {
                proctor.insert("held_kind".into(), json!(held.kind.as_str()));
                proctor.insert("held".into(), json!(held.text));
            }
            let (activity, status) = match r.action {
                ReviewAction::Requested => ((99, "Review Requested"), None),
                ReviewAction::Approved => ((99, "Review Approved"), Some(SUCCESS)),
                ReviewAction::Denied => ((99, "Review Denied"), Some(FAILURE)),
                ReviewAction::Expired => ((99, "Review Expired"), None),
            };
            // The subject is the target session's: the held request was theirs.
            let target = r
                .target_session
                .as_deref()
                .and_then(|t| t.parse::<SessionId>().ok())
                .and_then(|t| starts.get(&t).copied());
            let subject = target.and_then(|s| s.subject.as_deref());
            let mut mapped = Mapped::new(AUTHORIZE_SESSION, activity)
                .set("user", user(subject, &[]))
                .set("actor", actor(r.actor.as_deref(), &[]));
            if let Some(status) = status {
                mapped = mapped.status(status);
            }
            match &r.message {
                Some(message) => mapped.set("message", json!(message)),
                None => mapped,
            }
        }
        EventBody::RecordingAccessed(a) => {
            insert_opt(proctor, "target_session", &a.target_session);
            insert_opt(proctor, "query", &a.query);
            Mapped::new(API_ACTIVITY, (2, "Read"))
                .status(SUCCESS)
                .set("actor", actor(Some(&a.actor), &[]))
                .set("api", json!({ "operation": a.operation, "service": { "name": "proctor recordings" } }))
                .set("src_endpoint", json!({ "name": "proctor" }))
        }
        EventBody::RetentionDeleted(r) => {
            proctor.insert("path".into(), json!(r.path));
            Mapped::new(BASE_EVENT, (99, "Retention Deleted"))
        }
        EventBody::RecorderRecovery(r) => {
            insert_opt(proctor, "path", &r.path);
            Mapped::new(BASE_EVENT, (99, "Recorder Recovery")).set("message", json!(r.message))
        }
    }
}

fn decided(mapped: Mapped, outcome: PolicyOutcome, proctor: &mut Map<String, Value>) -> Mapped {
    proctor.insert("outcome".into(), json!(outcome.as_str()));
    let (action, action_name, disposition, disposition_name) = disposition(outcome);
    let mut mapped = if mapped.class.security_control {
        mapped
            .set("action_id", json!(action))
            .set("action", json!(action_name))
            .set("disposition_id", json!(disposition))
            .set("disposition", json!(disposition_name))
    } else {
        // A class without the security control profile: the outcome is
        // the event's status, and `unmapped.proctor.outcome`.
        let status = if action == 1 { SUCCESS } else { FAILURE };
        mapped.status(status)
    };
    if outcome == PolicyOutcome::Block {
        mapped.severity = 3;
    } else if outcome != PolicyOutcome::Allow {
        mapped.severity = 2;
    }
    mapped
}

fn process(start: Option<&SessionStart>, command: &str, activity: (u32, &'static str)) -> Mapped {
    let name = command.split_whitespace().next().unwrap_or_default();
    let mut process = json!({ "cmd_line": command, "name": name });
    if let Some(user) = start.and_then(|s| s.target_user.as_deref()) {
        process["user"] = json!({ "name": user });
    }
    Mapped::new(PROCESS_ACTIVITY, activity).set("process", process).set("device", device(start))
}

fn file(start: Option<&SessionStart>, f: &proctor_schemas::FileTransfer, proctor: &mut Map<String, Value>) -> Mapped {
    proctor.insert("operation".into(), json!(f.operation));
    if let Some(bytes) = f.byte_count {
        proctor.insert("byte_count".into(), json!(bytes));
    }
    insert_opt(proctor, "target_path", &f.target_path);
    let activity = match f.operation.as_str() {
        "mkdir" | "symlink" | "create" => (1, "Create"),
        "read" | "download" => (2, "Read"),
        "write" | "upload" => (3, "Update"),
        "remove" | "rmdir" => (4, "Delete"),
        "rename" => (5, "Rename"),
        "setstat" => (6, "Set Attributes"),
        "stat" | "lstat" | "fstat" => (8, "Get Attributes"),
        "open" => (14, "Open"),
        _ => OTHER,
    };
    let folder = matches!(f.operation.as_str(), "mkdir" | "rmdir" | "opendir" | "readdir");
    let name = f.path.rsplit('/').find(|part| !part.is_empty()).unwrap_or(&f.path);
    let mut file = json!({
        "name": name,
        "path": f.path,
        "type_id": if folder { 2 } else { 1 },
        "type": if folder { "Folder" } else { "Regular File" },
    });
    if let Some(bytes) = f.byte_count {
        file["size"] = json!(bytes);
    }
    if let Some(sha256) = &f.sha256 {
        file["hashes"] = json!([{ "algorithm_id": 3, "algorithm": "SHA-256", "value": sha256 }]);
    }
    Mapped::new(FILE_ACTIVITY, activity).set("file", file).set("device", device(start))
}
