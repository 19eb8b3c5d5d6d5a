//! The CLI's client for a running replay server (`--server URL --token T`).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a request to the server failed, in words for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the replay server at {server}: {message}")]
    Unreachable { server: String, message: String },
    /// The server refused, with its own explanation.
    #[error("the replay server answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// Encodes query parameters (`name=value&...`), skipping absent ones.
pub fn query_string<'a>(params: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        if let Some(value) = value {
            out.append_pair(name, &value);
        }
    }
    out.finish()
}

/// GETs `path` (with its query) from `server` with the bearer `token`, and
/// returns the JSON answer.
pub fn get_json(server: &str, path: &str, token: &str) -> Result<serde_json::Value, ClientError> {
    let base = server.trim_end_matches('/');
    if base.starts_with("https://") {
        return Err(ClientError::Usage(
            "this client speaks plain HTTP only: reach the replay server on a trusted network or through a tunnel (http://...)"
                .into(),
        ));
    }
    if !base.starts_with("http://") {
        return Err(ClientError::Usage(format!("--server {server:?}: expected a URL such as http://127.0.0.1:7070")));
    }
    let uri: hyper::Uri =
        format!("{base}{path}").parse().map_err(|e| ClientError::Usage(format!("--server {server:?}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Usage(format!("cannot start a runtime: {e}")))?;
    let unreachable = |message: String| ClientError::Unreachable { server: base.to_string(), message };
    runtime.block_on(async {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::get(uri)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(60), client.request(request))
            .await
            .map_err(|_| unreachable("no answer within 60 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }));
        if !status.is_success() {
            let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no explanation").to_string();
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        Ok(value)
    })
}
