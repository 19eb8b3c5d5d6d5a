//! The control API (HTTP + JSON, bearer OIDC token):
//!
//! - `POST /v1/grants` `{resource, ttl, reason}`: request a grant;
//! - `GET /v1/grants[?status=&resource=&subject=]`: the caller's grants, and
//!   those they decide;
//! - `GET /v1/grants/{id}`: one grant (its credential, once, to its
//!   requester, when it became active after the request);
//! - `POST /v1/grants/{id}/approve|deny|revoke` `{reason}`;
//! - `GET /v1/reviews[?status=&grant=&limit=]`: reviews of held statements,
//!   the caller's own and those they decide;
//! - `GET /v1/reviews/{id}`: one review;
//! - `POST /v1/reviews/{id}/approve|deny` `{reason}`: let the held statement
//!   run once, or refuse it;
//! - `GET /healthz`, `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::grants::{Control, ControlError};
use super::store::{ControlStore, GrantFilter, GrantStatus, ReviewFilter, ReviewStatus};
use crate::EventSink;
use crate::http::ApiError;
use crate::identity::{Identity, Verifier};

/// What the API serves.
pub struct ControlApi<S: ControlStore, K: EventSink> {
    pub control: Arc<Control<S, K>>,
    pub verifier: Arc<Verifier>,
    /// More metrics (Prometheus text) from the rest of the gateway.
    pub metrics: Option<MetricsSource>,
}

/// Renders metrics in the Prometheus text format.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Appends one metric family to `out`: its help, type and samples
/// (`labels` like `status="active"`, or empty).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `GET /metrics`: open (counts only; keep the API on a trusted network).
async fn metrics<S: ControlStore, K: EventSink>(State(api): State<Arc<ControlApi<S, K>>>) -> ApiResult<Response> {
    let mut out = String::new();
    let counts = api.control.store().counts().await.map_err(ControlError::from)?;
    let by_status: Vec<(String, f64)> =
        [GrantStatus::Pending, GrantStatus::Active, GrantStatus::Denied, GrantStatus::Expired, GrantStatus::Revoked]
            .iter()
            .map(|status| {
                let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
                (format!("status=\"{}\"", status.as_str()), n as f64)
            })
            .collect();
    family(&mut out, "proctor_grants", "gauge", "Grants in the control store, by status.", &by_status);
    let steps: Vec<(String, f64)> =
        api.control.counters().snapshot().into_iter().map(|(a, n)| (format!("action=\"{a}\""), n as f64)).collect();
    family(&mut out, "proctor_grant_events_total", "counter", "Grant steps this gateway recorded, by action.", &steps);
    let counts = api.control.store().review_counts().await.map_err(ControlError::from)?;
    let by_status: Vec<(String, f64)> = ReviewStatus::ALL
        .iter()
        .map(|status| {
            let n = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
            (format!("status=\"{}\"", status.as_str()), n as f64)
        })
        .collect();
    family(
        &mut out,
        "proctor_reviews",
        "gauge",
        "Reviews of held statements in the control store, by status.",
        &by_status,
    );
    let steps: Vec<(String, f64)> = api
        .control
        .review_counters()
        .snapshot()
        .into_iter()
        .map(|(a, n)| (format!("action=\"{a}\""), n as f64))
        .collect();
    family(
        &mut out,
        "proctor_review_events_total",
        "counter",
        "Review steps this gateway recorded, by action.",
        &steps,
    );
    let live = api.control.live().sessions() as f64;
    family(&mut out, "proctor_grant_sessions_live", "gauge", "Sessions open under a grant.", &[(String::new(), live)]);
    if let Some(more) = &api.metrics {
        out.push_str(&more());
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let status = match e {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn caller<S: ControlStore, K: EventSink>(api: &ControlApi<S, K>, headers: &HeaderMap) -> ApiResult<Identity> {
    crate::http::caller(&api.verifier, headers).await
}

/// A JSON body, with a clear message when it is not the expected shape.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("a JSON body is required: {e}")));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    resource: String,
    /// e.g. `15m`, `1h`.
    ttl: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateBody {
    /// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    ssh_public_key: String,
}

async fn ssh_certificate<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let CertificateBody { ssh_public_key } = body(&bytes)?;
    Ok(Json(api.control.ssh_certificate(&who, &id, &ssh_public_key).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// A list's `status` parameter (absent or empty: any), or `400` naming
/// the statuses there are.
fn status_param<T>(text: Option<&str>, parse: fn(&str) -> Option<T>, statuses: &str) -> ApiResult<Option<T>> {
    match text {
        None | Some("") => Ok(None),
        Some(s) => parse(s)
            .map(Some)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("unknown status {s:?}: one of {statuses}"))),
    }
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    resource: Option<String>,
    subject: Option<String>,
    limit: Option<i64>,
}

async fn request<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let RequestBody { resource, ttl, reason } = body(&bytes)?;
    let ttl: Duration = humantime::parse_duration(ttl.trim()).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("ttl {ttl:?} is not a duration ({e}); e.g. 15m or 1h"))
    })?;
    let grant = api.control.request(&who, &resource, ttl, &reason).await?;
    Ok((StatusCode::CREATED, Json(grant)).into_response())
}

