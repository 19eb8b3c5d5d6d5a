//! The CLI's client for a running replay server (`--server URL --token T`).

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

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

/// GETs `path` (with its query) from `server` (`http://` or `https://`)
/// with the bearer `token`, and returns the JSON answer. For `https://`,
/// `ca_file` holds the certificates to trust (PEM; the server's own
/// certificate, or its CA).
pub fn get_json(
    server: &str,
    path: &str,
    token: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<serde_json::Value, ClientError> {
    let base = server.trim_end_matches('/');
    let usage = |m: String| ClientError::Usage(format!("--server {server:?}: {m}"));
    let uri: hyper::Uri = format!("{base}{path}").parse().map_err(|e| usage(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => {
            let ca = ca_file.ok_or_else(|| {
                ClientError::Usage(
                    "an https:// server needs --ca-file FILE (or $PROCTOR_CA_FILE): the certificate to trust".into(),
                )
            })?;
            Some(proctor_gateway_core::tls::api_client_config(ca).map_err(|e| ClientError::Usage(e.to_string()))?)
        }
        _ => return Err(usage("expected a URL such as http://127.0.0.1:7070".into())),
    };
    let host = uri.host().ok_or_else(|| usage("no host".into()))?.trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Usage(format!("cannot start a runtime: {e}")))?;
    let unreachable = |message: String| ClientError::Unreachable { server: base.to_string(), message };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let request = hyper::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let exchange = async {
        let tcp =
            tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| unreachable(e.to_string()))?;
        let response = match tls {
            None => send(TokioIo::new(tcp), request).await,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| usage(format!("{host:?} is not a server name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                send(TokioIo::new(stream), request).await
            }
        };
        response.map_err(|e| unreachable(e.to_string()))
    };
    runtime.block_on(async {
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), exchange)
            .await
            .map_err(|_| unreachable("no answer within 60 s".into()))??;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }));
        if !status.is_success() {
            let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no explanation").to_string();
            return Err(ClientError::Refused { status: status.as_u16(), message });
        }
        Ok(value)
    })
}

/// One request on a fresh HTTP/1.1 connection.
async fn send<S>(
    io: TokioIo<S>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
