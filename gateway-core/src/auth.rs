//! Who a client is. The gateway asks an [`Authenticator`]; the access-control
//! layer (just-in-time grants) plugs in here. Until then,
//! [`SharedSecretAuthenticator`] accepts a per-resource secret.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;

/// What a client presented, in the gateway's terms (whatever its protocol).
#[derive(Debug)]
pub struct AuthRequest<'a> {
    pub resource: &'a str,
    /// The user name the client gave: a grant's id, or for a resource with
    /// a shared secret, any name.
    pub user: &'a str,
    pub credential: Credential<'a>,
    pub client_addr: SocketAddr,
}

/// How a client proves it may connect.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// A secret: a grant's credential, or the resource's shared secret
    /// (PostgreSQL's password; SSH's password and keyboard-interactive).
    Password(&'a [u8]),
    /// A grant's credential as a bearer token (HTTP's `Authorization`):
    /// `GRANT_ID.SECRET`, which names the grant as the user does.
    Bearer(&'a str),
    /// A certificate the adapter verified as signed by Proctor's own CA for
    /// the grant named as user (an SSH user certificate, principal = the
    /// grant), valid until `valid_before` (milliseconds since the epoch):
    /// the grant must be live, and the certificate must not outlive it.
    Certificate { valid_before: i64 },
}

impl std::fmt::Debug for Credential<'_> {
    /// Never the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(..)"),
            Credential::Bearer(_) => f.write_str("Bearer(..)"),
            Credential::Certificate { valid_before } => write!(f, "Certificate {{ valid_before: {valid_before} }}"),
        }
    }
}

impl<'a> AuthRequest<'a> {
    /// A bearer token split into the grant it names (the user) and its
    /// secret; a password as it is.
    pub fn secret(&self) -> Option<(&'a str, &'a [u8])> {
        match self.credential {
            Credential::Password(secret) => Some((self.user, secret)),
            Credential::Bearer(token) => token.split_once('.').map(|(grant, secret)| (grant, secret.as_bytes())),
            Credential::Certificate { .. } => None,
        }
    }
}

/// An authenticated client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    pub grant_id: Option<String>,
    pub masking_profile: Option<String>,
    /// The statement rules (`[rules.NAME]`) its statements run under.
    pub rules: Option<String>,
    /// When its access ends (milliseconds since the epoch), if it does.
    pub expires_at: Option<i64>,
    /// Rows of each result its recording keeps (masked with its profile),
    /// as its grant's policy sets them; `None`: the resource's setting.
    pub sample_rows: Option<usize>,
}

/// Why a client was refused; the message reaches the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Refused(String),
    /// Refused, although the user name named a known grant (a wrong
    /// secret, a grant expired, revoked or for another resource): the
    /// attempt is recorded under the grant and its subject.
    #[error("{message}")]
    RefusedGrant { message: String, grant_id: String, subject: String },
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

/// Decides who a client is.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, request: &AuthRequest<'_>) -> impl Future<Output = Result<Identity, AuthError>> + Send;

    /// Holds an authenticated session to what it was authenticated under:
    /// the lease resolves when the session must end (its grant expired or
    /// was revoked). `None`: nothing ends it early.
    fn lease(&self, _identity: &Identity) -> Option<crate::control::Lease> {
        None
    }
}

/// Accepts clients that present their resource's shared secret as the
/// password. The subject is the user name the client gave: a shared secret
/// proves membership, not identity, which is why grants replace it.
pub struct SharedSecretAuthenticator {
    secrets: HashMap<String, Vec<u8>>,
}

impl SharedSecretAuthenticator {
    pub fn new(secrets: impl IntoIterator<Item = (String, String)>) -> Self {
        SharedSecretAuthenticator { secrets: secrets.into_iter().map(|(r, s)| (r, s.into_bytes())).collect() }
    }
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator for SharedSecretAuthenticator {
    async fn authenticate(&self, request: &AuthRequest<'_>) -> Result<Identity, AuthError> {
        let Some(secret) = self.secrets.get(request.resource) else {
            return Err(AuthError::Unavailable(format!("no secret is configured for resource {}", request.resource)));
        };
        let Credential::Password(password) = request.credential else {
            return Err(AuthError::Refused(format!(
                "resource {} takes its shared secret as a password",
                request.resource
            )));
        };
        if request.user.is_empty() || !constant_time_eq(secret, password) {
            return Err(AuthError::Refused(format!(
                "password authentication failed for user \"{}\" on resource {}",
                request.user, request.resource
            )));
        }
        Ok(Identity {
            subject: request.user.to_string(),
            groups: Vec::new(),
            grant_id: None,
            masking_profile: None,
            rules: None,
            expires_at: None,
            sample_rows: None,
        })
    }
}
