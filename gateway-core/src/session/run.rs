//! The lifecycle's driver: every session of every protocol runs through
//! [`run`], in one order; the adapter supplies its connection [`Engine`].
//!
//! The order, and what each step may not do:
//! 1. [`Engine::start`]: the protocol's start-up, up to the credential the
//!    client presents (a refusal here is recorded as a session refused).
//! 2. the credential checked by the [`Authenticator`], then
//!    [`Engine::authorize`] (the protocol's own limits of a grant);
//! 3. [`admit`]: rules, masking profile, lease;
//! 4. [`Engine::begin`] records `session_start`, and it is flushed before
//!    anything reaches the target;
//! 5. [`Engine::connect`] reaches the target and records what the client
//!    will be told of it; flushed before [`Engine::open`] tells it;
//! 6. [`Engine::relay`] until it or the one [`ended`] future ends it;
//! 7. [`Engine::wind_down`], then `session_end` recorded, and only then
//!    the client told ([`Engine::close`]).
//!
//! Steps 1–5 (the recorder's flushes apart, which fail closed on their
//! own) share one deadline and stop at shutdown. A panic anywhere
//! still ends the session ([`guarded`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use proctor_schemas::{Direction, EndReason, ErrorReport, SessionEnd, SessionId, SessionStart};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Admitted, Ending, Interrupted, Refusal, admit, end, ended, guarded, step};
use crate::EventSink;
use crate::SinkError;
use crate::auth::{AuthError, AuthRequest, Authenticator, Identity};
use crate::masking::{Masker, Profiles};
use crate::recording::{Record, SessionRecorder};

/// Where a protocol's rule sets are configured, and what they are called:
/// rules are scoped per protocol, and a grant under rules `NAME` is
/// admitted to a resource only if the resource's protocol has a rule set
/// `NAME`.
#[derive(Clone, Copy, Debug)]
pub struct RuleScope {
    /// What one rule set is called in messages ("statement rules").
    pub kind: &'static str,
    /// Its configuration table ("rules": `[rules.NAME]`).
    pub table: &'static str,
}

/// How start-up went, up to the credential.
pub enum Start<E> {
    /// The client presented a credential ([`Engine::credential`]).
    Credential,
    /// The connection is not a session of its own (PostgreSQL's cancel
    /// request): the engine serves it whole in [`Engine::aside`].
    Aside,
    /// Refused before a credential was presented.
    Refused(Refused<E>),
}

/// A refusal in the protocol's own terms: its native `error`, and the
/// session's end `reason`.
pub struct Refused<E> {
    pub error: E,
    pub reason: EndReason,
}

/// A protocol's connection engine: all an adapter writes of a session. The
/// driver [`run`] calls it in the lifecycle's order; the engine never
/// decides who is let in, and never records a session's start or end
/// itself.
pub trait Engine<S: EventSink>: Send {
    /// The protocol's native error (a PostgreSQL `ErrorResponse`, an SSH
    /// disconnect).
    type Error: Send + Sync;
    /// The protocol's rules a session runs under, as the engine uses them.
    type Rules: Send;

    /// Where this protocol's rule sets are configured.
    const RULES: RuleScope;
    /// How long everything before the relay may take.
    const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

    /// The resource's name, for messages.
    fn resource(&self) -> &str;

    /// The session's start as it is recorded of a client not admitted
    /// (refused, or failed before admission): what it claimed, and
    /// `identity` when its credential named one.
    fn unadmitted(&self, identity: Option<&Identity>) -> SessionStart;

    /// The protocol's start-up, up to the credential the client presents.
    fn start(&mut self) -> impl Future<Output = Start<Self::Error>> + Send;

