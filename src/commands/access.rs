//! Reads of recordings made on a data dir directly are themselves recorded:
//! who (the local OS user) looked at what, when the data dir is a live one
//! (it holds its signing key) and writable. With no Proctor running, the
//! command records the read itself; beside a running Proctor (which holds
//! the recorder) it leaves a note in `data_dir/access/`, which that Proctor
//! records within a second, attributed to the note file's owner, not to
//! anything the note claims.

use std::path::Path;

use proctor_recorder::{Recorder, RecorderError, RecorderSettings};
use proctor_schemas::{SessionId, Timestamp};

/// What was read.
pub struct Access<'a> {
    /// `search` or `read`.
    pub operation: &'a str,
    pub query: Option<String>,
    pub target_session: Option<String>,
}

/// The account name of `uid`, from the password database.
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let named = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_string())
    });
    named.unwrap_or_else(|| format!("uid {uid}"))
}

/// The local user, as the actor of a read.
fn local_user() -> String {
    // SAFETY: getuid has no preconditions.
    format!("local:{}", user_name(unsafe { libc::getuid() }))
}

/// Where reads made beside a running Proctor are noted for it to record.
pub fn spool_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("access")
}

/// A read noted for the running Proctor.
#[derive(serde::Serialize, serde::Deserialize)]
struct Note {
    operation: String,
    query: Option<String>,
    target_session: Option<String>,
    /// When the read happened (RFC 3339).
    time: String,
}

/// Leaves a note of `access` for the running Proctor (temp file, rename).
fn leave_note(data_dir: &Path, access: &Access<'_>) -> std::io::Result<()> {
    let dir = spool_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let note = Note {
        operation: access.operation.to_string(),
        query: access.query.clone(),
        target_session: access.target_session.clone(),
        time: Timestamp::now().to_rfc3339(),
    };
    let name = format!("{}.json", SessionId::new());
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, serde_json::to_vec(&note)?)?;
    std::fs::rename(&temp, dir.join(name))
}

/// Records the notes left in `data_dir/access/` through `sink`, each as the
/// read of its file's owner, and removes them once recorded. Returns how
/// many it recorded.
pub async fn record_notes(data_dir: &Path, sink: &proctor_recorder::Sink) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(spool_dir(data_dir)) else { return 0 };
    let mut recorded = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let (Ok(metadata), Ok(bytes)) = (entry.metadata(), std::fs::read(&path)) else { continue };
        let note: Note = match serde_json::from_slice(&bytes) {
            Ok(note) => note,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "an unreadable access note was set aside");
                let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                continue;
            }
        };
        let events = proctor_replay_server::access_events(
            format!("local:{}", user_name(metadata.uid())),
            Vec::new(),
            format!("proctor {} (local read)", env!("CARGO_PKG_VERSION")),
            format!("proctor {} on the data dir at {}, beside this Proctor", note.operation, note.time),
            &note.operation,
            note.query,
            note.target_session,
        );
        match sink.append_slice(&events).await {
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                recorded += 1;
            }
            Err(error) => {
                tracing::warn!(%error, "a local read could not be recorded yet; retrying");
                break;
            }
        }
    }
    recorded
}

/// Records `access` in `data_dir` when it can; says why not otherwise.
pub fn record(data_dir: &Path, access: Access<'_>) {
    let key = data_dir.join("keys").join(proctor_recorder::keys::PRIVATE_KEY_FILE);
    if !key.exists() {
        tracing::debug!(data_dir = %data_dir.display(), "an exported copy (no signing key): this read is not recorded");
        return;
    }
    let recorder = match Recorder::open(data_dir, &RecorderSettings::default()) {
        Ok(recorder) => recorder,
        Err(RecorderError::Locked(_)) => {
            // The running Proctor records it.
            if let Err(error) = leave_note(data_dir, &access) {
                tracing::warn!(%error, "this read could not be noted for the running Proctor");
            }
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
