//! What a SQL statement does, by PostgreSQL's own parser (libpg_query): each
//! statement of a query string is parsed and its whole tree walked — every
//! field of every node, not a selection of them — and given the classes a
//! statement rule can hold or block (`ddl`, `drop`, `write`,
//! `delete_without_where`, `copy_program`, `admin_function`, ...).
//!
//! The walk goes through the parse tree's serialised form: pg_query's
//! protobuf types serialise every field, so nothing nested (a write in a
//! CTE, a function in a `VALUES` list, a statement under `EXPLAIN` or
//! `PREPARE`) can hide from it.
//!
//! Classes do not depend on the values of constants, so classifications are
//! cached by the statement's shape (see [`super::shape`]): the parser runs
//! once per statement shape.

use std::collections::BTreeSet;

use serde_json::Value;

use super::predicate;

pub use super::shape::{ClassCache, Shape, shape};

/// What a statement may do, as statement rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Creates or changes schema objects (`CREATE`, `ALTER`, `COMMENT`, ...).
    Ddl,
    /// `DROP` of anything (tables, databases, schemas, ...).
    Drop,
    Truncate,
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE`, anywhere (also in a CTE).
    Write,
    /// A write inside a `WITH` (common table expression), where a reader
    /// expecting a `SELECT` would not look.
    WriteInCte,
    /// `DELETE` without a `WHERE`, or with one that selects no rows by a
    /// column of its table (`where true`, `where id = id`: see
    /// [`super::predicate`]); also `MERGE ... THEN DELETE` over such a join.
    DeleteWithoutWhere,
    /// `UPDATE` likewise, and `MERGE ... THEN UPDATE` over such a join.
    UpdateWithoutWhere,
    /// `COPY ... PROGRAM`: runs a shell command on the database server.
    CopyProgram,
    /// `COPY` to or from a file on the database server.
    CopyFile,
    /// `DO` blocks: procedural code, with dynamic `EXECUTE` inside.
    DoBlock,
    /// Administrative and file-system functions (`pg_read_file`,
    /// `pg_terminate_backend`, `set_config`, `lo_import`, `dblink`, ...).
    AdminFunction,
    /// Functions not on the built-in allow-list (user-defined, or qualified
    /// by another schema than `pg_catalog`).
    UserFunction,
    /// `EXPLAIN ANALYZE` of a write: it runs the write.
    ExplainAnalyzeWrite,
    /// `SELECT ... INTO`: creates a table.
    SelectInto,
    /// SQL-level `PREPARE` (its statement is classified too).
    SqlPrepare,
    /// SQL-level `EXECUTE` of a prepared statement: what it runs is not in
    /// the text.
    SqlExecute,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`.
    SetRole,
    AlterSystem,
    /// Roles and privileges: `CREATE`/`ALTER`/`DROP ROLE`, `GRANT`,
    /// `REVOKE`, `ALTER DEFAULT PRIVILEGES`, `REASSIGN OWNED`, `DROP OWNED`.
    RoleChange,
    /// Settings that change how later statements are parsed
    /// (`standard_conforming_strings`, `backslash_quote`, `client_encoding`,
    /// `RESET ALL`, any `set_config`): always refused under rules, since a
    /// statement pipelined after one would be read one way here and another
    /// way by the server.
    ParserSettings,
    /// `VACUUM`, `ANALYZE`, `REINDEX`, `CLUSTER`, `CHECKPOINT`, `DISCARD`.
    Maintenance,
    /// `LOAD`: loads a shared library into the server.
    LoadLibrary,
    /// `LOCK TABLE`.
    Lock,
    /// The parser refused it: never forwarded where rules apply.
    Unparseable,
}

