//! Who may ask for what: the `[control]` section and the `[[policies]]`
//! that decide each grant request.
//!
//! Policies are read in file order and the first one whose groups include
//! one of the requester's and whose resources include the requested one
//! decides, as firewall rules do: an operator reads the file top down to
//! know what happens.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::GatewayError;

/// The `[control]` section: the control API and its store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Where the control API listens (e.g. `127.0.0.1:7300`).
    pub listen: SocketAddr,
    /// `sqlite` (the default: `control.db` in the data dir) or a
    /// `postgres://` URL, shared by several gateways.
    #[serde(default = "default_store")]
    pub store: String,
    /// Serve HTTPS with the `[tls]` certificate (or the dev one).
    #[serde(default)]
    pub tls: bool,
    /// How long a grant request (and a held statement) waits for a decision
    /// before it expires.
    #[serde(default = "default_pending_ttl", with = "humantime_serde")]
    pub pending_ttl: Duration,
    /// The host name clients are given in credentials URLs; by default the
    /// resource's listen address (`localhost` if it listens on all addresses).
    pub public_host: Option<String>,
    /// Members of this group see, decide and revoke every grant: required,
    /// since someone must be able to end any grant.
    pub admin_group: String,
}

fn default_store() -> String {
    "sqlite".to_string()
}

fn default_pending_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// One `[[policies]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy's name, as grants and events refer to it.
    pub name: String,
    /// Members of any of these groups may request ...
    pub groups: Vec<String>,
    /// ... any of these resources (`*`: every resource).
    pub resources: Vec<String>,
    /// The longest grant this policy gives.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Without it, requests are approved by the policy itself.
    pub approval: Option<ApprovalConfig>,
    /// The statement rules applied to sessions under these grants.
    pub rules: Option<String>,
    /// The masking profile of every grant this policy gives (`none`: nothing
    /// masked, for break-glass roles; the choice is recorded).
    pub masking_profile: Option<String>,
    /// Or a profile per group: a requester in several of these groups gets
    /// the union of their profiles (the strictest action wins).
    #[serde(default)]
    pub masking_profiles: std::collections::BTreeMap<String, String>,
    /// Rows of each result the sessions of its grants keep in the
    /// recording, masked with the grant's profile (none without one);
    /// default 5.
    pub sample_rows: Option<usize>,
}

/// Who must approve a request, and how many of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    pub group: String,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// What a policy said about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Active at once.
    Approve {
        policy: String,
    },
    /// Waits for `count` members of `group` other than the requester.
    Approval {
        policy: String,
        group: String,
        count: u32,
    },
    Deny {
        policy: Option<String>,
        reason: String,
    },
}

/// The policies, checked.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    policies: Vec<PolicyConfig>,
}

