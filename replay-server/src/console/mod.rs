//! The investigators' web console: sign-in with OpenID Connect
//! (authorization code with PKCE, the `openidconnect` crate), a cookie
//! session, and the search and session pages, served from assets built into
//! the binary (plain HTML, CSS and a little JavaScript over the JSON API; no
//! toolchain, no CDN).
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the search page (`?q=` holds the query) |
//! | `GET /sessions/{id}` | a session's page (`#seq=N`, `#time=T`) |
//! | `GET /login?next=` | to the issuer's sign-in, PKCE and nonce kept here (pages answer 401 to someone not signed in, with a script that comes here carrying the link's `#fragment`) |
//! | `GET /auth/callback` | back from the issuer: the code exchanged, the ID token checked, a session cookie |
//! | `POST /logout` | the session ended (CSRF token required) |
//! | `GET /assets/…` | the console's script and style |
//!
//! The session cookie is `HttpOnly`, `Secure`, `SameSite=Lax`; the console
//! changes nothing but its own sign-in, and that `POST` carries the
//! session's CSRF token. Only members of the investigator group get a
//! session. Pages read recordings through the API, which records every
//! search and read, and which honours the cookie only with the same token in
//! [`CSRF_HEADER`]: a page holds it (`<meta name=proctor-csrf>`), and no
//! other site can read it or make a browser send it.

pub mod dev_issuer;
mod http_client;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, TokenResponse,
};
use proctor_identity::http::ApiError;
use proctor_identity::token::Identity;
use serde::Deserialize;

/// The session cookie and the sign-in cookie.
/// `__Host-`: only this origin, over a secure context, path `/`: no
/// sibling host can plant or read them.
const SESSION_COOKIE: &str = "__Host-proctor_console";
const LOGIN_COOKIE: &str = "__Host-proctor_login";

/// The header the console's script sends the session's CSRF token in, with
/// every API request: the cookie alone is no proof that the console made a
/// request (a browser attaches it to requests other sites cause).
pub const CSRF_HEADER: &str = "x-proctor-csrf";

/// The longest return path kept across a sign-in.
const MAX_NEXT: usize = 1024;

/// The largest identity a session keeps (subject, groups).
const MAX_SUBJECT: usize = 256;
const MAX_GROUPS: usize = 64;
const MAX_GROUP: usize = 256;

/// How long a sign-in may take at the issuer.
const LOGIN_TTL: Duration = Duration::from_secs(600);

/// Sign-ins under way kept at once (beyond, the oldest give way), and
/// sessions (beyond, new sign-ins wait for old sessions to end).
const MAX_PENDING: usize = 4096;
const MAX_SESSIONS: usize = 65_536;

/// How long what the issuer published (endpoints, keys) is trusted before
/// it is read again.
const DISCOVERY_TTL: Duration = Duration::from_secs(600);

/// The console's settings.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// The console's URL as browsers reach it; the redirect URI is
    /// `{base_url}/auth/callback`.
    pub base_url: String,
    /// The OpenID Connect issuer to sign in with (its discovery document at
    /// `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// None: a public client (PKCE alone).
    pub client_secret: Option<String>,
    /// Trusted certificates for an `https://` issuer (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// The ID token claim listing the subject's groups.
    pub groups_claim: String,
    /// Only its members are let in.
    pub investigator_group: String,
    /// How long a sign-in lasts, at most the ID token's own life.
    pub session_ttl: Duration,
}

type OidcClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The issuer as discovered, and when.
struct Discovered {
    client: OidcClient,
    at: Instant,
}

/// A signed-in investigator.
#[derive(Clone, Debug)]
struct ConsoleSession {
    identity: Identity,
    csrf: String,
    expires: Instant,
}

/// A sign-in under way at the issuer.
struct PendingLogin {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    next: String,
    created: Instant,
}

/// The console: its settings, sign-ins under way, sessions.
pub struct Console {
    config: ConsoleConfig,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
    sessions: Mutex<HashMap<String, ConsoleSession>>,
}

impl Console {
    pub fn new(config: ConsoleConfig) -> Console {
        Console {
            config,
            discovered: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(search_page))
            .route("/sessions/{id}", get(session_page))
            .route("/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/logout", post(logout))
            .route(
                "/assets/console.js",
                get(|| asset("text/javascript; charset=utf-8", include_str!("../../assets/console.js"))),
            )
            .route(
                "/assets/console.css",
                get(|| asset("text/css; charset=utf-8", include_str!("../../assets/console.css"))),
            )
            .route(
                "/assets/signin.js",
                get(|| asset("text/javascript; charset=utf-8", include_str!("../../assets/signin.js"))),
            )
            .with_state(self)
    }

