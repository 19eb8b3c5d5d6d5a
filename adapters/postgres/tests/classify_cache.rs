//! The classification cache against the plain path, on generated input.
//!
//! Two differential tests:
//! - the shaper against PostgreSQL's own scanner (`pg_query::scan_tokens`):
//!   every literal the shaper replaces is one literal token of the server's,
//!   every comment it drops is one of the server's comments, and the key is
//!   the server's token stream written out;
//! - the cache against parsing every time: statements and their near
//!   variants (comments and line endings of every kind, literals swapped,
//!   options toggled, quoting forms) classified through one shared cache in
//!   a random order must get exactly the classes they get uncached.

use pg_query::protobuf::Token;
use proctor_postgres::classify::{ClassCache, Classification, ParseAs, classify_as, shape};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Statement templates: `{}` is a literal slot, `_` a place for whitespace
/// or a comment.
const TEMPLATES: &[&str] = &[
    "select_{}",
    "select_*_from_t_where_id_=_{}",
    "select_{},_{}_from_t",
    "select_{}_;_drop_table_t",
    "select_{}_;_truncate_t",
    "select_lower({})_from_t_limit_{}",
    "explain_(analyze_{})_delete_from_orders",
    "explain_(analyze_{},_costs_{})_update_t_set_a_=_{}",
    "explain_(costs_{})_delete_from_orders",
    "explain_analyze_delete_from_orders_where_id_=_{}",
    "copy_t_to_{}",
    "copy_t_from_{}",
    "copy_(select_{})_to_{}",
    "copy_t_to_stdout_with_(format_{})",
    "delete_from_t_where_id_=_{}",
    "delete_from_t_where_{}_=_{}",
    "delete_from_t_where_id_=_{}_or_{}",
    "update_t_set_a_=_{}_where_id_=_{}",
    "update_t_set_a_=_{}",
    "insert_into_t_values_({},_{})",
    "set_search_path_=_{}",
    "set_standard_conforming_strings_=_{}",
    "set_statement_timeout_=_{}",
    "select_set_config({},_{},_false)",
    "select_pg_read_file({})",
    "vacuum_(analyze_{})_t",
    "select_{}::numeric({},_{})",
    "select_interval_{}",
    "select_{}::regclass",
    "select_*_from_t_limit_{}_offset_{}",
    "merge_into_m_using_(select_{}_a)_s_on_{}_when_matched_then_delete",
    "merge_into_m_using_o_on_m.id_=_o.id_when_matched_and_m.a_=_{}_then_update_set_a_=_{}",
    "with_x_as_(delete_from_t_where_id_=_{}_returning_*)_select_{}",
    "prepare_p_as_select_{};_execute_p",
    "do_{}",
    "select_{}_as_note;_drop_table_t",
    "select_*_from_t_where_a_=_{}_and_b_=_{}",
    "create_table_x_(a_int_default_{})",
    "alter_system_set_work_mem_=_{}",
    "lock_table_t_in_access_share_mode",
    "select_{}_from_t_where_id_in_({},_{})",
    "select_case_when_{}_then_{}_else_{}_end",
    "select_{}||{}",
    "select_-{}",
    "select_t.{}_from_t",
    "select_{}_;_select_{}",
    "delete_from_t_where_id_+_{}_=_id_+_{}",
    "delete_from_t_where_coalesce(id,_{})_=_coalesce(id,_{})",
    "update_t_set_a_=_{}_where_name_||_{}_=_name_||_{}",
    "delete_from_t_where_(id_=_{})_=_{}",
];

/// Literals, plain and not.
const LITERALS: &[&str] = &[
    "0",
    "1",
    "2",
    "42",
    "007",
    "2147483647",
    "2147483648",
    "99999999999",
    "1.5",
    "1.",
    "'on'",
    "'off'",
    "'true'",
    "'false'",
    "'0'",
    "'1'",
    "''",
    "'/tmp/x'",
    "'/etc/hostname'",
    "'a''b'",
    "'--'",
    "'/*'",
    "'x;drop table t'",
    "'standard_conforming_strings'",
    "'-----BEGIN PRIVATE KEY-----'",
    "true",
    "false",
    "null",
    "$1",
    "$2",
    "E'x'",
    "$$x$$",
    "$q$x;drop table t$q$",
    "'a'\n'b'",
    "'a' 'b'",
    "1e5",
    "0x1F",
    "1_000",
    "U&'\\0061'",
    "B'101'",
    "X'1F'",
    "\"q\"",
    "\"a\"\"b\"",
    "-1",
    "+1",
    ".5",
    "\u{0}",
];

