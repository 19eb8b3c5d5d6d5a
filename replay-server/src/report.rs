//! An evidence bundle's `report.html`: what an auditor prints and reads.
//!
//! One self-contained page (inline style, no script, nothing fetched): the
//! export (who, when, why, which selection), a table of the sessions, and
//! per session who reached what under which grant and who approved it, the
//! policy decisions and reviews, the errors, and the transcript. Values
//! Proctor masked before recording are marked as masked. The report is a
//! rendering: the evidence is the bundle's events, which it was made from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use proctor_schemas::{Event, EventBody, GrantAction, PolicyOutcome, ReviewAction, SessionId, SessionStart};

use crate::render::transcript_line;

/// Transcript lines shown per session; the rest are counted.
pub const TRANSCRIPT_LINES: usize = 5_000;

/// What the report says of the export itself.
///
/// Not when: a report depends only on the events and these, so that the
/// same selection exported twice renders the same (`bundle.json` says
/// when each export was made).
pub struct ReportHeader<'a> {
    pub exported_by: &'a str,
    pub reason: Option<&'a str>,
    pub selection: Option<&'a str>,
}

/// The report of `events` (the exported sessions' and the control events
/// about them, each session's in seq order), for the sessions `wanted`.
pub fn html(events: &[Event], wanted: &BTreeSet<SessionId>, header: &ReportHeader<'_>) -> Vec<u8> {
    let mut by_session: BTreeMap<SessionId, Vec<&Event>> = BTreeMap::new();
    let mut grants: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut reviews: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    let mut accesses: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for event in events {
        if wanted.contains(&event.session_id) {
            by_session.entry(event.session_id).or_default().push(event);
            continue;
        }
        match &event.body {
            EventBody::Grant(g) => grants.entry(g.grant_id.as_str()).or_default().push(event),
            EventBody::Review(r) => {
                if let Some(target) = &r.target_session {
                    reviews.entry(target.clone()).or_default().push(event);
                }
            }
            EventBody::RecordingAccessed(a) => {
                if let Some(target) = &a.target_session {
                    accesses.entry(target.clone()).or_default().push(event);
                }
            }
            _ => {}
        }
    }

    let mut page = String::with_capacity(events.len() * 200 + 8192);
    page.push_str(HEAD);
    page.push_str("<h1>Proctor evidence report</h1>\n<table class=\"meta\">\n");
    row(&mut page, "Exported by", header.exported_by);
    row(&mut page, "Reason", header.reason.unwrap_or("(none given)"));
    row(&mut page, "Selection", header.selection.unwrap_or("sessions by id"));
    row(&mut page, "Sessions", &by_session.len().to_string());
    page.push_str("</table>\n<p class=\"note\">This report is a rendering of the bundle's events \
        (<code>events/events.parquet</code>); <code>proctor verify --bundle</code> proves those, each \
        against its segment's signed root, and <code>bundle.json</code> says when it was exported. Values shown <mark class=\"masked\">marked</mark> have \
        the form Proctor's masking leaves in place of what it hides before anything is recorded \
        (text typed in that form is marked alike: the events' <code>masking_applied</code> counts say what \
        was masked).</p>\n");

    // The sessions at a glance.
    page.push_str(
        "<h2>Sessions</h2>\n<table class=\"list\"><thead><tr><th>Session</th><th>Protocol</th>\
        <th>Subject</th><th>Resource</th><th>Start</th><th>End</th><th>Grant</th><th>Approved by</th>\
        <th>Events</th><th>Blocked</th><th>Held</th><th>Errors</th></tr></thead><tbody>\n",
    );
    for (session, events) in &by_session {
        let facts = Facts::of(events, &grants);
        let _ = writeln!(
            page,
            "<tr><td><a href=\"#s-{session}\"><code>{session}</code></a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&facts.protocol),
            esc(facts.start.and_then(|s| s.subject.as_deref()).unwrap_or("-")),
            esc(facts.start.and_then(|s| s.resource.as_deref()).unwrap_or("-")),
            esc(&facts.first),
            esc(&facts.end),
            esc(facts.grant.unwrap_or("-")),
            esc(&facts.approvers.join(", ")),
            events.len(),
            facts.blocked,
            facts.held,
            facts.errors,
        );
    }
    page.push_str("</tbody></table>\n");

    for (session, events) in &by_session {
        let facts = Facts::of(events, &grants);
        let _ =
            write!(page, "<section class=\"session\" id=\"s-{session}\">\n<h2>Session <code>{session}</code></h2>\n");
        page.push_str("<table class=\"meta\">\n");
        if let Some(start) = facts.start {
            row(&mut page, "Protocol", start.protocol.as_str());
            row(&mut page, "Subject", start.subject.as_deref().unwrap_or("-"));
            if !start.groups.is_empty() {
                row(&mut page, "Groups", &start.groups.join(", "));
            }
            row(&mut page, "Resource", start.resource.as_deref().unwrap_or("-"));
            for (label, value) in [
                ("Client", &start.client_addr),
                ("Target user", &start.target_user),
                ("Database", &start.database),
                ("Application", &start.application_name),
                ("TLS", &start.tls),
                ("Masking profile", &start.masking_profile),
            ] {
                if let Some(value) = value {
                    row(&mut page, label, value);
                }
            }
        }
        row(&mut page, "Start", &facts.first);
        row(&mut page, "End", &facts.end);
        row(&mut page, "Events", &events.len().to_string());
        page.push_str("</table>\n");

        // The grant, from its control events.
        if let Some(grant) = facts.grant {
            let _ = writeln!(page, "<h3>Grant <code>{}</code></h3>", esc(grant));
            match grants.get(grant) {
                Some(trail) => {
                    page.push_str("<table class=\"list\"><thead><tr><th>Time</th><th>Event</th><th>By</th><th>Subject</th><th>Expires</th><th>Message</th></tr></thead><tbody>\n");
                    for event in trail {
                        let EventBody::Grant(g) = &event.body else { continue };
                        let _ = writeln!(
                            page,
                            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                            event.time.to_rfc3339_millis(),
                            g.action.as_str(),
                            esc(g.actor.as_deref().unwrap_or("-")),
                            esc(g.subject.as_deref().unwrap_or("-")),
                            g.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            marked(g.message.as_deref().unwrap_or("")),
                        );
                    }
                    page.push_str("</tbody></table>\n");
                }
                None => page.push_str("<p class=\"note\">No event of this grant is in the bundle (recorded before the recording could prove control events one by one, or not sealed yet).</p>\n"),
            }
        }

        // Policy decisions and reviews.
        let decisions: Vec<&&Event> =
            events.iter().filter(|e| matches!(e.body, EventBody::PolicyDecision(_))).collect();
        let session_reviews = reviews.get(&session.to_string());
        if !decisions.is_empty() || session_reviews.is_some() {
            page.push_str("<h3>Policy decisions and reviews</h3>\n<table class=\"list\"><thead><tr><th>Time</th><th>Seq</th><th>Decision</th><th>Rule</th><th>Review</th><th>By</th><th>Message</th></tr></thead><tbody>\n");
            for event in &decisions {
                let EventBody::PolicyDecision(d) = &event.body else { continue };
                let class = match d.outcome {
                    PolicyOutcome::Block => " class=\"block\"",
                    PolicyOutcome::Hold | PolicyOutcome::Flag => " class=\"hold\"",
                    PolicyOutcome::Allow => "",
                };
                let _ = writeln!(
                    page,
                    "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>policy</td><td>{}</td></tr>",
                    event.time.to_rfc3339_millis(),
                    d.ref_seq.map(|s| s.to_string()).unwrap_or_default(),
                    d.outcome.as_str(),
                    esc(d.rule.as_deref().unwrap_or("")),
                    esc(d.review_id.as_deref().unwrap_or("")),
                    marked(d.message.as_deref().unwrap_or("")),
                );
            }
            for event in session_reviews.into_iter().flatten() {
                let EventBody::Review(r) = &event.body else { continue };
                let class = match r.action {
                    ReviewAction::Denied => " class=\"block\"",
                    _ => "",
                };
                let message = match (&r.held, &r.message) {
                    (Some(held), Some(message)) => format!("{}: {message}", held.text),
                    (Some(held), None) => held.text.clone(),
                    (None, message) => message.clone().unwrap_or_default(),
                };
                let _ = writeln!(
                    page,
                    "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    event.time.to_rfc3339_millis(),
                    r.ref_seq.map(|s| s.to_string()).unwrap_or_default(),
                    r.action.as_str(),
                    esc(&r.review_id),
                    esc(r.actor.as_deref().unwrap_or("-")),
                    marked(&message),
                );
            }
            page.push_str("</tbody></table>\n");
        }

        // Errors.
        let errors: Vec<&&Event> = events.iter().filter(|e| matches!(e.body, EventBody::Error(_))).collect();
        if !errors.is_empty() {
            page.push_str("<h3>Errors</h3>\n<table class=\"list\"><thead><tr><th>Time</th><th>Seq</th><th>SQLSTATE</th><th>Message</th></tr></thead><tbody>\n");
            for event in errors {
                let EventBody::Error(e) = &event.body else { continue };
                let _ = writeln!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    event.time.to_rfc3339_millis(),
                    event.seq,
                    esc(e.sqlstate.as_deref().unwrap_or("")),
                    marked(&e.message),
                );
            }
            page.push_str("</tbody></table>\n");
        }

        // Who has read or exported this recording (as far as sealed).
        if let Some(reads) = accesses.get(&session.to_string()) {
            page.push_str("<h3>Access to this recording</h3>\n<table class=\"list\"><thead><tr><th>Time</th><th>Operation</th><th>By</th><th>Query</th></tr></thead><tbody>\n");
            for event in reads {
                let EventBody::RecordingAccessed(a) = &event.body else { continue };
                let _ = writeln!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    event.time.to_rfc3339_millis(),
                    esc(&a.operation),
                    esc(&a.actor),
                    esc(a.query.as_deref().unwrap_or("")),
                );
            }
            page.push_str("</tbody></table>\n");
        }

        // The transcript.
        page.push_str("<h3>Transcript</h3>\n<div class=\"transcript\">\n");
        for event in events.iter().take(TRANSCRIPT_LINES) {
            let class = match &event.body {
                EventBody::PolicyDecision(d) if d.outcome == PolicyOutcome::Block => " block",
                EventBody::PolicyDecision(d) if d.outcome != PolicyOutcome::Allow => " hold",
                EventBody::Error(_) => " error",
                _ => "",
            };
            let _ = writeln!(page, "<div class=\"line{class}\">{}</div>", marked(&transcript_line(event)));
        }
        if events.len() > TRANSCRIPT_LINES {
            let _ = writeln!(
                page,
                "<div class=\"line note\">… {} more events: every one is in <code>events/events.parquet</code> and <code>ocsf.jsonl</code>.</div>",
                events.len() - TRANSCRIPT_LINES
            );
        }
        page.push_str("</div>\n</section>\n");
    }
    page.push_str("</body>\n</html>\n");
    page.into_bytes()
}

