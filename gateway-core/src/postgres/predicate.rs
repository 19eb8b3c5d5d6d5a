//! Whether a `WHERE` (or a `MERGE` join or action condition) selects rows of
//! the relation a statement changes, read on its parse tree.
//!
//! `delete_without_where` and `update_without_where` mean "this statement
//! may change every row". A condition counts as selecting rows only if it
//! reads a column of the target relation in a way that can be false for
//! some row. It does not when it:
//!
//! - reads no column of the target (`where true`, `where 1 = 1`,
//!   `where current_user = 'x'`, `where exists (select 1 from other)`:
//!   inside a subquery only columns qualified by the target's name or alias
//!   count, since an unqualified name there belongs to the subquery's own
//!   tables first);
//! - compares an expression with itself (`where id = id`,
//!   `where lower(a) <> lower(a)`), whatever the operator;
//! - reads only system columns (`ctid`, `xmin`, `xmax`, `cmin`, `cmax`,
//!   `tableoid`);
//! - is an `IS NOT NULL` test (true for every row of a `NOT NULL` column);
//! - is an `OR` one of whose branches selects nothing by these rules
//!   (`where id = 5 or true`). An `AND` selects rows if any branch does.
//!
//! Where this check ends: a condition that reads a target column is taken
//! as selecting rows even when it holds for every row by the data
//! (`where id > 0`, `where id in (select id from t)`). Unqualified columns
//! outside subqueries are taken as the target's (the parser does not know
//! the tables' columns).

use serde_json::Value;

/// System columns: present in every row, saying nothing of which rows.
const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// `BoolExprType` as pg_query numbers it.
const AND_EXPR: i64 = 1;
const OR_EXPR: i64 = 2;
/// `NullTestType::IsNotNull`.
const IS_NOT_NULL: i64 = 2;

/// The name a statement's target relation is referred to by: its alias if
/// it has one, else its name. `body` is a `DeleteStmt`, `UpdateStmt` or
/// `MergeStmt`.
pub(super) fn target_name(body: &Value) -> String {
    let relation = &body["relation"];
    match relation["alias"]["aliasname"].as_str() {
        Some(alias) if !alias.is_empty() => alias.to_string(),
        _ => relation["relname"].as_str().unwrap_or_default().to_string(),
    }
}

/// Whether the condition `expr` (a serialised `Node`, or null for none)
/// selects rows of the relation called `target`.
pub(super) fn selects_rows(expr: &Value, target: &str) -> bool {
    let Some((kind, body)) = node(expr) else { return false };
    match kind {
        "BoolExpr" => {
            let args = body["args"].as_array().map(Vec::as_slice).unwrap_or_default();
            match body["boolop"].as_i64() {
                Some(AND_EXPR) => args.iter().any(|a| selects_rows(a, target)),
                Some(OR_EXPR) => !args.is_empty() && args.iter().all(|a| selects_rows(a, target)),
                // NOT: selects rows if what it negates reads the target.
                _ => reads_target(body, target, false),
            }
        }
        "AExpr" if !body["lexpr"].is_null() && same_expression(&body["lexpr"], &body["rexpr"]) => false,
        "NullTest" if body["nulltesttype"].as_i64() == Some(IS_NOT_NULL) => false,
        _ => reads_target(body, target, false),
    }
}

/// A serialised `Node`'s kind and body.
fn node(value: &Value) -> Option<(&str, &Value)> {
    let node = value.get("node")?.as_object()?;
    let (kind, body) = node.iter().next()?;
    Some((kind.as_str(), body))
}

/// Whether anything in `value` reads a non-system column of `target`;
/// `in_subquery`: only qualified references count.
fn reads_target(value: &Value, target: &str, in_subquery: bool) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, field)| match key.as_str() {
            "ColumnRef" => column_of_target(field, target, in_subquery),
            // A nested query: its own tables come first for unqualified names.
            "SelectStmt" => reads_target(field, target, true),
            _ => reads_target(field, target, in_subquery),
        }),
        Value::Array(items) => items.iter().any(|item| reads_target(item, target, in_subquery)),
        _ => false,
    }
}

/// Whether a `ColumnRef` names a non-system column of `target`.
fn column_of_target(column_ref: &Value, target: &str, in_subquery: bool) -> bool {
    let names: Vec<Option<&str>> = column_ref["fields"]
        .as_array()
        .map(|fields| fields.iter().map(|f| f["node"]["String"]["sval"].as_str()).collect())
        .unwrap_or_default();
    match names.as_slice() {
        // `t.*` or `*`: a whole row (`where t.* is not null`, `where (t.*) = ...`).
        [.., None] => names.len() == 1 && !in_subquery || names.len() >= 2 && names[names.len() - 2] == Some(target),
        [Some(column)] => !in_subquery && !SYSTEM_COLUMNS.contains(column),
        [.., Some(qualifier), Some(column)] => *qualifier == target && !SYSTEM_COLUMNS.contains(column),
        _ => false,
    }
}

/// Whether two serialised expressions are the same, locations aside.
fn same_expression(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, value)| key == "location" || b.get(key).is_some_and(|w| same_expression(value, w)))
        }
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_expression(x, y)),
        _ => a == b,
    }
}
