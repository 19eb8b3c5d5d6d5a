//! The embedded dev issuer's OpenID Connect endpoints: what the
//! authorization code flow with PKCE needs (discovery, authorize, token,
//! JWKS), served beside the console so that the demo and the tests sign in
//! through the real flow. For local use: whoever reaches its sign-in form
//! chooses who they are. Off unless `[identity.dev_issuer]` is on.
//!
//! | route | answer |
//! |---|---|
//! | `GET /dev-issuer/.well-known/openid-configuration` | discovery |
//! | `GET /dev-issuer/authorize` | the sign-in form (subject and groups) |
//! | `POST /dev-issuer/authorize` | a one-time code, redirected to the client |
//! | `POST /dev-issuer/token` | the ID token for a code and its PKCE verifier |
//! | `GET /dev-issuer/jwks` | the signing key |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proctor_identity::token::DevIssuer;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::escape;

/// Where the endpoints are mounted, under the console's base URL.
pub const PATH: &str = "/dev-issuer";

/// How long a code may wait for its exchange.
const CODE_TTL: Duration = Duration::from_secs(60);

/// How long an ID token of the sign-in flow lives (at most the dev
/// issuer's `max_ttl`).
const ID_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// Codes waiting at once, beyond which new sign-ins wait.
const MAX_CODES: usize = 1024;

/// The largest parts of a sign-in request kept with its code.
const MAX_FIELD: usize = 512;
const MAX_URI: usize = 1024;
const MAX_SUBJECT: usize = 256;
const MAX_GROUPS: usize = 64;

/// The dev issuer's sign-in endpoints.
pub struct DevIssuerEndpoints {
    issuer: Arc<DevIssuer>,
    /// This issuer's identifier: its URL (`{console}/dev-issuer`).
    url: String,
    /// The one client it serves: the console (its ID tokens' audience).
    client_id: String,
    /// Redirects are accepted to this origin only (the console's).
    origin: String,
    /// What the sign-in form proposes.
    subject: String,
    groups: Vec<String>,
    codes: Mutex<HashMap<String, Code>>,
}

/// A code handed to the client, waiting for its exchange.
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    subject: String,
    groups: Vec<String>,
    issued: Instant,
}

impl DevIssuerEndpoints {
    /// The endpoints of `issuer` for a console at `base` (its URL), whose
    /// sign-in form proposes `subject` in `groups`.
    pub fn new(
        issuer: Arc<DevIssuer>,
        base: &str,
        client_id: &str,
        subject: String,
        groups: Vec<String>,
    ) -> DevIssuerEndpoints {
        let base = base.trim_end_matches('/');
        DevIssuerEndpoints {
            issuer,
            url: format!("{base}{PATH}"),
            client_id: client_id.to_string(),
            origin: base.to_string(),
            subject,
            groups,
            codes: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer identifier (and discovery base) the console signs in with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(&format!("{PATH}/.well-known/openid-configuration"), get(discovery))
            .route(&format!("{PATH}/authorize"), get(form).post(authorize))
            .route(&format!("{PATH}/token"), axum::routing::post(token))
            .route(&format!("{PATH}/jwks"), get(jwks))
            .with_state(self)
    }

    fn redirect_allowed(&self, uri: &str) -> bool {
        uri.strip_prefix(&self.origin).is_some_and(|rest| rest.starts_with('/'))
    }
}

async fn discovery(State(dev): State<Arc<DevIssuerEndpoints>>) -> Json<serde_json::Value> {
    Json(json!({
        "issuer": dev.url,
        "authorization_endpoint": format!("{}/authorize", dev.url),
        "token_endpoint": format!("{}/token", dev.url),
        "jwks_uri": format!("{}/jwks", dev.url),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "scopes_supported": ["openid"],
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "groups"],
    }))
}

async fn jwks(State(dev): State<Arc<DevIssuerEndpoints>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(dev.issuer.jwks()).unwrap_or_else(|_| json!({ "keys": [] })))
}

/// An authorization request's parameters.
#[derive(Deserialize)]
struct AuthorizeRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// From the form: who signs in.
    subject: Option<String>,
    groups: Option<String>,
}

/// A checked authorization request.
struct Checked<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    challenge: &'a str,
}

fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>Sign-in refused</title><h1>Sign-in refused</h1><p>{}</p>",
            escape(&message)
        )),
    )
        .into_response()
}

