//! The closed vocabularies stored as strings in the `kind`, `direction`,
//! `protocol`, `outcome`, `end_reason` and related columns. Their names are a
//! public interface: search queries, exports and users' own Parquet queries
//! use them, so they change only with a new schema version.

use std::fmt;
use std::str::FromStr;

use crate::SchemaError;

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $label:literal {
            $( $variant:ident = $text:literal : $doc:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( #[doc = $doc] $variant, )+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];
            /// What the vocabulary is called in messages and docs.
            pub const LABEL: &'static str = $label;

            /// The stored name.
            pub fn as_str(&self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }

            /// One line saying what the value means.
            pub fn doc(&self) -> &'static str {
                match self { $( $name::$variant => $doc, )+ }
            }
        }

        impl FromStr for $name {
            type Err = SchemaError;

            fn from_str(s: &str) -> Result<Self, SchemaError> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err(SchemaError::UnknownName { vocabulary: $label, value: other.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// Which way an event went.
    Direction, "direction" {
        ClientToTarget = "client_to_target": "sent by the client towards the target (a statement, keystrokes, a request)",
        TargetToClient = "target_to_client": "sent by the target back to the client (results, screen output, a response)",
        Gateway = "gateway": "originated in Proctor itself (session lifecycle, policy, grants, masking, audit of viewers)",
    }
}

vocabulary! {
    /// The protocol of a session.
    Protocol, "protocol" {
        Postgres = "postgres": "PostgreSQL wire protocol",
        Ssh = "ssh": "SSH: interactive terminals, exec and file transfer",
        Http = "http": "HTTP/1.1 and HTTP/2 requests to internal services",
        Kubernetes = "kubernetes": "the Kubernetes API (HTTP with Kubernetes semantics)",
        Control = "control": "the control plane of one gateway run: grants, reviews, viewer access",
        System = "system": "Proctor's own housekeeping: recovery, retention",
    }
}

vocabulary! {
    /// What the policy decided for one statement or command.
    PolicyOutcome, "policy outcome" {
        Allow = "allow": "forwarded to the target",
        Block = "block": "refused; the client got an error naming the rule",
        Hold = "hold": "held for human approval; the client got an error naming the review",
        Flag = "flag": "a command typed at a terminal matched a rule: recorded and marked, not enforced (it had reached the shell as it was typed)",
    }
}

vocabulary! {
    /// Why a session ended.
    EndReason, "end reason" {
        ClientClosed = "client_closed": "the client disconnected or sent its terminate message",
        TargetClosed = "target_closed": "the target closed the connection",
        ClientError = "client_error": "the client sent something Proctor could not accept (malformed frames, a protocol violation)",
        TargetError = "target_error": "the target failed or became unreachable during the session",
        AuthFailed = "auth_failed": "the client could not be authenticated or authorized",
        GrantExpired = "grant_expired": "the grant the session ran under expired",
        GrantRevoked = "grant_revoked": "the grant the session ran under was revoked",
        Policy = "policy": "a policy rule ended the session",
        RecorderUnavailable = "recorder_unavailable": "the recorder could not accept events, so the gateway failed closed",
        Shutdown = "shutdown": "Proctor shut down while the session was open",
        Recovered = "recovered": "Proctor stopped without ending the session (a crash); closed when its recording was recovered",
        IdleTimeout = "idle_timeout": "no traffic for longer than the configured idle limit",
        Completed = "completed": "a gateway or system session finished its work",
        InternalError = "internal_error": "Proctor failed internally while serving the session (a defect, logged); the connection was cut",
    }
}

vocabulary! {
    /// What happened to a grant.
    GrantAction, "grant action" {
        Requested = "grant_requested": "a subject asked for access to a resource",
        Approved = "grant_approved": "the grant became active (by policy or by approvers)",
        PartiallyApproved = "grant_partially_approved": "an approver approved a request that needs more approvals; it stays pending",
        Denied = "grant_denied": "the grant was refused (by policy or by an approver)",
        Expired = "grant_expired": "the grant reached its expiry, or its request expired undecided",
        Revoked = "grant_revoked": "the grant was revoked before its expiry",
        Certified = "grant_certified": "an SSH user certificate was issued for the grant: the key's fingerprint and the certificate's serial and end",
    }
}

vocabulary! {
    /// What happened to a statement held for review.
    ReviewAction, "review action" {
        Requested = "review_requested": "a statement was held and a review opened",
        Approved = "review_approved": "an approver allowed the held statement to run once",
        Denied = "review_denied": "an approver refused the held statement",
        Expired = "review_expired": "the review expired undecided",
    }
}

vocabulary! {
    /// Which terminal stream output came from.
    OutputStream, "output stream" {
        Stdout = "stdout": "standard output (and the pty)",
        Stderr = "stderr": "standard error (SSH extended data)",
    }
}

vocabulary! {
    /// The kind of an event: which typed payload it carries.
    EventKind, "event kind" {
        SessionStart = "session_start": "a session began: who, from where, to which resource, under which grant",
        SessionEnd = "session_end": "a session ended, and why",
        Prepare = "prepare": "PostgreSQL Parse: a statement prepared under a name",
        Statement = "statement": "a statement sent to run: simple query text, or an extended-protocol Execute with its bind parameters",
        Result = "result": "the summary of a statement's outcome: columns, rows, bytes, duration, command tag, a bounded sample",
        Error = "error": "an error reported to the client (by the target or by Proctor), with SQLSTATE where there is one",
        Notice = "notice": "a PostgreSQL NoticeResponse",
        Notification = "notification": "a PostgreSQL NotificationResponse (LISTEN/NOTIFY)",
        ParameterStatus = "parameter_status": "a PostgreSQL ParameterStatus report",
        Copy = "copy": "the volume of a COPY in either direction",
        Cancel = "cancel": "a cancel request, and which backend it targeted",
        RawFrame = "raw_frame": "a protocol frame Proctor relays without modelling it (e.g. FunctionCall), bounded",
        PtyRequest = "pty_request": "a terminal was requested: type and size",
        TerminalInput = "terminal_input": "what the client sent: at a terminal, how many bytes were typed and a keyed digest of them (never the keystrokes); without one (exec stdin), the bytes",
        TerminalOutput = "terminal_output": "bytes the target wrote to the terminal",
        Resize = "resize": "the terminal was resized",
        Exec = "exec": "a command run without a terminal (ssh exec, subsystem)",
        ExitStatus = "exit_status": "how a command or shell ended",
        Shell = "shell": "an interactive shell was started on a channel",
        Command = "command": "a command line typed at a terminal, recovered from what the terminal echoed (input never echoed, such as a password, is not in it)",
        Signal = "signal": "a signal the client sent to a command",
        FileTransfer = "file_transfer": "a file operation (SFTP/SCP)",
        PortForward = "port_forward": "a forwarded connection (SSH direct-tcpip, tcpip-forward, agent, X11): asked for and decided, then closed with its byte counts",
        HttpRequest = "http_request": "an HTTP request: method, target, headers, bounded body",
        HttpResponse = "http_response": "an HTTP response: status, headers, bounded body, duration",
        GrantRequested = "grant_requested": "a subject asked for access to a resource",
        GrantApproved = "grant_approved": "a grant became active",
        GrantPartiallyApproved = "grant_partially_approved": "an approver approved a request that still needs more approvals",
        GrantDenied = "grant_denied": "a grant was refused",
        GrantExpired = "grant_expired": "a grant (or its undecided request) expired",
        GrantRevoked = "grant_revoked": "a grant was revoked",
        GrantCertified = "grant_certified": "an SSH user certificate was issued for a grant (the key's fingerprint, the certificate's serial and end)",
        PolicyDecision = "policy_decision": "what the policy decided for a statement or command, and by which rule",
        ReviewRequested = "review_requested": "a statement, command or file operation was held for human approval",
        ReviewApproved = "review_approved": "a held request was approved",
        ReviewDenied = "review_denied": "a held request was denied",
        ReviewExpired = "review_expired": "a held request's review expired",
        MaskingApplied = "masking_applied": "how many values each masking rule replaced in a result or message",
        RecordingAccessed = "recording_accessed": "someone searched, read or exported recordings",
        RetentionDeleted = "retention_deleted": "retention deleted a whole segment",
        RecorderRecovery = "recorder_recovery": "what the recorder found and did when it recovered its write-ahead log",
    }
}

impl EventKind {
    /// The family a kind belongs to, for documentation and faceting.
    pub fn family(&self) -> &'static str {
        use EventKind::*;
        match self {
            SessionStart | SessionEnd => "session",
            Prepare | Statement | Result | Error | Notice | Notification | ParameterStatus | Copy | Cancel
            | RawFrame => "postgres",
            PtyRequest | TerminalInput | TerminalOutput | Resize | Exec | ExitStatus | Shell | Command | Signal
            | FileTransfer | PortForward => "terminal",
            HttpRequest | HttpResponse => "http",
            GrantRequested
            | GrantApproved
            | GrantPartiallyApproved
            | GrantDenied
            | GrantExpired
            | GrantRevoked
            | GrantCertified
            | PolicyDecision
            | ReviewRequested
            | ReviewApproved
            | ReviewDenied
            | ReviewExpired
            | MaskingApplied
            | RecordingAccessed
            | RetentionDeleted
            | RecorderRecovery => "control",
        }
    }
}
