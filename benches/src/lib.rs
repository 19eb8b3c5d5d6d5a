//! Shared pieces of Proctor's benchmarks: measuring, the baselines they are
//! compared with, and printing ratios.

use std::time::Duration;

/// Median of a set of measurements.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Nanoseconds per call of `f`, the median of 5 runs of `n` calls (`f` is
/// given the call's index).
pub fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = std::time::Instant::now();
            for i in 0..n {
                f(i);
            }
            started.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    median(runs)
}

/// CPU time (user + system) used by this process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system) used so far by this process's threads, summed
/// by thread name (the kernel's 15-character `comm`), for telling where a
/// process's time goes: relay, WAL, sealer.
pub fn threads_cpu() -> std::collections::BTreeMap<String, Duration> {
    let mut by_name = std::collections::BTreeMap::new();
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // pid (comm) state ... : the name may hold spaces, so fields are
        // counted after its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13
        // counted from the state (field 3) here.
        let ticks_of = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let cpu = Duration::from_secs_f64((ticks_of(11) + ticks_of(12)) as f64 / ticks);
        *by_name.entry(name).or_insert(Duration::ZERO) += cpu;
    }
    by_name
}

/// CPU time (user + system) used by the calling thread so far.
pub fn this_thread_cpu() -> Duration {
    // SAFETY: as for `process_cpu`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Total size of the files under `dir`.
pub fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                total += dir_size(&path);
            } else if let Ok(meta) = entry.metadata() {
                total += meta.len();
            }
        }
    }
    total
}

/// The recorder as the gateway's event sink, as the `proctor` binary wires
/// it (`src/wiring.rs`), for benchmarks that run the gateway in process.
#[derive(Clone)]
pub struct BenchSink(pub proctor_recorder::Sink);

impl proctor_gateway_core::EventSink for BenchSink {
    async fn record(&self, event: proctor_schemas::NewEvent) -> Result<u64, proctor_gateway_core::SinkError> {
        self.0.append(event).await.map_err(|e| proctor_gateway_core::SinkError(e.to_string()))
    }

    async fn record_batch(
        &self,
        events: &[proctor_schemas::NewEvent],
    ) -> Result<Vec<u64>, proctor_gateway_core::SinkError> {
        self.0.append_slice(events).await.map_err(|e| proctor_gateway_core::SinkError(e.to_string()))
    }
}