impl AuthorizeRequest {
    fn check<'a>(&'a self, dev: &DevIssuerEndpoints) -> Result<Checked<'a>, String> {
        if self.response_type.as_deref() != Some("code") {
            return Err("only the authorization code flow is served (response_type=code)".into());
        }
        if !self.scope.as_deref().unwrap_or_default().split(' ').any(|s| s == "openid") {
            return Err("the scope must include openid".into());
        }
        let client_id = self.client_id.as_deref().filter(|c| !c.is_empty());
        let client_id = client_id.ok_or("client_id is missing")?;
        if client_id != dev.client_id {
            return Err(format!("client_id {client_id:?} is unknown here: the dev issuer serves the console only"));
        }
        let long =
            [&self.state, &self.nonce, &self.scope].iter().any(|f| f.as_ref().is_some_and(|v| v.len() > MAX_FIELD));
        if long || self.redirect_uri.as_ref().is_some_and(|v| v.len() > MAX_URI) {
            return Err("a parameter of this sign-in is too long".into());
        }
        let redirect_uri = self.redirect_uri.as_deref().unwrap_or_default();
        if !dev.redirect_allowed(redirect_uri) {
            return Err(format!(
                "redirect_uri {redirect_uri:?} is not on this console ({}): the dev issuer redirects nowhere else",
                dev.origin
            ));
        }
        if self.code_challenge_method.as_deref() != Some("S256") {
            return Err("PKCE is required: code_challenge_method=S256".into());
        }
        let challenge = self.code_challenge.as_deref().filter(|c| (43..=128).contains(&c.len()));
        let challenge = challenge.ok_or("code_challenge is missing or malformed")?;
        Ok(Checked { client_id, redirect_uri, challenge })
    }
}

/// The sign-in form: the request's parameters carried as hidden fields.
async fn form(State(dev): State<Arc<DevIssuerEndpoints>>, Query(request): Query<AuthorizeRequest>) -> Response {
    if let Err(refused) = request.check(&dev) {
        return bad(refused);
    }
    let hidden: String = [
        ("response_type", &request.response_type),
        ("client_id", &request.client_id),
        ("redirect_uri", &request.redirect_uri),
        ("scope", &request.scope),
        ("state", &request.state),
        ("nonce", &request.nonce),
        ("code_challenge", &request.code_challenge),
        ("code_challenge_method", &request.code_challenge_method),
    ]
    .iter()
    .filter_map(|(name, value)| {
        value.as_ref().map(|v| format!("<input type=hidden name={name} value=\"{}\">", escape(v)))
    })
    .collect();
    Html(format!(
        include_str!("../../assets/dev-issuer.html"),
        action = escape(&format!("{}/authorize", dev.url)),
        hidden = hidden,
        subject = escape(&dev.subject),
        groups = escape(&dev.groups.join(", ")),
    ))
    .into_response()
}

/// The form submitted: a one-time code for the client, bound to its PKCE
/// challenge and redirect.
async fn authorize(State(dev): State<Arc<DevIssuerEndpoints>>, Form(request): Form<AuthorizeRequest>) -> Response {
    let checked = match request.check(&dev) {
        Ok(checked) => checked,
        Err(refused) => return bad(refused),
    };
    let subject = request.subject.as_deref().unwrap_or_default().trim().to_string();
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return bad(format!("a subject of 1 to {MAX_SUBJECT} bytes is needed to sign in"));
    }
    let groups: Vec<String> = request
        .groups
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() > MAX_GROUPS || groups.iter().any(|g| g.len() > MAX_SUBJECT) {
        return bad(format!("at most {MAX_GROUPS} groups of at most {MAX_SUBJECT} bytes each"));
    }
    let Some(code) = random_token() else { return bad("no randomness for a code; try again".into()) };
    {
        let mut codes = dev.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, c| c.issued.elapsed() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            return bad("too many sign-ins are waiting; try again in a minute".into());
        }
        codes.insert(
            code.clone(),
            Code {
                client_id: checked.client_id.to_string(),
                redirect_uri: checked.redirect_uri.to_string(),
                challenge: checked.challenge.to_string(),
                nonce: request.nonce.clone(),
                subject,
                groups,
                issued: Instant::now(),
            },
        );
    }
    let mut target = format!("{}?code={}", checked.redirect_uri, urlencode(&code));
    if let Some(state) = &request.state {
        target.push_str(&format!("&state={}", urlencode(state)));
    }
    Redirect::to(&target).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
}

fn token_error(error: &str, description: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// A code and its PKCE verifier exchanged for an ID token (once).
async fn token(State(dev): State<Arc<DevIssuerEndpoints>>, Form(request): Form<TokenRequest>) -> Response {
    if request.grant_type.as_deref() != Some("authorization_code") {
        return token_error("unsupported_grant_type", "only authorization_code is served".into());
    }
    let code = request.code.as_deref().unwrap_or_default();
    // Taken out whatever follows: a code is used once.
    let Some(grant) = dev.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(code) else {
        return token_error("invalid_grant", "the code is unknown or was used already".into());
    };
    if grant.issued.elapsed() >= CODE_TTL {
        return token_error("invalid_grant", "the code expired; sign in again".into());
    }
    if request.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return token_error("invalid_grant", "redirect_uri is not the one the code was issued for".into());
    }
    if request.client_id.as_deref().is_some_and(|c| c != grant.client_id) {
        return token_error("invalid_client", "client_id is not the one the code was issued to".into());
    }
    let verifier = request.code_verifier.as_deref().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return token_error("invalid_grant", "the PKCE code_verifier does not match the challenge".into());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let ttl = ID_TOKEN_TTL.min(dev.issuer.max_ttl());
    let mut claims = json!({
        "iss": dev.url,
        "aud": grant.client_id,
        "sub": grant.subject,
        "groups": grant.groups,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(nonce) = &grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    match (dev.issuer.sign_claims(&claims), random_token()) {
        (Ok(id_token), Some(access_token)) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "id_token": id_token,
            })),
        )
            .into_response(),
        (Err(e), _) => {
            let error = json!({ "error": "server_error", "error_description": e.to_string() });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response()
        }
        (_, None) => token_error("server_error", "no randomness for a token; try again".into()),
    }
}

