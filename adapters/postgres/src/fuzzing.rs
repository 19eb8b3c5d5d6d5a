//! Entry points for the coverage-guided fuzzers in `fuzz/` (and the tests
//! that replay what they found): each takes arbitrary bytes, drives one of
//! the decoders that face untrusted input, and panics only where an
//! invariant breaks. Not an API: hidden from the documentation.

use std::sync::{Arc, LazyLock};

use super::classify::{ClassCache, Classification, ParseAs, classify_as, shape};
use super::gate::{Gate, StatementPolicy};
use super::mask::mask_statement_text;
use super::protocol::{Answer, Backend, Frontend, Protocol, Question, SampleLimits};
use super::rules::{RuleSet, RuleSetConfig};
use proctor_gateway_core::masking::{
    Action, ColumnRuleConfig, Detector, Masker, MaskingKey, Profile, ProfileConfig, find,
};
use proctor_gateway_core::recording::RecordedEvents;

/// Two query strings, split at the first `\u{1}`: the first primes the
/// classification cache, the second is classified through it and must be
/// classified exactly as without it, in both string modes.
pub fn classifier(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, second) = text.split_once('\u{1}').unwrap_or(("", text));
    let _ = shape(second);
    for parse_as in [ParseAs::default(), ParseAs { standard_conforming_strings: false }] {
        let cache = ClassCache::new(16);
        cache.classify(first, parse_as);
        let cached = cache.classify(second, parse_as);
        let plain = Classification::from(classify_as(second, parse_as));
        assert_eq!(cached.statements, plain.statements, "{first:?} then {second:?} ({parse_as:?})");
        assert_eq!(cached.error.is_some(), plain.error.is_some(), "{second:?}");
    }
}

static MASKER: LazyLock<Arc<Masker>> = LazyLock::new(|| {
    let config = ProfileConfig {
        detectors: vec!["all".into()],
        actions: Default::default(),
        columns: vec![
            ColumnRuleConfig { pattern: "*password*".into(), action: Action::Redact },
            ColumnRuleConfig { pattern: "customers.ssn".into(), action: Action::Token },
        ],
    };
    let profile = Profile::new("fuzz", &config).expect("the fuzzing profile is valid");
    Arc::new(Masker::new(profile, MaskingKey::new(b"fuzz".to_vec())))
});

/// A value through every detector and the maskers: findings lie within
/// the value, on character boundaries, in order and apart; masking never
/// panics, and a statement's masked text keeps no finding.
pub fn masking(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let found = find(text, &Detector::ALL);
    let mut end = 0;
    for finding in &found {
        let range = finding.range.clone();
        assert!(range.start <= range.end && range.end <= text.len(), "{range:?} outside {text:?}");
        assert!(text.is_char_boundary(range.start) && text.is_char_boundary(range.end), "{range:?} in {text:?}");
        assert!(range.start >= end || range.end == end, "findings overlap in {text:?}: {found:?}");
        end = range.end;
    }
    let _ = MASKER.mask_text(text, &mut Default::default());
    for standard in [true, false] {
        let _ = mask_statement_text(&MASKER, text, standard);
    }
    // As a json document: what masking sends is JSON, or nothing.
    let _ = proctor_gateway_core::masking::json_decoded(text);
    if let Some(masked) = MASKER.masked_json(text, &found, &mut Default::default()) {
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(&masked).is_ok(), "not JSON: {masked:?}");
    }
}

static POLICY: LazyLock<Arc<StatementPolicy>> = LazyLock::new(|| {
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    let config = RuleSetConfig {
        block: names(&["copy_program", "alter_system"]),
        hold: names(&["ddl", "drop", "truncate", "delete_without_where", "admin_function", "copy_file"]),
        approval_group: None,
    };
    Arc::new(StatementPolicy::new([RuleSet::new("fuzz", &config).expect("the fuzzing rules are valid")]))
});

/// The PostgreSQL state machine fed frames from both sides, under rules and
/// masking. The input is a sequence of `[side, tag, length (u16), body]`
/// records; each becomes a well-framed message (the framing layer checks
/// lengths before the state machine sees a frame), with any body. Questions
/// the machine asks (a held statement, a COPY's columns, tables) are
/// answered with failures, as an unreachable control plane or catalog
/// would answer. Nothing may panic.
pub fn protocol(data: &[u8]) {
    let rules = POLICY.rules("fuzz").expect("the fuzzing rules exist");
    let gate = Gate::new(POLICY.clone(), rules, Some("g_0".into()), "fuzz".into(), Default::default());
    let mut protocol =
        Protocol::new(SampleLimits { rows: 4, bytes: 1 << 12 }).with_gate(Some(gate)).with_masker(Some(MASKER.clone()));
    let mut events = RecordedEvents::default();
    let mut rest = data;
    let mut stalls = 0;
    while let [side, tag, high, low, tail @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (body, after) = tail.split_at(length);
        let mut frame = Vec::with_capacity(body.len() + 5);
        frame.push(*tag);
        frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        frame.extend_from_slice(body);
        let paused = if side % 2 == 0 {
            protocol.frontend(&frame, &mut events) == Frontend::Pause
        } else {
            protocol.backend(&frame, &mut events) == Backend::Pause
        };
        if paused {
            // Answer what it asks, then read the same frame again (once).
            match protocol.question() {
                Some(Question::Hold(..)) => protocol.answer(Answer::Hold(Err("unreachable".into()))),
                Some(Question::Describe(_)) => protocol.answer(Answer::Described(Err("unreachable".into()))),
                None => {}
            }
            if protocol.lookup().is_some() {
                protocol.answer(Answer::Tables(Err("unreachable".into())));
            }
            stalls += 1;
            if stalls < 64 {
                continue;
            }
        }
        rest = after;
    }
    let _ = protocol.awaiting_target();
}
