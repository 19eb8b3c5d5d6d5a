//! Reads of recordings made on a data dir directly are themselves recorded:
//! who (the local OS user) looked at what, when the data dir is a live one
//! (it holds its signing key). With no Proctor running, Proctor's own
//! account records the read itself; beside a running Proctor (which holds
//! the recorder), or as a member of the data dir's group (who may not write
//! the recording), the command leaves a note in `data_dir/access/`, which
//! the running Proctor (or the next one to start) records, attributed to
//! the note file's owner, not to anything the note claims. `access/` lets
//! the group's members add notes but not list, read or replace others'
//! (mode 3730); a note is created 0640 (0600 in a data dir of no group),
//! under a name no one can guess.

use std::path::Path;

use proctor_recorder::{Recorder, RecorderError, RecorderSettings};
use proctor_schemas::{SessionId, Timestamp};

/// What was read.
pub struct Access<'a> {
    /// `search` or `read`.
    pub operation: &'a str,
    pub query: Option<String>,
    /// The sessions read (none for a search).
    pub target_sessions: Vec<String>,
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
pub fn local_user() -> String {
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
    /// The one session read, in notes of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_session: Option<String>,
    #[serde(default)]
    target_sessions: Vec<String>,
    /// When the read happened (RFC 3339).
    time: String,
}

/// Leaves a note of `access` for the running Proctor (a new file of a
/// name no one can guess, readable by the data dir's group, renamed into
/// place once written).
fn leave_note(data_dir: &Path, access: &Access<'_>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = spool_dir(data_dir);
    if !dir.exists() {
        // Proctor makes it at start; only its own account can make it here.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    }
    let note = Note {
        operation: access.operation.to_string(),
        query: access.query.clone(),
        target_session: None,
        target_sessions: access.target_sessions.clone(),
        time: Timestamp::now().to_rfc3339(),
    };
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(format!("no randomness for a note's name: {e}")))?;
    let name = format!("{}-{}.json", SessionId::new(), hex::encode(random));
    let temp = dir.join(format!(".{name}.tmp"));
    // Readable by the data dir's group when there is one (the directory
    // hands its group down, setgid): Proctor's account reads it as a member.
    let shared = std::fs::metadata(&dir).is_ok_and(|m| m.permissions().mode() & 0o2000 != 0);
    let mode = if shared { 0o640 } else { 0o600 };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
    file.write_all(&serde_json::to_vec(&note)?)?;
    std::fs::rename(&temp, dir.join(name))
}

/// A note's owner and text: the file itself, never what a link points at.
fn read_note(path: &Path) -> std::io::Result<(u32, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.by_ref().take(1 << 20).read_to_end(&mut bytes)?;
    Ok((metadata.uid(), bytes))
}

/// Records the notes left in `data_dir/access/` through `sink`, each as the
/// read of its file's owner, and removes them once recorded. Returns how
/// many it recorded.
pub async fn record_notes(data_dir: &Path, sink: &proctor_recorder::Sink) -> usize {
    let Ok(entries) = std::fs::read_dir(spool_dir(data_dir)) else { return 0 };
    let mut recorded = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let (owner, bytes) = match read_note(&path) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "an unreadable access note was set aside");
                let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                continue;
            }
        };
        let note: Note = match serde_json::from_slice(&bytes) {
            Ok(note) => note,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "an unreadable access note was set aside");
                let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                continue;
            }
        };
        let events = proctor_replay_server::access_events(
            format!("local:{}", user_name(owner)),
            Vec::new(),
            format!("proctor {} (local read)", env!("CARGO_PKG_VERSION")),
            format!("proctor {} on the data dir at {}, beside this Proctor", note.operation, note.time),
            &note.operation,
            note.query,
            note.target_session.into_iter().chain(note.target_sessions).collect(),
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
    if let Err(error) = try_record(data_dir, access) {
        tracing::warn!("{error:#}");
    }
}

/// Records `access` in `data_dir`, or notes it for the running Proctor to
/// record; an error if it could do neither. A data dir without a signing
/// key is an exported copy, whose reads are not recorded.
pub fn try_record(data_dir: &Path, access: Access<'_>) -> anyhow::Result<()> {
    let key = data_dir.join("keys").join(proctor_recorder::keys::PRIVATE_KEY_FILE);
    // A key this account may not see is a live data dir's all the same.
    let live = match key.try_exists() {
        Ok(exists) => exists,
        Err(error) => error.kind() == std::io::ErrorKind::PermissionDenied,
    };
    if !live {
        tracing::debug!(data_dir = %data_dir.display(), "an exported copy (no signing key): this read is not recorded");
        return Ok(());
    }
    let recorder = match Recorder::open(data_dir, &RecorderSettings::default()) {
        Ok(recorder) => recorder,
        // The running Proctor records it; or this account may read the
        // recording but not write it (the data dir's group): the running
        // Proctor, or the next one to start, records it.
        Err(RecorderError::Locked(_)) => return note(data_dir, &access),
        Err(RecorderError::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            return note(data_dir, &access);
        }
        Err(error) => anyhow::bail!("this {} could not be recorded: {error}", access.operation),
    };
    let events = proctor_replay_server::access_events(
        local_user(),
        Vec::new(),
        format!("proctor {} (local read)", env!("CARGO_PKG_VERSION")),
        format!("proctor {} on the data dir", access.operation),
        access.operation,
        access.query,
        access.target_sessions,
    );
    let appended = recorder.sink().blocking_append_batch(events);
    let closed = recorder.close();
    appended.map_err(|e| anyhow::anyhow!("this {} could not be recorded: {e}", access.operation))?;
    closed.map_err(|e| anyhow::anyhow!("the record of this {} could not be sealed: {e}", access.operation))?;
    Ok(())
}

fn note(data_dir: &Path, access: &Access<'_>) -> anyhow::Result<()> {
    leave_note(data_dir, access)
        .map_err(|e| anyhow::anyhow!("this {} could not be noted for Proctor to record: {e}", access.operation))
}
