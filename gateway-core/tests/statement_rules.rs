//! Statement rules against evasion: a corpus of attempts to get a risky
//! statement past the rules (case, comments, quoting, multi-statement
//! queries, writes in CTEs, prepared statements, `DO`, functions in every
//! corner of a query, Unicode escapes), each of which must be held or
//! blocked — zero bypasses — and ordinary work, which must pass. Printed as
//! a table by `cargo test -- --nocapture`.

use proctor_gateway_core::postgres::classify::{ClassCache, Classification, ParseAs, classify, classify_as, shape};
use proctor_gateway_core::postgres::rules::{RuleSet, RuleSetConfig, Verdict};

/// Every class the issue lists for agents, held; the worst blocked.
fn ci_rules() -> RuleSet {
    let config: RuleSetConfig = toml::from_str(
        r#"
        block = ["copy_program", "alter_system", "load_library", "parser_settings"]
        hold = ["ddl", "drop", "truncate", "delete_without_where", "update_without_where", "write_in_cte",
                "copy_file", "do_block", "admin_function", "user_function", "explain_analyze_write",
                "select_into", "sql_prepare", "sql_execute", "set_role", "role_change", "maintenance", "lock"]
        "#,
    )
    .unwrap();
    RuleSet::new("ci", &config).unwrap()
}

/// Attempts to get a risky statement past the rules, shared with the
/// end-to-end test that sends each through the gateway.
fn evasions() -> Vec<String> {
    serde_json::from_str(include_str!("data/evasions.json")).expect("the evasion corpus is a JSON list of strings")
}

const ORDINARY: &[&str] = &[
    "select * from customers limit 5",
    "SELECT status, count(*) FROM orders GROUP BY 1",
    "select lower(email), now(), coalesce(name, '?') from customers where id = 1",
    "insert into orders (customer_id, total_cents, status) values (1, 100, 'paid')",
    "update orders set status = 'shipped' where id = 7",
    "delete from orders where id = 7",
    "begin; select 1; commit",
    "explain select * from customers",
    "explain delete from orders",
    "with recent as (select * from orders where created_at > now() - interval '1 day') select count(*) from recent",
    "select pg_catalog.lower('X')",
    "show search_path",
    "set search_path = public",
    "reset role",
    "listen jobs; notify jobs",
    "select current_user, version()",
    "copy customers to stdout",
    "select jsonb_build_object('a', 1), date_trunc('day', now())",
];

#[test]
fn no_evasion_gets_past_the_rules() {
    let rules = ci_rules();
    let mut bypasses = Vec::new();
    for sql in &evasions() {
        let classified = classify(sql);
        let verdict = rules.decide(&Classification::from(classified.clone()));
        let classes: Vec<&str> = classified.iter().flat_map(|c| c.classes.iter().map(|c| c.as_str())).collect();
        let shown = match &verdict {
            Verdict::Allow => "ALLOW (bypass)".to_string(),
            Verdict::Block { rule, .. } => format!("block {rule}"),
            Verdict::Hold { rule, .. } => format!("hold  {rule}"),
        };
        println!("{shown:<36} {:<48} {}", classes.join(","), sql.replace('\n', "\\n"));
        if verdict == Verdict::Allow {
            bypasses.push(sql.clone());
        }
    }
    assert!(evasions().len() >= 40);
    assert!(bypasses.is_empty(), "{} bypasses: {bypasses:#?}", bypasses.len());
}

#[test]
fn ordinary_work_passes() {
    let rules = ci_rules();
    for sql in ORDINARY {
        let classified = classify(sql);
        let verdict = rules.decide(&Classification::from(classified.clone()));
        assert_eq!(verdict, Verdict::Allow, "{sql}: {classified:?}");
    }
}

#[test]
fn specific_classes_and_the_statement_they_are_in() {
    let rules = ci_rules();
    let decide = |sql: &str| rules.decide(&Classification::from(classify(sql)));
    assert!(
        matches!(decide("select 1; drop table t"), Verdict::Hold { statement: 1, ref rule, .. } if rule == "ci/drop")
    );
    assert!(
        matches!(decide("drop table t; copy t to program 'x'"), Verdict::Block { statement: 1, ref rule, .. } if rule == "ci/copy_program"),
        "a block anywhere blocks the query"
    );
    assert!(matches!(decide("selec 1"), Verdict::Block { ref rule, .. } if rule == "ci/unparseable"));
    let texts: Vec<String> = classify("select 1; /* x */ drop table t").into_iter().map(|c| c.text).collect();
    assert_eq!(texts, ["select 1", "drop table t"]);
}

#[test]
fn shapes_join_only_what_differs_in_plain_literals() {
    assert_eq!(
        shape("select * from t where id = 42"),
        shape("SELECT * FROM t WHERE id = 7").map(|s| s.replace("SELECT * FROM t WHERE", "select * from t where"))
    );
    assert_eq!(shape("select * from t where id = 42"), shape("select  *  from t   where id = 1"));
    assert_eq!(shape("select 'a' -- c\n"), shape("select 'b'"));
    assert_eq!(
        shape("select * from t where id = $1 and n = 3").as_deref(),
        Some("select * from t where id = $1 and n = 0")
    );
    assert_ne!(shape("select $1"), shape("select $2"), "parameters are kept as they are");
    assert_eq!(shape("select $$a$$"), None, "dollar quotes are parsed each time");
    assert_eq!(shape("select $q$a$q$"), None);
    assert_ne!(shape("select lower('a')"), shape("select pg_read_file('a')"));
    // Anything that could be read two ways is not shaped.
    for odd in [
        "select E'\\x'",
        "select 'a\\'",
        "select $$x$$",
        "select U&'\\0061'",
        "select 1e5",
        "select 0x1F",
        "select 'open",
    ] {
        assert_eq!(shape(odd), None, "{odd}");
    }
    // The cache gives equal-shaped queries one classification.
    let cache = ClassCache::new(16);
    let first = cache.classify("delete from t where id = 1", ParseAs::default());
    let second = cache.classify("delete from t where id = 2", ParseAs::default());
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!(cache.len(), 1);
    let other = cache.classify("delete from t", ParseAs::default());
    assert_ne!(*first, *other);
    let off = ParseAs { standard_conforming_strings: false };
    let elsewhere = cache.classify("delete from t where id = 3", off);
    assert!(!std::sync::Arc::ptr_eq(&first, &elsewhere), "sessions reading strings differently share no entry");
}

/// With `standard_conforming_strings` off (a role or database setting the
/// server reports), a backslash escapes a quote: the same text is one
/// string to a default parser and two statements to such a server. The
/// classifier reads it as the session does.
#[test]
fn strings_are_read_as_the_session_reads_them() {
    let rules = ci_rules();
    let sql = "select 'a\\' || ' ; drop table customers; --'";
    let on = rules.decide(&Classification::from(classify_as(sql, ParseAs::default())));
    assert_eq!(on, Verdict::Allow, "one string to a conforming session");
    let off = ParseAs { standard_conforming_strings: false };
    let verdict = rules.decide(&Classification::from(classify_as(sql, off)));
    assert!(matches!(verdict, Verdict::Hold { ref rule, .. } if rule == "ci/drop"), "{verdict:?}");
}
