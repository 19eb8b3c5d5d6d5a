//! The index directory on disk: tantivy's `MmapDirectory`, with the files
//! it writes given the modes of the rest of the data dir, and opened
//! read-only by accounts that may read the index but not write it.
//!
//! - tantivy writes `meta.json` and `.managed.json` through a temporary file
//!   of mode 0600; here they are written like every other index file, with
//!   the mode the process's umask gives (0640 in a data dir shared with
//!   `data_dir_group`, 0600 otherwise), so the group can open the index.
//! - Lock files are the writer's alone (0600): an account that could open
//!   one could hold the lock and stop the indexer.
//! - Read-only, taking a lock (which needs its file opened for writing) is
//!   granted without one: a member of the data dir's group can neither
//!   change the index nor hold up the Proctor that writes it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, WatchCallback, WatchHandle, WritePtr,
};

use crate::{IndexError, Result};

#[derive(Clone, Debug)]
pub(crate) struct IndexDirectory {
    inner: MmapDirectory,
    root: PathBuf,
    read_only: bool,
}

impl IndexDirectory {
    /// The index directory `dir`, to write (or only to read).
    pub(crate) fn open(dir: &Path, read_only: bool) -> Result<IndexDirectory> {
        let inner = MmapDirectory::open(dir).map_err(|e| IndexError::open(dir, e))?;
        Ok(IndexDirectory { inner, root: dir.to_path_buf(), read_only })
    }

    /// The same directory, read-only.
    pub(crate) fn read_only(&self) -> IndexDirectory {
        IndexDirectory { read_only: true, ..self.clone() }
    }
}

/// Temporary files of atomic writes, numbered within this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

impl Directory for IndexDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.inner.open_write(path)
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    /// As tantivy's own (a temporary file beside the target, synced, then
    /// renamed over it), but with the umask's mode rather than 0600.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        let target = self.root.join(path);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let number = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let temp = target.with_file_name(format!(".{name}.{}-{number}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(data)?;
                file.sync_data()
            })
            .and_then(|()| std::fs::rename(&temp, &target));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    fn sync_directory(&self) -> std::io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        if self.read_only {
            return Ok(DirectoryLock::from(Box::new(())));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(&lock.filepath);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(LockError::wrap_io_error)?;
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}
