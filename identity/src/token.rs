//! Who is calling: OIDC JSON Web Tokens verified against each configured
//! issuer's keys (JWKS), and the embedded dev issuer that signs tokens for
//! local use and tests.
//!
//! A token is accepted only if its issuer is configured, its algorithm is on
//! that issuer's allow-list (never `none`, never HMAC: a shared secret would
//! let anyone holding it mint identities), its signature verifies with a key
//! of the issuer's JWKS (found by `kid`; an unknown `kid` re-reads the
//! JWKS once, for key rotation), its audience matches, and it is within its
//! `nbf`..`exp` window give or take the configured clock skew.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

/// The `[identity]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The OIDC issuers whose tokens are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// The embedded dev issuer: off unless configured.
    #[serde(default)]
    pub dev_issuer: Option<DevIssuerConfig>,
}

/// One trusted OIDC issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// The `aud` this deployment expects.
    pub audience: String,
    /// The issuer's JWKS as a file (relative paths: from the config file) ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or fetched over HTTPS (cached; fetched again when a token names
    /// a key it does not hold, at most every 30 s).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The certificates trusted for `jwks_url` (PEM); by default the
    /// system's bundle.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// The claim holding the subject's groups (a list, or one space-separated string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Signature algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

/// The embedded dev issuer: an ed25519 key in the data dir's `keys/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerConfig {
    /// Whether it signs and its tokens are accepted.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_dev_issuer")]
    pub issuer: String,
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The longest lifetime `proctor token` grants.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
}

fn yes() -> bool {
    true
}

fn default_groups_claim() -> String {
    "groups".to_string()
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].iter().map(|s| s.to_string()).collect()
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_dev_issuer() -> String {
    "proctor-dev".to_string()
}