    /// The investigator a request's session cookie names, if it is live
    /// and the request carries the session's CSRF token in [`CSRF_HEADER`];
    /// `Ok(None)` without a live session; refused (403) with the cookie but
    /// without the token, or with another.
    pub fn api_identity(&self, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
        let Some(session) = self.session(headers) else { return Ok(None) };
        match headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) {
            Some(token) if same_secret(token, session.csrf.as_bytes()) => Ok(Some(session.identity)),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "the X-Proctor-CSRF header is not this console session's token: reload the console's page to get the current one, or call the API with a bearer token (Authorization: Bearer JWT)",
            )),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this request carries the console's session cookie but not its CSRF token: the console's pages send it in the X-Proctor-CSRF header; reload the page, or call the API with a bearer token (Authorization: Bearer JWT)",
            )),
        }
    }

    fn session(&self, headers: &HeaderMap) -> Option<ConsoleSession> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }

    /// The issuer's client, discovered on first use (the dev issuer is
    /// served by this very server) and again after [`DISCOVERY_TTL`].
    async fn client(&self) -> Result<OidcClient, String> {
        let mut slot = self.discovered.lock().await;
        if let Some(found) = slot.as_ref().filter(|d| d.at.elapsed() < DISCOVERY_TTL) {
            return Ok(found.client.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| format!("issuer URL: {e}"))?;
        let ca = self.config.ca_file.clone();
        let http = move |request| http_client::call(ca.clone(), request);
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| format!("cannot read the issuer's discovery document: {}", error_chain(&e)))?;
        let redirect = RedirectUrl::new(format!("{}/auth/callback", self.config.base_url.trim_end_matches('/')))
            .map_err(|e| format!("redirect URL: {e}"))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        *slot = Some(Discovered { client: client.clone(), at: Instant::now() });
        Ok(client)
    }

    /// Exchanges the code, checks the ID token (signature, issuer,
    /// audience, expiry, nonce) and reads who signed in.
    async fn finish(&self, code: String, pending: PendingLogin) -> Result<(Identity, Duration), String> {
        let client = self.client().await?;
        let ca = self.config.ca_file.clone();
        let http = move |request| http_client::call(ca.clone(), request);
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| format!("the issuer names no token endpoint: {e}"))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&http)
            .await
            .map_err(|e| format!("the issuer refused the code: {}", error_chain(&e)))?;
        let id_token = response.id_token().ok_or("the issuer sent no ID token")?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &pending.nonce)
            .map_err(|e| format!("the ID token does not verify: {e}"))?;
        let subject = claims.subject().as_str().to_string();
        if subject.len() > MAX_SUBJECT {
            return Err(format!("the subject is longer than {MAX_SUBJECT} bytes"));
        }
        let expires_at = claims.expiration().timestamp();
        // The groups claim is not a standard one: read from the payload of
        // the token whose signature was just checked.
        let groups = groups_of(&id_token.to_string(), &self.config.groups_claim);
        if groups.len() > MAX_GROUPS || groups.iter().any(|g| g.len() > MAX_GROUP) {
            return Err(format!("more than {MAX_GROUPS} groups, or a group longer than {MAX_GROUP} bytes"));
        }
        let left = expires_at - proctor_schemas::Timestamp::now().0 / 1_000_000_000;
        let ttl = self.config.session_ttl.min(Duration::from_secs(left.max(0) as u64));
        let identity = Identity { subject, issuer: self.config.issuer.clone(), groups, expires_at };
        Ok((identity, ttl))
    }
}

#[cfg(test)]
impl Console {
    /// Signs `identity` in as the callback does: the session cookie to send
    /// (`name=value`) and the session's CSRF token.
    pub(crate) fn sign_in_for_test(&self, identity: Identity) -> (String, String) {
        let (id, csrf) = (dev_issuer::random_token().unwrap(), dev_issuer::random_token().unwrap());
        let session = ConsoleSession { identity, csrf: csrf.clone(), expires: Instant::now() + LOGIN_TTL };
        self.sessions.lock().unwrap().insert(id.clone(), session);
        (format!("{SESSION_COOKIE}={id}"), csrf)
    }
}