    /// A connection that is not a session ([`Start::Aside`]), served whole;
    /// the engine records what it must.
    fn aside(&mut self, _recorder: &mut SessionRecorder<S>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The credential presented, for the authenticator.
    fn credential(&self) -> AuthRequest<'_>;

    /// The credential has been checked (whatever the outcome): secrets in
    /// it are wiped now, not when the connection ends.
    fn forget_credential(&mut self) {}

    /// The protocol's own limits of an authenticated identity (PostgreSQL:
    /// the databases its grant opens).
    fn authorize(&self, _identity: &Identity) -> Result<(), Refused<Self::Error>> {
        Ok(())
    }

    /// This protocol's rule set `name`, made for session `session_id` of
    /// `grant_id`; `None` if this gateway has none of that name.
    fn rules(&self, name: &str, grant_id: Option<String>, session_id: SessionId) -> Option<Self::Rules>;

    /// The session begins: records `session_start` (with what the target
    /// will be given of the client's start-up) into `recorder`. Nothing has
    /// reached the target yet.
    fn begin(
        &mut self,
        identity: &Identity,
        rules: Option<Self::Rules>,
        masker: Option<std::sync::Arc<Masker>>,
        recorder: &mut SessionRecorder<S>,
    );

    /// Reaches the target, and records what the client will be told of it
    /// (told only once that is recorded, by [`Engine::open`]).
    fn connect(
        &mut self,
        recorder: &mut SessionRecorder<S>,
    ) -> impl Future<Output = Result<(), Refused<Self::Error>>> + Send;

    /// Tells the client it is in. An error: the client left.
    fn open(&mut self) -> impl Future<Output = Result<(), ()>> + Send;

    /// Relays between client and target, recording before forwarding, until
    /// either side ends the session or `ended` resolves (shutdown, the
    /// lease's end).
    fn relay<F: Future<Output = Ending> + Send>(
        &mut self,
        recorder: &mut SessionRecorder<S>,
        ended: Pin<&mut F>,
    ) -> impl Future<Output = Ending> + Send;

    /// After the relay, the lease gone: what the session left in flight is
    /// stopped (and recorded), and said in `ending`'s message.
    fn wind_down(
        &mut self,
        _recorder: &mut SessionRecorder<S>,
        _ending: &mut Ending,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A refusal in the gateway's terms, as the protocol says it.
    fn refusal(&self, refusal: &Refusal) -> Self::Error;

    /// What the client is told of how its session ended; `None`: the
    /// connection is closed without a word.
    fn farewell(&self, ending: &Ending) -> Option<Self::Error>;

    /// A native error as it is recorded (what the client typed in it
    /// masked as the rest of its words).
    fn report(&self, error: &Self::Error) -> ErrorReport;

    /// Tells the client `error`, if any, then closes both connections,
    /// each within a bounded time.
    fn close(&mut self, error: Option<&Self::Error>) -> impl Future<Output = ()> + Send;
}

/// Runs one session of `engine` from accept to close, recorded into
/// `sink`.
pub async fn run<S, A, E>(mut engine: E, sink: S, auth: &A, masking: &Profiles, mut shutdown: watch::Receiver<bool>)
where
    S: EventSink,
    A: Authenticator,
    E: Engine<S>,
{
    let mut recorder = SessionRecorder::new(sink, SessionId::new());
    let unknown = engine.unadmitted(None);
    let work =
        async |recorder: &mut SessionRecorder<S>| lifecycle(&mut engine, recorder, auth, masking, &mut shutdown).await;
    guarded(&mut recorder, work, move |note| SessionStart { message: Some(note), ..unknown }.into()).await;
}

async fn lifecycle<S, A, E>(
    engine: &mut E,
    recorder: &mut SessionRecorder<S>,
    auth: &A,
    masking: &Profiles,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: EventSink,
    A: Authenticator,
    E: Engine<S>,
{
    // Everything before the relay shares one deadline.
    let deadline = Instant::now() + E::STARTUP_TIMEOUT;
    match step(deadline, shutdown, engine.start()).await {
        Ok(Start::Credential) => {}
        Ok(Start::Aside) => return engine.aside(recorder).await,
        Ok(Start::Refused(refused)) => return refuse(engine, recorder, None, refused).await,
        Err(interrupted) => {
            let refused = native(engine, &start_interrupted(interrupted, E::STARTUP_TIMEOUT));
            return refuse(engine, recorder, None, refused).await;
        }
    }

    let authenticated = step(deadline, shutdown, auth.authenticate(&engine.credential())).await;
    engine.forget_credential();
    let identity = match authenticated {
        Ok(Ok(identity)) => identity,
        Ok(Err(error)) => {
            let (refusal, owner) = auth_refusal(error);
            return refuse(engine, recorder, owner.as_ref(), native(engine, &refusal)).await;
        }
        Err(interrupted) => {
            let refused = native(engine, &start_interrupted(interrupted, E::STARTUP_TIMEOUT));
            return refuse(engine, recorder, None, refused).await;
        }
    };
    if let Err(refused) = engine.authorize(&identity) {
        return refuse(engine, recorder, Some(&identity), refused).await;
    }

    let (session_id, grant_id) = (recorder.session_id(), identity.grant_id.clone());
    let attempted = identity.clone();
    let admitted = admit(identity, E::RULES, |name| engine.rules(name, grant_id, session_id), masking, auth);
    let Admitted { identity, rules, masker, mut lease } = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(engine, recorder, Some(&attempted), native(engine, &refusal)).await,
    };

    // The session begins, recorded before anything reaches the target.
    engine.begin(&identity, rules, masker, recorder);
    if let Err(error) = recorder.flush().await {
        let refusal = engine.refusal(&recorder_refusal(&error, "nothing was sent to the target"));
        return engine.close(Some(&refusal)).await;
    }

    let connected = step(deadline, shutdown, engine.connect(recorder)).await;
    let refused = match connected {
        Ok(Ok(())) => None,
        Ok(Err(refused)) => Some(refused),
        Err(interrupted) => Some(native(engine, &connect_interrupted(interrupted, engine.resource()))),
    };
    if let Some(refused) = refused {
        // What the engine noted of a target it did not finish reaching
        // was never told to the client.
        recorder.discard_pending();
        return refuse(engine, recorder, None, refused).await;
    }
    if let Err(error) = recorder.flush().await {
        let refusal = recorder_refusal(&error, "nothing further was sent to the target");
        // Its end, if the recorder takes it now.
        end(recorder, Ending::new(refusal.reason, refusal.message.clone())).await;
        return engine.close(Some(&engine.refusal(&refusal))).await;
    }
    let ending = match step(deadline, shutdown, engine.open()).await {
        Ok(Ok(())) => None,
        Ok(Err(())) => Some(Ending::new(EndReason::ClientClosed, "the client left during start-up".to_string())),
        Err(interrupted) => Some(match interrupted {
            Interrupted::Shutdown => Ending::new(EndReason::Shutdown, "Proctor shut down".to_string()),
            Interrupted::TimedOut => {
                Ending::new(EndReason::ClientError, "the client did not take the end of start-up in time".to_string())
            }
        }),
    };
    if let Some(ending) = ending {
        end(recorder, ending).await;
        return engine.close(None).await;
    }

    let mut ending = {
        let ended = ended(shutdown, lease.as_mut());
        tokio::pin!(ended);
        engine.relay(recorder, ended).await
    };
    drop(lease);
    engine.wind_down(recorder, &mut ending).await;
    // The end is recorded before the client hears of it.
    let farewell = engine.farewell(&ending);
    end(recorder, ending).await;
    engine.close(farewell.as_ref()).await;
}

/// A refusal in the gateway's terms, made native by the engine.
fn native<S: EventSink, E: Engine<S>>(engine: &E, refusal: &Refusal) -> Refused<E::Error> {
    Refused { error: engine.refusal(refusal), reason: refusal.reason }
}

/// Records a connection refused (its start, when not yet recorded, under
/// the identity its credential named, if any: `grant:` and `subject:` find
/// the failed attempts on a grant), then tells the client.
async fn refuse<S: EventSink, E: Engine<S>>(
    engine: &mut E,
    recorder: &mut SessionRecorder<S>,
    identity: Option<&Identity>,
    refused: Refused<E::Error>,
) {
    if !recorder.started() {
        recorder.push(Direction::Gateway, engine.unadmitted(identity).into());
    }
    let report = engine.report(&refused.error);
    let message = Some(report.message.clone());
    recorder.push(Direction::Gateway, report.into());
    recorder.push(Direction::Gateway, SessionEnd { reason: refused.reason, message }.into());
    if let Err(error) = recorder.flush().await {
        tracing::error!(session_id = %recorder.session_id(), %error, "could not record a refused connection");
    }
    engine.close(Some(&refused.error)).await;
}

/// An authenticator's refusal, and the identity the credential named.
fn auth_refusal(error: AuthError) -> (Refusal, Option<Identity>) {
    let refused = |message| Refusal::new(EndReason::AuthFailed, message);
    match error {
        AuthError::Refused(message) => (refused(message), None),
        AuthError::RefusedGrant { message, grant_id, subject } => {
            let owner = Identity {
                subject,
                groups: Vec::new(),
                grant_id: Some(grant_id),
                masking_profile: None,
                rules: None,
                expires_at: None,
                sample_rows: None,
            };
            (refused(message), Some(owner))
        }
        AuthError::Unavailable(message) => (
            Refusal {
                unavailable: true,
                ..Refusal::new(EndReason::AuthFailed, message)
                    .with_hint("authentication is unavailable; try again later")
            },
            None,
        ),
    }
}

/// Start-up stopped before the client's part of it was done.
fn start_interrupted(interrupted: Interrupted, limit: Duration) -> Refusal {
    match interrupted {
        Interrupted::TimedOut => Refusal::new(
            interrupted.reason(),
            format!("start-up took longer than Proctor's limit of {}s", limit.as_secs()),
        )
        .with_hint("connect again; if this repeats, check the network between the client, Proctor and the target"),
        Interrupted::Shutdown => shutting_down(),
    }
}

/// Start-up stopped while the target was being reached.
fn connect_interrupted(interrupted: Interrupted, resource: &str) -> Refusal {
    match interrupted {
        Interrupted::TimedOut => Refusal::new(
            EndReason::TargetError,
            format!("the target of resource {resource} did not finish start-up in time"),
        )
        .with_hint("try again; if this repeats, the target may be overloaded or unreachable"),
        Interrupted::Shutdown => shutting_down(),
    }
}

fn shutting_down() -> Refusal {
    Refusal::new(EndReason::Shutdown, "Proctor is shutting down; reconnect in a moment")
}

/// The recorder refused the session's events: it fails closed.
pub fn recorder_refusal(error: &SinkError, consequence: &str) -> Refusal {
    Refusal::new(EndReason::RecorderUnavailable, format!("Proctor could not record this session ({})", error.0))
        .with_hint(format!("{consequence}; try again later or ask the operator"))
}
