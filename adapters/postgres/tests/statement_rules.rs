//! Statement rules against evasion: a corpus of attempts to get a risky
//! statement past the rules (case, comments, quoting, multi-statement
//! queries, writes in CTEs, prepared statements, `DO`, functions in every
//! corner of a query, Unicode escapes), each of which must be held or
//! blocked — zero bypasses — and ordinary work, which must pass. Printed as
//! a table by `cargo test -- --nocapture`.

use proctor_postgres::classify::{ClassCache, Classification, ParseAs, classify, classify_as, shape};
use proctor_postgres::rules::{RuleSet, RuleSetConfig, Verdict};

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
    // A decoy before the DROP does not give the hold its name.
    assert!(
        matches!(decide("delete from scratch; drop table customers"), Verdict::Hold { statement: 1, ref rule, .. } if rule == "ci/drop")
    );
    let texts: Vec<String> = classify("select 1; /* x */ drop table t").into_iter().map(|c| c.text).collect();
    assert_eq!(texts, ["select 1", "drop table t"]);
}

/// The shape key of `sql`.
fn key(sql: &str) -> Option<String> {
    shape(sql).map(|s| s.key)
}

#[test]
fn shapes_join_only_what_differs_in_plain_literals() {
    assert_eq!(
        key("select * from t where id = 42"),
        key("SELECT * FROM t WHERE id = 7").map(|s| s.replace("SELECT * FROM t WHERE", "select * from t where"))
    );
    assert_eq!(key("select * from t where id = 42"), key("select  *  from t   where id = 1"));
    assert_eq!(key("select 'a' -- c\n"), key("select 'b'"));
    assert_eq!(
        key("select * from t where id = $1 and n = 3").as_deref(),
        Some("select * from t where id = $1 and n = 0")
    );
    assert_ne!(key("select $1"), key("select $2"), "parameters are kept as they are");
    assert_eq!(key("select $$a$$"), None, "dollar quotes are parsed each time");
    assert_eq!(key("select $q$a$q$"), None);
    assert_ne!(key("select lower('a')"), key("select pg_read_file('a')"));
    assert_ne!(key("select 1"), key("select 1.5"), "int4 and numeric constants are told apart");
    assert_ne!(key("select 1"), key("select 99999999999"), "as the server reads them");
    // Anything that could be read two ways is not shaped.
    for odd in [
        "select E'\\x'",
        "select 'a\\'",
        "select $$x$$",
        "select U&'\\0061'",
        "select 1e5",
        "select 0x1F",
        "select 1_000",
        "select 1..2",
        "select 'open",
        "select 'a'\n'b'",
        "select 'a' /* c */ 'b'",
        "select $1a",
    ] {
        assert_eq!(key(odd), None, "{odd}");
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

/// Pairs of queries: the first allowed under the agents' rules and cached,
/// the second refused. Each pair is a bypass the cache once let through.
const CACHE_POISONING: &[(&str, &str)] = &[
    // A carriage return ends a `--` comment for the server.
    ("select 1", "select 1 --\r; drop table t"),
    ("select 1", "select 1 --\r; truncate t"),
    ("select 1", "select 1 --\r\n; drop table t"),
    // Literals that are not values: EXPLAIN options, COPY targets.
    ("explain (analyze 'off') delete from orders", "explain (analyze 'on') delete from orders"),
    ("explain (analyze 0) delete from orders", "explain (analyze 1) delete from orders"),
    (
        "explain (analyze false, costs 'off') delete from orders",
        "explain (analyze true, costs 'off') delete from orders",
    ),
    ("copy t to ''", "copy t to '/tmp/x'"),
    ("copy t from ''", "copy t from '/etc/hostname'"),
];

#[test]
fn regression_the_cache_never_reuses_a_verdict_the_server_would_not() {
    let rules = ci_rules();
    for (allowed, refused) in CACHE_POISONING {
        let cache = ClassCache::new(16);
        let first = rules.decide(&cache.classify(allowed, ParseAs::default()));
        // (COPY to an empty file name is the server's error, not a file.)
        assert_eq!(first, Verdict::Allow, "{allowed}");
        let second = rules.decide(&cache.classify(refused, ParseAs::default()));
        assert_ne!(second, Verdict::Allow, "after {allowed:?}, {refused:?} reused its verdict");
        assert_eq!(second, rules.decide(&Classification::from(classify(refused))), "{refused}");
    }
}

#[test]
fn regression_merge_is_classified_by_its_actions() {
    let rules = ci_rules();
    let classes = |sql: &str| -> Vec<&'static str> {
        classify(sql).iter().flat_map(|c| c.classes.iter().map(|c| c.as_str())).collect()
    };
    for (sql, class) in [
        ("merge into m using (select 1) s on true when matched then delete", "delete_without_where"),
        ("merge into m using (select 1) s on true when matched then update set a = 1", "update_without_where"),
        ("merge into m using (select 1 id) s on m.id = m.id when matched then delete", "delete_without_where"),
        ("merge into m using o on m.id = o.id when not matched by source then delete", "delete_without_where"),
        ("with x as (select 1) merge into m using x on 1 = 1 when matched then delete", "delete_without_where"),
    ] {
        assert!(classes(sql).contains(&class), "{sql}: {:?}", classes(sql));
        assert_ne!(rules.decide(&Classification::from(classify(sql))), Verdict::Allow, "{sql}");
    }
    for sql in [
        "merge into m using o on m.id = o.id when matched then delete",
        "merge into m using o on m.id = o.id when matched then update set a = o.a when not matched then insert values (o.id)",
        "merge into m using o on true when matched and m.id = 3 then delete",
        "merge into m using o on m.id = o.id when not matched by source and m.a > 5 then delete",
    ] {
        assert!(!classes(sql).iter().any(|c| c.ends_with("_without_where")), "{sql}: {:?}", classes(sql));
    }
}

#[test]
fn regression_conditions_that_select_no_rows_are_no_where() {
    let without = |sql: &str| {
        classify(sql)
            .iter()
            .any(|c| c.classes.iter().any(|c| matches!(c.as_str(), "delete_without_where" | "update_without_where")))
    };
    for sql in [
        "delete from t where id = id",
        "delete from t where t.id = t.id",
        "delete from t x where x.id = x.id",
        "delete from t where true",
        "delete from t where 1 = 1",
        "delete from t where 5 > 1",
        "delete from t where ctid is not null",
        "delete from t where xmin::text <> ''",
        "delete from t where id is not null",
        "delete from t where exists (select 1 from t2 where t2.id > 0)",
        "delete from t where exists (select 1 from t2 where id > 0)",
        "delete from t where id = 5 or true",
        "delete from t where id = 5 or 1 = 1",
        "delete from t where lower(name) = lower(name)",
        "delete from t where current_user = 'alice'",
        "update t set a = 1 where id = id",
        "update t set a = 1 where true and 1 = 1",
        "update t set a = 1 from t2 where t2.id = t2.id",
        "with d as (delete from t where id = id returning *) select * from d",
        // From a review of the first fix: the same column named two ways,
        // negations, tests and casts around a tautology, self-operands of
        // IN, BETWEEN and ANY, sub-queries reading the target, and joins.
        "delete from t where t.id = id",
        "delete from t where public.t.id = t.id",
        "delete from t where not (id <> id)",
        "delete from t where not (id is null)",
        "delete from t where not id is null",
        "delete from t where not not (id = id)",
        "delete from t where (id = id) is true",
        "delete from t where (id = id) is not false",
        "delete from t where (id = id) = true",
        "delete from t where (id = id)::bool",
        "delete from t where id is not null is true",
        "delete from t where coalesce(id = id, true)",
        "delete from t where case when id = id then true end",
        "delete from t where id in (id)",
        "delete from t where id between id and id",
        "delete from t where id = any(array[id])",
        "delete from t where id = all(array[id])",
        "delete from t where name = name collate \"C\"",
        "delete from t where id = +id",
        "delete from t where id + 1 = id + 2",
        "delete from t where exists (select t.id)",
        "delete from t where t.id in (select t.id)",
        "delete from t using (select 1 k) s where k = 1",
        "delete from t using t u where t.id = u.id",
        "update t set a = 1 from (select 1 k) s where k = 1",
        "merge into t using (select 1 k) s on k = 1 when matched then delete",
    ] {
        assert!(without(sql), "{sql}: {:?}", classify(sql));
    }
    for sql in [
        "delete from t where id = 5",
        "delete from t where id = 5 and true",
        "delete from t where id = 5 or id = 6",
        "delete from t where name is null",
        "delete from t x where x.id = 3",
        "delete from t where exists (select 1 from t2 where t2.id = t.id)",
        "delete from t where id in (select id from t2)",
        "delete from t using t2 where t.id = t2.id",
        "update t set a = 1 where not (id = 4)",
        "update t set a = 1 where created < now() - interval '1 day'",
        "delete from t where not (id is not null)",
        "delete from t where (id = 5) is true",
        "delete from t where id::text = '5'",
        "delete from t where id between 1 and 5",
        "delete from t where id in (1, 2)",
        "delete from t where id = any($1)",
        "delete from t where name like 'a%'",
        "delete from t where id + 1 = 5",
        "delete from t where t.id in (select id from t2)",
        "delete from t using t2 where t.id = t2.id and t2.gone",
        "update t set a = 1 from t2 where t.id = t2.id",
    ] {
        assert!(!without(sql), "{sql}: {:?}", classify(sql));
    }
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