async fn list<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let status =
        status_param(params.status.as_deref(), GrantStatus::parse, "pending, active, denied, expired, revoked")?;
    let filter = GrantFilter {
        subject: params.subject,
        status,
        resource: params.resource,
        limit: params.limit,
        ..GrantFilter::default()
    };
    let grants = api.control.list(&who, filter).await?;
    Ok(Json(json!({ "grants": grants })).into_response())
}

async fn show<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    Ok(Json(api.control.show(&who, &id).await?).into_response())
}

async fn decide<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let DecisionBody { reason } = body(&bytes)?;
    let grant = match action.as_str() {
        "approve" => api.control.approve(&who, &id, reason).await?,
        "deny" => api.control.deny(&who, &id, reason).await?,
        "revoke" => api.control.revoke(&who, &id, reason).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: approve, deny or revoke"),
            ));
        }
    };
    Ok(Json(grant).into_response())
}

#[derive(Deserialize)]
struct ReviewListParams {
    status: Option<String>,
    grant: Option<String>,
    limit: Option<i64>,
}

async fn list_reviews<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Query(params): Query<ReviewListParams>,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let status =
        status_param(params.status.as_deref(), ReviewStatus::parse, "pending, approved, denied, expired, used")?;
    let filter = ReviewFilter {
        grant_id: params.grant.filter(|g| !g.is_empty()),
        status,
        limit: params.limit,
        ..ReviewFilter::default()
    };
    let reviews = api.control.list_reviews(&who, filter).await?;
    Ok(Json(json!({ "reviews": reviews })).into_response())
}

async fn show_review<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    Ok(Json(api.control.show_review(&who, &id).await?).into_response())
}

async fn decide_review<S: ControlStore, K: EventSink>(
    State(api): State<Arc<ControlApi<S, K>>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> ApiResult<Response> {
    let who = caller(&api, &headers).await?;
    let DecisionBody { reason } = body(&bytes)?;
    let review = match action.as_str() {
        "approve" => api.control.approve_review(&who, &id, reason).await?,
        "deny" => api.control.deny_review(&who, &id, reason).await?,
        other => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown action {other:?}: approve or deny")));
        }
    };
    Ok(Json(review).into_response())
}

/// The API's routes.
pub fn router<S: ControlStore, K: EventSink>(api: Arc<ControlApi<S, K>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics::<S, K>))
        .route("/v1/grants", post(request::<S, K>).get(list::<S, K>))
        .route("/v1/grants/{id}", get(show::<S, K>))
        .route("/v1/grants/{id}/ssh-certificate", post(ssh_certificate::<S, K>))
        .route("/v1/grants/{id}/{action}", post(decide::<S, K>))
        .route("/v1/reviews", get(list_reviews::<S, K>))
        .route("/v1/reviews/{id}", get(show_review::<S, K>))
        .route("/v1/reviews/{id}/{action}", post(decide_review::<S, K>))
        .with_state(api)
}
