//! Whether a `WHERE` (or a `MERGE` join or action condition) selects rows of
//! the relation a statement changes, read on its parse tree.
//!
//! `delete_without_where` and `update_without_where` mean "this statement
//! may change every row". The check is an allow-list: a condition selects
//! rows only if it holds a **restricting comparison** — one side reads a
//! column of the target relation, the other reads none (a constant, a
//! parameter, another relation's column) — where these rules reach it:
//!
//! - an `AND` selects rows if any branch does; an `OR` if every branch does;
//!   `NOT`, `IS TRUE`, `IS NOT FALSE`, `= true` and casts are looked
//!   through (`NOT x IS NULL` is `x IS NOT NULL`);
//! - comparisons of every kind count (`=`, `<`, `LIKE`, `IN (...)`,
//!   `BETWEEN`, `= ANY (...)`, `IS DISTINCT FROM`), their sides stripped of
//!   casts, `COLLATE` and unary `+`; a side that is itself a condition
//!   (`(id = id) = true`) is judged as that condition;
//! - `IS NULL` on a target column selects rows; `IS NOT NULL` does not (it
//!   holds for every row of a `NOT NULL` column);
//! - `EXISTS (...)`, `IN (SELECT ...)`: the sub-query's own condition must
//!   restrict by a column of the target named with the target's name or
//!   alias (inside a sub-query unqualified names belong to its own tables).
//!
//! Everything else selects nothing: `where true`, `where 1 = 1`,
//! `where id = id`, `where t.id = id`, `where id in (id)`, `where ctid is not
//! null` (system columns are no columns here), `where exists (select 1 from
//! other)`, and also a bare boolean column or function call (`where active`,
//! `where coalesce(id = id, true)`), which the check does not read into.
//! When the statement names other relations (`USING`, `FROM`, a `MERGE`
//! source), only columns qualified by the target's name or alias are the
//! target's, and another alias of the target's own table is the target too
//! (a self-join on the key matches every row).
//!
//! Where the check ends: a restricting comparison is taken as selecting
//! rows even when the data makes it hold for every row (`where id > 0`,
//! `where id in (select id from t2)` with `t2` a copy of `t`).

use serde_json::Value;

/// System columns: present in every row, saying nothing of which rows.
const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// `BoolExprType` as pg_query numbers it.
const AND_EXPR: i64 = 1;
const OR_EXPR: i64 = 2;
const NOT_EXPR: i64 = 3;
/// `NullTestType`.
const IS_NULL: i64 = 1;
const IS_NOT_NULL: i64 = 2;
/// `BoolTestType`: the tests that keep a condition's rows.
const IS_TRUE: i64 = 1;
const IS_NOT_FALSE: i64 = 4;
/// `SubLinkType`.
const EXISTS_SUBLINK: i64 = 1;
const ANY_SUBLINK: i64 = 3;

/// The relation a statement changes, as its condition may name it.
pub(super) struct Target {
    /// Its alias if it has one, else its name; and the aliases under which
    /// the statement's other relations name the same table again.
    names: Vec<String>,
    /// Whether the statement reads other relations (`USING`, `FROM`, a
    /// `MERGE` source): unqualified columns are then not taken as its own.
    joined: bool,
}

impl Target {
    /// The target of a `DeleteStmt`, `UpdateStmt` or `MergeStmt` body.
    pub(super) fn of(body: &Value) -> Target {
        let relation = &body["relation"];
        let relname = relation["relname"].as_str().unwrap_or_default();
        let mut names = vec![match relation["alias"]["aliasname"].as_str() {
            Some(alias) if !alias.is_empty() => alias.to_string(),
            _ => relname.to_string(),
        }];
        let others: Vec<&Value> = ["using_clause", "from_clause"]
            .iter()
            .filter_map(|key| body[key].as_array())
            .flatten()
            .chain(Some(&body["source_relation"]).filter(|v| !v.is_null()))
            .collect();
        for other in &others {
            collect_aliases_of(other, relname, &mut names);
        }
        Target { names, joined: !others.is_empty() }
    }

    fn is(&self, qualifier: &str) -> bool {
        self.names.iter().any(|n| n == qualifier)
    }
}

/// The names under which `value` (a relation in `USING`/`FROM`) reads the
/// table `relname` again.
fn collect_aliases_of(value: &Value, relname: &str, names: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, field) in map {
                if key == "RangeVar" && field["relname"].as_str() == Some(relname) {
                    let alias = field["alias"]["aliasname"].as_str().filter(|a| !a.is_empty()).unwrap_or(relname);
                    names.push(alias.to_string());
                }
                collect_aliases_of(field, relname, names);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_aliases_of(item, relname, names)),
        _ => {}
    }
}

/// Whether the condition `expr` (a serialised `Node`, or null for none)
/// selects rows of `target`.
pub(super) fn selects_rows(expr: &Value, target: &Target) -> bool {
    selects(expr, target, false)
}