fn default_audience() -> String {
    "proctor".to_string()
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for DevIssuerConfig {
    fn default() -> Self {
        DevIssuerConfig {
            enabled: true,
            issuer: default_dev_issuer(),
            audience: default_audience(),
            max_ttl: default_max_ttl(),
        }
    }
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub issuer: String,
    pub groups: Vec<String>,
    /// Seconds since the epoch.
    pub expires_at: i64,
}

impl Identity {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Why a token was refused, in words a caller can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no bearer token: send `Authorization: Bearer <OIDC token>` (the dev issuer's come from `proctor token`)")]
    Missing,
    #[error("the token is not a JWT ({0})")]
    Malformed(String),
    #[error("tokens from issuer {0:?} are not accepted here")]
    UnknownIssuer(String),
    #[error("algorithm {alg} is not accepted from issuer {issuer:?} (accepted: {accepted})")]
    Algorithm { alg: String, issuer: String, accepted: String },
    #[error("no key {kid:?} in the JWKS of issuer {issuer:?}")]
    UnknownKey { kid: String, issuer: String },
    #[error("the token has expired; get a new one")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token is for another audience (expected {0:?})")]
    Audience(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("identity configuration: {0}")]
    Config(String),
}

/// The claims Proctor reads; the groups claim is looked up by name.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    iss: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

struct Issuer {
    config: Arc<IssuerConfig>,
    algorithms: Vec<Algorithm>,
    /// Shared with the task that reads them again.
    keys: Arc<RwLock<JwkSet>>,
    /// When the JWKS was last asked for (`None`: never since start): unknown
    /// key ids ask again at most once per [`JWKS_REFRESH`], so forged
    /// tokens cannot make every request do it.
    read_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The largest token accepted (a JWT with a few hundred groups fits).
const MAX_TOKEN: usize = 16 * 1024;

/// The shortest time between two reads of an issuer's JWKS.
const JWKS_REFRESH: Duration = Duration::from_secs(30);

/// Verifies tokens of the configured issuers.
pub struct Verifier {
    issuers: Vec<Issuer>,
}

fn parse_algorithm(name: &str, issuer: &str) -> Result<Algorithm, IdentityError> {
    let alg: Algorithm =
        name.parse().map_err(|_| IdentityError::Config(format!("issuer {issuer:?}: unknown algorithm {name:?}")))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(IdentityError::Config(format!(
            "issuer {issuer:?}: HMAC algorithm {name} is not accepted (a shared secret lets its holders mint tokens)"
        )));
    }
    Ok(alg)
}

/// Where the system keeps its trusted certificates (Debian's bundle).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long fetching a JWKS may take.
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JWKS read: an identity provider's key set is a few KiB.
const MAX_JWKS: usize = 1 << 20;

/// Reads an issuer's JWKS from its file or URL, without blocking the async
/// worker it runs on (the file on the blocking pool, the URL asynchronously).
async fn read_jwks(config: &IssuerConfig) -> Result<JwkSet, IdentityError> {
    let (bytes, source) = match (&config.jwks_file, &config.jwks_url) {
        (Some(path), None) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| IdentityError::Config(format!("cannot read JWKS {}: {e}", path.display())))?;
            (bytes, path.display().to_string())
        }
        (None, Some(url)) => {
            let ca = config.jwks_ca_file.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            let bytes = crate::http::fetch_https(url, &ca, JWKS_TIMEOUT, MAX_JWKS)
                .await
                .map_err(|e| IdentityError::Config(format!("cannot fetch JWKS {url}: {e}")))?;
            (bytes, url.clone())
        }
        _ => {
            return Err(IdentityError::Config(format!("issuer {:?}: set either jwks_file or jwks_url", config.issuer)));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| IdentityError::Config(format!("JWKS {source} is not a JSON Web Key Set: {e}")))
}

impl Verifier {
    /// Loads every issuer's keys; fails on a bad configuration.
    pub async fn new(configs: &[IssuerConfig]) -> Result<Verifier, IdentityError> {
        let mut issuers = Vec::with_capacity(configs.len());
        for config in configs {
            issuers.push({
                if config.algorithms.is_empty() {
                    return Err(IdentityError::Config(format!("issuer {:?}: no algorithms", config.issuer)));
                }
                let algorithms =
                    config.algorithms.iter().map(|a| parse_algorithm(a, &config.issuer)).collect::<Result<_, _>>()?;
                if let Some(url) = &config.jwks_url
                    && !url.starts_with("https://")
                {
                    return Err(IdentityError::Config(format!(
                        "issuer {:?}: jwks_url must be an https:// URL (keys fetched in clear could be swapped)",
                        config.issuer
                    )));
                }
                if config.jwks_file.is_some() == config.jwks_url.is_some() {
                    return Err(IdentityError::Config(format!(
                        "issuer {:?}: set either jwks_file or jwks_url",
                        config.issuer
                    )));
                }
                let keys = match read_jwks(config).await {
                    Ok(keys) => keys,
                    // An identity provider down at start-up must not keep
                    // the gateway down: its keys are fetched again when a
                    // token needs them.
                    Err(error) if config.jwks_url.is_some() => {
                        tracing::warn!(issuer = %config.issuer, %error, "starting without the issuer's keys");
                        JwkSet { keys: Vec::new() }
                    }
                    Err(error) => return Err(error),
                };
                let keys = Arc::new(RwLock::new(keys));
                // The first unknown key may ask again at once.
                let read_at = std::sync::Mutex::new(None);
                Issuer { config: Arc::new(config.clone()), algorithms, keys, read_at }
            });
        }
        Ok(Verifier { issuers })
    }

    /// Verifies `token` and returns who it names. A token signed by a key
    /// its issuer added since its keys were read has them read again (at
    /// most once per [`JWKS_REFRESH`]), without blocking the caller's worker.
    pub async fn verify(&self, token: &str) -> Result<Identity, IdentityError> {
        let mut read_again = None;
        let verified = self.verify_with_keys(token, Some(&mut read_again));
        let Some(index) = read_again else { return verified };
        // Read on a task of its own: a caller that goes away (a client that
        // hangs up) does not cancel it, so forged tokens cannot keep new
        // keys from being read.
        let issuer = &self.issuers[index];
        let (config, keys) = (issuer.config.clone(), issuer.keys.clone());
        let read = tokio::spawn(async move {
            match read_jwks(&config).await {
                // A set with no key (an issuer mid-deploy, a cache answering
                // wrongly) would lock everyone out: the keys at hand stay.
                Ok(fresh) if fresh.keys.is_empty() => {
                    tracing::warn!(issuer = %config.issuer, "the issuer's key set is empty now; keeping the keys it had");
                }
                Ok(fresh) => *keys.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                Err(error) => {
                    tracing::warn!(issuer = %config.issuer, %error, "cannot read the issuer's keys again");
                }
            }
        });
        if read.await.is_err() {
            return verified;
        }
        self.verify_with_keys(token, None)
    }

    /// [`Verifier::verify`] with the keys at hand. A token naming a key they
    /// lack is refused; with `read_again`, which is then set to the issuer
    /// whose keys may be read again now, if they may.
    fn verify_with_keys(&self, token: &str, read_again: Option<&mut Option<usize>>) -> Result<Identity, IdentityError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(IdentityError::Missing);
        }
        if token.len() > MAX_TOKEN {
            return Err(IdentityError::Malformed(format!("larger than {} KiB", MAX_TOKEN / 1024)));
        }
        if token.split('.').count() != 3 {
            return Err(IdentityError::Malformed(
                "expected three dot-separated parts, header.payload.signature".into(),
            ));
        }
        // `none` is named as what it is, not as an unknown algorithm.
        #[derive(Deserialize)]
        struct Alg {
            alg: Option<String>,
        }
        let raw_header = token.split('.').next().and_then(|h| URL_SAFE_NO_PAD.decode(h).ok());
        if let Some(Alg { alg: Some(alg) }) = raw_header.and_then(|h| serde_json::from_slice::<Alg>(&h).ok())
            && alg.eq_ignore_ascii_case("none")
        {
            return Err(IdentityError::Invalid("unsigned tokens (`alg: none`) are never accepted".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        // The issuer picks the keys: read it (unverified) from the payload.
        let payload = token.split('.').nth(1).ok_or_else(|| IdentityError::Malformed("no payload".into()))?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        let iss = serde_json::from_slice::<Iss>(&payload)
            .map_err(|e| IdentityError::Malformed(e.to_string()))?
            .iss
            .ok_or_else(|| IdentityError::Malformed("no `iss` claim".into()))?;
        let index = self
            .issuers
            .iter()
            .position(|i| i.config.issuer == iss)
            .ok_or(IdentityError::UnknownIssuer(iss.clone()))?;
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&header.alg) {
            return Err(IdentityError::Algorithm {
                alg: format!("{:?}", header.alg),
                issuer: iss,
                accepted: issuer.config.algorithms.join(", "),
            });
        }
        let key = Self::key(index, issuer, header.kid.as_deref(), read_again)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = issuer.config.leeway.as_secs();
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => IdentityError::Expired,
                K::ImmatureSignature => IdentityError::NotYetValid,
                K::InvalidAudience => IdentityError::Audience(issuer.config.audience.clone()),
                K::InvalidSignature => IdentityError::Signature,
                K::MissingRequiredClaim(claim) => IdentityError::Invalid(format!("the token has no `{claim}` claim")),
                _ => IdentityError::Invalid(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let groups = match claims.rest.get(&issuer.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
            }
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            // Access is decided by groups: a token that does not say them
            // (as opposed to saying "none") is refused, not taken as none.
            _ => {
                return Err(IdentityError::Invalid(format!(
                    "the token carries no `{}` claim, which Proctor decides access by (identity.issuers[].groups_claim)",
                    issuer.config.groups_claim
                )));
            }
        };
        let missing = |claim: &str| IdentityError::Invalid(format!("the token has no `{claim}` claim"));
        let subject = claims.sub.filter(|s| !s.trim().is_empty()).ok_or_else(|| missing("sub"))?;
        let expires_at = claims.exp.ok_or_else(|| missing("exp"))?;
        Ok(Identity { subject, issuer: claims.iss, groups, expires_at })
    }

    fn key(
        index: usize,
        issuer: &Issuer,
        kid: Option<&str>,
        read_again: Option<&mut Option<usize>>,
    ) -> Result<DecodingKey, IdentityError> {
        let found = match kid {
            Some(kid) => issuer.keys.read().unwrap_or_else(|p| p.into_inner()).find(kid).cloned(),
            None => {
                let keys = issuer.keys.read().unwrap_or_else(|p| p.into_inner());
                if keys.keys.len() == 1 { keys.keys.first().cloned() } else { None }
            }
        };
        let Some(jwk) = found else {
            // Perhaps the issuer rotated its keys: they are read again,
            // unless they were read moments ago (forged key ids must not
            // make every request fetch them).
            if let Some(read_again) = read_again {
                let mut read_at = issuer.read_at.lock().unwrap_or_else(|p| p.into_inner());
                if read_at.is_none_or(|at| at.elapsed() >= JWKS_REFRESH) {
                    *read_at = Some(std::time::Instant::now());
                    *read_again = Some(index);
                }
            }
            return Err(IdentityError::UnknownKey {
                kid: kid.unwrap_or("(none)").to_string(),
                issuer: issuer.config.issuer.clone(),
            });
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| IdentityError::Config(format!("a key of the JWKS is unusable: {e}")))
    }
}

/// The embedded dev issuer: signs tokens with an ed25519 key kept in
/// `keys/dev-issuer.pem` (0600), and publishes the matching JWKS.
pub struct DevIssuer {
    config: DevIssuerConfig,
    encoding: EncodingKey,
    public: [u8; 32],
    kid: String,
}

/// The dev issuer's key file in a data dir.
pub fn dev_issuer_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("dev-issuer.pem")
}

