//! Who may read the data dir: Proctor's account alone, or also the members
//! of `data_dir_group`, who may then run `proctor search`, `sessions` and
//! `replay --data-dir` (and leave notes of their reads in `access/`).
//!
//! `proctor up` and `proctor demo` set the process umask first (`077`, or
//! `027` with a group), so that everything they and the libraries they run
//! create (WAL files, segments, manifests, the index, `control.db`) is born
//! with the right mode; the directories of a group-shared data dir carry
//! the setgid bit, so what is created in them belongs to the group. Then
//! they check what is already there, and fix what Proctor's account owns:
//!
//! | path | alone | with `data_dir_group` |
//! |---|---|---|
//! | the data dir, `wal/`, `segments/`, `manifests/`, `index/` | dirs 0700, files 0600 | dirs 2750, files 0640 |
//! | `keys/` | 0700, files 0600 | 2750; private keys stay 0600, public halves 0640 |
//! | `access/` | 0700 | 3730: members write notes, cannot list or read others' |
//! | everything else (`control.db`, lock files, `tls/`, ...) | 0700 / 0600 | the same |
//!
//! Entries owned by another account are left alone, unless the world may
//! read, write or enter them: then Proctor refuses to start, naming the
//! path. Notes in `access/` belong to their writers and are not touched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// `data_dir_group`: a local group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GroupRef {
    Id(u32),
    Name(String),
}

impl GroupRef {
    /// The group's id: a number as it is, a name from the system's group
    /// database.
    pub fn gid(&self) -> anyhow::Result<u32> {
        let name = match self {
            GroupRef::Id(gid) => return Ok(*gid),
            GroupRef::Name(name) => name,
        };
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(gid);
        }
        group_id(name)?.with_context(|| {
            format!("data_dir_group {name:?} is not a local group: create it (groupadd {name}) or give its number")
        })
    }
}

/// The id of group `name`, from the system's group database (files, LDAP,
/// sssd: whatever the name service is configured to ask).
fn group_id(name: &str) -> anyhow::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name).context("data_dir_group holds a NUL byte")?;
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: `entry` and `buffer` outlive the call and `buffer.len()`
        // is its true size; on success `found` points at `entry`, whose
        // gid is read before either is dropped.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let status = unsafe {
            libc::getgrnam_r(cname.as_ptr(), &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
        };
        if status == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        if status != 0 {
            anyhow::bail!("cannot look up group {name:?}: {}", std::io::Error::from_raw_os_error(status));
        }
        return Ok((!found.is_null()).then_some(entry.gr_gid));
    }
}

/// The umask of `proctor up` and `demo`: nothing for the world; for the
/// group, read access when there is one.
pub fn umask_for(group: Option<u32>) -> u32 {
    if group.is_some() { 0o027 } else { 0o077 }
}

fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) only swaps the process's mask; it cannot fail.
    unsafe { libc::umask(mask) }
}

/// For every other command: whatever the caller's umask, nothing this
/// process creates is open to the world (a data dir's files included,
/// when the owner reads it with no Proctor running).
pub fn close_to_the_world() {
    let old = set_umask(0o077);
    set_umask(old | 0o007);
}

/// What each part of the data dir is, for its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// The data dir itself and the recording: what a group reads.
    Recording,
    /// Key pairs: private halves 0600 always, public halves readable.
    Keys,
    /// `access/` itself (its notes are their writers').
    Access,
    /// Anything else: Proctor's alone.
    Private,
}

fn part_of(relative: &Path) -> Part {
    let Some(top) = relative.components().next() else { return Part::Recording };
    // Whoever could open a lock file could hold it (the recorder's, the
    // index writer's).
    if relative.extension().is_some_and(|e| e == "lock") {
        return Part::Private;
    }
    match top.as_os_str().to_str() {
        Some("wal" | "segments" | "manifests" | "index") => Part::Recording,
        Some("keys") => Part::Keys,
        Some("access") => Part::Access,
        _ => Part::Private,
    }
}

const SETGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;

/// The mode an entry of `part` should have, given its mode now.
fn wanted_mode(part: Part, is_dir: bool, mode: u32, group: bool) -> u32 {
    let owner = mode & 0o700;
    match (part, is_dir, group) {
        (Part::Access, true, true) => STICKY | SETGID | 0o730,
        (Part::Access, true, false) => 0o700,
        (Part::Recording | Part::Keys, true, true) => owner | SETGID | 0o050,
        (Part::Recording, false, true) if owner & 0o400 != 0 => owner | 0o040,
        // What the group may read among the keys was decided when it was
        // written (private halves 0600): never more.
        (Part::Keys, false, true) => owner | (mode & 0o040),
        _ => owner,
    }
}