/// What the report says of one session, from its events and its grant's.
struct Facts<'a> {
    start: Option<&'a SessionStart>,
    protocol: String,
    first: String,
    end: String,
    grant: Option<&'a str>,
    approvers: Vec<String>,
    blocked: usize,
    held: usize,
    errors: usize,
}

impl<'a> Facts<'a> {
    fn of(events: &[&'a Event], grants: &BTreeMap<&str, Vec<&'a Event>>) -> Facts<'a> {
        let start = events.iter().find_map(|e| match &e.body {
            EventBody::SessionStart(s) => Some(s),
            _ => None,
        });
        let end = events.iter().rev().find_map(|e| match &e.body {
            EventBody::SessionEnd(end) => Some(format!("{} ({})", e.time.to_rfc3339_millis(), end.reason.as_str())),
            _ => None,
        });
        let grant = start.and_then(|s| s.grant_id.as_deref());
        let approvers = grant
            .and_then(|g| grants.get(g))
            .into_iter()
            .flatten()
            .filter_map(|e| match &e.body {
                EventBody::Grant(g) if matches!(g.action, GrantAction::Approved | GrantAction::PartiallyApproved) => {
                    g.actor.clone()
                }
                _ => None,
            })
            .collect();
        let count = |f: &dyn Fn(&EventBody) -> bool| events.iter().filter(|e| f(&e.body)).count();
        Facts {
            start,
            protocol: start.map(|s| s.protocol.as_str().to_string()).unwrap_or_default(),
            first: events.first().map(|e| e.time.to_rfc3339_millis()).unwrap_or_default(),
            end: end.unwrap_or_else(|| "live: no end recorded when exported".to_string()),
            grant,
            approvers,
            blocked: count(&|b| matches!(b, EventBody::PolicyDecision(d) if d.outcome == PolicyOutcome::Block)),
            held: count(&|b| matches!(b, EventBody::PolicyDecision(d) if d.outcome == PolicyOutcome::Hold)),
            errors: count(&|b| matches!(b, EventBody::Error(_))),
        }
    }
}

