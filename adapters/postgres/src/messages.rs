//! Messages Proctor itself sends, encoded with pgwire's codecs.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};

fn encode(message: &impl Message, out: &mut BytesMut) {
    // Encoding our own well-formed messages into a growable buffer cannot
    // fail; a failure would only mean an oversized message, which we never build.
    if let Err(error) = message.encode(out) {
        tracing::error!(%error, "could not encode a protocol message");
    }
}

/// An error as PostgreSQL reports it.
#[derive(Clone, Debug)]
pub struct PgError {
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> PgError {
        PgError { severity: "FATAL", code, message: message.into(), detail: None, hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut fields = vec![
            (b'S', self.severity.to_string()),
            (b'V', self.severity.to_string()),
            (b'C', self.code.to_string()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        encode(&ErrorResponse::new(fields), out);
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

pub fn authentication_cleartext(out: &mut BytesMut) {
    encode(&Authentication::CleartextPassword, out);
}

pub fn authentication_ok(out: &mut BytesMut) {
    encode(&Authentication::Ok, out);
}

pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    encode(&ParameterStatus::new(name.to_string(), value.to_string()), out);
}

pub fn backend_key_data(pid: i32, secret: i32, out: &mut BytesMut) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), out);
}

pub fn ready_for_query(out: &mut BytesMut) {
    encode(&ReadyForQuery::new(TransactionStatus::Idle), out);
}

/// The fields of an ErrorResponse or NoticeResponse body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: String,
    pub detail: Option<String>,
}

/// Parses ErrorResponse/NoticeResponse fields from a frame body.
pub fn fields(body: &[u8]) -> Fields {
    let mut out = Fields::default();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'V' => out.severity = Some(value),
            b'S' if out.severity.is_none() => out.severity = Some(value),
            b'C' => out.code = Some(value),
            b'M' => out.message = value,
            b'D' => out.detail = Some(value),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}
