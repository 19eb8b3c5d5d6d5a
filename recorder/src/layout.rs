//! Where things live in a data dir.
//!
//! ```text
//! data_dir/
//!   recorder.lock              held by the one recorder writing here
//!   wal/NNNNNNNNNNNNNNNNNNNN.wal      write-ahead log files, one per future segment
//!   segments/dt=YYYY-MM-DD/NNNNNNNNNNNNNNNNNNNN.parquet   sealed segments
//!   manifests/NNNNNNNNNNNNNNNNNNNN.json                   one signed manifest per segment
//!   keys/                      the manifest signing key (0600) and its public half
//!   exports/                   exports the replay server prepares (0700), each
//!                              removed once delivered; what a crash left, at start
//! ```
//!
//! A WAL file, its segment and its manifest share one number.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{RecorderError, Result};

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }

    pub fn segments_dir(&self) -> PathBuf {
        self.root.join("segments")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// Where the replay server prepares exports: in the data dir, beside
    /// the recording they copy, never in a shared temporary directory.
    pub fn exports_dir(&self) -> PathBuf {
        self.root.join("exports")
    }

    /// The exports directory, created (0700) and emptied of what an
    /// interrupted export left in it: copies of evidence that were never
    /// delivered. Returns how many were removed.
    pub fn clear_exports(&self) -> Result<usize> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.exports_dir();
        match fs::symlink_metadata(&dir) {
            Ok(found) if found.is_dir() => {}
            // Never emptied through a link: what it points at is not ours
            // to remove.
            Ok(_) => {
                return Err(RecorderError::corrupt(&dir, "is a link or not a directory: remove it, then start again"));
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(RecorderError::io("cannot create directory", &dir))?;
                // Not the data dir's setgid bit either: Proctor's alone.
                fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .map_err(RecorderError::io("cannot set the mode of", &dir))?;
            }
        }
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(RecorderError::io("cannot list", &dir))? {
            let path = entry.map_err(RecorderError::io("cannot list", &dir))?.path();
            let gone =
                if path.is_dir() && !path.is_symlink() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            gone.map_err(RecorderError::io("cannot remove an interrupted export", &path))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("recorder.lock")
    }

    pub fn wal_path(&self, number: u64) -> PathBuf {
        self.wal_dir().join(format!("{number:020}.wal"))
    }

    /// The segment's path relative to the data dir.
    pub fn segment_rel_path(number: u64, date: &str) -> String {
        format!("segments/dt={date}/{number:020}.parquet")
    }

    pub fn manifest_path(&self, number: u64) -> PathBuf {
        self.manifests_dir().join(format!("{number:020}.json"))
    }

    /// Creates the directories a recorder writes to.
    pub fn create_dirs(&self) -> Result<()> {
        for dir in [self.root.clone(), self.wal_dir(), self.segments_dir(), self.manifests_dir()] {
            fs::create_dir_all(&dir).map_err(RecorderError::io("cannot create directory", &dir))?;
        }
        Ok(())
    }

    /// WAL file numbers, ascending.
    pub fn wal_numbers(&self) -> Result<Vec<u64>> {
        numbered_files(&self.wal_dir(), ".wal")
    }

    /// Manifest numbers, ascending.
    pub fn manifest_numbers(&self) -> Result<Vec<u64>> {
        numbered_files(&self.manifests_dir(), ".json")
    }

    /// Every `.parquet` file under `segments/`, relative to the data dir.
    pub fn segment_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = self.segments_dir();
        let Ok(partitions) = fs::read_dir(&dir) else { return Ok(out) };
        for partition in partitions {
            let partition = partition.map_err(RecorderError::io("cannot list", &dir))?;
            let name = partition.file_name().to_string_lossy().to_string();
            if !partition.path().is_dir() {
                continue;
            }
            for file in fs::read_dir(partition.path()).map_err(RecorderError::io("cannot list", partition.path()))? {
                let file = file.map_err(RecorderError::io("cannot list", partition.path()))?;
                let file_name = file.file_name().to_string_lossy().to_string();
                if file_name.ends_with(".parquet") {
                    out.push(format!("segments/{name}/{file_name}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Leftover temporary files of interrupted seals, relative to the data dir.
    pub fn temp_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.manifests_dir()];
        if let Ok(partitions) = fs::read_dir(self.segments_dir()) {
            dirs.extend(partitions.flatten().map(|p| p.path()).filter(|p| p.is_dir()));
        }
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".tmp") {
                    out.push(entry.path());
                }
            }
        }
        Ok(out)
    }
}

/// Bytes available to unprivileged writers on the file system holding
/// `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is
    // plain data, written by statvfs before it is read.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(RecorderError::io("cannot list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(RecorderError::io("cannot list", dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(suffix)
            && stem.len() == 20
            && let Ok(number) = stem.parse::<u64>()
        {
            out.push(number);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(RecorderError::io("cannot fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn interrupted_exports_are_removed_and_a_link_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(layout.clear_exports().unwrap(), 0);
        let exports = layout.exports_dir();
        assert_eq!(fs::metadata(&exports).unwrap().permissions().mode() & 0o777, 0o700);
        fs::create_dir_all(exports.join("export-1/events")).unwrap();
        fs::write(exports.join("export-1/events/events.parquet"), b"evidence").unwrap();
        fs::write(exports.join("stray"), b"x").unwrap();
        assert_eq!(layout.clear_exports().unwrap(), 2);
        assert_eq!(fs::read_dir(&exports).unwrap().count(), 0);

        // exports/ a link to somewhere else: refused, nothing there touched.
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(elsewhere.path().join("keep"), b"not Proctor's").unwrap();
        fs::remove_dir(&exports).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &exports).unwrap();
        let refused = layout.clear_exports().unwrap_err().to_string();
        assert!(refused.contains("is a link or not a directory"), "{refused}");
        assert!(elsewhere.path().join("keep").exists());
    }
}
