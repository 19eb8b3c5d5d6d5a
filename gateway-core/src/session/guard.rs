//! The panic guard: a defect in a session's code must not leave the session
//! without its end.

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use proctor_schemas::{Direction, EndReason, EventBody, SessionEnd};

use crate::EventSink;
use crate::recording::{Record, SessionRecorder};

/// Runs a session's `work` with its `recorder`. If the work panics, the
/// connection is cut (the work is dropped with it), what had been recorded
/// stays, what had not is dropped, and the session ends with
/// `internal_error`; a session that had not started is started first with
/// `start(note)`, the adapter's `session_start`.
pub async fn guarded<S: EventSink>(
    recorder: &mut SessionRecorder<S>,
    work: impl AsyncFnOnce(&mut SessionRecorder<S>),
    start: impl FnOnce(String) -> EventBody,
) {
    let served = AssertUnwindSafe(work(recorder)).catch_unwind().await;
    let Err(panic) = served else { return };
    let what = super::panic_message(&*panic);
    tracing::error!(session_id = %recorder.session_id(), panic = %what, "a session failed internally; its connection was cut");
    recorder.discard_pending();
    if recorder.ended() {
        return;
    }
    if !recorder.started() {
        recorder.push(Direction::Gateway, start("Proctor failed internally before the session began".to_string()));
    }
    let message = format!("Proctor failed internally ({what}); the connection was cut");
    recorder.push(Direction::Gateway, SessionEnd { reason: EndReason::InternalError, message: Some(message) }.into());
    if let Err(error) = recorder.flush().await {
        tracing::error!(session_id = %recorder.session_id(), %error, "could not record the end of a failed session");
    }
}