/// Whether two secrets are equal, in a time that does not depend on where
/// they first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An error and its sources, in one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The groups claim of a JWT's payload (a list of strings, or one string).
fn groups_of(token: &str, claim: &str) -> Vec<String> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return Vec::new();
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Vec::new() };
    match claims.get(claim) {
        Some(serde_json::Value::Array(list)) => list.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
        // A string lists groups apart by spaces, as the API's verifier reads it.
        Some(serde_json::Value::String(many)) => many.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// A cookie's value from the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration) -> HeaderValue {
    let text = format!("{name}={value}; Path={path}; Max-Age={}; HttpOnly; Secure; SameSite=Lax", max_age.as_secs());
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub use proctor_indexer::html_escape as escape;

/// Headers every console page carries: no framing, no inline script, no
/// caching of recordings.
fn page_headers() -> [(header::HeaderName, &'static str); 5] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ]
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A local path to return to after sign-in (nothing else: no open redirect).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.len() <= MAX_NEXT
                && path.starts_with('/')
                && !path.starts_with("//")
                // Browsers drop tabs and newlines from URLs, and read `\`
                // as `/`: `/\t/evil.example` is another origin.
                && !path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'\\') =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// A page of the console for a signed-in investigator, or the way to sign in.
fn page(console: &Console, headers: &HeaderMap, kind: &str, here: &str, extra: &str) -> Response {
    let Some(session) = console.session(headers) else {
        // To sign-in by a script, which adds the link's `#fragment` (an event,
        // a moment) to the way back: the server never sees it.
        let login = format!("/login?next={}", dev_issuer::urlencode(here));
        let body = format!(
            "<!doctype html><html lang=en><meta charset=utf-8><title>Sign in · Proctor</title><link rel=stylesheet href=/assets/console.css><script src=/assets/signin.js></script><main class=notice><h1>Sign in</h1><p>Signing in… <a id=sign-in-link href=\"{}\">Sign in</a> if nothing happens.</p></main>",
            escape(&login)
        );
        return (StatusCode::UNAUTHORIZED, page_headers(), Html(body)).into_response();
    };
    let body = format!(
        include_str!("../../assets/console.html"),
        page = kind,
        subject = escape(&session.identity.subject),
        csrf = escape(&session.csrf),
        extra = extra,
    );
    (page_headers(), Html(body)).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    q: Option<String>,
}

async fn search_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    let here = match &query.q {
        Some(q) => format!("/?q={}", dev_issuer::urlencode(q)),
        None => "/".to_string(),
    };
    page(&console, &headers, "search", &here, "")
}

async fn session_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    if id.parse::<proctor_schemas::SessionId>().is_err() {
        return (
            StatusCode::NOT_FOUND,
            page_headers(),
            Html(format!(
                "<!doctype html><title>Not found</title><p>{} is not a session id.</p><p><a href=\"/\">Search</a></p>",
                escape(&id)
            )),
        )
            .into_response();
    }
    let mut here = format!("/sessions/{id}");
    if let Some(q) = &query.q {
        here.push_str(&format!("?q={}", dev_issuer::urlencode(q)));
    }
    page(&console, &headers, "session", &here, &format!(" data-session=\"{}\"", escape(&id)))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// To the issuer: PKCE challenge, state and nonce, the verifier and nonce
/// kept here under the state, the state in a cookie of this browser.
async fn login(State(console): State<Arc<Console>>, Query(query): Query<LoginQuery>) -> Response {
    let client = match console.client().await {
        Ok(client) => client,
        Err(e) => return trouble(StatusCode::BAD_GATEWAY, "Sign-in is unavailable", &e),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .set_pkce_challenge(challenge)
        .url();
    {
        let mut pending = console.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.created.elapsed() < LOGIN_TTL);
        // Full (a flood of unfinished sign-ins): the oldest give way, so a
        // flood cannot keep investigators out.
        while pending.len() >= MAX_PENDING {
            let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.created).map(|(k, _)| k.clone()) else { break };
            pending.remove(&oldest);
        }
        let next = local_path(query.next.as_deref());
        pending.insert(state.secret().clone(), PendingLogin { verifier, nonce, next, created: Instant::now() });
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, state.secret(), "/", LOGIN_TTL));
    response
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Back from the issuer.
async fn callback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    if let Some(error) = &query.error {
        // Said by the issuer, shown on this origin: logged, not repeated.
        let detail = query.error_description.as_deref().unwrap_or_default();
        tracing::warn!(error = %error, detail = %detail, "the issuer refused a console sign-in");
        let code = if error.len() <= 64 && error.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            error.as_str()
        } else {
            "an error"
        };
        return trouble(
            StatusCode::UNAUTHORIZED,
            "Sign-in failed",
            &format!("the issuer answered {code}; sign in again"),
        );
    }
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return trouble(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "the issuer's answer has no code or state; sign in again",
        );
    };
    // The state must be this browser's own sign-in (no login CSRF).
    if cookie(&headers, LOGIN_COOKIE).as_deref() != Some(state.as_str()) {
        return trouble(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "this sign-in was not started in this browser; sign in again",
        );
    }
    let pending = console.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&state);
    let Some(pending) = pending.filter(|p| p.created.elapsed() < LOGIN_TTL) else {
        return trouble(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "this sign-in expired or was used already; sign in again",
        );
    };
    let next = pending.next.clone();
    let (identity, ttl) = match console.finish(code, pending).await {
        Ok(found) => found,
        Err(e) => return trouble(StatusCode::UNAUTHORIZED, "Sign-in failed", &e),
    };
    let forget_login = set_cookie(LOGIN_COOKIE, "", "/", Duration::ZERO);
    if !identity.in_group(&console.config.investigator_group) {
        let mut response = trouble(
            StatusCode::FORBIDDEN,
            "Not an investigator",
            &format!(
                "{} is signed in, but is not in the investigator group {:?}: only investigators may search or read recordings",
                identity.subject, console.config.investigator_group
            ),
        );
        response.headers_mut().append(header::SET_COOKIE, forget_login);
        return response;
    }
    let (Some(id), Some(csrf)) = (dev_issuer::random_token(), dev_issuer::random_token()) else {
        return trouble(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed", "no randomness for a session; try again");
    };
    {
        let mut sessions = console.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            return trouble(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sessions",
                "too many console sessions are open; try again later",
            );
        }
        sessions.insert(id.clone(), ConsoleSession { identity, csrf, expires: now + ttl });
    }
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, "/", ttl));
    response.headers_mut().append(header::SET_COOKIE, forget_login);
    response
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
}

