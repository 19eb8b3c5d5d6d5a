//! The target's catalog, read on Proctor's own connections (one per
//! database, opened on first use), never on a client's: a client's aborted
//! transaction or pending result cannot break it. Masking asks it which
//! tables result columns come from, and what a `COPY` will send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{Body, text};
use super::mask::ResultColumn;
use super::messages::fields;
use super::upstream::{self, Target};
use proctor_gateway_core::conn::Conn;

/// How long one catalog question may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How long what the catalog told about a table is trusted: a column
/// renamed (or a table replaced) is seen within this time.
pub const TABLE_TTL: Duration = Duration::from_secs(30);

/// A table as the catalog names it: its name and its columns' names by
/// number, so that a result column keeps its rule under an alias.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub columns: HashMap<i16, String>,
    /// Generated columns, by number.
    pub generated: Vec<i16>,
}

/// A table as read, and when.
type ReadTable = (std::time::Instant, Arc<TableInfo>);

/// Idle catalog connections and what they told, per database.
#[derive(Default)]
pub struct Catalog {
    connections: tokio::sync::Mutex<HashMap<String, Conn>>,
    /// Tables by (database, OID), with when they were read.
    tables: std::sync::Mutex<HashMap<(String, u32), ReadTable>>,
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(text: &str) -> Vec<u8> {
    let mut out = text.replace('\0', "").into_bytes();
    out.push(0);
    out
}

/// Sends `request` and reads the answer up to ReadyForQuery.
async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    conn.write_all(request).await.map_err(|e| e.to_string())?;
    conn.flush().await.map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    loop {
        let mut header = [0u8; 5];
        conn.read_exact(&mut header).await.map_err(|e| e.to_string())?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=16 << 20).contains(&length) {
            return Err(format!("a frame of length {length}"));
        }
        let mut body = vec![0u8; length - 4];
        conn.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        if header[0] == b'Z' {
            return Ok(frames);
        }
        frames.push((header[0], body));
    }
}

