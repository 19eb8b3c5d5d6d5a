//! Recorder settings: the `[recorder]` table of the configuration file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::RecorderError;

/// When the WAL is flushed to stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// An accepted event has been written to the WAL file; a background thread
    /// fsyncs every `fsync_interval`. A process crash loses nothing; a power
    /// loss can lose at most the last interval.
    Interval,
    /// An accepted event has been written and fsynced. Concurrent appends share
    /// one fsync (group commit).
    Always,
}

/// A size in bytes, written in the configuration as a number or a string
/// such as `"64MiB"`, `"512KiB"`, `"1GiB"` or `"10MB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("invalid size {text:?}"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1000 * 1000,
            "MiB" => 1 << 20,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1 << 20) && self.0 > 0 {
            write!(f, "{}MiB", self.0 >> 20)
        } else {
            write!(f, "{}B", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The `[recorder]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderSettings {
    /// `interval` (default) or `always`.
    pub fsync: FsyncPolicy,
    /// How often the WAL is fsynced under `fsync = "interval"`.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// A segment is sealed once its WAL file reaches this size. WAL files
    /// are allocated at this size when created.
    pub segment_max_bytes: ByteSize,
    /// A segment is sealed once its oldest event is this old.
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// How many closed WAL files may wait for sealing; beyond it appends wait
    /// (backpressure), and are refused while sealing is failing.
    pub max_unsealed_segments: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per Parquet data page (the granularity of the page index).
    pub page_rows: usize,
    /// zstd level for segments (1-22).
    pub zstd_level: i32,
    /// Scheduling niceness of the sealer thread (0-19): sealing yields the
    /// CPU to live traffic.
    pub sealer_nice: i32,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        RecorderSettings {
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_millis(100),
            segment_max_bytes: ByteSize(64 << 20),
            segment_max_age: Duration::from_secs(300),
            max_unsealed_segments: 8,
            row_group_rows: 65_536,
            page_rows: 8_192,
            zstd_level: 3,
            sealer_nice: 10,
        }
    }
}

impl RecorderSettings {
    pub fn validate(&self) -> Result<(), RecorderError> {
        let bad = |m: &str| Err(RecorderError::Config(m.to_string()));
        if self.fsync_interval.is_zero() {
            return bad("recorder.fsync_interval must be positive");
        }
        if self.segment_max_bytes.0 < 4096 {
            return bad("recorder.segment_max_bytes must be at least 4KiB");
        }
        if self.segment_max_age.is_zero() {
            return bad("recorder.segment_max_age must be positive");
        }
        if self.max_unsealed_segments == 0 {
            return bad("recorder.max_unsealed_segments must be at least 1");
        }
        if self.row_group_rows == 0 || self.page_rows == 0 {
            return bad("recorder.row_group_rows and recorder.page_rows must be at least 1");
        }
        if !(0..=19).contains(&self.sealer_nice) {
            return bad("recorder.sealer_nice must be between 0 and 19");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad("recorder.zstd_level must be between 1 and 22");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("10MB"), Ok(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }
}
