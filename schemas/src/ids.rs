use std::fmt;
use std::str::FromStr;

use crate::SchemaError;

/// One client connection to one resource under one grant (or one control-plane
/// run of the gateway). A UUIDv7, so that sorting by id sorts by start time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    /// A fresh, time-ordered id.
    pub fn new() -> SessionId {
        SessionId(uuid::Uuid::now_v7())
    }

    /// A UUIDv7 built from a given time and random bits; used by the
    /// deterministic synthetic generator.
    pub fn from_parts(unix_millis: u64, random: u128) -> SessionId {
        let mut bytes = random.to_be_bytes();
        bytes[..6].copy_from_slice(&unix_millis.to_be_bytes()[2..]);
        bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        SessionId(uuid::Uuid::from_bytes(bytes))
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl Default for SessionId {
    fn default() -> Self {
        SessionId::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0.hyphenated())
    }
}

impl FromStr for SessionId {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical lowercase hyphenated form is accepted, so that the
        // string stored in segments is the one every encoding hashes.
        let parsed = uuid::Uuid::try_parse(s).map_err(|_| SchemaError::InvalidSessionId { value: s.to_string() })?;
        if parsed.hyphenated().to_string() != s {
            return Err(SchemaError::InvalidSessionId { value: s.to_string() });
        }
        Ok(SessionId(parsed))
    }
}

/// A point in time: nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        // Straight from the clock: this runs for every recorded event.
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // Representable until the year 2262.
        Timestamp(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
    }

    pub fn from_unix_nanos(nanos: i64) -> Timestamp {
        Timestamp(nanos)
    }

    pub fn unix_nanos(&self) -> i64 {
        self.0
    }

    pub fn to_datetime(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_nanos(self.0)
    }

    /// `2026-11-26T03:23:18.123456789Z`
    pub fn to_rfc3339(&self) -> String {
        self.to_datetime().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    /// RFC 3339 to the millisecond, for times known to that precision.
    pub fn to_rfc3339_millis(&self) -> String {
        self.to_datetime().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let parsed = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        parsed.timestamp_nanos_opt().map(Timestamp)
    }

    /// The UTC calendar date, `YYYY-MM-DD`: the partition of a segment.
    pub fn date(&self) -> String {
        self.to_datetime().format("%Y-%m-%d").to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_and_rejects_non_canonical_forms() {
        let id = SessionId::from_parts(1_764_000_000_000, 0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        let text = id.to_string();
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert!(text.to_uppercase().parse::<SessionId>().is_err());
        assert!(text.replace('-', "").parse::<SessionId>().is_err());
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }

    #[test]
    fn session_ids_sort_by_time() {
        let early = SessionId::from_parts(1_000, u128::MAX);
        let late = SessionId::from_parts(2_000, 0);
        assert!(early.to_string() < late.to_string());
    }

    #[test]
    fn timestamps_render_in_utc() {
        let t = Timestamp(1_764_127_398_123_456_789);
        assert_eq!(t.to_rfc3339(), "2025-11-26T03:23:18.123456789Z");
        assert_eq!(t.date(), "2025-11-26");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }
}
