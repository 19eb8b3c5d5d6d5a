//! The indexer thread of a running Proctor: catches up with the recorder
//! every interval, off the async runtime, so new events are searchable
//! within a few seconds.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Indexer, Result};

/// A running indexer thread.
pub struct Background {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Background {
    /// Opens the data dir's index for writing and starts catching up every
    /// `interval`, at scheduling niceness `nice` (0-19): indexing, like
    /// sealing, yields the CPU to the data path. The index writer's own
    /// threads are started from the niced thread, so they inherit it.
    pub fn start(data_dir: &Path, interval: Duration, nice: i32) -> Result<Background> {
        let (stop, stopped) = mpsc::channel();
        let (opened, open_result) = mpsc::channel();
        let dir: PathBuf = data_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("proctor-indexer".into())
            .spawn(move || {
                proctor_recorder::lower_priority(nice);
                match Indexer::open(&dir) {
                    Ok(indexer) => {
                        let _ = opened.send(Ok(()));
                        run(indexer, &dir, interval, stopped);
                    }
                    Err(error) => {
                        let _ = opened.send(Err(error));
                    }
                }
            })
            .map_err(|e| crate::IndexError::open(data_dir, e))?;
        match open_result.recv() {
            Ok(Ok(())) => Ok(Background { stop, thread }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(crate::IndexError::open(data_dir, "the indexer thread stopped while opening the index"))
            }
        }
    }

    /// Catches up one last time (after the recorder has sealed everything)
    /// and stops.
    pub fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(mut indexer: Indexer, data_dir: &Path, interval: Duration, stopped: mpsc::Receiver<()>) {
    let mut failing = false;
    loop {
        let last = matches!(stopped.recv_timeout(interval), Ok(()) | Err(RecvTimeoutError::Disconnected));
        match indexer.catch_up() {
            Ok(progress) => {
                if failing {
                    tracing::info!(data_dir = %data_dir.display(), "indexing works again");
                    failing = false;
                }
                if progress.segments > 0 {
                    tracing::debug!(segments = progress.segments, events = progress.segment_events, "indexed segments");
                }
            }
            Err(error) => {
                // Searches lag until it works again; the recording itself
                // is unaffected. Logged once per failing stretch.
                if !failing {
                    tracing::error!(%error, data_dir = %data_dir.display(), "indexing failed; retrying");
                    failing = true;
                }
            }
        }
        if last {
            break;
        }
    }
    if let Err(error) = indexer.finish() {
        tracing::warn!(%error, "the index writer did not stop cleanly");
    }
}
