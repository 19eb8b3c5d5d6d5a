//! The HTTP client the console's OpenID Connect flow speaks to its issuer
//! with (discovery, JWKS, the code exchange): hyper over TCP, and rustls for
//! `https://` (trusting `ca_file`, else the system's bundle). One request
//! per connection, a time limit on each, no redirects followed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use proctor_identity::http::send_once;

/// How long one request to the issuer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read from the issuer.
const MAX_BODY: usize = 1 << 20;

/// Where the system's trusted certificates are, on Debian and its kin.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpClientError(pub String);

/// Sends `request` to the issuer and reads its answer.
pub async fn call(
    ca_file: Option<PathBuf>,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpClientError> {
    tokio::time::timeout(TIMEOUT, exchange(ca_file.as_deref(), request))
        .await
        .map_err(|_| HttpClientError(format!("the issuer did not answer within {}s", TIMEOUT.as_secs())))?
}

async fn exchange(
    ca_file: Option<&Path>,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpClientError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| HttpClientError(format!("{what}: {e}"));
    let uri = request.uri().clone();
    let host = uri.host().ok_or_else(|| HttpClientError(format!("{uri} has no host")))?;
    let host = host.trim_matches(['[', ']']).to_string();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HttpClientError(format!("{uri}: only http:// and https:// are spoken"))),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| fail(&uri.to_string(), &e))?;
    let (parts, body) = request.into_parts();
    let mut outgoing = hyper::Request::from_parts(parts, Full::new(Bytes::from(body)));
    // Origin form on the wire, with the Host header.
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
    *outgoing.uri_mut() = path.parse().map_err(|e| fail("path", &e))?;
    if let Some(authority) = uri.authority() {
        let value = authority.as_str().parse().map_err(|e| fail("host", &e))?;
        outgoing.headers_mut().insert(hyper::header::HOST, value);
    }
    let response = if https {
        let bundle = ca_file.unwrap_or(Path::new(SYSTEM_BUNDLE));
        let config = proctor_identity::tls::api_client_config(bundle).map_err(|e| fail("TLS", &e))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(&host, &e))?;
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| fail("TLS", &e))?;
        send_once(stream, outgoing, MAX_BODY).await
    } else {
        send_once(tcp, outgoing, MAX_BODY).await
    };
    let (parts, body) = response.map_err(HttpClientError)?.into_parts();
    Ok(openidconnect::HttpResponse::from_parts(parts, body.to_vec()))
}
