#![allow(dead_code)]

use std::time::Duration;

use proctor_recorder::RecorderSettings;
use proctor_schemas::*;

pub fn settings() -> RecorderSettings {
    RecorderSettings { fsync_interval: Duration::from_millis(20), ..RecorderSettings::default() }
}

pub fn start(session: SessionId, time: i64) -> NewEvent {
    NewEvent::new(session, Timestamp(time), Direction::Gateway, sample::full(EventKind::SessionStart))
}

pub fn statement(session: SessionId, time: i64, sql: &str) -> NewEvent {
    NewEvent::new(
        session,
        Timestamp(time),
        Direction::ClientToTarget,
        Statement { sql: sql.to_string(), statement_name: None, portal: None, params: vec![Some("1".into()), None] },
    )
}

/// Terminal output of `bytes` pseudo-random bytes (incompressible, so
/// segments take as much room as the WAL did).
pub fn output(session: SessionId, time: i64, bytes: usize) -> NewEvent {
    let mut state = (time as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    NewEvent::new(
        session,
        Timestamp(time),
        Direction::TargetToClient,
        TerminalOutput { channel_id: None, stream: OutputStream::Stdout, data },
    )
}

pub fn end(session: SessionId, time: i64) -> NewEvent {
    NewEvent::new(
        session,
        Timestamp(time),
        Direction::Gateway,
        SessionEnd { reason: EndReason::ClientClosed, message: None },
    )
}

pub const T0: i64 = 1_764_000_000_000_000_000;

/// Runs `verify` and fails the test with its problems.
pub fn assert_verifies(dir: &std::path::Path) -> proctor_recorder::verify::VerifyReport {
    let report = proctor_recorder::verify::verify(dir, &Default::default()).unwrap();
    assert!(report.ok(), "verify found problems: {:#?}", report.problems);
    report
}
