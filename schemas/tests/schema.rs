//! The schema's promises: every kind survives every encoding unchanged, and
//! neither the schema nor the canonical encoding changes without a new
//! version and a new golden file.

use std::path::{Path, PathBuf};

use proctor_schemas::arrow::{BatchBuilder, BatchReader, render_schema};
use proctor_schemas::chain::ChainHash;
use proctor_schemas::{
    Direction, Event, EventKind, SCHEMA_VERSION, SessionId, SessionIdText, Timestamp, canonical, sample, vocabulary_doc,
};

fn every_sample() -> Vec<Event> {
    let session_id = SessionId::from_parts(1_764_000_000_000, 7);
    let mut events = Vec::new();
    for (i, kind) in EventKind::ALL.iter().enumerate() {
        for body in [sample::full(*kind), sample::minimal(*kind)] {
            events.push(Event {
                session_id,
                seq: events.len() as u64,
                time: Timestamp(1_764_000_000_000_000_000 + i as i64),
                direction: sample::direction(*kind),
                body,
            });
        }
    }
    events
}

fn canonical_of(event: &Event) -> Vec<u8> {
    let mut id = SessionIdText::default();
    let mut out = Vec::new();
    canonical::encode(&event.cells(&mut id), &mut out);
    out
}

#[test]
fn every_kind_round_trips_through_the_canonical_encoding() {
    for event in every_sample() {
        let bytes = canonical_of(&event);
        let row = canonical::decode(&bytes).unwrap_or_else(|e| panic!("{:?}: {e}", event.kind()));
        let mut reencoded = Vec::new();
        canonical::encode(&row.cells(), &mut reencoded);
        assert_eq!(reencoded, bytes, "{:?}: row re-encodes differently", event.kind());
        assert_eq!(Event::from_row(row).unwrap(), event);
    }
}

#[test]
fn every_kind_round_trips_through_arrow() {
    let events = every_sample();
    let mut builder = BatchBuilder::with_capacity(events.len());
    for event in &events {
        let mut id = SessionIdText::default();
        builder.push(&event.cells(&mut id));
    }
    let batch = builder.finish().unwrap();
    assert_eq!(batch.schema(), proctor_schemas::arrow::schema());
    // Decoding canonical bytes straight into the builders gives the same batch.
    let mut direct = BatchBuilder::with_capacity(events.len());
    for event in &events {
        direct.push_canonical(&canonical_of(event)).unwrap();
    }
    assert_eq!(direct.finish().unwrap(), batch);
    let reader = BatchReader::new(&batch).unwrap();
    for (i, event) in events.iter().enumerate() {
        let row = reader.row(i).unwrap();
        let mut bytes = Vec::new();
        canonical::encode(&row.cells(), &mut bytes);
        assert_eq!(bytes, canonical_of(event), "{:?}: arrow row hashes differently", event.kind());
        // The borrowed fast path gives the owned row's cells, cell by cell.
        let owned = row.cells();
        reader
            .with_cells(i, |cells| {
                for column in proctor_schemas::COLUMNS.iter().map(|def| def.column) {
                    assert_eq!(cells.get(column), owned.get(column), "{:?}: column {}", event.kind(), column.name());
                }
                let mut fast = Vec::new();
                canonical::encode(cells, &mut fast);
                assert_eq!(fast, bytes, "{:?}: borrowed cells hash differently", event.kind());
            })
            .unwrap();
        assert_eq!(&Event::from_row(row).unwrap(), event);
    }
}

/// Segments written under an older schema stay readable: a batch with only
/// the columns of version N (as its golden file lists them), holding events
/// of the kinds version N had (as its golden encodings name them) that use
/// only those columns, reads back as the same events, with the same
/// canonical bytes (so their hash chains verify as they did).
#[test]
fn batches_of_every_older_schema_read_back_as_they_were_written() {
    for version in 1..SCHEMA_VERSION {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("v{version}"));
        let schema = std::fs::read_to_string(dir.join("schema.txt")).unwrap();
        let columns: Vec<&str> = schema.lines().skip(1).filter_map(|l| l.split(':').next()).collect();
        let encodings = std::fs::read_to_string(dir.join("canonical.txt")).unwrap();
        let kinds: Vec<&str> = encodings.lines().filter_map(|l| l.split(' ').next()).collect();
        let events: Vec<Event> = every_sample()
            .into_iter()
            .filter(|e| kinds.contains(&e.kind().as_str()))
            .filter(|e| {
                let mut id = SessionIdText::default();
                e.cells(&mut id).iter().all(|(column, _)| columns.contains(&column.name()))
            })
            .collect();
        assert!(events.len() > 40, "v{version}: most samples fit ({})", events.len());
        let mut builder = BatchBuilder::with_capacity(events.len());
        for event in &events {
            let mut id = SessionIdText::default();
            builder.push(&event.cells(&mut id));
        }
        let batch = builder.finish().unwrap();
        let keep: Vec<usize> = columns.iter().map(|name| batch.schema().index_of(name).unwrap()).collect();
        let old = batch.project(&keep).unwrap();
        assert_eq!(old.num_columns(), columns.len());
        let reader = BatchReader::new(&old).unwrap();
        for (i, event) in events.iter().enumerate() {
            let row = reader.row(i).unwrap();
            let mut bytes = Vec::new();
            canonical::encode(&row.cells(), &mut bytes);
            assert_eq!(bytes, canonical_of(event), "v{version} {:?}: reads back with other bytes", event.kind());
            assert_eq!(&Event::from_row(row).unwrap(), event, "v{version}");
        }
    }
}

