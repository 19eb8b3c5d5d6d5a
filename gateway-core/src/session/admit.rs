//! Admission: what an authenticated identity runs under, decided the same
//! way for every protocol: its grant's rules, its masking profile (the
//! grant's, or the deployment's default), and the lease that ends the
//! session when the grant ends.

use std::sync::Arc;

use proctor_schemas::EndReason;

use super::Refusal;
use crate::auth::{Authenticator, Identity};
use crate::control::Lease;
use crate::masking::{Masker, Profiles};

/// An admitted session's terms.
pub struct Admitted<R> {
    /// Who, with the masking profile chosen for the session.
    pub identity: Identity,
    /// The rules its requests run under, as the adapter made them.
    pub rules: Option<R>,
    /// What its values are masked with.
    pub masker: Option<Arc<Masker>>,
    /// Ends the session when what admitted it ends.
    pub lease: Option<Lease>,
}

/// Admits `identity`: its rules (`rules_named` makes the adapter's rule set
/// of a name, `None` if this gateway has none of it in the protocol's
/// `scope`), its masking profile from
/// `masking`, and its lease from `auth`. Refused, with the reason
/// `policy`, when the gateway lacks the rules or the profile the grant
/// names: a session never runs under less than it was granted with.
pub fn admit<A: Authenticator, R>(
    identity: Identity,
    scope: super::RuleScope,
    rules_named: impl FnOnce(&str) -> Option<R>,
    masking: &Profiles,
    auth: &A,
) -> Result<Admitted<R>, Refusal> {
    let rules = match identity.rules.as_deref() {
        None => None,
        Some(name) => match rules_named(name) {
            Some(rules) => Some(rules),
            None => {
                let kind = scope.kind;
                return Err(Refusal::new(
                    EndReason::Policy,
                    format!("this grant runs under {kind} {name:?}, which this gateway does not have"),
                )
                .with_hint(format!(
                    "ask the operator to configure [{}.{name}] on every gateway, then connect again",
                    scope.table
                )));
            }
        },
    };
    let profile = masking.chosen(identity.masking_profile.as_deref()).map(str::to_string);
    let masker = match profile.as_deref().map(|p| masking.masker(p)) {
        None => None,
        Some(Ok(masker)) => masker,
        Some(Err(why)) => {
            return Err(Refusal::new(EndReason::Policy, format!("this session's {why}"))
                .with_hint("ask the operator to configure the profile on every gateway, then connect again"));
        }
    };
    let identity = Identity { masking_profile: profile, ..identity };
    let lease = auth.lease(&identity);
    Ok(Admitted { identity, rules, masker, lease })
}