/// `in_subquery`: only qualified references name the target.
fn selects(expr: &Value, target: &Target, in_subquery: bool) -> bool {
    let Some((kind, body)) = node(expr) else { return false };
    match kind {
        "BoolExpr" => {
            let args = body["args"].as_array().map(Vec::as_slice).unwrap_or_default();
            match body["boolop"].as_i64() {
                Some(AND_EXPR) => args.iter().any(|a| selects(a, target, in_subquery)),
                Some(OR_EXPR) => !args.is_empty() && args.iter().all(|a| selects(a, target, in_subquery)),
                Some(NOT_EXPR) => args.first().is_some_and(|a| negation_selects(a, target, in_subquery)),
                _ => false,
            }
        }
        "TypeCast" | "CollateClause" => selects(&body["arg"], target, in_subquery),
        "BooleanTest" => {
            matches!(body["booltesttype"].as_i64(), Some(IS_TRUE | IS_NOT_FALSE))
                && selects(&body["arg"], target, in_subquery)
        }
        "NullTest" => body["nulltesttype"].as_i64() == Some(IS_NULL) && reads_target(&body["arg"], target, in_subquery),
        "AExpr" => comparison_selects(body, target, in_subquery),
        "SubLink" => {
            let subquery_restricts = || {
                let select = &body["subselect"]["node"]["SelectStmt"];
                selects(&select["where_clause"], target, true)
            };
            match body["sub_link_type"].as_i64() {
                Some(EXISTS_SUBLINK) => subquery_restricts(),
                // `x IN (SELECT ...)`: the target's side against a query that
                // does not read it.
                Some(ANY_SUBLINK) => {
                    reads_target(&body["testexpr"], target, in_subquery)
                        && !reads_target(&body["subselect"], target, true)
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `NOT expr` selects rows.
fn negation_selects(expr: &Value, target: &Target, in_subquery: bool) -> bool {
    let Some((kind, body)) = node(expr) else { return false };
    match kind {
        // NOT x IS NULL is x IS NOT NULL, and the reverse.
        "NullTest" => {
            body["nulltesttype"].as_i64() == Some(IS_NOT_NULL) && reads_target(&body["arg"], target, in_subquery)
        }
        "BoolExpr" if body["boolop"].as_i64() == Some(NOT_EXPR) => {
            body["args"].as_array().and_then(|a| a.first()).is_some_and(|a| selects(a, target, in_subquery))
        }
        // A restricting comparison negated still restricts; so does the
        // negation of AND/OR of them, conservatively read as the original.
        _ => selects(expr, target, in_subquery),
    }
}

/// Whether a comparison (`A_Expr`) restricts: one side reads the target,
/// the other does not; a side that is a condition is judged as one.
fn comparison_selects(body: &Value, target: &Target, in_subquery: bool) -> bool {
    let (left, right) = (strip(&body["lexpr"]), strip(&body["rexpr"]));
    if left.is_null() {
        // A prefix operator (`- x`, `NOT`-like operators): nothing compared.
        return false;
    }
    if is_condition(left) {
        return selects(left, target, in_subquery);
    }
    if is_condition(right) {
        return selects(right, target, in_subquery);
    }
    let (l, r) = (reads_target(left, target, in_subquery), reads_target(right, target, in_subquery));
    l != r
}

/// `expr` without casts, `COLLATE` and unary `+` around it.
fn strip(expr: &Value) -> &Value {
    match node(expr) {
        Some(("TypeCast" | "CollateClause", body)) => strip(&body["arg"]),
        Some(("AExpr", body))
            if body["lexpr"].is_null()
                && body["name"].as_array().is_some_and(|n| n.len() == 1 && n[0]["node"]["String"]["sval"] == "+") =>
        {
            strip(&body["rexpr"])
        }
        _ => expr,
    }
}

/// Whether `expr` is itself a condition (its value true or false by a test).
fn is_condition(expr: &Value) -> bool {
    matches!(node(expr), Some(("BoolExpr" | "BooleanTest" | "NullTest" | "SubLink", _)))
        || matches!(node(expr), Some(("AExpr", body)) if !body["lexpr"].is_null() && is_comparison_operator(body))
}

/// Whether an `A_Expr` compares (as opposed to computing: `id + 1`).
fn is_comparison_operator(body: &Value) -> bool {
    let name = body["name"].as_array().and_then(|n| n.last()).and_then(|n| n["node"]["String"]["sval"].as_str());
    match body["kind"].as_i64() {
        // AEXPR_OP: the comparison operators; others compute.
        Some(1) => matches!(
            name,
            Some(
                "=" | "<>" | "!=" | "<" | ">" | "<=" | ">=" | "~~" | "!~~" | "~~*" | "!~~*" | "~" | "~*" | "!~" | "!~*"
            )
        ),
        // ANY/ALL, DISTINCT, IN, LIKE, ILIKE, SIMILAR, BETWEEN: comparisons.
        Some(2..=5 | 7..=14) => true,
        _ => false,
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
fn reads_target(value: &Value, target: &Target, in_subquery: bool) -> bool {
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
fn column_of_target(column_ref: &Value, target: &Target, in_subquery: bool) -> bool {
    let names: Vec<Option<&str>> = column_ref["fields"]
        .as_array()
        .map(|fields| fields.iter().map(|f| f["node"]["String"]["sval"].as_str()).collect())
        .unwrap_or_default();
    let unqualified_is_ours = !in_subquery && !target.joined;
    match names.as_slice() {
        // `*` or `t.*`: a whole row.
        [None] => unqualified_is_ours,
        [.., Some(qualifier), None] => target.is(qualifier),
        [Some(column)] => unqualified_is_ours && !SYSTEM_COLUMNS.contains(column),
        [.., Some(qualifier), Some(column)] => target.is(qualifier) && !SYSTEM_COLUMNS.contains(column),
        _ => false,
    }
}
