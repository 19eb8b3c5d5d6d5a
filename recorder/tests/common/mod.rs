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

pub fn output(session: SessionId, time: i64, bytes: usize) -> NewEvent {
    let data: Vec<u8> = (0..bytes).map(|i| b"abcdefghijklmnopqrstuvwxyz\r\n"[i % 28]).collect();
    NewEvent::new(
        session,
        Timestamp(time),
        Direction::TargetToClient,
        TerminalOutput { stream: OutputStream::Stdout, data },
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