/// What may stand between tokens.
const GAPS: &[&str] = &[
    " ",
    "  ",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\u{b}",
    "\u{c}",
    " -- c\n",
    " --c\r",
    " --\r",
    " -- ;drop table t\n",
    " /* c */ ",
    "/**/",
    " /* /* nested */ still */ ",
    " /* -- */ ",
    " --/*\n",
    " -- \u{0}\n",
];

fn generate(rng: &mut ChaCha8Rng) -> String {
    let template = TEMPLATES.choose(rng).unwrap();
    let mut out = String::new();
    for c in template.chars() {
        match c {
            '_' => out.push_str(if rng.random_bool(0.7) { " " } else { GAPS.choose(rng).unwrap() }),
            '{' => out.push_str(LITERALS.choose(rng).unwrap()),
            '}' => {}
            c => out.push(c),
        }
    }
    // Sometimes a trailing comment, semicolon or case change.
    match rng.random_range(0..6) {
        0 => out.push_str(GAPS.choose(rng).unwrap()),
        1 => out.push(';'),
        2 => out = out.to_uppercase(),
        _ => {}
    }
    out
}

/// The key the shaper should give `sql`, written from the server's tokens:
/// comments and whitespace as one space, the shaper's literals by kind.
fn key_from_scanner(sql: &str, literals: &[(u32, u32)]) -> Result<String, String> {
    let tokens = pg_query::scan_tokens(sql).map_err(|e| e.to_string())?;
    let mut key = String::new();
    let mut last_end = 0usize;
    let mut gap = false;
    for token in &tokens {
        let (start, end) = (token.start as usize, token.end as usize);
        if sql[last_end..start].chars().any(|c| !c.is_whitespace()) {
            return Err(format!("text between tokens: {:?}", &sql[last_end..start]));
        }
        gap |= start > last_end;
        last_end = end;
        let kind = Token::try_from(token.token).map_err(|e| e.to_string())?;
        if matches!(kind, Token::SqlComment | Token::CComment) {
            gap = true;
            continue;
        }
        if gap && !key.is_empty() {
            key.push(' ');
        }
        gap = false;
        let text = &sql[start..end];
        if literals.contains(&(token.start as u32, token.end as u32)) {
            key.push_str(match kind {
                Token::Iconst => "0",
                Token::Fconst => "0.0",
                Token::Sconst => "'?'",
                other => return Err(format!("the shaper replaced a {other:?} token: {text:?}")),
            });
        } else {
            key.push_str(text);
        }
    }
    // Every literal the shaper replaced is one token of the server's.
    for (start, end) in literals {
        if !tokens.iter().any(|t| t.start as u32 == *start && t.end as u32 == *end) {
            return Err(format!(
                "the shaper's literal {:?} is no token of the server's",
                &sql[*start as usize..*end as usize]
            ));
        }
    }
    Ok(key)
}

#[test]
fn the_shaper_lexes_as_postgresql_does() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5ca1ab1e);
    let (mut shaped, mut unshaped) = (0, 0);
    for _ in 0..30_000 {
        let sql = generate(&mut rng);
        let Some(shape) = shape(&sql) else {
            unshaped += 1;
            continue;
        };
        shaped += 1;
        // Text the scanner refuses (an unterminated comment, say) must
        // not be shaped at all: the parser refuses it too.
        match key_from_scanner(&sql, &shape.literals) {
            Ok(key) => assert_eq!(shape.key, key, "{sql:?}"),
            Err(error) => panic!("{sql:?} was shaped as {:?}, but: {error}", shape.key),
        }
    }
    println!("{shaped} shaped, {unshaped} parsed each time");
    assert!(shaped > 15_000, "the generator should mostly make shapeable text: {shaped}");
}

#[test]
fn the_cache_agrees_with_parsing_every_time() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc0ffee);
    let cache = ClassCache::new(100_000);
    let settings = [ParseAs::default(), ParseAs { standard_conforming_strings: false }];
    let mut hits = 0;
    for round in 0..40_000 {
        let sql = generate(&mut rng);
        let parse_as = settings[usize::from(round % 10 == 9)];
        let before = cache.len();
        let cached = cache.classify(&sql, parse_as);
        let plain = Classification::from(classify_as(&sql, parse_as));
        assert_eq!(cached.statements, plain.statements, "{sql:?} ({parse_as:?})");
        assert_eq!(cached.error.is_some(), plain.error.is_some(), "{sql:?}");
        // An answer from an entry made before this statement.
        hits += usize::from(cache.len() == before && std::sync::Arc::strong_count(&cached) > 1);
    }
    println!("{} shapes cached, {hits} answers from the cache", cache.len());
    assert!(hits > 10_000, "the cache should answer most generated statements: {hits}");
}
