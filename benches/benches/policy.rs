//! What deciding a statement costs: parsing and classifying it with
//! PostgreSQL's parser (the first time a statement shape is seen), finding
//! its shape's classification in the cache (every time after), and the
//! rule set's verdict; for pgbench's `SELECT`, an `UPDATE`, a three-table
//! join and a risky statement. Printed per statement, with the cached path
//! as a ratio of the uncached one.
//!
//! `cargo bench -p proctor-benches --bench policy [-- ITERATIONS]`

use std::hint::black_box;

use proctor_benches::per_call;
use proctor_postgres::classify::{ClassCache, Classification, ParseAs, classify};
use proctor_postgres::rules::{RuleSet, RuleSetConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STATEMENTS: &[(&str, &str)] = &[
    ("pgbench -S", "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"),
    ("pgbench -S -M extended", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"),
    ("update", "UPDATE pgbench_accounts SET abalance = abalance + -3921 WHERE aid = 12;"),
    (
        "3-table join",
        "select c.name, o.id, sum(l.cents) from customers c join orders o on o.customer_id = c.id \
         join lines l on l.order_id = o.id where c.country = 'DE' and o.created_at > now() - interval '7 days' \
         group by 1, 2 order by 3 desc limit 20",
    ),
    ("risky (held)", "with gone as (delete from customers returning *) select count(*) from gone"),
];

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20_000);
    let config: RuleSetConfig = RuleSetConfig {
        block: vec!["copy_program".into(), "alter_system".into()],
        hold: vec![
            "ddl".into(),
            "drop".into(),
            "delete_without_where".into(),
            "write_in_cte".into(),
            "admin_function".into(),
        ],
        approval_group: None,
    };
    let rules = RuleSet::new("ci", &config).unwrap();
    println!("policy decision per statement ({n} calls x 5 runs, median):");
    for (name, sql) in STATEMENTS {
        // A different literal each call, as clients send them.
        let texts: Vec<String> = (0..n.min(1000)).map(|i| sql.replace("48213", &i.to_string())).collect();
        let parse = per_call(n / 10, |i| {
            black_box(classify(black_box(&texts[i % texts.len()])));
        });
        let cache = ClassCache::new(10_000);
        let cached = per_call(n, |i| {
            let classification = cache.classify(black_box(&texts[i % texts.len()]), ParseAs::default());
            black_box(rules.decide(&classification));
        });
        let verdict = rules.decide(&Classification::from(classify(sql)));
        println!(
            "  {name:<22} parse+classify {parse:>8.0} ns   cached+decide {cached:>6.0} ns ({:.3}x)   verdict {verdict:?}",
            cached / parse
        );
    }
}
