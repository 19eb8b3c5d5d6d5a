//! An issuer's keys fetched over HTTPS: verified against the configured
//! certificate, cached, fetched again when the issuer rotates its key, and
//! never over plain HTTP. The JWKS is served by a real HTTPS server on a
//! loopback port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proctor_gateway_core::config::TlsConfig;
use proctor_gateway_core::identity::{DevIssuer, DevIssuerConfig, IdentityError, IssuerConfig, Verifier};

/// Serves whatever `jwks` holds at `https://localhost:PORT/jwks`; returns
/// the URL and the server's certificate (PEM file).
fn serve(jwks: Arc<Mutex<String>>, dir: &std::path::Path) -> (String, std::path::PathBuf, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (tls, cert) = proctor_gateway_core::tls::http_server_config(&TlsConfig::default(), dir).unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { jwks.lock().unwrap().clone() }
        }),
    );
    runtime.spawn(proctor_gateway_core::http::serve(listener, app, Some(tls), std::future::pending()));
    (format!("https://localhost:{port}/jwks"), cert, runtime)
}

fn issuer(url: &str, ca: Option<std::path::PathBuf>) -> IssuerConfig {
    IssuerConfig {
        issuer: "proctor-dev".into(),
        audience: "proctor".into(),
        jwks_file: None,
        jwks_url: Some(url.to_string()),
        jwks_ca_file: ca,
        groups_claim: "groups".into(),
        algorithms: vec!["EdDSA".into()],
        leeway: Duration::from_secs(60),
    }
}

fn dev_issuer() -> (tempfile::TempDir, DevIssuer) {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::open_or_create(dir.path(), &DevIssuerConfig::default()).unwrap();
    (dir, dev)
}

#[test]
fn keys_come_over_https_and_a_rotation_is_fetched() {
    let (_a_dir, a) = dev_issuer();
    let jwks = Arc::new(Mutex::new(serde_json::to_string(&a.jwks()).unwrap()));
    let tls_dir = tempfile::tempdir().unwrap();
    let (url, cert, _server) = serve(jwks.clone(), tls_dir.path());

    let verifier = Verifier::new(&[issuer(&url, Some(cert.clone()))]).unwrap();
    let token = a.sign("alice", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().subject, "alice");

    // The issuer rotates to a new key: its first token fetches the JWKS again.
    let (_b_dir, b) = dev_issuer();
    *jwks.lock().unwrap() = serde_json::to_string(&b.jwks()).unwrap();
    let token = b.sign("bob", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().subject, "bob");

    // A server whose certificate is not the trusted one gives no keys: the
    // gateway starts (the provider may come back) and refuses the tokens.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_cert) =
        proctor_gateway_core::tls::http_server_config(&TlsConfig::default(), other_dir.path()).unwrap();
    let untrusting = Verifier::new(&[issuer(&url, Some(other_cert))]).unwrap();
    assert!(matches!(untrusting.verify(&token), Err(IdentityError::UnknownKey { .. })));
}

#[test]
fn plain_http_and_two_sources_are_configuration_errors() {
    let error = Verifier::new(&[issuer("http://localhost:1/jwks", None)]).err().unwrap();
    assert!(error.to_string().contains("https://"), "{error}");
    let mut both = issuer("https://localhost:1/jwks", None);
    both.jwks_file = Some("jwks.json".into());
    let error = Verifier::new(&[both]).err().unwrap();
    assert!(error.to_string().contains("either jwks_file or jwks_url"), "{error}");
}
