//! The CLI's client for Proctor's running APIs: the replay server
//! (`--server URL --token T`) and the control API (`--api URL --token T`).

use http_body_util::Full;
use hyper::body::Bytes;

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

    /// Builds a request of `path` with the token (and `body` as JSON).
    fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        accept: &str,
    ) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::ACCEPT, accept);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        request.body(Full::new(bytes)).map_err(|e| ClientError::Usage(format!("{path:?}: {e}")))
    }

    fn unreachable(&self, message: String) -> ClientError {
        ClientError::Unreachable { what: self.what, server: self.base.clone(), message }
    }

    /// Connects (over TLS for `https://`) and sends `request`; the answer's
    /// body is read by the caller.
    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        async fn over<S>(
            io: S,
            request: hyper::Request<Full<Bytes>>,
        ) -> Result<hyper::Response<hyper::body::Incoming>, String>
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(|e| e.to_string())
        }
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let response = match &self.tls {
            None => over(tcp, request).await,
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
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                over(stream, request).await
            }
        };
        response.map_err(|e| self.unreachable(e))
    }

    /// The server's refusal, from its JSON error body.
    fn refused(&self, status: hyper::StatusCode, body: &[u8]) -> ClientError {
        let value: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(body).trim().to_string() }));
        let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("no explanation").to_string();
        ClientError::Refused { what: self.what, status: status.as_u16(), message }
    }

    fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        use http_body_util::BodyExt;
        let request = self.request(method, path, body, "application/json")?;
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        self.runtime.block_on(async {
            let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(60), exchange)
                .await
                .map_err(|_| self.unreachable("no answer within 60 s".into()))??;
            if !status.is_success() {
                return Err(self.refused(status, &body));
            }
            let value: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }));
            Ok(value)
        })
    }

    /// POSTs `body` as JSON to `path` and writes the answer's body to the
    /// new file `out` as it arrives (a download of any size; a minute
    /// without a byte gives up, and the partial file is removed). Returns
    /// the answer's headers.
    pub fn post_download(
        &self,
        path: &str,
        body: &serde_json::Value,
        out: &std::path::Path,
    ) -> Result<hyper::HeaderMap, ClientError> {
        use http_body_util::BodyExt;
        use std::io::Write;
        let request = self.request(hyper::Method::POST, path, Some(body), "*/*")?;
        let idle = std::time::Duration::from_secs(60);
        let quiet = || self.unreachable(format!("no answer within {} s", idle.as_secs()));
        self.runtime.block_on(async {
            let response = tokio::time::timeout(idle, self.send(request)).await.map_err(|_| quiet())??;
            let (parts, mut body) = response.into_parts();
            if !parts.status.is_success() {
                let bytes = tokio::time::timeout(idle, body.collect()).await.map_err(|_| quiet())?;
                let bytes = bytes.map_err(|e| self.unreachable(e.to_string()))?.to_bytes();
                return Err(self.refused(parts.status, &bytes));
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", out.display())))?;
            let written = async {
                while let Some(frame) = tokio::time::timeout(idle, body.frame()).await.map_err(|_| quiet())? {
                    let frame = frame.map_err(|e| self.unreachable(format!("reading the answer: {e}")))?;
                    if let Some(data) = frame.data_ref() {
                        file.write_all(data).map_err(|e| ClientError::Usage(format!("{}: {e}", out.display())))?;
                    }
                }
                file.sync_all().map_err(|e| ClientError::Usage(format!("{}: {e}", out.display())))
            }
            .await;
            if let Err(error) = written {
                let _ = std::fs::remove_file(out);
                return Err(error);
            }
            Ok(parts.headers)
        })
    }
}