#[test]
fn a_row_with_a_column_its_kind_does_not_use_is_rejected() {
    let event = Event {
        session_id: SessionId::from_parts(1, 1),
        seq: 0,
        time: Timestamp(0),
        direction: Direction::Gateway,
        body: sample::full(EventKind::SessionEnd),
    };
    let mut bytes = canonical_of(&event);
    // Append a `sql` cell (column 29): not part of a session_end.
    bytes.extend_from_slice(&[29, 1, b'x']);
    let row = canonical::decode(&bytes).unwrap();
    let err = Event::from_row(row).unwrap_err().to_string();
    assert!(err.contains("sql") && err.contains("session_end"), "{err}");
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(format!("v{SCHEMA_VERSION}"))
}

/// Compares `actual` with a golden file. A missing golden file is written when
/// `PROCTOR_UPDATE_GOLDEN=1` (for a new schema version); an existing one is
/// never rewritten: changing what it pins requires a new version.
fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    match std::fs::read_to_string(&path) {
        Ok(expected) => assert!(
            expected == actual,
            "{} no longer matches schema v{SCHEMA_VERSION}.\n\
             The schema or its encoding changed: bump SCHEMA_VERSION in schemas/src/lib.rs and create \
             golden/v{{N}}/ with PROCTOR_UPDATE_GOLDEN=1.\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        ),
        Err(_) if std::env::var("PROCTOR_UPDATE_GOLDEN").as_deref() == Ok("1") => {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        Err(e) => panic!(
            "{}: {e}; schema v{SCHEMA_VERSION} has no golden file: run the tests with PROCTOR_UPDATE_GOLDEN=1 once",
            path.display()
        ),
    }
}

#[test]
fn schema_matches_its_golden_file() {
    check_golden("schema.txt", &render_schema());
}

#[test]
fn canonical_encoding_and_chain_match_their_golden_file() {
    let mut out = String::new();
    let mut head = ChainHash::GENESIS;
    for event in sample::golden_events() {
        let bytes = canonical_of(&event);
        head = head.next(&bytes);
        out.push_str(&format!("{} {} {}\n", event.kind(), hex(&bytes), head));
    }
    check_golden("canonical.txt", &out);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn readme_publishes_the_current_vocabulary() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let start = "<!-- vocabulary:start (generated from schemas; PROCTOR_UPDATE_README=1 rewrites it) -->\n";
    let end = "<!-- vocabulary:end -->";
    let (before, rest) = readme.split_once(start).expect("README has the vocabulary start marker");
    let (current, after) = rest.split_once(end).expect("README has the vocabulary end marker");
    let rendered = vocabulary_doc::render();
    if current != rendered {
        if std::env::var("PROCTOR_UPDATE_README").as_deref() == Ok("1") {
            std::fs::write(&readme_path, format!("{before}{start}{rendered}{end}{after}")).unwrap();
        } else {
            panic!("README's vocabulary section is out of date: run the tests once with PROCTOR_UPDATE_README=1");
        }
    }
}

/// A small seeded generator, so a failure can be replayed exactly.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_encodings_decode_to_an_error_or_to_a_row_that_reencodes_identically() {
    let valid: Vec<Vec<u8>> = every_sample().iter().map(canonical_of).collect();
    let mut rng = Xorshift(0x5eed_1234_abcd_0001);
    for round in 0..200_000 {
        let mut bytes = valid[round % valid.len()].clone();
        for _ in 0..1 + rng.next() % 3 {
            let position = (rng.next() as usize) % bytes.len();
            match rng.next() % 3 {
                0 => bytes[position] ^= 1 << (rng.next() % 8),
                1 => bytes.truncate(position.max(1)),
                _ => bytes.insert(position, rng.next() as u8),
            }
        }
        // Never a panic; and whatever decodes has exactly one encoding.
        if let Ok(row) = canonical::decode(&bytes) {
            let mut again = Vec::new();
            canonical::encode(&row.cells(), &mut again);
            assert_eq!(again, bytes, "round {round}: a row decoded from non-canonical bytes");
            let _ = Event::from_row(row);
        }
        let mut builder = BatchBuilder::with_capacity(1);
        let _ = builder.push_canonical(&bytes);
    }
}
