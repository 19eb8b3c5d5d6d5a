//! Reviews of held statements: a session's rules hold a statement, a review
//! opens for it (recorded in the control session), an approver allows or
//! refuses it, and the identical statement sent again in the same grant runs
//! once. The grant's requester sees their reviews but never decides them;
//! the rule set's approval group and the admin group decide them; to anyone
//! else they do not exist.

use proctor_schemas::{Held, HeldKind, ReviewAction, ReviewEvent};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::grants::{Control, ControlError, DEFAULT_LIST, MAX_ATTEMPTS, MAX_LIST, now_ms, random, rfc3339};
use super::holds::{HoldFuture, HoldOutcome, HoldRequest, Holds};
use super::store::{ControlStore, Grant, GrantStatus, Review, ReviewFilter, ReviewStatus, StoreError};
use crate::identity::Identity;
use crate::{EventSink, SinkError};

/// Reviews a grant may have waiting at once; a request that would open one
/// more is refused (`proctor review list` shows them).
pub const MAX_PENDING_REVIEWS: usize = 32;

/// A review as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ReviewView {
    pub id: String,
    pub status: ReviewStatus,
    /// Why it is in its status, and what to do next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// What was held: `statement`, `exec` or `file`.
    pub kind: HeldKind,
    /// What was held, as reviewers read it.
    pub text: String,
    /// The held statement (reviews of kind `statement`), as `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The rule that held it (`SET/CLASS`).
    pub rule: String,
    /// Who decides it besides the admin group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_group: Option<String>,
    pub grant_id: String,
    pub resource: String,
    /// Who sent it (the grant's requester), and their issuer.
    pub subject: String,
    pub issuer: String,
    /// The session it was held in, and its `statement` event there.
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_seq: Option<i64>,
    pub created_at: String,
    /// Pending: when it lapses undecided. Approved: when the approval lapses
    /// unused (the grant's end).
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// When the approved statement ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_at: Option<String>,
}

