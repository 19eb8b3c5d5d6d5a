//! Running a query: hits in time order with snippets, and facet counts.

use std::collections::BTreeMap;

use proctor_schemas::Timestamp;
use serde::Serialize;
use tantivy::aggregation::AggregationCollector;
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::agg_result::{AggregationResult, BucketResult};
use tantivy::collector::sort_key::SortByStaticFastValue;
use tantivy::collector::{Count, TopDocs};
use tantivy::schema::Value as _;
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Order, TantivyDocument};

use crate::fields::{SESSION_GRANT_COLUMN, SESSION_RESOURCE_COLUMN, SESSION_SUBJECT_COLUMN};
use crate::index::SearchIndex;
use crate::query;
use crate::{IndexError, Result};

/// Facets counted for every search.
pub const FACETS: &[&str] = &["subject", "resource", "kind", "outcome"];
/// Values listed per facet.
const FACET_SIZE: u32 = 20;

#[derive(Clone, Debug)]
pub struct SearchRequest {
    pub query: String,
    pub limit: usize,
    pub offset: usize,
    /// Newest first (the default) or oldest first.
    pub newest_first: bool,
    pub now: Timestamp,
}

impl SearchRequest {
    pub fn new(query: impl Into<String>) -> SearchRequest {
        SearchRequest { query: query.into(), limit: 20, offset: 0, newest_first: true, now: Timestamp::now() }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Hit {
    pub session_id: String,
    pub seq: u64,
    /// To the millisecond (the event itself has the exact time).
    pub time: String,
    pub kind: String,
    /// The event's searchable text.
    pub text: String,
    /// The best fragment of the text, matches between `<b>` and `</b>`
    /// (HTML-escaped).
    pub snippet: String,
    /// Who and what the event concerns: its own subject, resource and
    /// grant where it names them (a grant or review event), else its
    /// session's.
    pub subject: Option<String>,
    pub resource: Option<String>,
    pub grant_id: Option<String>,
    /// Who acted: an approver, a revoker, a viewer of recordings.
    pub actor: Option<String>,
    pub review_id: Option<String>,
    /// The session an action refers to (a viewed recording, a held
    /// statement's session).
    pub target_session: Option<String>,
    /// A policy decision's outcome, or a statement's.
    pub outcome: Option<String>,
    pub rule: Option<String>,
    /// What became of a statement (its result's), or a result's own: the
    /// command tag, rows, bytes, duration; the SQLSTATE of an error.
    pub tag: Option<String>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub duration_ns: Option<u64>,
    pub sqlstate: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchResult {
    pub total: usize,
    pub hits: Vec<Hit>,
    /// facet → value → count.
    pub facets: BTreeMap<String, BTreeMap<String, u64>>,
    /// How the query was read where it was not taken as written
    /// (`outcome:held` read as `outcome:hold`).
    pub notices: Vec<String>,
}

/// The facet counts every search makes: a terms aggregation per facet (the
/// session's subject and resource are counted from their columns).
pub(crate) fn facet_aggregations() -> Aggregations {
    let column = |facet: &str| match facet {
        "subject" => SESSION_SUBJECT_COLUMN.to_string(),
        "resource" => SESSION_RESOURCE_COLUMN.to_string(),
        other => other.to_string(),
    };
    let request = serde_json::Value::Object(
        FACETS
            .iter()
            .map(|f| (f.to_string(), serde_json::json!({ "terms": { "field": column(f), "size": FACET_SIZE } })))
            .collect(),
    );
    serde_json::from_value(request).expect("a terms aggregation per facet is a valid request")
}

/// The most sessions [`SearchIndex::sessions_matching`] answers with.
pub const MAX_SESSIONS_MATCHED: usize = 100_000;

/// The sessions a query's hits belong to.
#[derive(Clone, Debug)]
pub struct SessionsMatched {
    /// Session id → its number of hits.
    pub sessions: BTreeMap<String, u64>,
    /// Hits in all.
    pub hits: usize,
    pub notices: Vec<String>,
}

/// How deep pages go: a collector keeps offset + limit hits per index
/// segment, so the bound keeps memory bounded whatever a caller asks.
pub const MAX_HITS_DEEP: usize = 10_000;

impl SearchIndex {
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResult> {
        if request.offset.saturating_add(request.limit) > MAX_HITS_DEEP {
            return Err(crate::QueryError {
                message: format!(
                    "offset + limit may reach {MAX_HITS_DEEP} hits at most; narrow the query (a field, a time range) instead of paging further"
                ),
            }
            .into());
        }
        let parsed = query::parse(&request.query, request.now)?;
        let searcher = self.reader.searcher();
        let mut notices = Vec::new();
        let query = query::build(&self.fields, &self.index, &searcher, &parsed, &mut notices)?;
        let order = if request.newest_first { Order::Desc } else { Order::Asc };
        // By the millisecond, then by seq: a session's events of one
        // millisecond keep their order.
        let top = TopDocs::with_limit(request.limit.max(1)).and_offset(request.offset).order_by((
            (SortByStaticFastValue::<i64>::for_field("time"), order),
            (SortByStaticFastValue::<u64>::for_field("seq"), order),
        ));
        let facet_collector = AggregationCollector::from_aggs(self.facets.clone(), Default::default());
        let (docs, total, facets) = searcher.search(&query, &(top, Count, facet_collector))?;
        let snippets = SnippetGenerator::create(&searcher, &*query, self.fields.text)?;

        let mut hits = Vec::with_capacity(docs.len());
        for (_, address) in docs.into_iter().take(request.limit) {
            hits.push(self.hit(&searcher, address, &snippets)?);
        }
        let mut counted = BTreeMap::new();
        for (name, result) in facets.0 {
            let mut values = BTreeMap::new();
            if let AggregationResult::BucketResult(BucketResult::Terms { buckets, .. }) = result {
                for bucket in buckets {
                    values.insert(bucket.key.to_string(), bucket.doc_count);
                }
            }
            counted.insert(name, values);
        }
        Ok(SearchResult { total, hits, facets: counted, notices })
    }

    /// The sessions `query`'s hits belong to, each with its number of
    /// hits, and how the query was read where it was not taken as written.
    /// At most [`MAX_SESSIONS_MATCHED`]: a query matching more is refused.
    pub fn sessions_matching(&self, query: &str, now: Timestamp) -> Result<SessionsMatched> {
        let parsed = query::parse(query, now)?;
        let searcher = self.reader.searcher();
        let mut notices = Vec::new();
        let query = query::build(&self.fields, &self.index, &searcher, &parsed, &mut notices)?;
        // One more than allowed: to tell "all of them" from "too many".
        let size = MAX_SESSIONS_MATCHED + 1;
        let request = serde_json::json!({
            "sessions": { "terms": { "field": "session", "size": size, "segment_size": size } }
        });
        let aggregations: Aggregations =
            serde_json::from_value(request).expect("a terms aggregation over sessions is a valid request");
        let collector = AggregationCollector::from_aggs(aggregations, Default::default());
        let (result, total) = searcher.search(&query, &(collector, Count))?;
        let mut sessions = BTreeMap::new();
        for (_, result) in result.0 {
            if let AggregationResult::BucketResult(BucketResult::Terms { buckets, .. }) = result {
                for bucket in buckets {
                    sessions.insert(bucket.key.to_string(), bucket.doc_count);
                }
            }
        }
        if sessions.len() > MAX_SESSIONS_MATCHED {
            return Err(crate::QueryError {
                message: format!(
                    "the query's hits belong to more than {MAX_SESSIONS_MATCHED} sessions; narrow it (a field, a time range)"
                ),
            }
            .into());
        }
        Ok(SessionsMatched { sessions, hits: total, notices })
    }

    fn hit(&self, searcher: &tantivy::Searcher, address: DocAddress, snippets: &SnippetGenerator) -> Result<Hit> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let text = doc.get_first(self.fields.text).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        // Everything else comes from the columns (fast fields).
        let columns = searcher.segment_reader(address.segment_ord).fast_fields();
        let keyword = |name: &str| keyword_column(columns, name, address.doc_id);
        let seq = columns.u64("seq")?.first(address.doc_id).unwrap_or_default();
        let millis = columns.i64("time")?.first(address.doc_id).unwrap_or_default();
        let number = |name: &str| -> Result<Option<u64>> { Ok(columns.u64(name)?.first(address.doc_id)) };
        let snippet = snippets.snippet_from_doc(&doc);
        Ok(Hit {
            session_id: keyword("session")?.unwrap_or_default(),
            seq,
            time: Timestamp(millis.saturating_mul(1_000_000)).to_rfc3339_millis(),
            kind: keyword("kind")?.unwrap_or_default(),
            snippet: if snippet.is_empty() { html_escape(first_line(&text)) } else { snippet.to_html() },
            text,
            subject: keyword(SESSION_SUBJECT_COLUMN)?,
            resource: keyword(SESSION_RESOURCE_COLUMN)?,
            grant_id: keyword(SESSION_GRANT_COLUMN)?,
            actor: keyword("actor")?,
            review_id: keyword("review")?,
            target_session: keyword("target_session")?,
            outcome: keyword("outcome")?,
            rule: keyword("rule")?,
            // The full tag, not its command alone.
            tag: keyword_column_longest(columns, "tag", address.doc_id)?,
            rows: number("rows")?,
            bytes: number("bytes")?,
            duration_ns: number("duration")?,
            sqlstate: keyword("sqlstate")?,
        })
    }
}

/// A document's value in a keyword column, if it has one.
pub(crate) fn keyword_column(
    columns: &tantivy::fastfield::FastFieldReaders,
    name: &str,
    doc: tantivy::DocId,
) -> Result<Option<String>> {
    let Some(column) = columns.str(name)? else { return Ok(None) };
    let Some(ord) = column.term_ords(doc).next() else { return Ok(None) };
    let mut value = String::new();
    column.ord_to_str(ord, &mut value).map_err(|e| IndexError::Tantivy(e.into()))?;
    Ok(Some(value))
}

/// A document's longest value in a keyword column.
fn keyword_column_longest(
    columns: &tantivy::fastfield::FastFieldReaders,
    name: &str,
    doc: tantivy::DocId,
) -> Result<Option<String>> {
    let Some(column) = columns.str(name)? else { return Ok(None) };
    let mut longest: Option<String> = None;
    for ord in column.term_ords(doc) {
        let mut value = String::new();
        column.ord_to_str(ord, &mut value).map_err(|e| IndexError::Tantivy(e.into()))?;
        if longest.as_ref().is_none_or(|l| value.len() > l.len()) {
            longest = Some(value);
        }
    }
    Ok(longest)
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(200) {
        Some((at, _)) => &line[..at],
        None => line,
    }
}

/// Text as HTML text or attribute value (snippets here; the console's pages).
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    // What needs no escaping is copied a stretch at a time: every character
    // escaped is ASCII, so a stretch ends on a character boundary.
    let mut from = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'"' => "&quot;",
            b'\'' => "&#39;",
            _ => continue,
        };
        out.push_str(&text[from..at]);
        out.push_str(escaped);
        from = at + 1;
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::html_escape;

    /// The escaping a character at a time: what the fast one must equal.
    fn escape_each(text: &str) -> String {
        text.chars()
            .map(|c| match c {
                '<' => "&lt;".to_string(),
                '>' => "&gt;".to_string(),
                '&' => "&amp;".to_string(),
                '"' => "&quot;".to_string(),
                '\'' => "&#39;".to_string(),
                c => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn escaping_by_stretches_equals_escaping_each_character() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let alphabet = ['<', '>', '&', '"', '\'', 'a', ' ', 'é', '€', '😀', '\n', '\0'];
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let text: String = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            assert_eq!(html_escape(&text), escape_each(&text), "{text:?}");
        }
    }
}
