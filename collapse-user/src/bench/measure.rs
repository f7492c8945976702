//! What every run shares: its context, the state its reader threads hand the sampler, the
//! arm's sysfs regime, `collapse run` on the workload, and the sampling loop.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collapse_common::policy::Policy;

use super::{
    arm::ArmSpec,
    child::{Owned, SETUP_TIMEOUT, die_with_us, lines},
    error::BenchError,
    model::{ArmFigures, BenchSample, SysfsChange},
    sampler::{self, VmstatCollapses},
};
use crate::{
    kernel::thp::{SysfsRestore, read_value},
    snapshot::SnapshotRegion,
};

/// How often the sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub samples: Vec<BenchSample>,
    pub figures: ArmFigures,
    /// The workload's regions right after populating (for the modelled policies).
    pub populated: Vec<SnapshotRegion>,
    /// The sysfs values the run changed, and whether they are back.
    pub sysfs: Vec<SysfsChange>,
}

/// Restores the run's sysfs values and says what they were and whether they are back.
pub fn finish_sysfs(sysfs: SysfsRestore) -> Vec<SysfsChange> {
    let changed: Vec<(PathBuf, String)> = sysfs
        .changes()
        .map(|(p, prev)| (p.to_owned(), prev.to_owned()))
        .collect();
    let now: Vec<String> = changed
        .iter()
        .map(|(p, _)| read_value(p).unwrap_or_default())
        .collect();
    drop(sysfs);
    changed
        .into_iter()
        .zip(now)
        .map(|((path, from), to)| SysfsChange {
            restored: read_value(&path).is_ok_and(|v| v == from),
            path: path.display().to_string(),
            from,
            to,
        })
        .collect()
}

/// The parts every run shares.
pub struct RunContext<'a> {
    /// The `collapse` binary (this one).
    pub exe: &'a PathBuf,
    pub size: u64,
    pub run_for: Duration,
    pub stop: &'a AtomicBool,
    /// Called with (progress 0..1, coverage) about 4 times a second.
    pub progress: &'a mut dyn FnMut(f64, f64),
    /// Take the populated regions from pagemap (once per bench is enough).
    pub want_regions: bool,
}

/// What the reader threads share with the sampler.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) progress: f64,
    pub(super) result: Option<(f64, bool)>,
    pub(super) collapses: u64,
    pub(super) failures: BTreeMap<String, u64>,
    pub(super) summary: Option<serde_json::Value>,
}

pub(super) fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `collapse run` on the workload, its JSON lines counted as they come.
pub(super) fn start_collapse(
    ctx: &RunContext<'_>,
    pid: i32,
    policy: Policy,
    max_ptes_none: u16,
    shared: &Arc<Mutex<Shared>>,
) -> Result<Owned, BenchError> {
    let mut cmd = Command::new(ctx.exe);
    cmd.args([
        "run",
        "--pid",
        &pid.to_string(),
        "--policy",
        policy.name(),
        "--max-ptes-none",
        &max_ptes_none.to_string(),
        "--interval",
        "0.5",
        "--json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    die_with_us(&mut cmd);
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: "collapse run".into(),
        source: e,
    })?);
    let rx = lines(child.0.stdout.take().expect("piped"));
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        for l in rx {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            let mut s = lock(&shared);
            match v["type"].as_str() {
                Some("collapse") if v["result"] == "collapsed" => s.collapses += 1,
                Some("collapse") if v["result"] == "failed" => {
                    let why = v["reason"].as_str().unwrap_or("?").to_owned();
                    *s.failures.entry(why).or_default() += 1;
                }
                Some("summary") => s.summary = Some(v),
                _ => {}
            }
        }
    });
    Ok(child)
}

/// The arm's sysfs regime, journalled and restored when dropped. `fast` is khugepaged with
/// `scan_sleep_millisecs` 0; `always` sets THP `enabled` to `always` (external programs
/// cannot be registered with MADV_HUGEPAGE).
pub(super) fn regime(arm: ArmSpec, always: bool) -> Result<SysfsRestore, BenchError> {
    let mut sysfs = SysfsRestore::journalled();
    if arm == ArmSpec::KhugepagedFast {
        sysfs.set_thp("khugepaged/scan_sleep_millisecs", "0")?;
    }
    if always && matches!(arm, ArmSpec::Khugepaged | ArmSpec::KhugepagedFast) {
        sysfs.set_thp("enabled", "always")?;
    }
    Ok(sysfs)
}

/// Samples `pids` from now until `done` says so (or the bench is stopped), then once more.
pub(super) fn sample_until(
    ctx: &mut RunContext<'_>,
    pids: &[i32],
    shared: &Arc<Mutex<Shared>>,
    from_vmstat: bool,
    done: &mut dyn FnMut(&Shared) -> bool,
) -> (Vec<BenchSample>, Instant) {
    let started = Instant::now();
    let base = VmstatCollapses::read();
    let mut samples = Vec::new();
    let deadline = started + ctx.run_for * 3 + SETUP_TIMEOUT;
    loop {
        let (finished, progress, mut collapses, mut failures) = {
            let s = lock(shared);
            (done(&s), s.progress, s.collapses, s.failures.clone())
        };
        if from_vmstat {
            (collapses, failures) = VmstatCollapses::read().since(&base);
        }
        let sample = sampler::sample(pids, started, collapses, failures, progress);
        (ctx.progress)(progress, sample.coverage);
        samples.push(sample);
        if finished || ctx.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    (samples, started)
}

/// khugepaged's CPU over an arm: its thread's utime + stime at the start, read again at the end.
pub(super) struct KhugepagedCpu {
    pid: Option<i32>,
    start: Option<f64>,
}

impl KhugepagedCpu {
    pub(super) fn start() -> Self {
        let pid = sampler::khugepaged_pid();
        Self {
            pid,
            start: pid.and_then(sampler::cpu_seconds),
        }
    }

    /// CPU seconds since [`KhugepagedCpu::start`].
    pub(super) fn since(&self) -> Option<f64> {
        let now = self.pid.and_then(sampler::cpu_seconds)?;
        Some(now - self.start?)
    }
}

/// Stops `collapse run`, its CPU read first (while it still runs); waits for its summary
/// line. Returns that CPU.
pub(super) fn stop_collapse(collapse: Option<Owned>) -> Option<f64> {
    let mut collapse = collapse?;
    let cpu = sampler::cpu_seconds(collapse.pid());
    collapse.terminate(Duration::from_secs(10));
    // The summary line is read on another thread as `run` stops.
    std::thread::sleep(Duration::from_millis(100));
    cpu
}

/// A run's figures from its samples and what its threads gathered.
pub(super) fn run_figures(
    shared: &Shared,
    samples: &[BenchSample],
    perf: Option<f64>,
    checksum_ok: Option<bool>,
    khugepaged: &KhugepagedCpu,
    collapse_cpu: Option<f64>,
) -> ArmFigures {
    let mut f = ArmFigures {
        perf,
        checksum_ok,
        cpu_khugepaged_s: khugepaged.since(),
        cpu_collapse_s: collapse_cpu,
        zero_filled_pages: shared
            .summary
            .as_ref()
            .and_then(|v| v["zero_filled_pages"].as_u64()),
        ..ArmFigures::default()
    };
    super::figures::from_samples(samples, &mut f);
    f
}
