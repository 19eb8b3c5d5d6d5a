//! The control session: one per gateway run, holding the control plane's own
//! events (grants, reviews, viewers' access) with the same ordering and hash
//! chain as protocol sessions.

use proctor_schemas::{
    Direction, EndReason, EventBody, NewEvent, Protocol, SessionEnd, SessionId, SessionStart, Timestamp,
};

use crate::{EventSink, SinkError};

pub struct ControlSession<S: EventSink> {
    sink: S,
    id: SessionId,
}

impl<S: EventSink> Clone for ControlSession<S> {
    fn clone(&self) -> Self {
        ControlSession { sink: self.sink.clone(), id: self.id }
    }
}

impl<S: EventSink> ControlSession<S> {
    /// Records the start of the gateway's control session.
    pub async fn start(sink: S, message: &str) -> Result<ControlSession<S>, SinkError> {
        let id = SessionId::new();
        let start = SessionStart {
            protocol: Protocol::Control,
            resource: None,
            subject: Some("proctor".to_string()),
            groups: vec![],
            grant_id: None,
            client_addr: None,
            target_user: None,
            database: None,
            application_name: Some(format!("proctor {}", env!("CARGO_PKG_VERSION"))),
            tls: None,
            masking_profile: None,
            message: Some(message.to_string()),
        };
        sink.record(NewEvent::new(id, Timestamp::now(), Direction::Gateway, start)).await?;
        Ok(ControlSession { sink, id })
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Records a control-plane event.
    pub async fn record(&self, body: impl Into<EventBody>) -> Result<u64, SinkError> {
        self.sink.record(NewEvent::new(self.id, Timestamp::now(), Direction::Gateway, body)).await
    }

    /// Records the end of the control session.
    pub async fn end(self, reason: EndReason, message: &str) -> Result<(), SinkError> {
        self.record(SessionEnd { reason, message: Some(message.to_string()) }).await.map(|_| ())
    }
}