/// Sets the umask for a run on `data_dir` shared with `group` (if any),
/// creates the data dir and the directories whose modes others depend on,
/// and fixes the modes (and group) of what Proctor's account owns there.
/// Refuses, naming the path, what another account owns and the world may
/// reach.
pub fn prepare(data_dir: &Path, group: Option<&GroupRef>) -> anyhow::Result<()> {
    let gid = group.map(GroupRef::gid).transpose()?;
    set_umask(umask_for(gid));
    if !data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    }
    for name in ["keys", "access"] {
        let dir = data_dir.join(name);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    // The directory itself, when `data_dir` is a link to it.
    let root = std::fs::canonicalize(data_dir).with_context(|| format!("cannot read {}", data_dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut fixed = Vec::new();
    walk(&root, Path::new(""), me, gid, &mut fixed)?;
    if !fixed.is_empty() {
        let shown: Vec<String> = fixed.iter().take(5).map(|p| p.display().to_string()).collect();
        tracing::warn!(
            count = fixed.len(),
            first = %shown.join(", "),
            "corrected the modes of paths under the data dir: they are Proctor's account's alone, and the recording data_dir_group's to read"
        );
    }
    Ok(())
}

fn walk(root: &Path, relative: &Path, me: u32, gid: Option<u32>, fixed: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let path = root.join(relative);
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        // Gone meanwhile (a file the index replaced).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if metadata.file_type().is_symlink() {
        return Ok(());
    }
    let part = part_of(relative);
    // Notes of reads belong to their writers.
    if part == Part::Access && relative.components().count() > 1 {
        return Ok(());
    }
    let mode = metadata.mode() & 0o7777;
    if metadata.uid() != me {
        anyhow::ensure!(
            mode & 0o007 == 0,
            "{} is open to every account (mode {mode:04o}) and is owned by uid {}, not by Proctor's account (uid {me}): give it to Proctor's account (chown) or remove it, then start again",
            path.display(),
            metadata.uid()
        );
        // Closed to the world, so is what it holds; and it is not ours.
        return Ok(());
    }
    let mut changed = false;
    if let Some(gid) = gid
        && metadata.gid() != gid
    {
        std::os::unix::fs::chown(&path, None, Some(gid)).with_context(|| {
            format!(
                "cannot give {} to group {gid} (data_dir_group): Proctor's account must be a member of that group",
                path.display()
            )
        })?;
        changed = true;
    }
    let want = wanted_mode(part, metadata.is_dir(), mode, gid.is_some());
    // A chown may clear the setgid bit: set the mode after it.
    if want != mode || changed {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
            .with_context(|| format!("cannot set {} to mode {want:04o}", path.display()))?;
        fixed.push(path.clone());
    }
    if metadata.is_dir() {
        let entries = std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", path.display()))?;
            walk(root, &relative.join(entry.file_name()), me, gid, fixed)?;
        }
    }
    Ok(())
}

/// Creates `path` (Proctor's alone: 0600) if it does not exist, so that
/// what opens it later finds it private (SQLite gives a database's journal
/// files the database's own mode).
pub fn create_private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_gets_its_mode() {
        use Part::*;
        let cases = [
            // (part, dir, mode now, group, wanted)
            (Recording, true, 0o755, false, 0o700),
            (Recording, true, 0o755, true, 0o2750),
            (Recording, false, 0o644, false, 0o600),
            (Recording, false, 0o600, true, 0o640),
            (Recording, false, 0o666, true, 0o640),
            (Recording, false, 0o444, true, 0o440),
            (Keys, false, 0o600, true, 0o600),
            (Keys, false, 0o644, true, 0o640),
            (Keys, false, 0o644, false, 0o600),
            (Keys, true, 0o755, true, 0o2750),
            (Access, true, 0o755, true, 0o3730),
            (Access, true, 0o3730, false, 0o700),
            (Private, true, 0o2750, true, 0o700),
            (Private, false, 0o664, true, 0o600),
            (Private, false, 0o4755, false, 0o700),
        ];
        for (part, dir, mode, group, want) in cases {
            assert_eq!(wanted_mode(part, dir, mode, group), want, "{part:?} dir={dir} {mode:04o} group={group}");
        }
    }

    #[test]
    fn the_parts_are_known_by_their_top_directory() {
        assert_eq!(part_of(Path::new("")), Part::Recording);
        assert_eq!(part_of(Path::new("segments/dt=2026-01-01/x.parquet")), Part::Recording);
        assert_eq!(part_of(Path::new("index/meta.json")), Part::Recording);
        assert_eq!(part_of(Path::new("index/.tantivy-writer.lock")), Part::Private);
        assert_eq!(part_of(Path::new("recorder.lock")), Part::Private);
        assert_eq!(part_of(Path::new("keys/dev-issuer.pem")), Part::Keys);
        assert_eq!(part_of(Path::new("access")), Part::Access);
        assert_eq!(part_of(Path::new("control.db")), Part::Private);
        assert_eq!(part_of(Path::new("tls/proctor-dev.key")), Part::Private);
    }

    #[test]
    fn groups_are_named_or_numbered() {
        assert_eq!(GroupRef::Id(4242).gid().unwrap(), 4242);
        assert_eq!(GroupRef::Name("4242".into()).gid().unwrap(), 4242);
        assert_eq!(GroupRef::Name("root".into()).gid().unwrap(), 0);
        let unknown = GroupRef::Name("no-such-group-proctor".into()).gid().unwrap_err().to_string();
        assert!(unknown.contains("is not a local group"), "{unknown}");
    }
}
