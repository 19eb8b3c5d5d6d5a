//! The HTTP API: search, the sessions list, one session, one session's
//! events in pages. JSON in and out; every request carries an OIDC bearer
//! token of a member of the investigator group.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/search?q=&limit=&offset=&order=` | `total`, `hits` (session, seq, time, kind, text, highlighted snippet, ...), `facets` |
//! | `GET /api/sessions?subject=&resource=&protocol=&since=&live=` | `sessions` |
//! | `GET /api/sessions/{id}` | the session, with its start event |
//! | `GET /api/sessions/{id}/events?from_seq=&limit=` | `events` in seq order, their `transcript` lines, `next_seq` while more follow |
//! | `GET /healthz` | `ok` (no token) |
//!
//! Errors are `{"error": "..."}` with 400 (a bad query: the message points
//! at the mistake), 401 (no or bad token, with `WWW-Authenticate`), 403
//! (not an investigator), 404, 503 (the access could not be recorded, so
//! nothing is returned).

use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proctor_gateway_core::identity::{Identity, IdentityError, Verifier};
use proctor_indexer::{IndexError, SearchIndex, SearchRequest};
use proctor_recorder::reader::Reader;
use proctor_schemas::{
    Direction, EndReason, NewEvent, Protocol, RecordingAccessed, SessionEnd, SessionId, SessionStart, Timestamp,
};
use serde::Deserialize;
use serde_json::json;

use crate::filter::SessionFilter;
use crate::render::{event_json, session_json, transcript_line};

/// Where every search and read is recorded before its answer is sent.
pub trait AccessLog: Send + Sync + 'static {
    /// Records that `who` did `operation` (`search` or `read`) with `query`
    /// or on `target_session`. An error refuses the request.
    fn record(
        &self,
        who: &Identity,
        operation: &str,
        query: Option<String>,
        target_session: Option<String>,
    ) -> impl Future<Output = Result<(), String>> + Send;
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
        target_session: Option<String>,
    ) -> Result<(), String> {
        let events = access_events(
            who.subject.clone(),
            who.groups.clone(),
            format!("proctor {} replay API", env!("CARGO_PKG_VERSION")),
            format!("{operation} through the replay API (issuer {})", who.issuer),
            operation,
            query,
            target_session,
        );
        self.0.append_slice(&events).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The events recording one access: a short `control` session of `actor`
/// holding one `recording_accessed` event.
pub fn access_events(
    actor: String,
    groups: Vec<String>,
    application: String,
    message: String,
    operation: &str,
    query: Option<String>,
    target_session: Option<String>,
) -> [NewEvent; 3] {
    let session = SessionId::new();
    let now = Timestamp::now;
    [
        NewEvent::new(
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
        ),
        NewEvent::new(
            session,
            now(),
            Direction::Gateway,
            RecordingAccessed { actor, target_session, query, operation: operation.to_string() },
        ),
        NewEvent::new(session, now(), Direction::Gateway, SessionEnd { reason: EndReason::Completed, message: None }),
    ]
}

/// What the handlers share.
pub struct ApiState<L: AccessLog> {
    pub data_dir: PathBuf,
    pub verifier: Arc<Verifier>,
    /// Only its members may search or read recordings.
    pub investigator_group: String,
    pub access: L,
    /// Opened on first use: the index may not exist when the server starts.
    index: Mutex<Option<Arc<SearchIndex>>>,
}

impl<L: AccessLog> ApiState<L> {
    pub fn new(data_dir: PathBuf, verifier: Arc<Verifier>, investigator_group: String, access: L) -> Self {
        ApiState { data_dir, verifier, investigator_group, access, index: Mutex::new(None) }
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

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// A 401 for a request that presented no token: a bare challenge.
    no_token: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), no_token: false }
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a request without credentials gets a bare challenge.
            let challenge = if self.no_token {
                "Bearer realm=\"proctor\"".to_string()
            } else {
                format!(
                    "Bearer realm=\"proctor\", error=\"invalid_token\", error_description=\"{}\"",
                    self.message.replace('"', "'")
                )
            };
            (self.status, [(header::WWW_AUTHENTICATE, challenge)], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, if their token verifies and they are an investigator.
fn investigator<L: AccessLog>(state: &ApiState<L>, headers: &HeaderMap) -> ApiResult<Identity> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or_default();
    let identity = state.verifier.verify(token).map_err(|e| match e {
        IdentityError::Config(_) => ApiError::internal(e),
        other => ApiError {
            no_token: matches!(other, IdentityError::Missing),
            ..ApiError::new(StatusCode::UNAUTHORIZED, other.to_string())
        },
    })?;
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

/// Records the access first: nothing is returned that was not recorded.
async fn record<L: AccessLog>(
    state: &ApiState<L>,
    who: &Identity,
    operation: &str,
    query: Option<String>,
    target: Option<String>,
) -> ApiResult<()> {
    state.access.record(who, operation, query, target).await.map_err(|e| {
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
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/search", get(search::<L>))
        .route("/api/sessions", get(sessions::<L>))
        .route("/api/sessions/{id}", get(session::<L>))
        .route("/api/sessions/{id}/events", get(events::<L>))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes: over TLS with
/// `tls`, else plain HTTP (for loopback, or behind a TLS-terminating proxy).
pub async fn serve<L: AccessLog>(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState<L>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        tracing::warn!(%error, "the replay API could not accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                connections.spawn(async move {
                    // A handshake that does not finish in time is dropped.
                    let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                    let Ok(Ok(stream)) = handshake.await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    // Requests in flight get a moment to finish; idle connections are closed.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
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
    let who = investigator(&state, &headers)?;
    let newest_first = match params.order.as_deref() {
        None | Some("newest") => true,
        Some("oldest") => false,
        Some(other) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("order={other}: expected newest or oldest")));
        }
    };
    record(&state, &who, "search", Some(params.q.clone()), None).await?;
    let request = SearchRequest {
        limit: params.limit.unwrap_or(20).min(MAX_PAGE),
        offset: params.offset.unwrap_or(0),
        newest_first,
        ..SearchRequest::new(params.q)
    };
    let state = state.clone();
    blocking(move || {
        let index = state.index().map_err(|e| match e {
            IndexError::Missing(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => ApiError::internal(other),
        })?;
        match index.search(&request) {
            Ok(result) => Ok(Json(serde_json::to_value(&result).map_err(ApiError::internal)?)),
            Err(IndexError::Query(error)) => Err(ApiError::new(StatusCode::BAD_REQUEST, error.to_string())),
            Err(error) => Err(ApiError::internal(error)),
        }
    })
    .await
}

async fn sessions<L: AccessLog>(
    State(state): State<Arc<ApiState<L>>>,
    headers: HeaderMap,
    Query(filter): Query<SessionFilter>,
) -> ApiResult<Json<serde_json::Value>> {
    let who = investigator(&state, &headers)?;
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
    let who = investigator(&state, &headers)?;
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
        }
        Ok(Json(value))
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
    let who = investigator(&state, &headers)?;
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
        let next_seq = more.then(|| params.from_seq + events.len() as u64);
        Ok(Json(json!({
            "session_id": id.to_string(),
            "events": events,
            "transcript": transcript,
            "next_seq": next_seq,
        })))
    })
    .await
}