/// 32 random bytes, base64url (none if the system gives no randomness).
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

pub fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proctor_identity::token::DevIssuerConfig;

    fn endpoints() -> (tempfile::TempDir, Arc<DevIssuerEndpoints>) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(DevIssuer::open_or_create(dir.path(), &DevIssuerConfig::default()).unwrap());
        let dev = DevIssuerEndpoints::new(
            issuer,
            "http://127.0.0.1:7070",
            "proctor-console",
            "ivy".into(),
            vec!["investigators".into()],
        );
        (dir, Arc::new(dev))
    }

    fn request(challenge: &str, redirect: &str) -> AuthorizeRequest {
        AuthorizeRequest {
            response_type: Some("code".into()),
            client_id: Some("proctor-console".into()),
            redirect_uri: Some(redirect.into()),
            scope: Some("openid".into()),
            state: Some("s1".into()),
            nonce: Some("n1".into()),
            code_challenge: Some(challenge.into()),
            code_challenge_method: Some("S256".into()),
            subject: Some("ivy".into()),
            groups: Some("investigators, auditors".into()),
        }
    }

    /// The code the issuer redirected to the client with.
    async fn code_for(dev: &Arc<DevIssuerEndpoints>, challenge: &str) -> String {
        let response =
            authorize(State(dev.clone()), Form(request(challenge, "http://127.0.0.1:7070/auth/callback"))).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let location = response.headers()[header::LOCATION].to_str().unwrap().to_string();
        assert!(location.ends_with("&state=s1"), "{location}");
        location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string()
    }

    fn exchange(code: &str, verifier: &str, redirect: &str) -> TokenRequest {
        TokenRequest {
            grant_type: Some("authorization_code".into()),
            code: Some(code.into()),
            redirect_uri: Some(redirect.into()),
            client_id: Some("proctor-console".into()),
            code_verifier: Some(verifier.into()),
        }
    }

    async fn answer(response: Response) -> (StatusCode, serde_json::Value) {
        use http_body_util::BodyExt;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_code_is_exchanged_once_with_its_pkce_verifier_for_a_signed_id_token() {
        let (_dir, dev) = endpoints();
        let verifier = "a-verifier-long-enough-to-be-a-real-pkce-verifier-0123456789";
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1:7070/auth/callback";
        let code = code_for(&dev, &challenge).await;
        // The wrong verifier is refused (and spends the code).
        let (status, body) = answer(token(State(dev.clone()), Form(exchange(&code, "guess", redirect))).await).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
        let code = code_for(&dev, &challenge).await;
        let (status, body) = answer(token(State(dev.clone()), Form(exchange(&code, verifier, redirect))).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id_token = body["id_token"].as_str().unwrap();
        let payload = id_token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["iss"], "http://127.0.0.1:7070/dev-issuer");
        assert_eq!(claims["aud"], "proctor-console");
        assert_eq!(claims["nonce"], "n1");
        assert_eq!(claims["groups"], json!(["investigators", "auditors"]));
        // Used once.
        let (status, body) = answer(token(State(dev.clone()), Form(exchange(&code, verifier, redirect))).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        // Another redirect than the code's.
        let code = code_for(&dev, &challenge).await;
        let other = "http://127.0.0.1:7070/elsewhere";
        let (status, _) = answer(token(State(dev.clone()), Form(exchange(&code, verifier, other))).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn requests_without_pkce_or_to_another_origin_are_refused() {
        let (_dir, dev) = endpoints();
        let challenge = "x".repeat(43);
        let away = authorize(State(dev.clone()), Form(request(&challenge, "https://evil.example/cb"))).await;
        assert_eq!(away.status(), StatusCode::BAD_REQUEST);
        let lookalike = authorize(State(dev.clone()), Form(request(&challenge, "http://127.0.0.1:70701/cb"))).await;
        assert_eq!(lookalike.status(), StatusCode::BAD_REQUEST, "another port is another origin");
        let mut plain = request(&challenge, "http://127.0.0.1:7070/auth/callback");
        plain.code_challenge_method = Some("plain".into());
        assert_eq!(authorize(State(dev.clone()), Form(plain)).await.status(), StatusCode::BAD_REQUEST);
        let mut stranger = request(&challenge, "http://127.0.0.1:7070/auth/callback");
        stranger.client_id = Some("another-app".into());
        assert_eq!(authorize(State(dev.clone()), Form(stranger)).await.status(), StatusCode::BAD_REQUEST);
        let mut bare = request("", "http://127.0.0.1:7070/auth/callback");
        bare.code_challenge = None;
        assert_eq!(authorize(State(dev), Form(bare)).await.status(), StatusCode::BAD_REQUEST);
    }
}