/// An unkeyed hash of a statement's exact text (SHA-256, hex), of the shape
/// reviews are found again by. The gateway keys its hashes with the
/// deployment's key instead (`StatementPolicy::with_key`), so that the hash
/// stored beside a masked statement cannot confirm a guess at what was
/// masked; this one is for stores and tools that need only the shape.
pub fn sql_hash(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Whether `who` sent the statement of `review`: the grant's requester, the
/// same subject of the same issuer.
fn sent(who: &Identity, review: &Review) -> bool {
    review.subject == who.subject && review.issuer == who.issuer
}

/// A review changed by others on every attempt.
fn busy(id: &str) -> ControlError {
    ControlError::Conflict(format!("review {id} kept changing while this was applied; try again"))
}

/// The status a review shows: past its time a pending or approved review is
/// over, whether or not the sweep has marked it yet.
fn shown_status(review: &Review, now: i64) -> (ReviewStatus, Option<String>) {
    match review.status {
        ReviewStatus::Pending | ReviewStatus::Approved if review.expires_at <= now => {
            (ReviewStatus::Expired, Some(expiry_reason(review)))
        }
        status => (status, review.status_reason.clone()),
    }
}

/// Why a pending or approved review expired.
fn expiry_reason(review: &Review) -> String {
    match review.status {
        ReviewStatus::Approved => {
            format!("approved, but not run before grant {} ended at {}", review.grant_id, rfc3339(review.expires_at))
        }
        _ => format!("no decision before {}; run the statement again to ask again", rfc3339(review.expires_at)),
    }
}

fn view(review: &Review) -> ReviewView {
    let (status, status_reason) = shown_status(review, now_ms());
    ReviewView {
        id: review.id.clone(),
        status,
        status_reason,
        kind: review.kind,
        text: review.text.clone(),
        sql: (review.kind == HeldKind::Statement).then(|| review.text.clone()),
        rule: review.rule.clone(),
        approval_group: review.approval_group.clone(),
        grant_id: review.grant_id.clone(),
        resource: review.resource.clone(),
        subject: review.subject.clone(),
        issuer: review.issuer.clone(),
        session_id: review.session_id.clone(),
        ref_seq: review.ref_seq,
        created_at: rfc3339(review.created_at),
        expires_at: rfc3339(review.expires_at),
        decided_by: review.decided_by.clone(),
        decided_at: review.decided_at.map(rfc3339),
        used_at: review.used_at.map(rfc3339),
    }
}

/// A store failure, as a session refusing the held statement says it.
fn unreachable(e: StoreError) -> String {
    format!("{e}; the statement was not run, try again")
}

impl<S: ControlStore, K: EventSink> Control<S, K> {
    /// Whether `who` decides `review`: the admin group, and the rule set's
    /// approval group.
    fn decides_review(&self, who: &Identity, review: &Review) -> bool {
        self.is_admin(who) || review.approval_group.as_deref().is_some_and(|g| who.in_group(g))
    }

    /// Who decides reviews with `approval_group`, in words.
    fn deciders(&self, approval_group: Option<&str>) -> String {
        match approval_group {
            Some(group) if group != self.admin_group => format!("a member of group {group} or {}", self.admin_group),
            _ => format!("a member of group {}", self.admin_group),
        }
    }

    /// Loads a review `who` may see (`404` otherwise, as for no review).
    async fn visible_review(&self, who: &Identity, id: &str) -> Result<Review, ControlError> {
        let missing = || ControlError::NotFound(format!("there is no review {id}"));
        let review = self.store.get_review(id).await?.ok_or_else(missing)?;
        if !sent(who, &review) && !self.decides_review(who, &review) {
            return Err(missing());
        }
        Ok(review)
    }

    /// Records a review step. `applied`: the step already took effect (a
    /// denial stands even unrecorded: fail closed), which the error then
    /// says.
    async fn record_review(
        &self,
        action: ReviewAction,
        review: &Review,
        actor: &str,
        message: Option<String>,
        applied: bool,
    ) -> Result<(), ControlError> {
        self.record_review_event(action, review, actor, message).await.map_err(|e| {
            ControlError::Unavailable(if applied {
                format!(
                    "review {} is {}, but Proctor could not record it ({}); tell the operator",
                    review.id,
                    review.status.as_str(),
                    e.0
                )
            } else {
                format!("Proctor could not record this ({}); nothing was changed, try again later", e.0)
            })
        })
    }

    /// Records a review step in the control session, and counts it.
    async fn record_review_event(
        &self,
        action: ReviewAction,
        review: &Review,
        actor: &str,
        message: Option<String>,
    ) -> Result<(), SinkError> {
        let event = ReviewEvent {
            action,
            review_id: review.id.clone(),
            grant_id: Some(review.grant_id.clone()),
            actor: Some(actor.to_string()),
            target_session: Some(review.session_id.clone()),
            ref_seq: review.ref_seq.and_then(|s| u64::try_from(s).ok()),
            message,
            held: Some(Held { kind: review.kind, text: review.text.clone() }),
        };
        self.session.record(event).await?;
        self.review_counters.add(action);
        Ok(())
    }

    /// A statement the rules hold (see [`Holds`]): it runs once if an
    /// approver allowed this exact statement in this grant, else it waits
    /// on the open review, opened now if there is none.
    async fn hold_statement(&self, request: HoldRequest) -> Result<HoldOutcome, String> {
        let now = now_ms();
        let grant = self.store.get(&request.grant_id).await.map_err(unreachable)?.ok_or_else(|| {
            format!("there is no grant {}; the statement was not run: request a grant", request.grant_id)
        })?;
        if grant.status != GrantStatus::Active || grant.expires_at <= now {
            let status = if grant.status == GrantStatus::Active { "expired" } else { grant.status.as_str() };
            return Err(format!("grant {} is {status}; the statement was not run: request a new grant", grant.id));
        }
        if grant.resource != request.resource {
            return Err(format!(
                "grant {} is for resource {}, not {}; the statement was not run",
                grant.id, grant.resource, request.resource
            ));
        }
        let hash = request.text_hash.clone();
        for _ in 0..MAX_ATTEMPTS {
            match self.store.open_review(&grant.id, request.kind, &hash, now).await.map_err(unreachable)? {
                Some(review) if review.status == ReviewStatus::Approved => {
                    let mut used = review.clone();
                    used.status = ReviewStatus::Used;
                    used.used_at = Some(now);
                    used.status_reason = Some(format!(
                        "approved by {}; run once, in session {} at {}",
                        review.decided_by.as_deref().unwrap_or("an approver"),
                        request.session_id,
                        rfc3339(now)
                    ));
                    // Spent before it runs: of two sessions sending it at
                    // once, one wins; the other looks again.
                    if self.store.update_review(&used, review.version).await.map_err(unreachable)? {
                        return Ok(HoldOutcome::Run {
                            review_id: review.id,
                            approved_by: review.decided_by.unwrap_or_default(),
                        });
                    }
                }
                Some(review) => {
                    return Ok(HoldOutcome::Held {
                        review_id: review.id,
                        opened: false,
                        expires_at: review.expires_at,
                    });
                }
                None => return self.open_new_review(&grant, request, hash, now).await,
            }
        }
        Err("the review of this statement kept changing; the statement was not run, try again".to_string())
    }

    /// Opens a review of a held statement: recorded first, so that no review
    /// exists that the recording does not show.
    async fn open_new_review(
        &self,
        grant: &Grant,
        request: HoldRequest,
        text_hash: String,
        now: i64,
    ) -> Result<HoldOutcome, String> {
        // A runaway client sending ever different held requests would bury
        // the approvers' queue: past a bound, they are refused, not held.
        let filter = ReviewFilter {
            grant_id: Some(grant.id.clone()),
            status: Some(ReviewStatus::Pending),
            limit: Some(MAX_PENDING_REVIEWS as i64 + 1),
            ..Default::default()
        };
        let full = format!(
            "{MAX_PENDING_REVIEWS} requests of grant {} already wait for review: wait for their decisions \
             (`proctor review list`) before sending more that need one",
            grant.id
        );
        // Counted first, so that a refusal records nothing; counted again
        // as the review is added (below), where requests arriving at once
        // take turns.
        let pending = self.store.list_reviews(&filter).await.map_err(unreachable)?;
        if pending.iter().filter(|review| review.expires_at > now).count() >= MAX_PENDING_REVIEWS {
            return Err(full);
        }
        let id = format!("r_{}", hex::encode(random(8)));
        let how = format!(
            "rule {} holds this statement; {} may approve it with `proctor review approve {id}`, then send it again",
            request.rule,
            self.deciders(request.approval_group.as_deref())
        );
        let review = Review {
            id,
            version: 0,
            grant_id: grant.id.clone(),
            subject: grant.subject.clone(),
            issuer: grant.issuer.clone(),
            resource: grant.resource.clone(),
            session_id: request.session_id.to_string(),
            ref_seq: request.ref_seq.and_then(|s| i64::try_from(s).ok()),
            kind: request.kind,
            text: request.text,
            text_hash,
            rule: request.rule,
            approval_group: request.approval_group,
            status: ReviewStatus::Pending,
            status_reason: Some(how.clone()),
            decided_by: None,
            created_at: now,
            decided_at: None,
            used_at: None,
            // Nothing runs after the grant ends, so nothing waits longer.
            expires_at: (now + self.pending_ttl.as_millis() as i64).min(grant.expires_at),
        };
        self.record_review_event(ReviewAction::Requested, &review, &grant.subject, Some(how)).await.map_err(|e| {
            format!("Proctor could not record the review of this statement ({}); it was not run, try again later", e.0)
        })?;
        if !self.store.insert_review_within(&review, MAX_PENDING_REVIEWS, now).await.map_err(unreachable)? {
            // Another request of the grant took the last place meanwhile:
            // the request recorded above is answered, by Proctor.
            if let Err(error) =
                self.record_review_event(ReviewAction::Denied, &review, "proctor", Some(full.clone())).await
            {
                tracing::error!(review = %review.id, %error, "the refusal of a review past the grant's bound could not be recorded");
            }
            return Err(full);
        }
        Ok(HoldOutcome::Held { review_id: review.id, opened: true, expires_at: review.expires_at })
    }

    /// Reviews `who` may see: of their own statements, and those they decide.
    pub async fn list_reviews(&self, who: &Identity, filter: ReviewFilter) -> Result<Vec<ReviewView>, ControlError> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIST);
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(ControlError::BadRequest(format!("limit must be between 1 and {MAX_LIST}")));
        }
        let mut reviews = if self.is_admin(who) {
            self.store.list_reviews(&ReviewFilter { limit: Some(limit), ..filter.clone() }).await?
        } else {
            // Each part the caller may see, newest first, merged: their own,
            // and those of each of their groups (a review's approval group
            // comes from the rule set that held it).
            let mut parts = Vec::new();
            if filter.subject.as_ref().is_none_or(|s| s == &who.subject) {
                parts.push(ReviewFilter {
                    issuer: Some(who.issuer.clone()),
                    subject: Some(who.subject.clone()),
                    ..filter.clone()
                });
            }
            let mut groups: Vec<&String> = who.groups.iter().collect();
            groups.sort_unstable();
            groups.dedup();
            for group in groups {
                parts.push(ReviewFilter { approval_group: Some(group.clone()), ..filter.clone() });
            }
            let mut all: Vec<Review> = Vec::new();
            for part in parts {
                let part = ReviewFilter { limit: Some(limit), ..part };
                for review in self.store.list_reviews(&part).await? {
                    if !all.iter().any(|r| r.id == review.id) {
                        all.push(review);
                    }
                }
            }
            all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            all
        };
        reviews.truncate(limit as usize);
        let mut views: Vec<ReviewView> = reviews.iter().map(view).collect();
        // A pending review past its time shows as expired: not pending.
        if let Some(status) = filter.status {
            views.retain(|v| v.status == status);
        }
        Ok(views)
    }

    /// One review, to the statement's sender or a decider.
    pub async fn show_review(&self, who: &Identity, id: &str) -> Result<ReviewView, ControlError> {
        Ok(view(&self.visible_review(who, id).await?))
    }

    /// Applies `change` to review `id` with compare-and-swap, retrying when
    /// someone else changed it first.
    async fn change_review(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Review) -> Result<(), ControlError>,
    ) -> Result<(Review, Review), ControlError> {
        for _ in 0..MAX_ATTEMPTS {
            let before = self
                .store
                .get_review(id)
                .await?
                .ok_or_else(|| ControlError::NotFound(format!("there is no review {id}")))?;
            let mut after = before.clone();
            change(&mut after)?;
            if self.store.update_review(&after, before.version).await? {
                after.version = before.version + 1;
                return Ok((before, after));
            }
        }
        Err(busy(id))
    }

    /// Checks that `who` may decide `review` now (`verb`: approve, deny).
    fn may_decide(&self, who: &Identity, review: &Review, verb: &str, now: i64) -> Result<(), ControlError> {
        let id = &review.id;
        if sent(who, review) {
            return Err(ControlError::Forbidden(format!(
                "{} sent the statement held in review {id} and cannot {verb} it: {} must",
                who.subject,
                self.deciders(review.approval_group.as_deref())
            )));
        }
        if !self.decides_review(who, review) {
            return Err(ControlError::Forbidden(format!(
                "{} may not {verb} review {id}: {} may",
                who.subject,
                self.deciders(review.approval_group.as_deref())
            )));
        }
        let (status, _) = shown_status(review, now);
        if status != ReviewStatus::Pending {
            return Err(ControlError::Conflict(format!("review {id} is {}, not pending", status.as_str())));
        }
        Ok(())
    }

    /// Allows a held statement to run once, when its sender sends it again
    /// in the same grant, until the grant ends.
    pub async fn approve_review(
        &self,
        who: &Identity,
        id: &str,
        note: Option<String>,
    ) -> Result<ReviewView, ControlError> {
        let now = now_ms();
        let review = self.visible_review(who, id).await?;
        self.may_decide(who, &review, "approve", now)?;
        // The approval lasts as long as the grant it runs in.
        let grant = self.store.get(&review.grant_id).await?;
        let grant_end = match grant {
            Some(g) if g.status == GrantStatus::Active && g.expires_at > now => g.expires_at,
            Some(g) => {
                let status = if g.status == GrantStatus::Active { "expired" } else { g.status.as_str() };
                return Err(ControlError::Conflict(format!(
                    "grant {} is {status}: the statement of review {id} can no longer run, so there is nothing to approve",
                    g.id
                )));
            }
            None => {
                return Err(ControlError::Conflict(format!(
                    "grant {} no longer exists: the statement of review {id} can no longer run",
                    review.grant_id
                )));
            }
        };
        let (before, review) = self
            .change_review(id, |r| {
                self.may_decide(who, r, "approve", now)?;
                r.status = ReviewStatus::Approved;
                r.decided_at = Some(now);
                r.decided_by = Some(who.subject.clone());
                r.expires_at = grant_end;
                let by = match &note {
                    Some(note) => format!("approved by {}: {note}", who.subject),
                    None => format!("approved by {}", who.subject),
                };
                r.status_reason = Some(format!(
                    "{by}; it runs once when sent again in grant {} (until {})",
                    r.grant_id,
                    rfc3339(grant_end)
                ));
                Ok(())
            })
            .await?;
        if let Err(error) = self.record_review(ReviewAction::Approved, &review, &who.subject, note, false).await {
            // An approval that was not recorded does not stand: undone,
            // unless something else changed the review meanwhile (a session
            // already ran the statement).
            if self.store.update_review(&before, review.version).await.unwrap_or(false) {
                return Err(error);
            }
            return Err(ControlError::Unavailable(format!(
                "review {id} was approved but Proctor could not record the approval and could not undo it; tell the operator ({error})"
            )));
        }
        Ok(view(&review))
    }

    /// Refuses a held statement; sent again, it is held again in a new review.
    pub async fn deny_review(
        &self,
        who: &Identity,
        id: &str,
        note: Option<String>,
    ) -> Result<ReviewView, ControlError> {
        let now = now_ms();
        let review = self.visible_review(who, id).await?;
        self.may_decide(who, &review, "deny", now)?;
        let (_, review) = self
            .change_review(id, |r| {
                self.may_decide(who, r, "deny", now)?;
                r.status = ReviewStatus::Denied;
                r.decided_at = Some(now);
                r.decided_by = Some(who.subject.clone());
                r.status_reason = Some(match &note {
                    Some(note) => format!("denied by {}: {note}", who.subject),
                    None => format!("denied by {}", who.subject),
                });
                Ok(())
            })
            .await?;
        // A denial stands even if it could not be recorded (fail closed);
        // the caller is told.
        self.record_review(ReviewAction::Denied, &review, &who.subject, note, true).await?;
        Ok(view(&review))
    }

    /// Marks reviews past their time expired: pending ones undecided, and
    /// approved ones whose grant ended before the statement ran again. Goes
    /// through all of them whatever fails; returns the first failure.
    pub(super) async fn expire_reviews(&self, now: i64) -> Result<(), ControlError> {
        let mut first_error = None;
        for review in self.store.due_reviews(now).await? {
            if let Err(error) = self.expire_review(review).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Recorded first, so that a failure leaves it due for the next sweep
    /// (it shows as expired, and cannot be decided or used, meanwhile).
    async fn expire_review(&self, due: Review) -> Result<(), ControlError> {
        let mut review = due.clone();
        review.status_reason = Some(expiry_reason(&due));
        review.status = ReviewStatus::Expired;
        if due.status == ReviewStatus::Pending {
            review.decided_by = Some("proctor".to_string());
            review.decided_at = Some(due.expires_at);
        }
        self.record_review(ReviewAction::Expired, &review, "proctor", review.status_reason.clone(), false).await?;
        // Lost to a concurrent change (a decision, a use): that change stands.
        self.store.update_review(&review, due.version).await?;
        Ok(())
    }
}

impl<S: ControlStore, K: EventSink> Holds for Control<S, K> {
    fn hold(&self, request: HoldRequest) -> HoldFuture<'_> {
        Box::pin(self.hold_statement(request))
    }
}
