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
    /// `interval`.
    pub fn start(data_dir: &Path, interval: Duration) -> Result<Background> {
        let indexer = Indexer::open(data_dir)?;
        let (stop, stopped) = mpsc::channel();
        let dir: PathBuf = data_dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("proctor-indexer".into())
            .spawn(move || run(indexer, &dir, interval, stopped))
            .map_err(|e| crate::IndexError::open(data_dir, e))?;
        Ok(Background { stop, thread })
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
