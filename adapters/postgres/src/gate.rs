//! Statement policy in the data path: every query string and every Parse of
//! a session under rules is classified (cached by shape) and allowed,
//! blocked, or held for review.
//!
//! A refused statement never reaches the target. In its place the target is
//! sent a query that fails with Proctor's message (SQLSTATE 42501), so that
//! the target itself raises the error: an open transaction is aborted there
//! exactly as by a server-side error, and a later `COMMIT` can commit
//! nothing the client saw fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use proctor_schemas::{PolicyDecision, PolicyOutcome, SessionId};

use super::classify::{ClassCache, ParseAs};
use super::rules::{RuleSet, Verdict};
use proctor_gateway_core::control::{HeldKind, HoldOutcome, HoldRequest, Holds};
use proctor_gateway_core::masking::MaskingKey;

/// Shapes of statements whose classes are kept.
const CLASS_CACHE: usize = 10_000;

/// What every session under rules shares: the rule sets by name, the
/// classification cache, the control plane that keeps reviews, and counts of
/// decisions for metrics.
pub struct StatementPolicy {
    rules: HashMap<String, Arc<RuleSet>>,
    classes: ClassCache,
    holds: OnceLock<Arc<dyn Holds>>,
    decisions: [AtomicU64; 3],
    /// What a held statement's text is hashed with, for running it once
    /// approved: keyed, so that the hash beside its masked text in the
    /// control store cannot be used to guess the literals masked in it.
    key: MaskingKey,
}

impl StatementPolicy {
    pub fn new(rules: impl IntoIterator<Item = RuleSet>) -> StatementPolicy {
        StatementPolicy {
            rules: rules.into_iter().map(|r| (r.name.clone(), Arc::new(r))).collect(),
            classes: ClassCache::new(CLASS_CACHE),
            holds: OnceLock::new(),
            decisions: Default::default(),
            key: MaskingKey::new(Vec::new()),
        }
    }

    /// Hashes held statements with the deployment's key.
    pub fn with_key(self, key: MaskingKey) -> StatementPolicy {
        StatementPolicy { key, ..self }
    }

    /// Where held statements go; until set (or without a control plane),
    /// a statement the rules hold is blocked.
    pub fn set_holds(&self, holds: Arc<dyn Holds>) {
        let _ = self.holds.set(holds);
    }

    pub fn rules(&self, name: &str) -> Option<Arc<RuleSet>> {
        self.rules.get(name).cloned()
    }

    /// Decisions taken since start, by outcome.
    pub fn decisions(&self) -> [(PolicyOutcome, u64); 3] {
        [PolicyOutcome::Allow, PolicyOutcome::Block, PolicyOutcome::Hold]
            .map(|o| (o, self.decisions[o as usize].load(Ordering::Relaxed)))
    }

