//! An issuer's keys fetched over HTTPS: verified against the configured
//! certificate, cached, fetched again when the issuer rotates its key, and
//! never over plain HTTP; fetching them holds no async worker. The JWKS is
//! served by a real HTTPS server on a loopback port.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proctor_identity::tls::TlsConfig;
use proctor_identity::token::{DevIssuer, DevIssuerConfig, IdentityError, IssuerConfig, Verifier};

/// Serves whatever `jwks` holds at `https://localhost:PORT/jwks` (nothing
/// ever, while it holds nothing; after 300 ms, what follows `slow:`);
/// returns the URL and the server's certificate (PEM file).
fn serve(jwks: Arc<Mutex<String>>, dir: &std::path::Path) -> (String, std::path::PathBuf, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (tls, cert) = proctor_identity::tls::http_server_config(&TlsConfig::default(), dir).unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move {
                let jwks = jwks.lock().unwrap().clone();
                if jwks.is_empty() {
                    std::future::pending::<()>().await;
                }
                match jwks.strip_prefix("slow:") {
                    Some(answer) => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        answer.to_string()
                    }
                    None => jwks,
                }
            }
        }),
    );
    runtime.spawn(proctor_identity::http::serve(listener, app, Some(tls), std::future::pending()));
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

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

#[test]
fn keys_come_over_https_and_a_rotation_is_fetched() {
    let (_a_dir, a) = dev_issuer();
    let jwks = Arc::new(Mutex::new(serde_json::to_string(&a.jwks()).unwrap()));
    let tls_dir = tempfile::tempdir().unwrap();
    let (url, cert, _server) = serve(jwks.clone(), tls_dir.path());

    let verifier = block_on(Verifier::new(&[issuer(&url, Some(cert.clone()))])).unwrap();
    let token = a.sign("alice", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert_eq!(block_on(verifier.verify(&token)).unwrap().subject, "alice");

    // The issuer rotates to a new key: its first token fetches the JWKS again.
    let (_b_dir, b) = dev_issuer();
    *jwks.lock().unwrap() = serde_json::to_string(&b.jwks()).unwrap();
    let token = b.sign("bob", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert_eq!(block_on(verifier.verify(&token)).unwrap().subject, "bob");

    // A server whose certificate is not the trusted one gives no keys: the
    // gateway starts (the provider may come back) and refuses the tokens.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_cert) = proctor_identity::tls::http_server_config(&TlsConfig::default(), other_dir.path()).unwrap();
    let untrusting = block_on(Verifier::new(&[issuer(&url, Some(other_cert))])).unwrap();
    assert!(matches!(block_on(untrusting.verify(&token)), Err(IdentityError::UnknownKey { .. })));
}

#[test]
fn plain_http_and_two_sources_are_configuration_errors() {
    let error = block_on(Verifier::new(&[issuer("http://localhost:1/jwks", None)])).err().unwrap();
    assert!(error.to_string().contains("https://"), "{error}");
    let mut both = issuer("https://localhost:1/jwks", None);
    both.jwks_file = Some("jwks.json".into());
    let error = block_on(Verifier::new(&[both])).err().unwrap();
    assert!(error.to_string().contains("either jwks_file or jwks_url"), "{error}");
}

/// A token naming a key the issuer may have added sends for its keys again;
/// an issuer that takes its time answering holds up that token alone, not
/// the thread it is verified on: on a runtime of one thread, other tasks
/// run meanwhile.
#[test]
fn fetching_keys_holds_no_worker() {
    let (_a_dir, a) = dev_issuer();
    let jwks = Arc::new(Mutex::new(serde_json::to_string(&a.jwks()).unwrap()));
    let tls_dir = tempfile::tempdir().unwrap();
    let (url, cert, _server) = serve(jwks.clone(), tls_dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let verifier = runtime.block_on(Verifier::new(&[issuer(&url, Some(cert))])).unwrap();
    // The issuer stops answering; a token of a key it never published makes
    // the verifier ask it again.
    jwks.lock().unwrap().clear();
    let (_b_dir, b) = dev_issuer();
    let token = b.sign("mallory", &["ci".into()], Duration::from_secs(600)).unwrap();
    let started = std::time::Instant::now();
    let (verified, ticks) = runtime.block_on(async {
        let ticker = async {
            let mut ticks = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                ticks += 1;
                if ticks == 25 {
                    return ticks;
                }
            }
        };
        tokio::join!(tokio::time::timeout(Duration::from_millis(500), verifier.verify(&token)), ticker)
    });
    assert!(verified.is_err(), "the verification is still waiting for the issuer: {verified:?}");
    assert_eq!(ticks, 25);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the other task ran while the keys were fetched ({:?})",
        started.elapsed()
    );
}

/// A caller that gives up while the issuer's keys are read again (a client
/// that hangs up) does not cancel the read: the next token of the new key
/// verifies, within the 30 s in which no second read is allowed. And a key
/// set that comes back empty does not replace the keys at hand.
#[test]
fn a_caller_that_goes_away_does_not_cancel_the_read_and_an_empty_set_changes_nothing() {
    let (_a_dir, a) = dev_issuer();
    let jwks = Arc::new(Mutex::new(serde_json::to_string(&a.jwks()).unwrap()));
    let tls_dir = tempfile::tempdir().unwrap();
    let (url, cert, _server) = serve(jwks.clone(), tls_dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let verifier = runtime.block_on(Verifier::new(&[issuer(&url, Some(cert.clone()))])).unwrap();

    // An empty set is not adopted: a's tokens still verify.
    *jwks.lock().unwrap() = r#"{"keys":[]}"#.to_string();
    let (_x_dir, stranger) = dev_issuer();
    let forged = stranger.sign("mallory", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert!(runtime.block_on(verifier.verify(&forged)).is_err());
    let token = a.sign("alice", &["ci".into()], Duration::from_secs(600)).unwrap();
    assert_eq!(runtime.block_on(verifier.verify(&token)).unwrap().subject, "alice");

    // Another verifier, the issuer rotated to b: the first token of b asks
    // for the keys and its caller goes away at once.
    let (_b_dir, b) = dev_issuer();
    *jwks.lock().unwrap() = serde_json::to_string(&a.jwks()).unwrap();
    let second = runtime.block_on(Verifier::new(&[issuer(&url, Some(cert))])).unwrap();
    *jwks.lock().unwrap() = format!("slow:{}", serde_json::to_string(&b.jwks()).unwrap());
    let token = b.sign("bob", &["ci".into()], Duration::from_secs(600)).unwrap();
    runtime.block_on(async {
        // Polled once (the read starts; the issuer takes 300 ms), then dropped.
        let mut verify = Box::pin(second.verify(&token));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(verify.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the keys had not come yet");
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match runtime.block_on(second.verify(&token)) {
            Ok(identity) => break assert_eq!(identity.subject, "bob"),
            Err(IdentityError::UnknownKey { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("the read the first caller started was cancelled with it: {error}"),
        }
    }
}
