//! The detectors against labelled corpora: `data/masking_corpus.jsonl`
//! (written before the detectors were tuned, and tuned against since) and
//! `data/masking_holdout.jsonl` (written apart from both, never tuned
//! against: the honest estimate). True secrets in varied formats, bare and
//! inside text, and look-alikes (order numbers, timestamps, UUIDs, version
//! strings, hashes, public keys, numbers failing their checksums). Recall
//! and precision per detector are printed (`-- --nocapture`); the targets
//! are recall ≥ 99% and precision ≥ 98% over each corpus.

use std::collections::{BTreeMap, BTreeSet};

use proctor_masking::{Detector, find};

#[derive(serde::Deserialize)]
struct Labelled {
    value: String,
    labels: Vec<String>,
    note: String,
}

#[derive(Default)]
struct Tally {
    true_positives: u64,
    false_positives: u64,
    false_negatives: u64,
}

fn ratio(hits: u64, total: u64) -> f64 {
    if total == 0 { 1.0 } else { hits as f64 / total as f64 }
}

#[test]
fn detectors_meet_their_recall_and_precision_on_the_corpus() {
    measure("corpus", include_str!("data/masking_corpus.jsonl"), 500);
}

#[test]
fn detectors_meet_their_recall_and_precision_on_the_held_out_corpus() {
    measure("held-out corpus", include_str!("data/masking_holdout.jsonl"), 250);
}

fn measure(name: &str, text: &str, at_least: usize) {
    let corpus: Vec<Labelled> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad corpus line ({e}): {l}")))
        .collect();
    assert!(corpus.len() >= at_least, "{} values", corpus.len());
    println!("{name}:");
    let mut tallies: BTreeMap<&str, Tally> = Detector::ALL.iter().map(|d| (d.as_str(), Tally::default())).collect();
    let mut mistakes = Vec::new();
    for item in &corpus {
        let expected: BTreeSet<&str> = item.labels.iter().map(String::as_str).collect();
        for label in &expected {
            assert!(Detector::parse(label).is_some(), "unknown label {label:?}");
        }
        let found: BTreeSet<&str> = find(&item.value, &Detector::ALL).iter().map(|f| f.detector.as_str()).collect();
        for d in Detector::ALL.iter().map(|d| d.as_str()) {
            let tally = tallies.get_mut(d).unwrap();
            match (expected.contains(d), found.contains(d)) {
                (true, true) => tally.true_positives += 1,
                (false, true) => {
                    tally.false_positives += 1;
                    mistakes.push(format!("false {d}: {:?} ({})", item.value, item.note));
                }
                (true, false) => {
                    tally.false_negatives += 1;
                    mistakes.push(format!("missed {d}: {:?} ({})", item.value, item.note));
                }
                (false, false) => {}
            }
        }
    }
    let mut all = Tally::default();
    println!("{:<16} {:>6} {:>6} {:>6} {:>8} {:>10}", "detector", "tp", "fp", "fn", "recall", "precision");
    for (name, t) in &tallies {
        println!(
            "{name:<16} {:>6} {:>6} {:>6} {:>7.1}% {:>9.1}%",
            t.true_positives,
            t.false_positives,
            t.false_negatives,
            100.0 * ratio(t.true_positives, t.true_positives + t.false_negatives),
            100.0 * ratio(t.true_positives, t.true_positives + t.false_positives)
        );
        all.true_positives += t.true_positives;
        all.false_positives += t.false_positives;
        all.false_negatives += t.false_negatives;
    }
    let recall = ratio(all.true_positives, all.true_positives + all.false_negatives);
    let precision = ratio(all.true_positives, all.true_positives + all.false_positives);
    println!(
        "{:<16} {:>6} {:>6} {:>6} {:>7.1}% {:>9.1}%",
        "all",
        all.true_positives,
        all.false_positives,
        all.false_negatives,
        100.0 * recall,
        100.0 * precision
    );
    println!("{} values; mistakes:\n{}", corpus.len(), mistakes.join("\n"));
    assert!(
        recall >= 0.99 && precision >= 0.98,
        "recall {recall:.3}, precision {precision:.3}:\n{}",
        mistakes.join("\n")
    );
}