impl Class {
    pub const ALL: [Class; 24] = [
        Class::Ddl,
        Class::Drop,
        Class::Truncate,
        Class::Write,
        Class::WriteInCte,
        Class::DeleteWithoutWhere,
        Class::UpdateWithoutWhere,
        Class::CopyProgram,
        Class::CopyFile,
        Class::DoBlock,
        Class::AdminFunction,
        Class::UserFunction,
        Class::ExplainAnalyzeWrite,
        Class::SelectInto,
        Class::SqlPrepare,
        Class::SqlExecute,
        Class::SetRole,
        Class::AlterSystem,
        Class::RoleChange,
        Class::ParserSettings,
        Class::Maintenance,
        Class::LoadLibrary,
        Class::Lock,
        Class::Unparseable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ddl => "ddl",
            Class::Drop => "drop",
            Class::Truncate => "truncate",
            Class::Write => "write",
            Class::WriteInCte => "write_in_cte",
            Class::DeleteWithoutWhere => "delete_without_where",
            Class::UpdateWithoutWhere => "update_without_where",
            Class::CopyProgram => "copy_program",
            Class::CopyFile => "copy_file",
            Class::DoBlock => "do_block",
            Class::AdminFunction => "admin_function",
            Class::UserFunction => "user_function",
            Class::ExplainAnalyzeWrite => "explain_analyze_write",
            Class::SelectInto => "select_into",
            Class::SqlPrepare => "sql_prepare",
            Class::SqlExecute => "sql_execute",
            Class::SetRole => "set_role",
            Class::AlterSystem => "alter_system",
            Class::RoleChange => "role_change",
            Class::ParserSettings => "parser_settings",
            Class::Maintenance => "maintenance",
            Class::LoadLibrary => "load_library",
            Class::Lock => "lock",
            Class::Unparseable => "unparseable",
        }
    }

    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// One statement of a query string and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The statement's text, as it appears in the query string.
    pub text: String,
    pub classes: BTreeSet<Class>,
    /// The parser's message, for an unparseable query.
    pub error: Option<String>,
}

/// Built-in functions that only compute: calls to anything else are
/// `user_function` (or `admin_function`).
const SAFE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_remove",
    "array_to_string",
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_database",
    "current_date",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "date_bin",
    "date_part",
    "date_trunc",
    "dense_rank",
    "div",
    "encode",
    "decode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "initcap",
    "isfinite",
    "json_agg",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_query",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "num_nonnulls",
    "num_nulls",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pi",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "user",
    "variance",
    "var_pop",
    "var_samp",
    "version",
    "width_bucket",
];

/// Functions that reach outside the query: files, other sessions, server
/// settings, other databases.
const ADMIN_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_logdir_ls",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_log_backend_memory_contexts",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_origin_create",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "set_config",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_from_bytea",
    "lo_put",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_send_query",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_import_system_collations",
    "pg_nextoid",
    "txid_current",
    "pg_current_xact_id",
    "query_to_xml",
    "table_to_xml",
    "cursor_to_xml",
    "query_to_xml_and_xmlschema",
    "xpath",
];

/// Statements that change schema objects (by their parse-tree type).
fn is_ddl(kind: &str) -> bool {
    matches!(
        kind,
        "IndexStmt"
            | "ViewStmt"
            | "RuleStmt"
            | "CommentStmt"
            | "RenameStmt"
            | "SecLabelStmt"
            | "CompositeTypeStmt"
            | "ImportForeignSchemaStmt"
            | "RefreshMatViewStmt"
    ) || ((kind.starts_with("Create") || kind.starts_with("Alter") || kind.starts_with("Define"))
        && kind.ends_with("Stmt"))
}

/// Where in the tree the walk is.
#[derive(Clone, Copy, Default)]
struct Ctx {
    /// Under an `EXPLAIN` without `ANALYZE`, which plans but does not run:
    /// writes there are not writes.
    plain_explain: bool,
    /// Inside a common table expression.
    in_cte: bool,
}

