use std::future::Future;

use proctor_schemas::NewEvent;

/// The recorder, as the gateway sees it.
///
/// `record` completes once the event is durable in the recorder's WAL and
/// returns its seq. The gateway forwards nothing whose event was refused.
pub trait EventSink: Clone + Send + Sync + 'static {
    fn record(&self, event: NewEvent) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Records events atomically: all are accepted, or none.
    fn record_batch(&self, events: &[NewEvent]) -> impl Future<Output = Result<Vec<u64>, SinkError>> + Send;
}

/// The recorder refused an event; the message says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("recording refused: {0}")]
pub struct SinkError(pub String);