/// Where the dev issuer's JWKS is published, beside its key, for anything
/// else that verifies its tokens.
pub fn dev_issuer_jwks_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("dev-issuer.jwks.json")
}

impl DevIssuer {
    /// Opens the dev issuer's key in `data_dir`, creating it the first time.
    pub fn open_or_create(data_dir: &Path, config: &DevIssuerConfig) -> Result<DevIssuer, IdentityError> {
        use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let path = dev_issuer_key_path(data_dir);
        let key = if path.exists() {
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| IdentityError::Config(format!("cannot read {}: {e}", path.display())))?;
            ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| IdentityError::Config(format!("{} is not an ed25519 key: {e}", path.display())))?
        } else {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| IdentityError::Config(format!("no randomness: {e}")))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| IdentityError::Config(format!("cannot encode the dev issuer key: {e}")))?;
            crate::tls::write_private(&path, pem.as_bytes(), false)
                .map_err(|e| IdentityError::Config(format!("cannot write {}: {e}", path.display())))?;
            key
        };
        let der = key.to_pkcs8_der().map_err(|e| IdentityError::Config(format!("cannot encode the key: {e}")))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let public = key.verifying_key().to_bytes();
        let kid = URL_SAFE_NO_PAD.encode(&public[..12]);
        Ok(DevIssuer { config: config.clone(), encoding, public, kid })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Signs a token for `subject` in `groups`, valid for `ttl` (at most `max_ttl`).
    pub fn sign(&self, subject: &str, groups: &[String], ttl: Duration) -> Result<String, IdentityError> {
        if subject.trim().is_empty() {
            return Err(IdentityError::Config("a token needs a subject".into()));
        }
        if ttl.is_zero() || ttl > self.config.max_ttl {
            return Err(IdentityError::Config(format!(
                "a dev token lives between 1s and {} (identity.dev_issuer.max_ttl)",
                humantime::format_duration(self.config.max_ttl)
            )));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = serde_json::json!({
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| IdentityError::Config(format!("cannot sign: {e}")))
    }

    /// Signs `claims` as they are (an OpenID Connect ID token of the dev
    /// issuer's sign-in endpoints, which set `iss`, `aud` and times).
    pub fn sign_claims(&self, claims: &serde_json::Value) -> Result<String, IdentityError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| IdentityError::Config(format!("cannot sign: {e}")))
    }

    /// The longest lifetime of its tokens.
    pub fn max_ttl(&self) -> Duration {
        self.config.max_ttl
    }

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> JwkSet {
        let value = serde_json::json!({ "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]});
        serde_json::from_value(value).unwrap_or(JwkSet { keys: Vec::new() })
    }

    /// This issuer as a verifier entry, its JWKS written to `jwks_file`.
    pub fn issuer_config(&self, jwks_file: &Path) -> Result<IssuerConfig, IdentityError> {
        let json = serde_json::to_vec_pretty(&self.jwks())
            .map_err(|e| IdentityError::Config(format!("cannot encode the JWKS: {e}")))?;
        std::fs::write(jwks_file, json)
            .map_err(|e| IdentityError::Config(format!("cannot write {}: {e}", jwks_file.display())))?;
        Ok(IssuerConfig {
            issuer: self.config.issuer.clone(),
            audience: self.config.audience.clone(),
            jwks_file: Some(jwks_file.to_path_buf()),
            jwks_url: None,
            jwks_ca_file: None,
            groups_claim: default_groups_claim(),
            algorithms: vec!["EdDSA".to_string()],
            leeway: default_leeway(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    /// [`Verifier::verify`], waited for.
    trait VerifyNow {
        fn verify_now(&self, token: &str) -> Result<Identity, IdentityError>;
    }

    impl VerifyNow for Verifier {
        fn verify_now(&self, token: &str) -> Result<Identity, IdentityError> {
            block_on(self.verify(token))
        }
    }

    fn setup() -> (tempfile::TempDir, DevIssuer, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevIssuer::open_or_create(dir.path(), &DevIssuerConfig::default()).unwrap();
        let config = dev.issuer_config(&dir.path().join("jwks.json")).unwrap();
        let verifier = block_on(Verifier::new(&[config])).unwrap();
        (dir, dev, verifier)
    }

    #[test]
    fn a_dev_token_verifies_with_its_subject_and_groups() {
        let (_dir, dev, verifier) = setup();
        let token = dev.sign("alice", &["investigators".into(), "ci".into()], Duration::from_secs(600)).unwrap();
        let identity = verifier.verify_now(&token).unwrap();
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.issuer, "proctor-dev");
        assert!(identity.in_group("investigators") && identity.in_group("ci") && !identity.in_group("admins"));
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let (_dir, dev, verifier) = setup();
        // Signed by another key claiming the same issuer and key id.
        let other_dir = tempfile::tempdir().unwrap();
        let other = DevIssuer::open_or_create(other_dir.path(), &DevIssuerConfig::default()).unwrap();
        let forged = other.sign("mallory", &["investigators".into()], Duration::from_secs(600)).unwrap();
        assert!(matches!(verifier.verify_now(&forged), Err(IdentityError::UnknownKey { .. })));
        // A real token with its payload swapped.
        let token = dev.sign("bob", &[], Duration::from_secs(600)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let claims = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss": "proctor-dev", "aud": "proctor", "sub": "bob", "groups": ["investigators"], "exp": 4102444800u64})
                .to_string(),
        );
        let tampered = format!("{}.{}.{}", parts[0], claims, parts[2]);
        assert_eq!(verifier.verify_now(&tampered), Err(IdentityError::Signature));
        // `alg: none` and HMAC are not on any allow-list.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
        assert!(verifier.verify_now(&none).is_err());
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "proctor-dev", "aud": "proctor", "sub": "eve", "exp": 4102444800u64}),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        assert!(matches!(verifier.verify_now(&hmac), Err(IdentityError::Algorithm { .. })));
        // Unknown issuer; garbage; nothing.
        let foreign = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &serde_json::json!({"iss": "elsewhere", "aud": "proctor", "sub": "x", "exp": 4102444800u64}),
            &dev.encoding,
        )
        .unwrap();
        assert_eq!(verifier.verify_now(&foreign), Err(IdentityError::UnknownIssuer("elsewhere".into())));
        assert!(matches!(verifier.verify_now("not-a-token"), Err(IdentityError::Malformed(_))));
        assert_eq!(verifier.verify_now(""), Err(IdentityError::Missing));
    }

    #[test]
    fn expired_early_and_misaddressed_tokens_are_refused() {
        let (_dir, dev, verifier) = setup();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let sign = |claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(dev.kid.clone());
            jsonwebtoken::encode(&header, &claims, &dev.encoding).unwrap()
        };
        let base = |exp: u64, nbf: u64, aud: &str| serde_json::json!({"iss": "proctor-dev", "aud": aud, "sub": "s", "groups": [], "exp": exp, "nbf": nbf});
        assert_eq!(verifier.verify_now(&sign(base(now - 3600, now - 7200, "proctor"))), Err(IdentityError::Expired));
        assert_eq!(
            verifier.verify_now(&sign(base(now + 7200, now + 3600, "proctor"))),
            Err(IdentityError::NotYetValid)
        );
        assert_eq!(
            verifier.verify_now(&sign(base(now + 600, now, "someone-else"))),
            Err(IdentityError::Audience("proctor".into()))
        );
        // Within the clock skew (60 s) both ways.
        assert!(verifier.verify_now(&sign(base(now - 10, now + 10, "proctor"))).is_ok());
    }

    #[test]
    fn a_rotated_key_is_picked_up_and_unknown_keys_do_not_reread_the_jwks_each_time() {
        let (dir, _old, verifier) = setup();
        // The issuer rotates: a new key, published in the same JWKS file.
        let new_dir = tempfile::tempdir().unwrap();
        let new = DevIssuer::open_or_create(new_dir.path(), &DevIssuerConfig::default()).unwrap();
        new.issuer_config(&dir.path().join("jwks.json")).unwrap();
        let token = new.sign("carol", &[], Duration::from_secs(600)).unwrap();
        assert_eq!(verifier.verify_now(&token).unwrap().subject, "carol");
        // Yet another key right after: not re-read within the refresh period.
        let third_dir = tempfile::tempdir().unwrap();
        let third = DevIssuer::open_or_create(third_dir.path(), &DevIssuerConfig::default()).unwrap();
        third.issuer_config(&dir.path().join("jwks.json")).unwrap();
        let token = third.sign("dave", &[], Duration::from_secs(600)).unwrap();
        assert!(matches!(verifier.verify_now(&token), Err(IdentityError::UnknownKey { .. })));
    }

    /// Every way a token can be wrong, each refused with words that say
    /// which: printed as a table by `cargo test -- --nocapture`.
    #[test]
    fn bad_tokens_are_each_refused_with_a_clear_message() {
        let (_dir, dev, verifier) = setup();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"iss": "proctor-dev", "aud": "proctor", "sub": "mallory", "groups": ["dba"], "nbf": now, "exp": now + 600});
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        let signed = |c: serde_json::Value| {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(dev.kid.clone());
            jsonwebtoken::encode(&header, &c, &dev.encoding).unwrap()
        };
        let good = signed(claims(serde_json::json!({})));
        assert!(verifier.verify_now(&good).is_ok(), "the baseline token verifies");
        let parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let other_dir = tempfile::tempdir().unwrap();
        let other = DevIssuer::open_or_create(other_dir.path(), &DevIssuerConfig::default()).unwrap();
        let other_same_kid = {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(dev.kid.clone());
            jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &other.encoding).unwrap()
        };
        let hmac = |secret: &[u8]| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(dev.kid.clone());
            jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &EncodingKey::from_secret(secret)).unwrap()
        };
        let ec = {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("ec-1".into());
            let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
            jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &encoding).unwrap()
        };
        let mut flipped = parts[2].clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let none_header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        let cases: Vec<(&str, String, &str)> = vec![
            ("empty", String::new(), "no bearer token"),
            ("not a JWT", "not-a-token".into(), "three dot-separated parts"),
            ("two parts", format!("{}.{}", parts[0], parts[1]), "three dot-separated parts"),
            ("header not base64", format!("%%%.{}.{}", parts[1], parts[2]), "not a JWT"),
            ("payload not JSON", format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode("nope"), parts[2]), "not a JWT"),
            ("no issuer", signed(claims(serde_json::json!({"iss": null}))), "no `iss` claim"),
            (
                "unknown issuer",
                signed(claims(serde_json::json!({"iss": "https://evil.example/"}))),
                "are not accepted here",
            ),
            ("alg none", format!("{none_header}.{}.", parts[1]), "`alg: none`"),
            ("HMAC with a guessed secret", hmac(b"secret"), "algorithm HS256 is not accepted"),
            ("HMAC keyed with the public key", hmac(&dev.public), "algorithm HS256 is not accepted"),
            ("ES256 from an unknown key", ec, "algorithm ES256 is not accepted"),
            (
                "another key, its own kid",
                other.sign("mallory", &["dba".into()], Duration::from_secs(60)).unwrap(),
                "no key",
            ),
            ("another key, our kid", other_same_kid, "signature does not verify"),
            (
                "payload swapped",
                format!("{}.{}.{}", parts[0], b64(&claims(serde_json::json!({"sub": "root"}))), parts[2]),
                "signature does not verify",
            ),
            (
                "signature altered",
                format!("{}.{}.{}", parts[0], parts[1], String::from_utf8(flipped).unwrap()),
                "signature does not verify",
            ),
            ("signature removed", format!("{}.{}.", parts[0], parts[1]), "signature does not verify"),
            ("expired", signed(claims(serde_json::json!({"exp": now - 3600, "nbf": now - 7200}))), "expired"),
            ("expired beyond the skew", signed(claims(serde_json::json!({"exp": now - 61}))), "expired"),
            ("not yet valid", signed(claims(serde_json::json!({"nbf": now + 3600}))), "not valid yet"),
            ("another audience", signed(claims(serde_json::json!({"aud": "grafana"}))), "another audience"),
            (
                "audiences without ours",
                signed(claims(serde_json::json!({"aud": ["grafana", "vault"]}))),
                "another audience",
            ),
            ("no audience", signed(claims(serde_json::json!({"aud": null}))), "no `aud` claim"),
            ("no expiry", signed(claims(serde_json::json!({"exp": null}))), "no `exp` claim"),
            ("no subject", signed(claims(serde_json::json!({"sub": null}))), "no `sub` claim"),
            ("empty subject", signed(claims(serde_json::json!({"sub": " "}))), "no `sub` claim"),
            ("no groups claim", signed(claims(serde_json::json!({"groups": null}))), "no `groups` claim"),
            ("oversized", format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]), "larger than 16 KiB"),
        ];
        assert!(cases.len() >= 20);
        for (name, token, expected) in &cases {
            let error = verifier.verify_now(token).err().unwrap_or_else(|| panic!("{name}: accepted"));
            let message = error.to_string();
            println!("{name:<32} {message}");
            assert!(message.contains(expected), "{name}: {message:?} does not say {expected:?}");
        }
        // Groups present but empty is a statement, not an omission.
        let no_groups = signed(claims(serde_json::json!({"groups": []})));
        assert!(verifier.verify_now(&no_groups).unwrap().groups.is_empty());
    }

    #[test]
    fn hmac_issuers_are_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
        let config = IssuerConfig {
            issuer: "i".into(),
            audience: "a".into(),
            jwks_file: Some(jwks),
            jwks_url: None,
            jwks_ca_file: None,
            groups_claim: "groups".into(),
            algorithms: vec!["HS256".into()],
            leeway: Duration::from_secs(0),
        };
        assert!(matches!(block_on(Verifier::new(&[config])), Err(IdentityError::Config(m)) if m.contains("HMAC")));
    }
}