/// A statement's classes, walking its serialised parse tree.
struct Walk {
    classes: BTreeSet<Class>,
    /// Where the statement's constants (`A_Const`) start: the literals the
    /// classification cache may treat as values.
    constants: Vec<i64>,
}

impl Walk {
    fn value(&mut self, value: &Value, ctx: Ctx) {
        match value {
            Value::Object(map) => {
                for (key, field) in map {
                    match key.as_str() {
                        // A Node: `{"node": {"Kind": {...}}}`, its one key
                        // naming its type. (Some nodes also have a field
                        // named `node` holding a Node: walked as a value.)
                        "node" => match field {
                            Value::Object(node)
                                if node.len() == 1
                                    && node.keys().all(|k| k.starts_with(|c: char| c.is_ascii_uppercase())) =>
                            {
                                for (kind, body) in node {
                                    self.node(kind, body, ctx);
                                }
                            }
                            other => self.value(other, ctx),
                        },
                        // Typed (not Node) fields holding a call.
                        "funccall" => self.node("FuncCall", field, ctx),
                        _ => self.value(field, ctx),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.value(item, ctx);
                }
            }
            _ => {}
        }
    }

    fn node(&mut self, kind: &str, body: &Value, ctx: Ctx) {
        let field = |name: &str| body.get(name).filter(|v| !v.is_null());
        let mut ctx = ctx;
        let writes = matches!(kind, "InsertStmt" | "MergeStmt" | "UpdateStmt" | "DeleteStmt");
        if writes && ctx.in_cte && !ctx.plain_explain {
            self.classes.insert(Class::WriteInCte);
        }
        match kind {
            "CommonTableExpr" => {
                ctx.in_cte = true;
            }
            "InsertStmt" if !ctx.plain_explain => {
                self.classes.insert(Class::Write);
            }
            "UpdateStmt" | "DeleteStmt" if !ctx.plain_explain => {
                self.classes.insert(Class::Write);
                let target = predicate::Target::of(body);
                if !predicate::selects_rows(&body["where_clause"], &target) {
                    self.classes.insert(if kind == "UpdateStmt" {
                        Class::UpdateWithoutWhere
                    } else {
                        Class::DeleteWithoutWhere
                    });
                }
            }
            // MERGE deletes or updates what its actions say, in the rows its
            // join selects: `WHEN MATCHED THEN DELETE` over a join on `true`
            // is a DELETE without WHERE.
            "MergeStmt" if !ctx.plain_explain => {
                self.classes.insert(Class::Write);
                let target = predicate::Target::of(body);
                let joined = predicate::selects_rows(&body["join_condition"], &target);
                for clause in body["merge_when_clauses"].as_array().into_iter().flatten() {
                    let clause = &clause["node"]["MergeWhenClause"];
                    let class = match clause["command_type"].as_i64() {
                        Some(CMD_UPDATE) => Class::UpdateWithoutWhere,
                        Some(CMD_DELETE) => Class::DeleteWithoutWhere,
                        _ => continue,
                    };
                    // Rows matched by the join, or (NOT MATCHED BY SOURCE)
                    // every target row the join does not match.
                    let by_join = joined && clause["match_kind"].as_i64() == Some(MERGE_WHEN_MATCHED);
                    if !by_join && !predicate::selects_rows(&clause["condition"], &target) {
                        self.classes.insert(class);
                    }
                }
            }
            "AConst" => {
                if let Some(location) = body["location"].as_i64() {
                    self.constants.push(location);
                }
            }
            "TruncateStmt" => {
                self.classes.insert(Class::Truncate);
            }
            "DropStmt" | "DropdbStmt" | "DropTableSpaceStmt" | "DropSubscriptionStmt" | "DropUserMappingStmt" => {
                self.classes.insert(Class::Drop);
            }
            "CreateRoleStmt"
            | "AlterRoleStmt"
            | "AlterRoleSetStmt"
            | "DropRoleStmt"
            | "GrantStmt"
            | "GrantRoleStmt"
            | "AlterDefaultPrivilegesStmt"
            | "ReassignOwnedStmt"
            | "DropOwnedStmt" => {
                self.classes.insert(Class::RoleChange);
            }
            "AlterSystemStmt" => {
                self.classes.insert(Class::AlterSystem);
            }
            "CopyStmt" => {
                if field("is_program").and_then(Value::as_bool) == Some(true) {
                    self.classes.insert(Class::CopyProgram);
                } else if field("filename").and_then(Value::as_str).is_some_and(|f| !f.is_empty()) {
                    self.classes.insert(Class::CopyFile);
                }
            }
            "DoStmt" => {
                self.classes.insert(Class::DoBlock);
            }
            "SelectStmt" if field("into_clause").is_some() => {
                self.classes.insert(Class::SelectInto);
            }
            "PrepareStmt" => {
                self.classes.insert(Class::SqlPrepare);
            }
            "ExecuteStmt" => {
                self.classes.insert(Class::SqlExecute);
            }
            "VariableSetStmt" => match field("name").and_then(Value::as_str).unwrap_or_default() {
                // `RESET ROLE` only returns to the session's own role.
                "role" | "session_authorization" if field("kind").and_then(Value::as_i64) != Some(RESET) => {
                    self.classes.insert(Class::SetRole);
                }
                // How later statements are read: their escapes, or the
                // encoding their bytes are in.
                "standard_conforming_strings" | "backslash_quote" | "escape_string_warning" | "client_encoding" => {
                    self.classes.insert(Class::ParserSettings);
                }
                // RESET ALL puts every setting back, those too.
                "" if field("kind").and_then(Value::as_i64) == Some(RESET_ALL) => {
                    self.classes.insert(Class::ParserSettings);
                }
                _ => {}
            },
            "VacuumStmt" | "ReindexStmt" | "ClusterStmt" | "CheckPointStmt" | "DiscardStmt" => {
                self.classes.insert(Class::Maintenance);
            }
            "LoadStmt" => {
                self.classes.insert(Class::LoadLibrary);
            }
            "LockStmt" => {
                self.classes.insert(Class::Lock);
            }
            "ExplainStmt" => {
                let analyze = body.get("options").and_then(Value::as_array).is_some_and(|options| {
                    options.iter().any(|o| {
                        let def = &o["node"]["DefElem"];
                        def["defname"] == "analyze" && !is_false(&def["arg"])
                    })
                });
                let query = field("query").and_then(|q| q.get("node")).and_then(Value::as_object);
                let writes = query.is_some_and(|q| {
                    q.keys().any(|k| matches!(k.as_str(), "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"))
                });
                if analyze && writes {
                    self.classes.insert(Class::ExplainAnalyzeWrite);
                }
                ctx.plain_explain = !analyze;
            }
            "FuncCall" => {
                let names: Vec<&str> = body
                    .get("funcname")
                    .and_then(Value::as_array)
                    .map(|parts| parts.iter().filter_map(|p| p["node"]["String"]["sval"].as_str()).collect())
                    .unwrap_or_default();
                let (schema, name) = match names.as_slice() {
                    [name] => (None, *name),
                    [schema, name] => (Some(*schema), *name),
                    _ => (Some(""), ""),
                };
                let name = name.to_ascii_lowercase();
                // set_config can change how later statements are read.
                if name == "set_config" {
                    self.classes.insert(Class::ParserSettings);
                }
                if ADMIN_FUNCTIONS.contains(&name.as_str()) || name.starts_with("dblink") {
                    self.classes.insert(Class::AdminFunction);
                } else if !matches!(schema, None | Some("pg_catalog")) || !SAFE_FUNCTIONS.contains(&name.as_str()) {
                    self.classes.insert(Class::UserFunction);
                }
            }
            other if is_ddl(other) => {
                self.classes.insert(Class::Ddl);
            }
            _ => {}
        }
        self.value(body, ctx);
    }
}

/// `VAR_RESET` in PostgreSQL's `VariableSetKind` (as pg_query numbers it).
const RESET: i64 = 5;
/// `VAR_RESET_ALL`.
const RESET_ALL: i64 = 6;

/// Whether a `DefElem` argument says false (`ANALYZE false`, `ANALYZE off`).
fn is_false(arg: &Value) -> bool {
    let node = &arg["node"];
    node["Boolean"]["boolval"] == false && node.get("Boolean").is_some()
        || matches!(node["String"]["sval"].as_str(), Some("false" | "off" | "0"))
        || node["Integer"]["ival"] == 0 && node.get("Integer").is_some()
}

/// `CmdType` as pg_query numbers it.
const CMD_UPDATE: i64 = 3;
const CMD_DELETE: i64 = 5;
/// `MergeMatchKind::MergeWhenMatched`.
const MERGE_WHEN_MATCHED: i64 = 1;

/// The session settings that change how the server reads a query string:
/// the classifier must read it the same way (the server reports them in
/// ParameterStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseAs {
    /// `standard_conforming_strings`: off, a backslash escapes in '...'.
    pub standard_conforming_strings: bool,
}