    fn count(&self, outcome: PolicyOutcome) {
        self.decisions[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The gate's answer for one query string or Parse.
#[derive(Debug)]
pub(crate) enum Gated {
    /// Held by the rules: the control plane must be asked first. The caller
    /// records the statement, then calls [`Gate::asking`] with its seq.
    Ask { rule: String },
    /// Decided: the decision to record (its `ref_seq` is the statement's)
    /// and, when refused, what the client is told. `seq`: the statement
    /// was recorded already (before asking).
    Decided { seq: Option<u64>, decision: PolicyDecision, refusal: Option<Refusal> },
}

/// Why a statement was refused, as the client reads it.
#[derive(Clone, Debug)]
pub(crate) struct Refusal {
    pub message: String,
    pub hint: String,
}

impl Refusal {
    /// A query the target answers with this refusal as its own error
    /// (SQLSTATE 42501), as a `Query` frame.
    pub fn query_frame(&self) -> Vec<u8> {
        let (message, hint) = (self.message.replace('\0', ""), self.hint.replace('\0', ""));
        let tag = |n: usize| format!("$proctor{n}$");
        let mut n = 0;
        let mut fresh = || loop {
            n += 1;
            let t = tag(n);
            if !message.contains(&t) && !hint.contains(&t) {
                return t;
            }
        };
        let (body, m, h) = (fresh(), fresh(), fresh());
        let sql = format!(
            "DO {body}BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = {m}{message}{m}, HINT = {h}{hint}{h}; END{body}"
        );
        let mut frame = Vec::with_capacity(sql.len() + 6);
        frame.push(b'Q');
        frame.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        frame.extend_from_slice(sql.as_bytes());
        frame.push(0);
        frame
    }
}

/// A held statement waiting for the control plane's answer.
struct Asked {
    sql: String,
    /// As recorded and shown to reviewers: masked.
    shown: String,
    seq: u64,
    rule: String,
    sent: bool,
}

/// One session's statement policy.
pub(crate) struct Gate {
    policy: Arc<StatementPolicy>,
    rules: Arc<RuleSet>,
    parse_as: ParseAs,
    grant_id: Option<String>,
    resource: String,
    session_id: SessionId,
    asked: Option<Asked>,
    /// The control plane's answer for `asked`, once it came.
    answer: Option<Result<HoldOutcome, String>>,
}

impl Gate {
    pub fn new(
        policy: Arc<StatementPolicy>,
        rules: Arc<RuleSet>,
        grant_id: Option<String>,
        resource: String,
        session_id: SessionId,
    ) -> Gate {
        Gate { policy, rules, parse_as: ParseAs::default(), grant_id, resource, session_id, asked: None, answer: None }
    }

    /// A session setting the target reported (`ParameterStatus`): those that
    /// change how the server reads a query change how it is classified.
    pub fn parameter(&mut self, name: &str, value: &str) {
        if name == "standard_conforming_strings" {
            self.parse_as.standard_conforming_strings = value != "off";
        }
    }

    fn decision(&self, outcome: PolicyOutcome, rule: Option<String>, message: String) -> PolicyDecision {
        PolicyDecision {
            outcome,
            grant_id: self.grant_id.clone(),
            rule,
            review_id: None,
            ref_seq: None,
            message: Some(message),
        }
    }

    fn block(&self, rule: String, message: String, hint: String) -> Gated {
        self.policy.count(PolicyOutcome::Block);
        let decision = self.decision(PolicyOutcome::Block, Some(rule), message.clone());
        Gated::Decided { seq: None, decision, refusal: Some(Refusal { message, hint }) }
    }

    /// Decides a query string (or a Parse's SQL). `None`: allowed, nothing
    /// to record beyond the statement itself.
    pub fn check(&mut self, sql: &str) -> Option<Gated> {
        if self.asked.as_ref().is_some_and(|a| a.sent && a.sql == sql)
            && let Some(answer) = self.answer.take()
        {
            let asked = self.asked.take()?;
            return Some(self.answered(asked, answer));
        }
        let classification = self.policy.classes.classify(sql, self.parse_as);
        let position = |statement: usize| match classification.statements.len() {
            0 | 1 => String::new(),
            n => format!(" (statement {} of {n} in the query)", statement + 1),
        };
        match self.rules.decide(&classification) {
            Verdict::Allow => {
                self.policy.count(PolicyOutcome::Allow);
                None
            }
            Verdict::Block { rule, class, statement } => {
                let (message, hint) = match &classification.error {
                    Some(error) => (
                        format!(
                            "Proctor blocked this query: it cannot be parsed ({error}), and rules {} refuse what they cannot read",
                            self.rules.name
                        ),
                        "fix the syntax and run it again".to_string(),
                    ),
                    None => (
                        format!(
                            "Proctor blocked this statement{}: rule {rule} does not allow {} statements on {}",
                            position(statement),
                            class.as_str(),
                            self.resource
                        ),
                        "your grant's rules refuse this class of statement; ask an administrator if you need it"
                            .to_string(),
                    ),
                };
                Some(self.block(rule, message, hint))
            }
            Verdict::Hold { rule, class, statement } => {
                if self.policy.holds.get().is_none() || self.grant_id.is_none() {
                    let message = format!(
                        "Proctor blocked this statement{}: rule {rule} holds {} statements for review, and this session has no control plane to review them",
                        position(statement),
                        class.as_str()
                    );
                    return Some(self.block(rule, message, "connect with a grant's credentials".to_string()));
                }
                Some(Gated::Ask { rule })
            }
        }
    }

    /// A statement held by `rule` whose masked text would not let its
    /// reviewers judge it (`why`): refused instead of put to review.
    pub fn hidden_from_reviewers(&self, rule: String, why: &str) -> Gated {
        let message = format!(
            "Proctor blocked this statement: rule {rule} holds it for review, and masking hides part of it from its reviewers, who could not see what they approve: {why}"
        );
        let hint =
            "keep the value out of the statement's code: pass it as a bind parameter ($1), or have the code read it from a table".to_string();
        self.block(rule, message, hint)
    }

    /// The held statement `sql` was recorded (as `shown`: masked) as `seq`:
    /// ask the control plane.
    pub fn asking(&mut self, sql: &str, shown: String, seq: u64, rule: String) {
        self.answer = None;
        self.asked = Some(Asked { sql: sql.to_string(), shown, seq, rule, sent: false });
    }

    /// A FunctionCall message (a call by OID): refused under any rules,
    /// since nothing in it says what it does.
    pub fn function_call(&self) -> (PolicyDecision, Refusal) {
        self.policy.count(PolicyOutcome::Block);
        let rule = format!("{}/function_call_message", self.rules.name);
        let message = format!(
            "Proctor blocked a FunctionCall message: calls by OID bypass statement rules, so {} refuses them under rules {}",
            self.resource, self.rules.name
        );
        let hint = "call the function in a query instead (SELECT f(...)), where the rules can read it".to_string();
        (self.decision(PolicyOutcome::Block, Some(rule), message.clone()), Refusal { message, hint })
    }

    /// A statement approved in `review_id` to run once, executed again
    /// (a named prepared statement's second Execute).
    pub fn ran_once(&self, review_id: &str) -> (PolicyDecision, Refusal) {
        self.policy.count(PolicyOutcome::Block);
        let message = format!(
            "Proctor blocked this execution: the statement approved in review {review_id} runs once, and it already ran"
        );
        let hint = "prepare and run it again to have it held for a new review".to_string();
        let mut decision = self.decision(PolicyOutcome::Block, None, message.clone());
        decision.review_id = Some(review_id.to_string());
        (decision, Refusal { message, hint })
    }

    /// The question for the control plane, once per held statement.
    pub fn question(&mut self) -> Option<(Arc<dyn Holds>, HoldRequest)> {
        let asked = self.asked.as_mut().filter(|a| !a.sent)?;
        asked.sent = true;
        let holds = self.policy.holds.get()?.clone();
        let request = HoldRequest {
            grant_id: self.grant_id.clone().unwrap_or_default(),
            resource: self.resource.clone(),
            session_id: self.session_id,
            ref_seq: Some(asked.seq),
            kind: HeldKind::Statement,
            text: asked.shown.clone(),
            text_hash: self.policy.key.digest("statement", asked.sql.as_bytes()),
            rule: asked.rule.clone(),
            approval_group: self.rules.approval_group.clone(),
        };
        Some((holds, request))
    }

    /// The control plane answered the question.
    pub fn answer(&mut self, answer: Result<HoldOutcome, String>) {
        self.answer = Some(answer);
    }

    fn answered(&self, asked: Asked, answer: Result<HoldOutcome, String>) -> Gated {
        let Asked { seq, rule, .. } = asked;
        let (outcome, review_id, message, refusal) = match answer {
            Ok(HoldOutcome::Run { review_id, approved_by }) => {
                let message = format!("held by rule {rule}; approved by {approved_by} in review {review_id}, run once");
                (PolicyOutcome::Allow, Some(review_id), message, None)
            }
            Ok(HoldOutcome::Held { review_id, opened, expires_at }) => {
                let until = proctor_schemas::Timestamp(expires_at.saturating_mul(1_000_000)).to_rfc3339();
                let message = format!(
                    "Proctor is holding this statement for approval: review {review_id} (rule {rule}){}",
                    if opened { "" } else { ", still undecided" }
                );
                let hint = format!(
                    "an approver runs `proctor review approve {review_id}`; then run the identical statement again in this grant, and it runs once (the review lapses at {until})"
                );
                let refusal = Refusal { message: message.clone(), hint };
                (PolicyOutcome::Hold, Some(review_id), message, Some(refusal))
            }
            Err(error) => {
                let message = format!(
                    "Proctor blocked this statement: rule {rule} holds it for review, but the review could not be opened ({error})"
                );
                let refusal = Refusal { message: message.clone(), hint: "try again in a moment".to_string() };
                (PolicyOutcome::Block, None, message, Some(refusal))
            }
        };
        self.policy.count(outcome);
        let mut decision = self.decision(outcome, Some(rule), message);
        decision.review_id = review_id;
        Gated::Decided { seq: Some(seq), decision, refusal }
    }
}
