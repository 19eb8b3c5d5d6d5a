//! Statement rules: named sets (`[rules.NAME]`) saying which statement
//! classes are blocked and which are held for approval; everything else is
//! allowed. A policy names the set its grants' sessions run under. A query
//! the parser refuses, and one that changes how later statements are read
//! (`parser_settings`), are blocked wherever rules apply (fail closed).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::classify::{Class, Classification};
use proctor_gateway_core::GatewayError;

/// One `[rules.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetConfig {
    /// Classes refused outright (SQLSTATE 42501, naming the rule).
    #[serde(default)]
    pub block: Vec<String>,
    /// Classes held until an approver allows the statement once.
    #[serde(default)]
    pub hold: Vec<String>,
    /// Members of this group (besides the control plane's admin group) may
    /// approve or deny held statements.
    #[serde(default)]
    pub approval_group: Option<String>,
}

/// A rule set, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub name: String,
    block: BTreeSet<Class>,
    hold: BTreeSet<Class>,
    pub approval_group: Option<String>,
}

/// What the rules say about a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused: `rule` is `SET/CLASS`; `statement` its index in the query.
    Block {
        rule: String,
        class: Class,
        statement: usize,
    },
    /// Held for approval.
    Hold {
        rule: String,
        class: Class,
        statement: usize,
    },
}

impl RuleSet {
    pub fn new(name: &str, config: &RuleSetConfig) -> Result<RuleSet, GatewayError> {
        let classes = |names: &[String]| -> Result<BTreeSet<Class>, GatewayError> {
            names
                .iter()
                .map(|n| {
                    Class::parse(n).ok_or_else(|| {
                        let known: Vec<&str> = Class::ALL.iter().map(|c| c.as_str()).collect();
                        GatewayError::Config(format!(
                            "rules.{name}: unknown statement class {n:?} (classes: {})",
                            known.join(", ")
                        ))
                    })
                })
                .collect()
        };
        let (block, hold) = (classes(&config.block)?, classes(&config.hold)?);
        if let Some(both) = block.intersection(&hold).next() {
            return Err(GatewayError::Config(format!(
                "rules.{name}: class {:?} is both blocked and held; name it in one list",
                both.as_str()
            )));
        }
        Ok(RuleSet { name: name.to_string(), block, hold, approval_group: config.approval_group.clone() })
    }

    /// The strictest outcome over every statement of the query: a block
    /// anywhere blocks the whole query, else a hold holds it. A hold names
    /// the gravest held class of the whole query ([`Class::ALL`]'s order:
    /// `ddl`, `drop`, `truncate` first), not merely the first one met, so
    /// that a harmless-looking statement before a `DROP` does not give the
    /// reviewer its name.
    pub fn decide(&self, classification: &Classification) -> Verdict {
        let mut held: Option<(Class, usize)> = None;
        for (index, classes) in classification.statements.iter().enumerate() {
            for &class in classes {
                // Never forwarded under rules: what cannot be read, and what
                // changes how later statements are read.
                if matches!(class, Class::Unparseable | Class::ParserSettings) || self.block.contains(&class) {
                    let rule = format!("{}/{}", self.name, class.as_str());
                    return Verdict::Block { rule, class, statement: index };
                }
                if self.hold.contains(&class) && held.is_none_or(|(graver, _)| class < graver) {
                    held = Some((class, index));
                }
            }
        }
        match held {
            Some((class, statement)) => {
                Verdict::Hold { rule: format!("{}/{}", self.name, class.as_str()), class, statement }
            }
            None => Verdict::Allow,
        }
    }
}