impl Default for ParseAs {
    fn default() -> Self {
        ParseAs { standard_conforming_strings: true }
    }
}

/// Parses `sql` (one or more statements) as a default session does and
/// classifies each statement.
pub fn classify(sql: &str) -> Vec<Classified> {
    classify_as(sql, ParseAs::default())
}

/// Parses `sql` as a session with `parse_as` does and classifies each
/// statement.
pub fn classify_as(sql: &str, parse_as: ParseAs) -> Vec<Classified> {
    classify_tree(sql, parse_as).0
}

/// [`classify_as`], and where the query's constants (`A_Const` nodes)
/// start, sorted: the only literals whose values no class depends on.
pub(super) fn classify_tree(sql: &str, parse_as: ParseAs) -> (Vec<Classified>, Vec<i64>) {
    let mut options = pg_query::ParserOptions::DEFAULT;
    if !parse_as.standard_conforming_strings {
        options |= pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    let parsed = match pg_query::parse(sql, options) {
        Ok(parsed) => parsed,
        Err(error) => {
            let unparseable = Classified {
                text: sql.to_string(),
                classes: BTreeSet::from([Class::Unparseable]),
                error: Some(error.to_string()),
            };
            return (vec![unparseable], Vec::new());
        }
    };
    let mut out = Vec::new();
    let mut constants = Vec::new();
    for stmt in &parsed.protobuf.stmts {
        let mut walk = Walk { classes: BTreeSet::new(), constants: Vec::new() };
        match serde_json::to_value(&stmt.stmt) {
            Ok(tree) => walk.value(&tree, Ctx::default()),
            // Never happens for a tree the parser built; fail closed if it does.
            Err(_) => {
                walk.classes.insert(Class::Unparseable);
            }
        }
        constants.append(&mut walk.constants);
        let start = usize::try_from(stmt.stmt_location).unwrap_or(0).min(sql.len());
        let end = match usize::try_from(stmt.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => (start + len).min(sql.len()),
        };
        let text = sql.get(start..end).unwrap_or(sql).trim().to_string();
        out.push(Classified { text, classes: walk.classes, error: None });
    }
    constants.sort_unstable();
    (out, constants)
}

/// The classes of each statement of a query string, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub statements: Vec<BTreeSet<Class>>,
    /// The parser's message, for an unparseable query.
    pub error: Option<String>,
}

impl From<Vec<Classified>> for Classification {
    fn from(classified: Vec<Classified>) -> Classification {
        let error = classified.iter().find_map(|c| c.error.clone());
        Classification { statements: classified.into_iter().map(|c| c.classes).collect(), error }
    }
}
