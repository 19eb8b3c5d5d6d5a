//! The CLI's client for Proctor's running APIs: the replay server
//! (`--server URL --token T`) and the control API (`--api URL --token T`).

use http_body_util::Full;
use hyper::body::Bytes;
use proctor_identity::http::send_once;

/// Why a request to the server failed, in words for the command line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the {what} at {server}: {message}")]
    Unreachable { what: &'static str, server: String, message: String },
    /// The server refused, with its own explanation.
    #[error("the {what} answered {status}: {message}")]
    Refused { what: &'static str, status: u16, message: String },
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

/// A replay server to ask: its address, the token to present and, for
/// `https://`, the certificates to trust (PEM; the server's own, or its CA),
/// checked once for every request made through it.
pub struct Client {
    base: String,
    host: String,
    port: u16,
    authority: String,
    /// The server's path prefix, if it is served under one.
    prefix: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: String,
    runtime: tokio::runtime::Runtime,
    /// What the server is, for messages (`replay server`, `control API`).
    what: &'static str,
    /// The flag that named it.
    flag: &'static str,
}

impl Client {
    pub fn new(server: &str, token: &str, ca_file: Option<&std::path::Path>) -> Result<Client, ClientError> {
        Client::named(server, token, ca_file, "replay server", "--server")
    }

    /// A client of another of Proctor's APIs: `what` names it in messages,
    /// `flag` is the command-line flag that gave its URL.
    pub fn named(
        server: &str,
        token: &str,
        ca_file: Option<&std::path::Path>,
        what: &'static str,
        flag: &'static str,
    ) -> Result<Client, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let usage = |m: String| ClientError::Usage(format!("{flag} {server:?}: {m}"));
        let uri: hyper::Uri = base.parse().map_err(|e| usage(format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let ca = ca_file.ok_or_else(|| {
                    ClientError::Usage(
                        "an https:// server needs --ca-file FILE (or $PROCTOR_CA_FILE): the certificate to trust"
                            .into(),
                    )
                })?;
                Some(proctor_identity::tls::api_client_config(ca).map_err(|e| ClientError::Usage(e.to_string()))?)
            }
            _ => return Err(usage("expected a URL such as http://127.0.0.1:7070".into())),
        };
        let host = uri.host().ok_or_else(|| usage("no host".into()))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let prefix = uri.path().trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot start a runtime: {e}")))?;
        Ok(Client { base, host, port, authority, prefix, tls, token: token.trim().to_string(), runtime, what, flag })
    }

    /// GETs `path` (with its query) and returns the JSON answer.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.exchange(hyper::Method::GET, path, None)
    }

    /// POSTs `body` as JSON to `path` and returns the JSON answer.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.exchange(hyper::Method::POST, path, Some(body))
    }

    fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let what = self.what;
        let unreachable = |message: String| ClientError::Unreachable { what, server: self.base.clone(), message };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(bytes)).map_err(|e| ClientError::Usage(format!("{path:?}: {e}")))?;
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let response = match &self.tls {
                None => send_once(tcp, request, usize::MAX).await,
                Some(config) => {
                    let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        ClientError::Usage(format!(
                            "{} {:?}: {:?} is not a server name: {e}",
                            self.flag, self.base, self.host
                        ))
                    })?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| unreachable(format!("TLS: {e}")))?;
                    send_once(stream, request, usize::MAX).await
                }
            };
            let response = response.map_err(unreachable)?;
            Ok((response.status(), response.into_body()))
        };
        self.runtime.block_on(async {
            let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), exchange)
                .await
                .map_err(|_| unreachable("no answer within 60 s".into()))??;
            let value: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }));
            if !status.is_success() {
                let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no explanation").to_string();
                return Err(ClientError::Refused { what, status: status.as_u16(), message });
            }
            Ok(value)
        })
    }
}
