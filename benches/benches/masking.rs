//! What masking costs per row: a realistic 10-column row (ids, a name,
//! timestamps, amounts, a status, a note) with no secret in it, and the same
//! row with an e-mail address, a phone number and a card number in it,
//! through a profile with every detector on and one with column rules only;
//! against copying the row's values, the floor of any per-value work.
//!
//! `cargo bench -p proctor-benches --bench masking [-- ITERATIONS]`

use std::hint::black_box;

use proctor_benches::per_call;
use proctor_gateway_core::masking::{Column, Counts, Masker, MaskingKey, Profile, ProfileConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COLUMNS: [&str; 10] =
    ["id", "name", "email", "phone", "country", "created_at", "total_cents", "status", "card", "note"];

/// Which columns are text (the others: int, timestamptz, int).
const TEXT: [bool; 10] = [false, true, true, true, true, false, false, true, true, true];

const CLEAN: [&str; 10] = [
    "48213",
    "Grace Hopper",
    "",
    "",
    "US",
    "2026-11-26 14:03:11.482+00",
    "12999",
    "shipped",
    "",
    "left at the front desk, signed by reception",
];

const SECRETS: [&str; 10] = [
    "48213",
    "Grace Hopper",
    "grace.hopper@example.com",
    "+1 415 555 2671",
    "US",
    "2026-11-26 14:03:11.482+00",
    "12999",
    "shipped",
    "4111 1111 1111 1111",
    "call back on (415) 555-2671 about the refund",
];

fn masker(toml_text: &str) -> Masker {
    let config: ProfileConfig = toml::from_str(toml_text).unwrap();
    Masker::new(Profile::new("bench", &config).unwrap(), MaskingKey::new(vec![7; 32]))
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let detectors = masker(r#"detectors = ["all"]"#);
    let columns = masker(
        r#"[[columns]]
match = "email"
[[columns]]
match = "*phone*"
[[columns]]
match = "card"
action = "last4""#,
    );
    let copy = |row: &[&str; 10]| {
        let copied: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        black_box(copied);
    };
    // Column rules are decided once per result (as the gateway does), then
    // applied to each row.
    let plan = |m: &Masker| -> Vec<Option<usize>> {
        COLUMNS.iter().map(|name| m.column_rule_index(&Column { name, table: Some("customers") })).collect()
    };
    // Detectors read text-like columns only (ids, timestamps and amounts are
    // typed), as the gateway does.
    let mask = |m: &Masker, plan: &[Option<usize>], row: &[&str; 10]| {
        let mut counts = Counts::new();
        let masked: Vec<String> = row
            .iter()
            .zip(plan)
            .zip(TEXT)
            .map(|((v, rule), text)| match (rule, text) {
                (None, false) => v.to_string(),
                _ => m.mask_planned(v, *rule, &mut counts).into_owned(),
            })
            .collect();
        black_box((masked, counts));
    };
    let (detector_plan, column_plan) = (plan(&detectors), plan(&columns));
    println!("masking a 10-column row ({n} rows x 5 runs, median ns per row):");
    for (label, row) in [("no secrets", &CLEAN), ("3 secrets", &SECRETS)] {
        let baseline = per_call(n, |_| copy(row));
        let all = per_call(n, |_| mask(&detectors, &detector_plan, row));
        let by_column = per_call(n, |_| mask(&columns, &column_plan, row));
        println!(
            "  {label:<10}  copy {baseline:>6.0} ns   every detector {all:>6.0} ns ({:.1}x)   column rules {by_column:>6.0} ns ({:.1}x)",
            all / baseline,
            by_column / baseline
        );
    }
}
