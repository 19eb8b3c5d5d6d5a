//! Sample payloads of every kind: with every field set ([`full`]) and with
//! only the required ones ([`minimal`]). They drive the round-trip and golden
//! tests and the generated documentation of which columns each kind fills.

use crate::*;

fn s(v: &str) -> String {
    v.to_string()
}

fn some(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn headers() -> Vec<Header> {
    vec![
        Header { name: s("content-type"), value: s("application/json") },
        Header { name: s("authorization"), value: s("Bearer [masked]") },
    ]
}

/// A payload of `kind` with every field set.
pub fn full(kind: EventKind) -> EventBody {
    use EventKind as K;
    match kind {
        K::SessionStart => SessionStart {
            protocol: Protocol::Postgres,
            resource: some("prod-db"),
            subject: some("ci-deploy"),
            groups: vec![s("ci"), s("deployers")],
            grant_id: some("g_01"),
            client_addr: some("10.0.0.7:51234"),
            target_user: some("app_rw"),
            database: some("shop"),
            application_name: some("psql"),
            tls: some("TLSv1.3"),
            masking_profile: some("ci"),
            message: some("connected"),
        }
        .into(),
        K::SessionEnd => SessionEnd { reason: EndReason::ClientClosed, message: some("terminate") }.into(),
        K::Prepare => Prepare { statement_name: s("s1"), sql: s("select * from orders where id = $1") }.into(),
        K::Statement => Statement {
            sql: s("select * from orders where id = $1"),
            statement_name: some("s1"),
            portal: some(""),
            params: vec![some("42"), None],
        }
        .into(),
        K::Result => StatementResult {
            ref_seq: Some(3),
            command_tag: some("SELECT 2"),
            columns: vec![s("id"), s("email")],
            row_count: 2,
            byte_count: 64,
            duration_ns: 1_250_000,
            sample_rows: vec![vec![some("1"), some("[email:tok_3f9a1c2e7b10]")], vec![some("2"), None]],
            sample_truncated: true,
            tokens: vec![s("tok_3f9a1c2e7b10"), s("tok_81c0d2e4f6a9")],
            tokens_dropped: 1,
        }
        .into(),
        K::Error => ErrorReport {
            ref_seq: Some(3),
            severity: some("ERROR"),
            sqlstate: some("42P01"),
            message: s("relation \"ordrs\" does not exist"),
            detail: some("check the table name"),
        }
        .into(),
        K::Notice => Notice {
            severity: some("WARNING"),
            sqlstate: some("01000"),
            message: s("there is no transaction in progress"),
            detail: some("detail"),
        }
        .into(),
        K::Notification => Notification { backend_pid: 4242, channel: s("jobs"), payload: s("{\"id\":7}") }.into(),
        K::ParameterStatus => ParameterStatus { parameter: s("server_version"), value: s("17.2") }.into(),
        K::Copy => CopySummary {
            ref_seq: Some(5),
            format: s("csv"),
            row_count: Some(1000),
            byte_count: 48_000,
            duration_ns: Some(9_000_000),
        }
        .into(),
        K::Cancel => Cancel { backend_pid: Some(4242), message: some("cancel requested by client") }.into(),
        K::RawFrame => {
            RawFrame { frame_tag: s("F"), byte_count: 18, data: vec![0x46, 0, 0, 0, 17], truncated: true }.into()
        }
        K::PtyRequest => PtyRequest { channel_id: Some(0), term: s("xterm-256color"), width: 120, height: 40 }.into(),
        K::TerminalInput => TerminalInput {
            channel_id: Some(0),
            data: vec![],
            byte_count: Some(7),
            digest: some("4f1c3a0b9e2d7c6a5b4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a"),
        }
        .into(),
        K::TerminalOutput => TerminalOutput {
            channel_id: Some(0),
            stream: OutputStream::Stdout,
            // Not UTF-8: terminal data is bytes.
            data: b"\x1b[32mtotal 8\x1b[0m\r\n\xff\xfe".to_vec(),
        }
        .into(),
        K::Resize => Resize { channel_id: Some(0), width: 200, height: 50 }.into(),
        K::Exec => Exec { channel_id: Some(1), command: s("uptime") }.into(),
        K::Shell => Shell { channel_id: Some(0) }.into(),
        K::Command => Command { channel_id: Some(0), command: s("sudo systemctl restart app") }.into(),
        K::Signal => Signal { channel_id: Some(1), signal: s("INT") }.into(),
        K::ExitStatus => ExitStatus {
            channel_id: Some(1),
            exit_code: Some(1),
            exit_signal: some("TERM"),
            message: some("terminated"),
        }
        .into(),
        K::FileTransfer => FileTransfer {
            channel_id: Some(2),
            operation: s("write"),
            path: s("/srv/app/config.yml"),
            byte_count: Some(512),
            target_path: some("/srv/app/config.yml.new"),
            sha256: some("2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"),
        }
        .into(),
        K::PortForward => PortForward {
            channel_id: Some(3),
            operation: s("direct-tcpip"),
            host: some("db.internal"),
            port: Some(5432),
            outcome: None,
            rule: None,
            ref_seq: Some(21),
            bytes_to_target: Some(4096),
            bytes_to_client: Some(65_536),
            duration_ns: Some(2_000_000_000),
            message: some("closed by the client"),
        }
        .into(),
        K::HttpRequest => HttpRequest {
            method: s("POST"),
            host: some("billing.internal"),
            path: s("/v1/invoices?limit=10"),
            headers: headers(),
            body: b"{\"amount\":10}".to_vec(),
            byte_count: 13,
            truncated: false,
        }
        .into(),
        K::HttpResponse => HttpResponse {
            ref_seq: Some(1),
            status: 201,
            headers: headers(),
            body: b"{\"id\":\"inv_1\"}".to_vec(),
            byte_count: 14,
            truncated: false,
            duration_ns: Some(3_000_000),
        }
        .into(),
        K::GrantRequested
        | K::GrantApproved
        | K::GrantPartiallyApproved
        | K::GrantDenied
        | K::GrantExpired
        | K::GrantRevoked
        | K::GrantCertified => GrantEvent {
            action: grant_action(kind),
            grant_id: s("g_01"),
            resource: some("prod-db"),
            subject: some("ci-deploy"),
            groups: vec![s("ci")],
            actor: some("alice"),
            expires_at: Some(Timestamp(1_764_130_000_000_000_000)),
            message: some("deploy 2026.11.26"),
        }
        .into(),
        K::PolicyDecision => PolicyDecision {
            outcome: PolicyOutcome::Hold,
            grant_id: some("g_01"),
            rule: some("ci.hold-ddl"),
            review_id: some("r_07"),
            ref_seq: Some(9),
            message: some("DDL needs approval by dba"),
        }
        .into(),
        K::ReviewRequested | K::ReviewApproved | K::ReviewDenied | K::ReviewExpired => ReviewEvent {
            action: review_action(kind),
            review_id: s("r_07"),
            grant_id: some("g_01"),
            actor: some("bob"),
            target_session: some("0192f0c1-0000-7000-8000-000000000001"),
            ref_seq: Some(9),
            message: some("looks fine"),
            held: Some(match kind {
                K::ReviewApproved => Held { kind: HeldKind::Exec, text: s("systemctl restart app") },
                K::ReviewDenied => Held { kind: HeldKind::File, text: s("remove /etc/app/secrets.yml") },
                _ => Held::statement("drop table tmp_import"),
            }),
        }
        .into(),
        K::MaskingApplied => MaskingApplied {
            masking_profile: some("ci"),
            ref_seq: Some(4),
            masked: vec![RuleCount { rule: s("email"), count: 3 }, RuleCount { rule: s("card"), count: 1 }],
            tokens: vec![s("[email:tok_0c5d1e2f3a4b5c6d]")],
            tokens_dropped: 2,
        }
        .into(),
        K::RecordingAccessed => RecordingAccessed {
            actor: s("ivy"),
            target_session: some("0192f0c1-0000-7000-8000-000000000001"),
            query: some("kind:statement drop"),
            operation: s("search"),
        }
        .into(),
        K::RetentionDeleted => RetentionDeleted {
            path: s("segments/dt=2026-01-01/00000000000000000001.parquet"),
            row_count: Some(1000),
            message: some("older than 365d"),
        }
        .into(),
        K::RecorderRecovery => RecorderRecovery {
            message: s("truncated a torn tail"),
            path: some("wal/00000000000000000007.wal"),
            byte_count: Some(17),
        }
        .into(),
    }
}

/// A payload of `kind` with only the required fields set.
pub fn minimal(kind: EventKind) -> EventBody {
    use EventKind as K;
    match kind {
        K::SessionStart => SessionStart::new(Protocol::System).into(),
        K::SessionEnd => SessionEnd { reason: EndReason::Recovered, message: None }.into(),
        K::Prepare => Prepare { statement_name: s(""), sql: s("") }.into(),
        K::Statement => Statement { sql: s("select 1"), statement_name: None, portal: None, params: vec![] }.into(),
        K::Result => StatementResult::default().into(),
        K::Error => ErrorReport { message: s("boom"), ..Default::default() }.into(),
        K::Notice => Notice { message: s("note"), ..Default::default() }.into(),
        K::Notification => Notification { backend_pid: -1, channel: s("c"), payload: s("") }.into(),
        K::ParameterStatus => ParameterStatus { parameter: s("TimeZone"), value: s("UTC") }.into(),
        K::Copy => {
            CopySummary { ref_seq: None, format: s("text"), row_count: None, byte_count: 0, duration_ns: None }.into()
        }
        K::Cancel => Cancel::default().into(),
        K::RawFrame => RawFrame { frame_tag: s("V"), byte_count: 0, data: vec![], truncated: false }.into(),
        K::PtyRequest => PtyRequest { channel_id: None, term: s("vt100"), width: 0, height: 0 }.into(),
        K::TerminalInput => {
            TerminalInput { channel_id: None, data: b"stdin\n".to_vec(), byte_count: None, digest: None }.into()
        }
        K::TerminalOutput => TerminalOutput { channel_id: None, stream: OutputStream::Stderr, data: vec![] }.into(),
        K::Resize => Resize { channel_id: None, width: u32::MAX, height: 1 }.into(),
        K::Exec => Exec { channel_id: None, command: s("") }.into(),
        K::Shell => Shell { channel_id: None }.into(),
        K::Command => Command { channel_id: None, command: s("ls") }.into(),
        K::Signal => Signal { channel_id: None, signal: s("") }.into(),
        K::ExitStatus => ExitStatus::default().into(),
        K::FileTransfer => {
            FileTransfer { channel_id: None, operation: s("stat"), path: s("/"), ..Default::default() }.into()
        }
        K::PortForward => PortForward {
            channel_id: None,
            operation: s("tcpip-forward"),
            host: None,
            port: None,
            outcome: Some(PolicyOutcome::Block),
            rule: some("forwarding"),
            ref_seq: None,
            bytes_to_target: None,
            bytes_to_client: None,
            duration_ns: None,
            message: None,
        }
        .into(),
        K::HttpRequest => HttpRequest {
            method: s("GET"),
            host: None,
            path: s("/"),
            headers: vec![],
            body: vec![],
            byte_count: 0,
            truncated: false,
        }
        .into(),
        K::HttpResponse => HttpResponse {
            ref_seq: None,
            status: 204,
            headers: vec![],
            body: vec![],
            byte_count: 0,
            truncated: false,
            duration_ns: None,
        }
        .into(),
        K::GrantRequested
        | K::GrantApproved
        | K::GrantPartiallyApproved
        | K::GrantDenied
        | K::GrantExpired
        | K::GrantRevoked
        | K::GrantCertified => GrantEvent {
            action: grant_action(kind),
            grant_id: s("g"),
            resource: None,
            subject: None,
            groups: vec![],
            actor: None,
            expires_at: None,
            message: None,
        }
        .into(),
        K::PolicyDecision => PolicyDecision {
            outcome: PolicyOutcome::Allow,
            grant_id: None,
            rule: None,
            review_id: None,
            ref_seq: None,
            message: None,
        }
        .into(),
        K::ReviewRequested | K::ReviewApproved | K::ReviewDenied | K::ReviewExpired => ReviewEvent {
            action: review_action(kind),
            review_id: s("r"),
            grant_id: None,
            actor: None,
            target_session: None,
            ref_seq: None,
            message: None,
            held: None,
        }
        .into(),
        K::MaskingApplied => MaskingApplied::default().into(),
        K::RecordingAccessed => {
            RecordingAccessed { actor: s("a"), target_session: None, query: None, operation: s("read") }.into()
        }
        K::RetentionDeleted => RetentionDeleted { path: s("p"), row_count: None, message: None }.into(),
        K::RecorderRecovery => RecorderRecovery { message: s("m"), path: None, byte_count: None }.into(),
    }
}

fn grant_action(kind: EventKind) -> GrantAction {
    match kind {
        EventKind::GrantApproved => GrantAction::Approved,
        EventKind::GrantPartiallyApproved => GrantAction::PartiallyApproved,
        EventKind::GrantDenied => GrantAction::Denied,
        EventKind::GrantExpired => GrantAction::Expired,
        EventKind::GrantRevoked => GrantAction::Revoked,
        EventKind::GrantCertified => GrantAction::Certified,
        _ => GrantAction::Requested,
    }
}

fn review_action(kind: EventKind) -> ReviewAction {
    match kind {
        EventKind::ReviewApproved => ReviewAction::Approved,
        EventKind::ReviewDenied => ReviewAction::Denied,
        EventKind::ReviewExpired => ReviewAction::Expired,
        _ => ReviewAction::Requested,
    }
}

/// The direction a kind is usually recorded with.
pub fn direction(kind: EventKind) -> Direction {
    use EventKind as K;
    match kind {
        K::Prepare
        | K::Statement
        | K::Cancel
        | K::RawFrame
        | K::PtyRequest
        | K::TerminalInput
        | K::Resize
        | K::Exec
        | K::Shell
        | K::Command
        | K::Signal
        | K::FileTransfer
        | K::HttpRequest => Direction::ClientToTarget,
        K::Result
        | K::Error
        | K::Notice
        | K::Notification
        | K::ParameterStatus
        | K::Copy
        | K::TerminalOutput
        | K::ExitStatus
        | K::HttpResponse => Direction::TargetToClient,
        _ => Direction::Gateway,
    }
}

/// One full event of every kind in one session, with fixed ids and times:
/// the input of the golden canonical-encoding file.
pub fn golden_events() -> Vec<Event> {
    let session_id = SessionId::from_parts(1_764_127_398_000, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    EventKind::ALL
        .iter()
        .enumerate()
        .map(|(seq, &kind)| Event {
            session_id,
            seq: seq as u64,
            time: Timestamp(1_764_127_398_000_000_000 + seq as i64 * 1_000_000),
            direction: direction(kind),
            body: full(kind),
        })
        .collect()
}