/// A DataRow's values in order, as text (`None`: NULL, or past its end).
fn row_values(body: &[u8]) -> impl FnMut() -> Option<String> + '_ {
    let mut reader = Body::new(body);
    let _count = reader.i16();
    move || {
        let len = reader.i32()?;
        reader.take(usize::try_from(len).ok()?).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// The first error among `frames`, as text.
fn error_in(frames: &[(u8, Vec<u8>)]) -> Option<String> {
    frames.iter().find(|(tag, _)| *tag == b'E').map(|(_, body)| {
        let f = fields(body);
        format!("{} ({})", f.message, f.code.unwrap_or_default())
    })
}

impl Catalog {
    /// Runs `request` on the catalog connection to `database`, connecting
    /// first if needed; a failed connection is dropped (the next question
    /// reconnects).
    async fn ask(&self, target: &Target, database: &str, request: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        // The connection is taken out while in use and put back only after
        // a whole exchange: a question abandoned midway (its session ended)
        // leaves no unread answer for the next one. Others connect their own
        // meanwhile instead of waiting.
        let idle = self.connections.lock().await.remove(database);
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let params = [
                    ("database".to_string(), database.to_string()),
                    ("application_name".to_string(), "proctor catalog".to_string()),
                ];
                tokio::time::timeout(TIMEOUT, upstream::connect(target, &params))
                    .await
                    .map_err(|_| "no answer in time".to_string())?
                    .map_err(|e| format!("{e:?}"))?
                    .conn
            }
        };
        match tokio::time::timeout(TIMEOUT, exchange(&mut conn, request)).await {
            Ok(Ok(frames)) => {
                self.connections.lock().await.entry(database.to_string()).or_insert(conn);
                Ok(frames)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no answer in time".to_string()),
        }
    }

    /// Whether each name is that of one table (or view) only, in any
    /// schema, temporary ones of every session included.
    async fn unambiguous(&self, target: &Target, database: &str, names: &[String]) -> Result<(), String> {
        let list: Vec<String> =
            names.iter().map(|n| format!("'{}'", n.replace('\'', "''").replace('\0', ""))).collect();
        let sql = format!(
            "SELECT relname, count(*) FROM pg_catalog.pg_class WHERE relname IN ({}) \
             AND relkind IN ('r', 'p', 'v', 'm', 'f') GROUP BY relname HAVING count(*) > 1",
            list.join(",")
        );
        let frames = self.ask(target, database, &frame(b'Q', &cstr(&sql))).await?;
        if let Some(error) = error_in(&frames) {
            return Err(error);
        }
        let Some((_, body)) = frames.iter().find(|(tag, _)| *tag == b'D') else { return Ok(()) };
        let mut value = row_values(body);
        let (name, count) = (value().unwrap_or_default(), value().unwrap_or_default());
        Err(format!(
            "{count} tables or views are named {name:?}, and this session's search_path or temporary tables \
             could choose another one than Proctor reads: name its schema (schema.{name})"
        ))
    }

    /// Tables by OID, with their columns' names (those the catalog knows;
    /// the rest are not tables, or were dropped).
    pub async fn tables(
        &self,
        target: &Target,
        database: &str,
        oids: &[u32],
    ) -> Result<HashMap<u32, Arc<TableInfo>>, String> {
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            for &oid in oids {
                match cache.get(&(database.to_string(), oid)) {
                    Some((read, table)) if read.elapsed() < TABLE_TTL => {
                        known.insert(oid, table.clone());
                    }
                    _ => missing.push(oid),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(known);
        }
        let list: Vec<String> = missing.iter().map(u32::to_string).collect();
        let sql = format!(
            "SELECT c.oid, c.relname, a.attnum, a.attname, a.attgenerated <> '' FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.oid IN ({})",
            list.join(",")
        );
        let frames = self.ask(target, database, &frame(b'Q', &cstr(&sql))).await?;
        if let Some(error) = error_in(&frames) {
            return Err(error);
        }
        let mut read: HashMap<u32, TableInfo> = HashMap::new();
        for (_, body) in frames.iter().filter(|(tag, _)| *tag == b'D') {
            let mut value = row_values(body);
            let (oid, name, attnum, attname, generated) = (value(), value(), value(), value(), value());
            let (Some(oid), Some(name)) = (oid.and_then(|o| o.parse::<u32>().ok()), name) else { continue };
            let table = read.entry(oid).or_insert_with(|| TableInfo { name, ..TableInfo::default() });
            if let (Some(attnum), Some(attname)) = (attnum.and_then(|a| a.parse::<i16>().ok()), attname) {
                table.columns.insert(attnum, attname);
                if generated.as_deref() == Some("t") {
                    table.generated.push(attnum);
                }
            }
        }
        let now = std::time::Instant::now();
        let mut cache = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        for (oid, table) in read {
            let table = Arc::new(table);
            cache.insert((database.to_string(), oid), (now, table.clone()));
            known.insert(oid, table);
        }
        Ok(known)
    }

    /// The columns a COPY sends (its query described; nothing is run),
    /// with their tables named; for a whole table, without generated
    /// columns. Refused if a table it names without a schema is not the only
    /// one of that name.
    pub async fn describe(
        &self,
        target: &Target,
        database: &str,
        describe: &super::copyout::Describe,
    ) -> Result<Vec<ResultColumn>, String> {
        if !describe.unqualified.is_empty() {
            self.unambiguous(target, database, &describe.unqualified).await?;
        }
        let (query, whole_table) = (describe.query.as_str(), describe.whole_table);
        let mut request = BytesMut::new();
        let mut parse = cstr("");
        parse.extend(cstr(query));
        parse.put_i16(0);
        request.extend_from_slice(&frame(b'P', &parse));
        request.extend_from_slice(&frame(b'D', b"S\0"));
        request.extend_from_slice(&frame(b'S', b""));
        let frames = self.ask(target, database, &request).await?;
        if let Some(error) = error_in(&frames) {
            return Err(error);
        }
        let Some((_, body)) = frames.iter().find(|(tag, _)| *tag == b'T') else { return Ok(Vec::new()) };
        let mut reader = Body::new(body);
        let count = reader.i16().unwrap_or(0).max(0) as usize;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            let (Some(name), Some(table_oid)) = (reader.cstr().map(text), reader.i32()) else { break };
            let (attnum, type_oid, _size, _modifier, format) =
                (reader.i16(), reader.i32(), reader.i16(), reader.i32(), reader.i16());
            columns.push(ResultColumn {
                name,
                table_oid: table_oid as u32,
                attnum: attnum.unwrap_or(0),
                type_oid: type_oid.unwrap_or(0) as u32,
                format: format.unwrap_or(0),
                ..ResultColumn::default()
            });
        }
        let oids: Vec<u32> = columns.iter().map(|c| c.table_oid).filter(|&o| o != 0).collect();
        if !oids.is_empty() {
            let tables = self.tables(target, database, &oids).await?;
            for column in &mut columns {
                column.name_source(tables.get(&column.table_oid).map(|t| &**t));
            }
            if whole_table {
                columns.retain(|c| !tables.get(&c.table_oid).is_some_and(|t| t.generated.contains(&c.attnum)));
            }
        }
        Ok(columns)
    }
}
