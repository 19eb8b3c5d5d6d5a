//! Reads of recordings made on a data dir directly are themselves recorded:
//! who (the local OS user) looked at what. Possible when the data dir is a
//! live one (it holds its signing key) that no running Proctor holds; a
//! running Proctor records the reads made through its API instead.

use std::path::Path;

use proctor_recorder::{Recorder, RecorderError, RecorderSettings};

/// What was read.
pub struct Access<'a> {
    /// `search` or `read`.
    pub operation: &'a str,
    pub query: Option<String>,
    pub target_session: Option<String>,
}

/// The local user, as the actor of a read.
fn local_user() -> String {
    let name = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|n| !n.is_empty());
    let name = name.unwrap_or_else(|| {
        use std::os::unix::fs::MetadataExt;
        let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return "unknown".into() };
        // The account's name, from the password database.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let named = passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_string())
        });
        named.unwrap_or_else(|| format!("uid {uid}"))
    });
    format!("local:{name}")
}

/// Records `access` in `data_dir` when it can; says why not otherwise.
pub fn record(data_dir: &Path, access: Access<'_>) {
    let key = data_dir.join("keys").join("manifest-signing.pem");
    if !key.exists() {
        tracing::debug!(data_dir = %data_dir.display(), "an exported copy (no signing key): this read is not recorded");
        return;
    }
    let recorder = match Recorder::open(data_dir, &RecorderSettings::default()) {
        Ok(recorder) => recorder,
        Err(RecorderError::Locked(_)) => {
            tracing::info!("a running Proctor holds this data dir's recorder: this read is not recorded here");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "this read could not be recorded");
            return;
        }
    };
    let events = proctor_replay_server::access_events(
        local_user(),
        Vec::new(),
        format!("proctor {} (local read)", env!("CARGO_PKG_VERSION")),
        format!("proctor {} on the data dir", access.operation),
        access.operation,
        access.query,
        access.target_session,
    )
    .to_vec();
    if let Err(error) = recorder.sink().blocking_append_batch(events) {
        tracing::warn!(%error, "this read could not be recorded");
    }
    if let Err(error) = recorder.close() {
        tracing::warn!(%error, "the record of this read could not be sealed");
    }
}
