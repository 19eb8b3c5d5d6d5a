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

/// The account name of `uid`, from the system's user database (files,
/// LDAP, sssd: whatever the name service is configured to ask).
fn user_name(uid: u32) -> String {
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: `entry` and `buffer` outlive the call and `buffer.len()`
        // is its true size; on success `found` points at `entry`, whose
        // strings point into `buffer`, read before either is dropped.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let status = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found) };
        if status == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if status != 0 || found.is_null() || entry.pw_name.is_null() {
            return format!("uid {uid}");
        }
        // SAFETY: a NUL-terminated string in `buffer`, per getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        return name.to_string_lossy().into_owned();
    }
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