fn row(page: &mut String, label: &str, value: &str) {
    let _ = writeln!(page, "<tr><th>{}</th><td>{}</td></tr>", esc(label), marked(value));
}

fn esc(text: &str) -> String {
    proctor_indexer::html_escape(text)
}

/// `text`, HTML-escaped, with what masking left in place of values marked:
/// `[RULE:masked]`, `[RULE:tok_…]` (a keyed token), and the `*` runs of a
/// value of which the last four characters were kept.
pub fn marked(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while !rest.is_empty() {
        let next = masked_at(rest);
        let Some((start, end)) = next else {
            out.push_str(&esc(rest));
            break;
        };
        out.push_str(&esc(&rest[..start]));
        out.push_str("<mark class=\"masked\" title=\"the form of a value masked before it was recorded\">");
        out.push_str(&esc(&rest[start..end]));
        out.push_str("</mark>");
        rest = &rest[end..];
    }
    out
}

/// The first masked value in `text`: its byte range.
fn masked_at(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                if let Some(end) = marker_end(&text[i..]) {
                    return Some((i, i + end));
                }
            }
            b'*' => {
                let run = bytes[i..].iter().take_while(|&&b| b == b'*').count();
                if run >= 3 {
                    return Some((i, i + run));
                }
                i += run;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The length of a masking marker at the start of `text`: `[rule:masked]`
/// or `[rule:tok_` and 12 hex digits `]`, the rule lower-case letters,
/// digits, `_`, `-`, `.` and `/`.
fn marker_end(text: &str) -> Option<usize> {
    let inner = text.strip_prefix('[')?;
    // The rule's name, read no further than a name can go: a marker is
    // looked for at every `[`, so a look must cost a bounded number of
    // bytes, or a line of brackets would cost its length squared.
    let is_rule_byte = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-./".contains(b);
    let colon = inner.bytes().take(65).take_while(is_rule_byte).count();
    if colon == 0 || colon > 64 || inner.as_bytes().get(colon) != Some(&b':') {
        return None;
    }
    let after = &inner[colon + 1..];
    let value_len = if after.starts_with("masked]") {
        "masked".len()
    } else if let Some(token) = after.strip_prefix("tok_") {
        let hex = token.bytes().take(13).take_while(u8::is_ascii_hexdigit).count();
        if hex != 12 || !token[hex..].starts_with(']') {
            return None;
        }
        4 + hex
    } else {
        return None;
    };
    Some(1 + colon + 1 + value_len + 1)
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Proctor evidence report</title>
<style>
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111; margin: 2em; }
h1 { font-size: 1.6em; margin: 0 0 .6em; }
h2 { font-size: 1.25em; margin: 1.6em 0 .5em; border-bottom: 1px solid #999; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
code, .transcript { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, monospace; }
table { border-collapse: collapse; margin: .3em 0 .8em; }
th, td { text-align: left; vertical-align: top; padding: .15em .6em; border: 1px solid #ccc; }
table.meta th { background: #f3f3f3; font-weight: 600; }
table.list thead th { background: #e8e8e8; }
tr.block td { background: #fde2e2; }
tr.hold td { background: #fff4d6; }
.transcript { font-size: 11px; white-space: pre-wrap; word-break: break-all; border: 1px solid #ccc; padding: .4em; }
.line.block { background: #fde2e2; }
.line.hold { background: #fff4d6; }
.line.error { color: #9b0000; }
mark.masked { background: #dbe8ff; color: #002a7a; border-radius: 2px; padding: 0 2px; }
.note { color: #555; }
@media print {
  body { margin: 0; }
  section.session { break-before: page; }
  a { color: inherit; text-decoration: none; }
}
</style>
</head>
<body>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_markers_are_marked_and_everything_is_escaped() {
        let text = "select '[email:masked]', '[card:tok_0123456789ab]', '**** **** **** 1111', '<b>&', '[x:y]', '[email:tok_12]'";
        let html = marked(text);
        assert_eq!(html.matches("<mark").count(), 5, "{html}");
        assert!(html.contains(">[email:masked]</mark>"), "{html}");
        assert!(html.contains(">[card:tok_0123456789ab]</mark>"), "{html}");
        assert!(html.contains("&lt;b&gt;&amp;"), "{html}");
        assert!(!html.contains(">[x:y]</mark>") && !html.contains(">[email:tok_12]</mark>"), "{html}");
        // A marker split by the escaping would be a marker no more.
        assert_eq!(marked("[email:masked"), "[email:masked");
        assert_eq!(marked("**"), "**");
        // Long runs of what starts a marker are read in one pass.
        let brackets = "[".repeat(1 << 20);
        assert_eq!(marked(&brackets), brackets);
        let long_rule = format!("[{}:masked]", "a".repeat(1 << 20));
        assert_eq!(marked(&long_rule), long_rule);
        let long_token = format!("[email:tok_{}]", "0".repeat(1 << 20));
        assert_eq!(marked(&long_token), long_token);
        assert_eq!(
            marked("ü[email:masked]ü"),
            "ü<mark class=\"masked\" title=\"the form of a value masked before it was recorded\">[email:masked]</mark>ü"
        );
    }
}
