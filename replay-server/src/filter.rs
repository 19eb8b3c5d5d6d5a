//! The sessions list's filters, shared by the API and the CLI.

use proctor_recorder::reader::SessionSummary;
use proctor_schemas::Timestamp;
use serde::Deserialize;

/// Which sessions to list: each given field must match exactly.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SessionFilter {
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub protocol: Option<String>,
    /// Only sessions active within this span (`30m`, `12h`, `7d`, `2w`).
    pub since: Option<String>,
    /// Only sessions still open.
    #[serde(default)]
    pub live: bool,
}

impl SessionFilter {
    /// Checks the filter; returns a predicate over sessions as of `now`.
    pub fn matcher(&self, now: Timestamp) -> Result<impl Fn(&SessionSummary) -> bool + '_, String> {
        let since = match &self.since {
            Some(span) => Some(
                proctor_indexer::query::span(span)
                    .ok_or_else(|| format!("since {span:?}: expected a span such as 30m, 12h, 7d or 2w"))?,
            ),
            None => None,
        };
        let wanted = |value: &Option<String>, filter: &Option<String>| filter.is_none() || value == filter;
        Ok(move |s: &SessionSummary| {
            wanted(&s.subject, &self.subject)
                && wanted(&s.resource, &self.resource)
                && wanted(&s.protocol, &self.protocol)
                && since.is_none_or(|span| s.last_time.is_some_and(|t| t.0 >= now.0.saturating_sub(span)))
                && (!self.live || s.end_reason.is_none())
        })
    }

    /// The filter as the query of a recorded access (`sessions subject:x live`).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("subject", &self.subject),
            ("resource", &self.resource),
            ("protocol", &self.protocol),
            ("since", &self.since),
        ]
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}:{v}")))
        .chain(self.live.then(|| "live".to_string()))
        .collect();
        format!("sessions {}", parts.join(" ")).trim_end().to_string()
    }
}
