use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use proctor_recorder::synth::{Synth, SynthConfig};
use proctor_recorder::{Recorder, RecorderSettings};
use proctor_schemas::{NewEvent, Timestamp};

use crate::cli::GenerateArgs;
use crate::config::Config;

/// Events per append call.
const BATCH: usize = 256;

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let settings = match &args.config {
        Some(path) => Config::load(path)?.recorder,
        None => RecorderSettings::default(),
    };
    let start = match &args.start {
        Some(text) => {
            Timestamp::parse_rfc3339(text).with_context(|| format!("--start {text:?} is not an RFC 3339 time"))?
        }
        None => Timestamp(Timestamp::now().0 - Duration::from_secs(7 * 24 * 3600).as_nanos() as i64),
    };
    let recorder = Recorder::open(&args.data_dir, &settings)
        .with_context(|| format!("cannot open the recorder on {}", args.data_dir.display()))?;
    let sink = recorder.sink();
    let started = Instant::now();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let mut events: u64 = 0;
    let mut batch: Vec<NewEvent> = Vec::with_capacity(BATCH);
    let mut synth = Synth::new(SynthConfig::new(args.sessions, args.seed, start)).peekable();
    while synth.peek().is_some() {
        batch.extend(synth.by_ref().take(BATCH));
        let ids: Vec<_> = if args.print_acks { batch.iter().map(|e| e.session_id).collect() } else { Vec::new() };
        let seqs = sink.blocking_append_batch(std::mem::take(&mut batch)).context("the recorder refused events")?;
        events += seqs.len() as u64;
        if args.print_acks {
            for (id, seq) in ids.iter().zip(&seqs) {
                writeln!(stdout, "{id} {seq}")?;
            }
            stdout.flush()?;
        }
    }
    let accepted = started.elapsed();
    recorder.close().context("sealing failed")?;
    let total = started.elapsed();
    eprintln!(
        "generated {} sessions, {events} events into {} in {:.2}s ({:.0} events/s accepted, {:.0} events/s sealed)",
        args.sessions,
        args.data_dir.display(),
        total.as_secs_f64(),
        events as f64 / accepted.as_secs_f64().max(1e-9),
        events as f64 / total.as_secs_f64().max(1e-9),
    );
    Ok(ExitCode::SUCCESS)
}
