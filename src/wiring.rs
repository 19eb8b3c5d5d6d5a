//! Adapters between the crates: the recorder as gateway-core's event sink.

use proctor_gateway_core::{EventSink, SinkError};
use proctor_recorder::Sink;
use proctor_schemas::NewEvent;

#[derive(Clone)]
pub struct RecorderSink(pub Sink);

impl EventSink for RecorderSink {
    async fn record(&self, event: NewEvent) -> Result<u64, SinkError> {
        self.0.append(event).await.map_err(|e| SinkError(e.to_string()))
    }

    async fn record_batch(&self, events: &[NewEvent]) -> Result<Vec<u64>, SinkError> {
        self.0.append_slice(events).await.map_err(|e| SinkError(e.to_string()))
    }
}
