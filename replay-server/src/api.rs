//! The HTTP API: search, the sessions list, one session, one session's
//! events in pages. JSON in and out; every request carries an OIDC bearer
//! token of a member of the investigator group (or, from the web console,
//! its session cookie with the session's CSRF token).
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/search?q=&limit=&offset=&order=` | `total`, `hits` (session, seq, time, kind, text, highlighted snippet, ...), `facets`, `notices` |
//! | `POST /api/search/value` with `{"value", "q", "limit", "offset", "order"}` | the same, for every event where a value masked with a keyed token passed, and the `token` |
//! | `GET /api/sessions?subject=&resource=&protocol=&since=&live=` | `sessions` |
//! | `GET /api/sessions/{id}` | the session, with its start event |
//! | `GET /api/sessions/{id}/events?from_seq=&limit=` | `events` in seq order, their `transcript` lines, `next_seq` while more follow |
//! | `GET /api/sessions/{id}/marks` | the session's statements, errors and policy decisions for its timeline (`seq`, `time`, `kind`, `outcome`) |
//! | `POST /api/exports` with `{"sessions"}` or selectors, `"reason"`, `"format"` | the evidence bundle (`.tar`) or one rendering, as a download, recorded first (investigators and the compliance group) |
//! | `GET /healthz` | `ok` (no token) |
//!
//! Errors are `{"error": "..."}` with 400 (a bad query: the message points
//! at the mistake), 401 (no or bad token, with `WWW-Authenticate`), 403
//! (not an investigator, or the console's session cookie without its CSRF
//! token in `X-Proctor-CSRF`), 404, 503 (the access could not be recorded,
//! so nothing is returned).

use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use proctor_identity::http::ApiError;
use proctor_identity::token::{Identity, Verifier};
use proctor_indexer::{IndexError, SearchIndex, SearchRequest};
use proctor_recorder::reader::Reader;
use proctor_schemas::{
    Direction, EndReason, EventBody, NewEvent, Protocol, RecordingAccessed, SessionEnd, SessionId, SessionStart,
    Timestamp,
};
use serde::Deserialize;
use serde_json::json;

use crate::console::Console;
use crate::console::dev_issuer::DevIssuerEndpoints;
use crate::filter::SessionFilter;
use crate::render::{event_json, frame_json, session_json, transcript_line, view_json};

/// Where every search and read is recorded before its answer is sent.
pub trait AccessLog: Send + Sync + 'static {
    /// Records that `who` did `operation` (`search`, `read` or `export`)
    /// with `query`, on `target_sessions` (none for a search). An error
    /// refuses the request.
    fn record(
        &self,
        who: &Identity,
        operation: &str,
        query: Option<String>,
        target_sessions: Vec<String>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Seals what the recording holds in its write-ahead log now, so that
    /// an export carries every event recorded until it was asked for
    /// (live sessions to the present). An error refuses the export.
    fn seal_now(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// The recorder as the access log: each access is a short `control`
/// session of the investigator, holding one `recording_accessed` event.
#[derive(Clone)]
pub struct RecorderAccessLog(pub proctor_recorder::Sink);

impl AccessLog for RecorderAccessLog {
    async fn record(
        &self,
        who: &Identity,
        operation: &str,
        query: Option<String>,
        target_sessions: Vec<String>,
    ) -> Result<(), String> {
        let events = access_events(
            who.subject.clone(),
            who.groups.clone(),
            format!("proctor {} replay API", env!("CARGO_PKG_VERSION")),
            format!("{operation} through the replay API (issuer {})", who.issuer),
            operation,
            query,
            target_sessions,
        );
        self.0.append_slice(&events).await.map(|_| ()).map_err(|e| e.to_string())
    }

    async fn seal_now(&self) -> Result<(), String> {
        self.0.seal_now().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The events recording one access: a short `control` session of `actor`
/// holding a `recording_accessed` event for each session read (one with
/// no target for a search).
pub fn access_events(
    actor: String,
    groups: Vec<String>,
    application: String,
    message: String,
    operation: &str,
    query: Option<String>,
    target_sessions: Vec<String>,
) -> Vec<NewEvent> {
    let session = SessionId::new();
    let now = Timestamp::now;
    let mut events = Vec::with_capacity(target_sessions.len() + 2);
    events.push(NewEvent::new(
        session,
        now(),
        Direction::Gateway,
        SessionStart {
            protocol: Protocol::Control,
            resource: None,
            subject: Some(actor.clone()),
            groups,
            grant_id: None,
            client_addr: None,
            target_user: None,
            database: None,
            application_name: Some(application),
            tls: None,
            masking_profile: None,
            message: Some(message),
        },
    ));
    let targets: Vec<Option<String>> =
        if target_sessions.is_empty() { vec![None] } else { target_sessions.into_iter().map(Some).collect() };
    for target_session in targets {
        let accessed = RecordingAccessed {
            actor: actor.clone(),
            target_session,
            query: query.clone(),
            operation: operation.to_string(),
        };
        events.push(NewEvent::new(session, now(), Direction::Gateway, accessed));
    }
    events.push(NewEvent::new(
        session,
        now(),
        Direction::Gateway,
        SessionEnd { reason: EndReason::Completed, message: None },
    ));
    events
}

/// What the handlers share.
pub struct ApiState<L: AccessLog> {
    pub data_dir: PathBuf,
    pub verifier: Arc<Verifier>,
    /// Only its members may search or read recordings.
    pub investigator_group: String,
    /// Its members may export evidence (`POST /api/exports`), as
    /// investigators may; nothing else.
    pub compliance_group: Option<String>,
    pub access: L,
    /// Opened on first use: the index may not exist when the server starts.
    index: Mutex<Option<Arc<SearchIndex>>>,
    /// The web console, when served: its signed-in investigators may call
    /// the API with their session cookie.
    console: Option<Arc<Console>>,
    /// The embedded dev issuer's sign-in endpoints, when on.
    dev_issuer: Option<Arc<DevIssuerEndpoints>>,
    /// The deployment's masking key: what turns a value into the token
    /// that replaced it, for searches by value.
    token_key: Option<proctor_masking::MaskingKey>,
    /// Exports are prepared one at a time: each is sized against the
    /// space and memory there are, which another running meanwhile would
    /// take.
    exports: tokio::sync::Semaphore,
}

impl<L: AccessLog> ApiState<L> {
    pub fn new(data_dir: PathBuf, verifier: Arc<Verifier>, investigator_group: String, access: L) -> Self {
        ApiState {
            data_dir,
            verifier,
            investigator_group,
            compliance_group: None,
            access,
            index: Mutex::new(None),
            console: None,
            dev_issuer: None,
            token_key: None,
            exports: tokio::sync::Semaphore::new(1),
        }
    }

    /// Serves the web console (and the dev issuer's sign-in endpoints) too.
    pub fn with_console(mut self, console: Arc<Console>, dev_issuer: Option<Arc<DevIssuerEndpoints>>) -> Self {
        self.console = Some(console);
        self.dev_issuer = dev_issuer;
        self
    }

    /// Lets members of `group` export evidence too.
    pub fn with_compliance_group(mut self, group: String) -> Self {
        self.compliance_group = Some(group);
        self
    }

    /// Answers searches by value with the deployment's masking key.
    pub fn with_token_key(mut self, key: proctor_masking::MaskingKey) -> Self {
        self.token_key = Some(key);
        self
    }

    fn index(&self) -> Result<Arc<SearchIndex>, IndexError> {
        let mut slot = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = slot.as_ref() {
            return Ok(index.clone());
        }
        let index = Arc::new(SearchIndex::open(&self.data_dir)?);
        *slot = Some(index.clone());
        Ok(index)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, if their token verifies and they are an investigator.
async fn investigator<L: AccessLog>(state: &ApiState<L>, headers: &HeaderMap) -> ApiResult<Identity> {
    let identity = caller(state, headers).await?;
    if !identity.in_group(&state.investigator_group) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not in the investigator group {:?}: only investigators may search or read recordings",
                identity.subject, state.investigator_group
            ),
        ));
    }
    Ok(identity)
}

/// The caller, if their token verifies and they are an investigator or in
/// the compliance group.
async fn exporter<L: AccessLog>(state: &ApiState<L>, headers: &HeaderMap) -> ApiResult<Identity> {
    let identity = caller(state, headers).await?;
    let compliance = state.compliance_group.as_deref().is_some_and(|g| identity.in_group(g));
    if !identity.in_group(&state.investigator_group) && !compliance {
        let groups = match &state.compliance_group {
            Some(group) => {
                format!("the investigator group {:?} or the compliance group {group:?}", state.investigator_group)
            }
            None => format!("the investigator group {:?}", state.investigator_group),
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} is not in {groups}: only their members may export evidence", identity.subject),
        ));
    }
    Ok(identity)
}

/// Whoever presented a token that verifies (or the console's session with
/// its CSRF token).
async fn caller<L: AccessLog>(state: &ApiState<L>, headers: &HeaderMap) -> ApiResult<Identity> {
    // A bearer token when one is presented; else the console's session,
    // with its CSRF token in a header only the console's own script sends
    // (no other site can read the token, nor set the header on a request
    // it makes a browser send): the cookie alone could be attached to a
    // request another site caused, and the read would be recorded in the
    // investigator's name.
    let from_console = match &state.console {
        Some(console) if !headers.contains_key(axum::http::header::AUTHORIZATION) => console.api_identity(headers)?,
        _ => None,
    };
    match from_console {
        Some(identity) => Ok(identity),
        None => Ok(proctor_identity::http::caller(&state.verifier, headers).await?),
    }
}

/// Records the access first: nothing is returned that was not recorded.
async fn record<L: AccessLog>(
    state: &ApiState<L>,
    who: &Identity,
    operation: &str,
    query: Option<String>,
    target: Option<String>,
) -> ApiResult<()> {
    record_many(state, who, operation, query, target.into_iter().collect()).await
}

/// Records an access of several sessions first.
async fn record_many<L: AccessLog>(
    state: &ApiState<L>,
    who: &Identity,
    operation: &str,
    query: Option<String>,
    targets: Vec<String>,
) -> ApiResult<()> {
    state.access.record(who, operation, query, targets).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this access could not be recorded ({e}), so nothing is returned; try again later"),
        )
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

/// The router over `state`.
pub fn router<L: AccessLog>(state: Arc<ApiState<L>>) -> Router {
    let console = state.console.clone().map(Console::router);
    let dev_issuer = state.dev_issuer.clone().map(DevIssuerEndpoints::router);
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/search", get(search::<L>))
        .route("/api/search/value", axum::routing::post(search_value::<L>))
        .route("/api/sessions", get(sessions::<L>))
        .route("/api/sessions/{id}", get(session::<L>))
        .route("/api/sessions/{id}/events", get(events::<L>))
        .route("/api/sessions/{id}/asciicast", get(asciicast::<L>))
        .route("/api/sessions/{id}/screen", get(screen::<L>))
        .route("/api/sessions/{id}/frames", get(frames::<L>))
        .route("/api/sessions/{id}/marks", get(marks::<L>))
        .route("/api/exports", axum::routing::post(exports::<L>))
        .with_state(state);
    if let Some(console) = console {
        app = app.merge(console);
    }
    if let Some(dev_issuer) = dev_issuer {
        app = app.merge(dev_issuer);
    }
    app
}

/// Serves the API on `listener` until `shutdown` completes: over TLS with
/// `tls`, else plain HTTP (for loopback, or behind a TLS-terminating proxy).
pub async fn serve<L: AccessLog>(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState<L>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    proctor_identity::http::serve(listener, router(state), tls, shutdown).await
}

const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
    offset: Option<usize>,
    /// `newest` (default) or `oldest`.
    order: Option<String>,
}

async fn search<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let query = params.q.clone();
    let request = params.request(query.clone())?;
    record(&state, &who, "search", Some(query), None).await?;
    run_search(&state, request, None).await
}

impl SearchParams {
    /// The search of `query` on the page these parameters ask for.
    fn request(self, query: String) -> ApiResult<SearchRequest> {
        let newest_first = match self.order.as_deref() {
            None | Some("newest") => true,
            Some("oldest") => false,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("order={other}: expected newest or oldest"),
                ));
            }
        };
        Ok(SearchRequest {
            limit: self.limit.unwrap_or(20).min(MAX_PAGE),
            offset: self.offset.unwrap_or(0),
            newest_first,
            ..SearchRequest::new(query)
        })
    }
}

/// A search by value: in a POST body, never a URL (URLs reach logs).
#[derive(Deserialize)]
struct ValueSearch {
    value: String,
    /// `q` narrows it; `limit`, `offset`, `order` as for a search.
    #[serde(flatten)]
    search: SearchParams,
}

/// Every event where a value masked with a keyed token passed: the value is
/// turned into its token with the deployment's key, and the token searched
/// for. The access is recorded with the token, never the value; the
/// investigators' own searches for it (`recording_accessed`) are left out.
async fn search_value<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    body: Result<Json<ValueSearch>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let Json(params) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON body {{\"value\": \"...\"}}: {}", e.body_text()),
        )
    })?;
    let Some(key) = &state.token_key else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this deployment has no masking key: no value was masked with a token here",
        ));
    };
    if params.value.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "value: give the value to look for"));
    }
    let token = key.value_token(&params.value);
    let query = value_query(&token, &params.search.q);
    let request = params.search.request(query.clone())?;
    record(&state, &who, "search", Some(query), None).await?;
    run_search(&state, request, Some(token)).await
}

/// The query that finds a token: the token as a phrase (`tok` and its
/// digits), without the searches for it, and the caller's query.
pub fn value_query(token: &str, q: &str) -> String {
    // Time bounds stay outside the parentheses, where they are read.
    let (bounds, rest): (Vec<&str>, Vec<&str>) = q.split_whitespace().partition(|word| {
        let word = word.to_ascii_lowercase();
        ["since:", "after:", "before:"].iter().any(|bound| word.starts_with(bound))
    });
    let rest = rest.join(" ");
    let mut query = format!("\"{token}\" -kind:recording_accessed");
    if !rest.is_empty() {
        query.push_str(&format!(" ({rest})"));
    }
    for bound in bounds {
        query.push(' ');
        query.push_str(bound);
    }
    query
}

#[cfg(test)]
mod value_query_tests {
    #[test]
    fn a_value_search_keeps_its_time_bounds_where_they_are_read() {
        assert_eq!(super::value_query("tok_1", ""), "\"tok_1\" -kind:recording_accessed");
        assert_eq!(
            super::value_query("tok_1", "kind:result OR kind:statement since:7d"),
            "\"tok_1\" -kind:recording_accessed (kind:result OR kind:statement) since:7d"
        );
    }
}

async fn run_search<L: AccessLog>(
    state: &Arc<ApiState<L>>,
    request: SearchRequest,
    token: Option<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let state = state.clone();
    blocking(move || {
        let index = state.index().map_err(|e| match e {
            IndexError::Missing(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => ApiError::internal(other),
        })?;
        match index.search(&request) {
            Ok(result) => {
                let mut json = serde_json::to_value(&result).map_err(ApiError::internal)?;
                if let (Some(token), Some(object)) = (token, json.as_object_mut()) {
                    object.insert("token".to_string(), serde_json::Value::String(token));
                }
                Ok(Json(json))
            }
            Err(IndexError::Query(error)) => Err(ApiError::new(StatusCode::BAD_REQUEST, error.to_string())),
            Err(error) => {
                // The index's own words stay in the log.
                tracing::error!(%error, "a search failed");
                Err(ApiError::internal("the search failed inside Proctor; the reason is in its log"))
            }
        }
    })
    .await
}

async fn sessions<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Query(filter): Query<SessionFilter>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    // A bad filter is refused before the access is recorded.
    if let Err(e) = filter.matcher(Timestamp::now()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, e));
    }
    record(&state, &who, "search", Some(filter.describe()), None).await?;
    let data_dir = state.data_dir.clone();
    blocking(move || {
        let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
        let matches = filter.matcher(Timestamp::now()).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
        let list: Vec<serde_json::Value> =
            reader.sessions().map_err(ApiError::internal)?.iter().filter(|s| matches(s)).map(session_json).collect();
        Ok(Json(json!({ "sessions": list })))
    })
    .await
}

fn session_id(text: &str) -> ApiResult<SessionId> {
    text.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{text:?} is not a session id")))
}

async fn session<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    record(&state, &who, "read", None, Some(id.to_string())).await?;
    let data_dir = state.data_dir.clone();
    blocking(move || {
        let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
        let summary = reader.session(id).map_err(ApiError::internal)?;
        let Some(summary) = summary else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no session {id} in this recording")));
        };
        let mut value = session_json(&summary);
        if let Ok(Some(start)) = reader.session_start(id) {
            value["start_event"] = event_json(&start);
            // The grant's story (requested, approved by whom), from the
            // control session, found through the index when there is one.
            if let (EventBody::SessionStart(s), Ok(index)) = (&start.body, state.index())
                && let Some(grant) = &s.grant_id
            {
                value["grant_events"] = serde_json::Value::Array(grant_events(&reader, &index, grant));
            }
        }
        Ok(Json(value))
    })
    .await
}

/// The events of grant `grant` (its request, approvals, denial, revocation,
/// expiry), oldest first, read whole from the segments.
fn grant_events(reader: &Reader, index: &SearchIndex, grant: &str) -> Vec<serde_json::Value> {
    let kinds = ["requested", "approved", "partially_approved", "denied", "revoked", "expired"];
    let kinds: Vec<String> = kinds.iter().map(|k| format!("kind:grant_{k}")).collect();
    let query = format!("grant:\"{}\" ({})", grant.replace('"', ""), kinds.join(" OR "));
    let request = SearchRequest { limit: 50, newest_first: false, ..SearchRequest::new(query) };
    let Ok(found) = index.search(&request) else { return Vec::new() };
    let mut events = Vec::new();
    for hit in found.hits {
        let Ok(session) = hit.session_id.parse::<SessionId>() else { continue };
        let _ = reader.for_each_session_event(session, hit.seq, |event| {
            if event.seq == hit.seq {
                events.push(event_json(&event));
            }
            Ok(ControlFlow::Break(()))
        });
    }
    events
}

/// The marks of a session's timeline: its statements, commands (typed or
/// run), errors and policy decisions (the first 5,000 of them), oldest first, from the index.
async fn marks<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    record(&state, &who, "read", Some("timeline".to_string()), Some(id.to_string())).await?;
    let state = state.clone();
    blocking(move || {
        let index = state.index().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let query =
            format!("session:{id} (kind:statement OR kind:error OR kind:policy_decision OR kind:command OR kind:exec)");
        let request = SearchRequest { limit: 5000, newest_first: false, ..SearchRequest::new(query) };
        let found = index.search(&request).map_err(ApiError::internal)?;
        let marks: Vec<serde_json::Value> = found
            .hits
            .iter()
            .map(|h| json!({ "seq": h.seq, "time": h.time, "kind": h.kind, "outcome": h.outcome }))
            .collect();
        Ok(Json(json!({ "marks": marks, "total": found.total })))
    })
    .await
}

#[derive(Deserialize)]
struct EventsParams {
    #[serde(default)]
    from_seq: u64,
    limit: Option<usize>,
}

async fn events<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<EventsParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    record(&state, &who, "read", Some(format!("events from seq {}", params.from_seq)), Some(id.to_string())).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let data_dir = state.data_dir.clone();
    blocking(move || {
        let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
        let (mut events, mut transcript) = (Vec::new(), Vec::new());
        // One more than the page: whether another page follows.
        let mut more = false;
        reader
            .for_each_session_event(id, params.from_seq, |event| {
                if events.len() == limit {
                    more = true;
                    return Ok(ControlFlow::Break(()));
                }
                events.push(event_json(&event));
                transcript.push(transcript_line(&event));
                Ok(ControlFlow::Continue(()))
            })
            .map_err(ApiError::internal)?;
        if events.is_empty() && params.from_seq == 0 {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no session {id} in this recording")));
        }
        let next_seq = match (more, events.last().and_then(|e| e["seq"].as_u64())) {
            (true, Some(last)) => Some(last + 1),
            _ => None,
        };
        Ok(Json(json!({
            "session_id": id.to_string(),
            "events": events,
            "transcript": transcript,
            "next_seq": next_seq,
        })))
    })
    .await
}

/// A terminal session as asciicast v2: `{"session_id", "asciicast": [line, ...]}`
/// (the lines of a `.cast` file, header first).
async fn asciicast<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    record(&state, &who, "read", Some("asciicast".to_string()), Some(id.to_string())).await?;
    let data_dir = state.data_dir.clone();
    blocking(move || {
        let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
        let (mut cast, mut lines, mut any) = (crate::render::Asciicast::default(), Vec::new(), false);
        reader
            .for_each_session_event(id, 0, |event| {
                any = true;
                lines.extend(cast.feed(&event));
                Ok(ControlFlow::Continue(()))
            })
            .map_err(ApiError::internal)?;
        if !any {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no session {id} in this recording")));
        }
        if lines.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("session {id} has no terminal output: asciicast is for terminal sessions"),
            ));
        }
        Ok(Json(json!({ "session_id": id.to_string(), "asciicast": lines })))
    })
    .await
}

#[derive(Deserialize)]
struct ScreenParams {
    seq: Option<u64>,
    time: Option<String>,
    channel: Option<u32>,
}

/// The screen of a session's terminal after event `seq`, or at `time`
/// (RFC 3339: after the last event at or before it): from its latest
/// keyframe, see [`proctor_indexer::keyframes`]. `server_ms` says how long
/// it took.
async fn screen<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<ScreenParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    let at = match (params.seq, &params.time) {
        (Some(seq), _) => format!("screen at seq {seq}"),
        (None, Some(time)) => format!("screen at {time}"),
        (None, None) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "give seq=N or time=RFC3339")),
    };
    record(&state, &who, "read", Some(at), Some(id.to_string())).await?;
    let state = state.clone();
    blocking(move || {
        let started = std::time::Instant::now();
        let seq = match (params.seq, params.time) {
            (Some(seq), _) => seq,
            (_, time) => seq_at(&state, id, time.as_deref().unwrap_or_default())?,
        };
        let reader = Reader::open(&state.data_dir).map_err(ApiError::internal)?;
        let store = proctor_indexer::keyframes::KeyframeStore::of_data_dir(&state.data_dir);
        let shown = proctor_indexer::keyframes::screen_at(&reader, &store, id, params.channel, seq)
            .map_err(ApiError::internal)?;
        let Some(shown) = shown else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("session {id} shows no terminal at seq {seq} (the player is for terminal sessions)"),
            ));
        };
        let mut value = view_json(&shown.view());
        value["session_id"] = json!(id.to_string());
        value["server_ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
        Ok(Json(value))
    })
    .await
}

/// The seq of a session's last event at or before `time` (0 before its
/// first), from the index.
fn seq_at<L: AccessLog>(state: &ApiState<L>, id: SessionId, time: &str) -> ApiResult<u64> {
    let moment = chrono::DateTime::parse_from_rfc3339(time)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("time `{time}` is not an RFC 3339 time ({e})")))?;
    // `before:` is exclusive: the next nanosecond.
    let bound = (moment.with_timezone(&chrono::Utc) + chrono::Duration::nanoseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let index = state.index().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let request =
        SearchRequest { limit: 1, newest_first: true, ..SearchRequest::new(format!("session:{id} before:{bound}")) };
    let found = index.search(&request).map_err(ApiError::internal)?;
    Ok(found.hits.first().map_or(0, |hit| hit.seq))
}

#[derive(Deserialize)]
struct FramesParams {
    after_seq: u64,
    channel: Option<u32>,
    limit: Option<usize>,
}

/// Playback of a session's terminal after event `after_seq`: `start` (the
/// screen then), `frames` (what changes, when), `next_seq` (where the next
/// page starts; `null` at the end of what is recorded).
async fn frames<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<FramesParams>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers).await?;
    let id = session_id(&id)?;
    record(&state, &who, "read", Some(format!("playback from seq {}", params.after_seq)), Some(id.to_string())).await?;
    let limit = params.limit.unwrap_or(500).clamp(1, 5000);
    let data_dir = state.data_dir.clone();
    blocking(move || {
        let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
        let store = proctor_indexer::keyframes::KeyframeStore::of_data_dir(&data_dir);
        let found = proctor_indexer::keyframes::frames(&reader, &store, id, params.channel, params.after_seq, limit)
            .map_err(ApiError::internal)?;
        let Some(start) = found.start else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("session {id} shows no terminal at seq {}", params.after_seq),
            ));
        };
        Ok(Json(json!({
            "session_id": id.to_string(),
            "start": view_json(&start),
            "frames": found.frames.iter().map(frame_json).collect::<Vec<_>>(),
            "next_seq": found.next_seq,
        })))
    })
    .await
}

/// `POST /api/exports`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    /// Sessions by id; or selectors instead.
    #[serde(default)]
    sessions: Vec<String>,
    query: Option<String>,
    subject: Option<String>,
    resource: Option<String>,
    since: Option<String>,
    after: Option<String>,
    before: Option<String>,
    reason: Option<String>,
    /// `bundle` (the default: one `.tar`), `ocsf`, `csv`, or `asciicast`
    /// (of one terminal session).
    format: Option<String>,
}

/// Exports sessions as evidence: selected as `proctor export` selects
/// them, written aside, recorded as an `export` access naming every
/// session and the hashes, and only then sent, as a download.
async fn exports<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    body: Result<Json<ExportBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<axum::response::Response> {
    use crate::export::{self, ExportError, Format, Selectors};
    let who = exporter(&state, &headers).await?;
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the export request: {}", e.body_text())))?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let format = match body.format.as_deref() {
        None => Format::Bundle,
        Some(name) => {
            Format::parse(name).ok_or_else(|| bad(format!("format {name:?}: one of bundle, ocsf, csv, asciicast")))?
        }
    };
    let selectors = Selectors {
        query: body.query,
        subject: body.subject,
        resource: body.resource,
        since: body.since,
        after: body.after,
        before: body.before,
    };
    match (body.sessions.is_empty(), selectors.is_empty()) {
        (true, true) => {
            return Err(bad(
                "name the sessions: `sessions`, or `query`, `subject`, `resource`, `since`, `after`, `before`".into(),
            ));
        }
        (false, false) => return Err(bad("`sessions` or selectors, not both".into())),
        _ => {}
    }
    let ids = body
        .sessions
        .iter()
        .map(|s| s.parse::<SessionId>().map_err(|e| bad(format!("session {s}: {e}"))))
        .collect::<ApiResult<Vec<_>>>()?;
    // A selection is a search of every recording: recorded as one first,
    // whatever it finds.
    if ids.is_empty() {
        record(&state, &who, "search", Some(format!("export selection: {}", selectors.describe())), None).await?;
    }
    // Everything recorded until now is sealed first: a live session is
    // exported to the present, marked live.
    state.access.seal_now().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the recording could not be sealed for the export ({e}); try again later"),
        )
    })?;
    // The compliance group exports recorded sessions, not the gateway's
    // own (a control session holds everyone's grants and reviews).
    let investigator = who.in_group(&state.investigator_group);
    let data_dir = state.data_dir.clone();
    let exported_by = who.subject.clone();
    let reason = body.reason;
    let status = |e: ExportError| match e {
        ExportError::Selection(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
        ExportError::Nothing(m) => ApiError::new(StatusCode::NOT_FOUND, m),
        ExportError::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the export failed: {m}")),
        ExportError::NoRoom(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, m),
    };
    let preparing = state.exports.acquire().await.map_err(ApiError::internal)?;
    let (aside, prepared) = blocking(move || {
        let (sessions, selection) = if ids.is_empty() {
            let (sessions, _) = export::select(&data_dir, &selectors).map_err(status)?;
            (sessions, Some(selectors.describe()))
        } else {
            if !investigator {
                let reader = Reader::open(&data_dir).map_err(ApiError::internal)?;
                let housekeeping = reader
                    .sessions()
                    .map_err(ApiError::internal)?
                    .into_iter()
                    .filter(|s| matches!(s.protocol.as_deref(), Some("control" | "system")))
                    .find(|s| ids.contains(&s.session_id));
                if let Some(session) = housekeeping {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "session {} is one of Proctor's own (grants, reviews, access): the compliance group exports recorded sessions, whose grant and review events come along",
                            session.session_id
                        ),
                    ));
                }
            }
            (ids, None)
        };
        let exports = proctor_recorder::layout::Layout::new(&data_dir).exports_dir();
        let aside = tempfile::Builder::new().prefix("export-").tempdir_in(&exports).map_err(ApiError::internal)?;
        let prepared = export::prepare(&export::Request {
            data_dir: &data_dir,
            sessions: &sessions,
            selection: selection.as_deref(),
            exported_by: &exported_by,
            reason: reason.as_deref(),
            format,
            one_file: true,
            aside: aside.path(),
        })
        .map_err(status)?;
        Ok((aside, prepared))
    })
    .await?;
    drop(preparing);
    record_many(&state, &who, "export", Some(prepared.access_query.clone()), prepared.targets.clone()).await?;

    let file = tokio::fs::File::open(&prepared.written).await.map_err(ApiError::internal)?;
    let length = file.metadata().await.map_err(ApiError::internal)?.len();
    let (content_type, extension) = match format {
        Format::Bundle => ("application/x-tar", "tar"),
        Format::Ocsf => ("application/x-ndjson", "ocsf.jsonl"),
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Asciicast => ("application/x-asciicast", "cast"),
    };
    let name = format!("proctor-evidence-{}.{extension}", &prepared.bundle_sha256[..16]);
    // The temp dir goes when the last chunk has been sent.
    let chunks = futures_util::stream::unfold((file, Some(aside)), |(mut file, aside)| async move {
        use tokio::io::AsyncReadExt;
        aside.as_ref()?;
        let mut buffer = bytes::BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buffer).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(buffer.freeze()), (file, aside))),
            Err(error) => Some((Err(error), (file, None))),
        }
    });
    let response = axum::response::Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .header(axum::http::header::CONTENT_LENGTH, length)
        .header(axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))
        .header("x-proctor-bundle-sha256", &prepared.bundle_sha256)
        .header("x-proctor-sha256", &prepared.sha256)
        .header("x-proctor-sessions", prepared.exported.sessions.to_string())
        .header("x-proctor-events", prepared.exported.events.to_string())
        .body(axum::body::Body::from_stream(chunks))
        .map_err(ApiError::internal)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::console::{CSRF_HEADER, ConsoleConfig};

    struct Unrecorded;

    impl AccessLog for Unrecorded {
        async fn record(&self, _: &Identity, _: &str, _: Option<String>, _: Vec<String>) -> Result<(), String> {
            Ok(())
        }
    }

    /// An API with the console on and one investigator signed in to it:
    /// their session cookie and CSRF token.
    async fn signed_in() -> (ApiState<Unrecorded>, String, String) {
        let console = Arc::new(Console::new(ConsoleConfig {
            base_url: "http://127.0.0.1:7070".into(),
            issuer: "http://127.0.0.1:7070/dev-issuer".into(),
            client_id: "proctor-console".into(),
            client_secret: None,
            ca_file: None,
            groups_claim: "groups".into(),
            investigator_group: "investigators".into(),
            session_ttl: std::time::Duration::from_secs(3600),
        }));
        let identity = Identity {
            subject: "ivy".into(),
            issuer: "http://127.0.0.1:7070/dev-issuer".into(),
            groups: vec!["investigators".into()],
            expires_at: i64::MAX,
        };
        let (cookie, csrf) = console.sign_in_for_test(identity);
        let verifier = Arc::new(Verifier::new(&[]).await.unwrap());
        let state = ApiState::new(PathBuf::from("/nonexistent"), verifier, "investigators".into(), Unrecorded)
            .with_console(console, None);
        (state, cookie, csrf)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    /// The red team's finding: a request that carried the console's cookie
    /// (and no `Sec-Fetch-Site`, as curl or an older browser sends) read
    /// recordings in the investigator's name. The cookie now needs the
    /// session's CSRF token beside it.
    #[tokio::test]
    async fn a_console_cookie_without_its_csrf_token_reads_nothing() {
        let (state, cookie, csrf) = signed_in().await;
        for (what, request) in [
            ("the cookie alone", headers(&[("cookie", &cookie)])),
            ("the cookie and Sec-Fetch-Site: none", headers(&[("cookie", &cookie), ("sec-fetch-site", "none")])),
            (
                "the cookie and Sec-Fetch-Site: same-origin",
                headers(&[("cookie", &cookie), ("sec-fetch-site", "same-origin")]),
            ),
            ("the cookie and another token", headers(&[("cookie", &cookie), (CSRF_HEADER, "forged")])),
            ("the cookie and an empty token", headers(&[("cookie", &cookie), (CSRF_HEADER, "")])),
        ] {
            let refused = investigator(&state, &request).await.map(|who| who.subject).unwrap_err();
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{what}: {}", refused.message);
            assert!(refused.message.contains("X-Proctor-CSRF"), "{what}: says what to do: {}", refused.message);
        }
        let with_token = headers(&[("cookie", &cookie), (CSRF_HEADER, &csrf)]);
        assert_eq!(investigator(&state, &with_token).await.map(|who| who.subject).ok().as_deref(), Some("ivy"));
        // No live session: the token alone is nothing either (a bearer
        // token is asked for).
        let stranger = headers(&[("cookie", "__Host-proctor_console=unknown"), (CSRF_HEADER, &csrf)]);
        let refused = investigator(&state, &stranger).await.map(|who| who.subject).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        // A bearer token is judged on its own, cookie or not.
        let bearer = headers(&[("cookie", &cookie), ("authorization", "Bearer not-a-jwt")]);
        let refused = investigator(&state, &bearer).await.map(|who| who.subject).unwrap_err();
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }
}