/// Ends the session; the form must carry the session's CSRF token.
async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, Form(form): Form<LogoutForm>) -> Response {
    let Some(id) = cookie(&headers, SESSION_COOKIE) else { return Redirect::to("/").into_response() };
    let mut sessions = console.sessions.lock().unwrap_or_else(|p| p.into_inner());
    match sessions.get(&id) {
        Some(session) if form.csrf.as_deref().is_some_and(|c| same_secret(c.as_bytes(), session.csrf.as_bytes())) => {
            sessions.remove(&id);
        }
        Some(_) => {
            return trouble(
                StatusCode::FORBIDDEN,
                "Not signed out",
                "the form's CSRF token is not this session's; reload the page and try again",
            );
        }
        None => {}
    }
    let mut response = (page_headers(), Html("<!doctype html><meta charset=utf-8><title>Signed out</title><link rel=stylesheet href=/assets/console.css><main class=notice><h1>Signed out</h1><p><a href=\"/\">Sign in again</a></p></main>")).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", Duration::ZERO));
    response
}

/// A page saying what went wrong and what to do.
fn trouble(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{t} · Proctor</title><link rel=stylesheet href=/assets/console.css><main class=notice><h1>{t}</h1><p id=trouble>{m}</p><p><a href=\"/login\">Sign in again</a></p></main>",
        t = escape(title),
        m = escape(message)
    );
    (status, page_headers(), Html(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(local_path(Some("/sessions/x?q=a")), "/sessions/x?q=a");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(Some("/\t/evil.example/x")), "/", "a tab browsers would drop");
        assert_eq!(local_path(Some(&format!("/{}", "a".repeat(MAX_NEXT)))), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-proctor_console=abc; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "proctor"), None);
    }

    #[test]
    fn secrets_are_compared_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }

    #[test]
    fn groups_come_from_the_named_claim() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"a","roles":["x","y"],"team":"z w"}"#);
        let token = format!("h.{payload}.s");
        assert_eq!(groups_of(&token, "roles"), ["x", "y"]);
        assert_eq!(groups_of(&token, "team"), ["z", "w"]);
        assert!(groups_of(&token, "groups").is_empty());
    }
}