impl Policies {
    pub fn new(policies: Vec<PolicyConfig>) -> Result<Policies, GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(m));
        let mut names = std::collections::HashSet::new();
        for p in &policies {
            if !names.insert(p.name.as_str()) {
                return bad(format!("policy {:?} is defined twice", p.name));
            }
            if p.groups.is_empty() || p.resources.is_empty() {
                return bad(format!("policy {:?} needs at least one group and one resource", p.name));
            }
            if p.max_ttl.is_zero() {
                return bad(format!("policy {:?}: max_ttl must be positive", p.name));
            }
            if p.sample_rows.is_some_and(|rows| rows > 1000) {
                return bad(format!("policy {:?}: sample_rows is at most 1000", p.name));
            }
            if p.masking_profile.is_some() && !p.masking_profiles.is_empty() {
                return bad(format!(
                    "policy {:?}: give `masking_profile` (for every grant) or `masking_profiles` (by group), not both",
                    p.name
                ));
            }
            if let Some(approval) = &p.approval
                && approval.count == 0
            {
                return bad(format!("policy {:?}: approval.count must be at least 1 (omit approval for none)", p.name));
            }
        }
        Ok(Policies { policies })
    }

    /// The first policy that lets one of `groups` request `resource`.
    pub fn matching(&self, groups: &[String], resource: &str) -> Option<&PolicyConfig> {
        self.policies.iter().find(|p| {
            p.groups.iter().any(|g| groups.contains(g)) && p.resources.iter().any(|r| r == "*" || r == resource)
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&PolicyConfig> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The masking profile a policy gives a requester in `groups`: the
    /// policy's own, or the union (`a+b`) of those of the requester's groups.
    pub fn masking_for(policy: &PolicyConfig, groups: &[String]) -> Option<String> {
        if policy.masking_profile.is_some() {
            return policy.masking_profile.clone();
        }
        let mut names: Vec<&str> =
            groups.iter().filter_map(|g| policy.masking_profiles.get(g)).map(String::as_str).collect();
        // `none` in a union adds nothing: only a policy-wide `none` is break-glass.
        if names.iter().any(|n| *n != crate::masking::NO_MASKING) {
            names.retain(|n| *n != crate::masking::NO_MASKING);
        }
        names.sort_unstable();
        names.dedup();
        (!names.is_empty()).then(|| names.join("+"))
    }

    /// Decides a request for `resource` for `ttl` by a member of `groups`.
    pub fn decide(&self, groups: &[String], resource: &str, ttl: Duration) -> Decision {
        let Some(policy) = self.matching(groups, resource) else {
            let groups = if groups.is_empty() { "(none)".to_string() } else { groups.join(", ") };
            return Decision::Deny {
                policy: None,
                reason: format!("no policy lets the groups {groups} request resource {resource}"),
            };
        };
        if ttl > policy.max_ttl {
            return Decision::Deny {
                policy: Some(policy.name.clone()),
                reason: format!(
                    "policy {} grants {resource} for at most {}; ask for less",
                    policy.name,
                    humantime::format_duration(policy.max_ttl)
                ),
            };
        }
        match &policy.approval {
            None => Decision::Approve { policy: policy.name.clone() },
            Some(a) => Decision::Approval { policy: policy.name.clone(), group: a.group.clone(), count: a.count },
        }
    }

    /// Groups whose members decide some request.
    pub fn approver_groups(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().filter_map(|p| p.approval.as_ref().map(|a| a.group.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Policies {
        let text = r#"
            [[policies]]
            name = "agents"
            groups = ["ci"]
            resources = ["orders-db"]
            max_ttl = "1h"

            [[policies]]
            name = "people"
            groups = ["eng", "ci"]
            resources = ["*"]
            max_ttl = "30m"
            approval = { group = "dba", count = 2 }
        "#;
        #[derive(Deserialize)]
        struct File {
            policies: Vec<PolicyConfig>,
        }
        Policies::new(toml::from_str::<File>(text).unwrap().policies).unwrap()
    }

    #[test]
    fn the_first_matching_policy_decides() {
        let p = policies();
        let ci = vec!["ci".to_string()];
        let eng = vec!["eng".to_string()];
        assert_eq!(p.decide(&ci, "orders-db", Duration::from_secs(600)), Decision::Approve { policy: "agents".into() });
        // Not covered by the first: the second, with approval.
        assert_eq!(
            p.decide(&ci, "billing-db", Duration::from_secs(600)),
            Decision::Approval { policy: "people".into(), group: "dba".into(), count: 2 }
        );
        assert_eq!(
            p.decide(&eng, "orders-db", Duration::from_secs(600)),
            Decision::Approval { policy: "people".into(), group: "dba".into(), count: 2 }
        );
        let Decision::Deny { reason, policy } = p.decide(&ci, "orders-db", Duration::from_secs(7200)) else {
            panic!("too long a grant was not denied")
        };
        assert_eq!(policy.as_deref(), Some("agents"));
        assert!(reason.contains("at most 1h"), "{reason}");
        let Decision::Deny { reason, .. } = p.decide(&["sales".to_string()], "orders-db", Duration::from_secs(60))
        else {
            panic!("a group without a policy was not denied")
        };
        assert!(reason.contains("sales") && reason.contains("orders-db"), "{reason}");
        let Decision::Deny { .. } = p.decide(&[], "orders-db", Duration::from_secs(60)) else {
            panic!("no groups, no access")
        };
    }

    #[test]
    fn a_requester_in_several_groups_gets_the_union_of_their_masking_profiles() {
        let mut p = PolicyConfig {
            name: "p".into(),
            groups: vec!["ci".into(), "analysts".into(), "sre".into()],
            resources: vec!["*".into()],
            max_ttl: Duration::from_secs(60),
            approval: None,
            rules: None,
            masking_profile: None,
            masking_profiles: [
                ("ci".to_string(), "strict".to_string()),
                ("analysts".to_string(), "pii".to_string()),
                ("sre".to_string(), "none".to_string()),
            ]
            .into(),
            sample_rows: None,
        };
        let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Policies::masking_for(&p, &groups(&["analysts", "ci"])).as_deref(), Some("pii+strict"));
        assert_eq!(Policies::masking_for(&p, &groups(&["ci", "sre"])).as_deref(), Some("strict"), "none adds nothing");
        assert_eq!(Policies::masking_for(&p, &groups(&["sre"])).as_deref(), Some("none"));
        assert_eq!(Policies::masking_for(&p, &groups(&["other"])), None);
        p.masking_profile = Some("none".into());
        p.masking_profiles.clear();
        assert_eq!(Policies::masking_for(&p, &groups(&["ci"])).as_deref(), Some("none"), "policy-wide break-glass");
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let policy = |approval: Option<ApprovalConfig>, ttl: u64| PolicyConfig {
            name: "p".into(),
            groups: vec!["g".into()],
            resources: vec!["r".into()],
            max_ttl: Duration::from_secs(ttl),
            approval,
            rules: None,
            masking_profile: None,
            masking_profiles: Default::default(),
            sample_rows: None,
        };
        let e = Policies::new(vec![policy(Some(ApprovalConfig { group: "a".into(), count: 0 }), 60)]).unwrap_err();
        assert!(e.to_string().contains("approval.count"), "{e}");
        let e = Policies::new(vec![policy(None, 0)]).unwrap_err();
        assert!(e.to_string().contains("max_ttl"), "{e}");
        let e = Policies::new(vec![policy(None, 60), policy(None, 60)]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let mut both = policy(None, 60);
        both.masking_profile = Some("strict".into());
        both.masking_profiles.insert("g".into(), "loose".into());
        let e = Policies::new(vec![both]).unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }
}
