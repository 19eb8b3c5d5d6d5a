//! The published vocabulary, rendered as Markdown from the code itself: the
//! README embeds this text, and a test fails when the two drift apart.

use crate::event::SessionIdText;
use crate::*;

fn vocabulary_table<T: Copy>(
    title: &str,
    values: &[T],
    name: fn(&T) -> &'static str,
    doc: fn(&T) -> &'static str,
) -> String {
    let mut out = format!("#### {title}\n\n| value | meaning |\n| --- | --- |\n");
    for value in values {
        out.push_str(&format!("| `{}` | {} |\n", name(value), doc(value)));
    }
    out.push('\n');
    out
}

/// The whole vocabulary section of the README.
pub fn render() -> String {
    let mut out = format!("Schema version **{SCHEMA_VERSION}**.\n\n");

    out.push_str(
        "#### Event kinds\n\n| kind | family | meaning | columns (required in bold) |\n| --- | --- | --- | --- |\n",
    );
    for kind in EventKind::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            kind.as_str(),
            kind.family(),
            kind.doc(),
            kind_columns(*kind)
        ));
    }
    out.push('\n');

    out.push_str(&vocabulary_table("Directions", Direction::ALL, Direction::as_str, Direction::doc));
    out.push_str(&vocabulary_table("Protocols", Protocol::ALL, Protocol::as_str, Protocol::doc));
    out.push_str(&vocabulary_table("Policy outcomes", PolicyOutcome::ALL, PolicyOutcome::as_str, PolicyOutcome::doc));
    out.push_str(&vocabulary_table("End reasons", EndReason::ALL, EndReason::as_str, EndReason::doc));
    out.push_str(&vocabulary_table("Output streams", OutputStream::ALL, OutputStream::as_str, OutputStream::doc));

    out.push_str("#### Columns\n\nEvery segment has all of these columns, in this order; a kind fills the common ones and its own.\n\n| column | type | meaning |\n| --- | --- | --- |\n");
    let schema = crate::arrow::render_schema();
    for (def, line) in COLUMNS.iter().zip(schema.lines().skip(1)) {
        let ty = line.split_once(": ").map(|(_, ty)| ty).unwrap_or_default();
        out.push_str(&format!("| `{}` | {} | {} |\n", def.name, ty, def.doc));
    }
    out
}

/// The kind-specific columns a kind can fill, required ones in bold.
fn kind_columns(kind: EventKind) -> String {
    let columns_of = |body: EventBody| -> Vec<Column> {
        let event = Event {
            session_id: SessionId::from_parts(0, 0),
            seq: 0,
            time: Timestamp(0),
            direction: Direction::Gateway,
            body,
        };
        let mut id = SessionIdText::default();
        let cells = event.cells(&mut id);
        cells.iter().map(|(c, _)| c).filter(|c| !c.def().required).collect()
    };
    let required = columns_of(sample::minimal(kind));
    let all = columns_of(sample::full(kind));
    let parts: Vec<String> = all
        .iter()
        .map(|c| if required.contains(c) { format!("**{}**", c.name()) } else { c.name().to_string() })
        .collect();
    parts.join(", ")
}
