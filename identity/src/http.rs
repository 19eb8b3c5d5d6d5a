//! Serving an axum router over plain HTTP or rustls, with a graceful stop:
//! shared by the control API and the replay server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A server's TLS configuration (rustls, ring provider).
pub type ServerTls = Arc<rustls::ServerConfig>;

/// Serves `app` on `listener` until `shutdown` resolves; requests in flight
/// then get a few seconds to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        tracing::warn!(%error, "could not accept an API connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                connections.spawn(async move {
                    // A handshake that does not finish in time is dropped.
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
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
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while connections.join_next().await.is_some() {} }).await;
    Ok(())
}

/// The bearer token of a request (empty if none).
pub fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .unwrap_or_default()
}

/// An error answer of Proctor's APIs: `{"error": "..."}` with its status;
/// a 401 carries an RFC 6750 challenge.
pub struct ApiError {
    pub status: axum::http::StatusCode,
    pub message: String,
    /// A 401 for a request that presented no token: a bare challenge.
    no_token: bool,
}

impl ApiError {
    pub fn new(status: axum::http::StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), no_token: false }
    }

    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{StatusCode, header};
        let body = axum::Json(serde_json::json!({ "error": self.message }));
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

/// Who sent a request: its bearer token verified (401 if it does not).
pub async fn caller(
    verifier: &crate::token::Verifier,
    headers: &axum::http::HeaderMap,
) -> Result<crate::token::Identity, ApiError> {
    use crate::token::IdentityError;
    verifier.verify(bearer(headers)).await.map_err(|e| match e {
        IdentityError::Config(_) => ApiError::internal(e),
        other => ApiError {
            no_token: matches!(other, IdentityError::Missing),
            ..ApiError::new(axum::http::StatusCode::UNAUTHORIZED, other.to_string())
        },
    })
}

/// One request on a fresh HTTP/1.1 connection over `io` (TCP or TLS): the
/// answer, its body read whole, up to `max_body` bytes. Shared by Proctor's
/// HTTP clients (the CLI's, the JWKS fetch, the console's sign-in).
pub async fn send_once<S>(
    io: S,
    request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
    max_body: usize,
) -> Result<hyper::Response<hyper::body::Bytes>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok(hyper::Response::from_parts(parts, body))
}

/// GETs an `https://` URL, trusting the certificates in `ca_file`; gives up
/// after `timeout`. Returns the body of a `200`, refused past `max_body`
/// bytes. Asynchronous all the way
/// (the CA file is read on the blocking pool): waiting on a slow identity
/// provider holds no worker thread.
pub async fn fetch_https(
    url: &str,
    ca_file: &std::path::Path,
    timeout: Duration,
    max_body: usize,
) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} is not an https:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(443);
    let ca_file = ca_file.to_path_buf();
    let config = tokio::task::spawn_blocking(move || crate::tls::api_client_config(&ca_file))
        .await
        .map_err(|e| format!("reading the CA file failed: {e}"))?
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host:?}: {e}"))?;
    // The Host header names the host and port, never userinfo in the URL.
    let authority = match uri.port_u16() {
        Some(port) => format!("{}:{port}", uri.host().unwrap_or_default()),
        None => uri.host().unwrap_or_default().to_string(),
    };
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    let fetch = async move {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        let stream =
            tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())?;
        let response = send_once(stream, request, max_body).await?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        Ok(response.into_body().to_vec())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
}
