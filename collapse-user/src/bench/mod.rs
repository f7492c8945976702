//! `collapse bench`: the same workload under khugepaged and under collapse, and the report.
//!
//! Each arm runs on a fresh run of the workload, arms interleaved over `--runs` (A B C A B C):
//! `none` (THP off for the workload), `khugepaged` (kernel defaults, the workload registered
//! with MADV_HUGEPAGE once populated, or THP `always` for external programs),
//! `khugepaged-fast` (`scan_sleep_millisecs` 0) and `collapse` arms (`collapse run` with a
//! policy and max_ptes_none). Every sysfs change is journalled first and restored at the end
//! of its arm, on errors and on Ctrl-C; after a SIGKILL the next start of collapse restores it.
//! The result is a [`BenchReport`].

mod arm;
mod builtin;
mod child;
mod command;
mod error;
pub mod figures;
mod measure;
pub mod model;
mod redis;
pub mod report;
pub mod sampler;

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use collapse_common::policy::{MAX_ORDER, MIN_ORDER, OrderSet, Planner, Policy, Settings};

pub use self::{
    arm::{ArmSpec, BenchWorkload},
    error::BenchError,
    measure::{RunContext, RunResult},
    model::*,
};
use crate::{
    kernel::{
        pagemap,
        thp::{SizeEnabled, SysfsRestore, ThpEnabled, ThpSettings},
    },
    planner::Tally,
    snapshot::SnapshotRegion,
};

/// What `collapse bench` was asked for, validated.
#[derive(Clone, Debug)]
pub struct BenchJob {
    pub workload: BenchWorkload,
    /// Memory of the built-in workloads (and redis's dataset), bytes.
    pub size: u64,
    /// The measured phase of each run.
    pub run_for: Duration,
    pub quick: bool,
    pub arms: Vec<ArmSpec>,
    pub runs: u32,
    /// The `collapse` binary to run workloads and `collapse run` with.
    pub exe: PathBuf,
}

/// One run of `arm` on `workload`.
fn run_arm(
    ctx: &mut RunContext<'_>,
    workload: &BenchWorkload,
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    match workload {
        BenchWorkload::BuiltIn(kind) => builtin::run(ctx, *kind, arm),
        BenchWorkload::Redis => redis::run(ctx, arm),
        BenchWorkload::Command(cmd) => command::run(ctx, cmd, arm),
    }
}

/// The regions of `pid` from pagemap (the modelled policies plan over them).
pub(crate) fn populated_regions(pid: i32) -> Vec<SnapshotRegion> {
    pagemap::read_regions(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !t.present.is_empty())
        .map(|t| SnapshotRegion {
            pid,
            addr: t.addr,
            state: t.state(),
        })
        .collect()
}

/// Every policy over `regions` with every size enabled, at each `max_ptes_none` of `values`.
fn modelled(regions: &[SnapshotRegion], values: &[u16]) -> Vec<ModelledPolicy> {
    let orders = OrderSet::from_orders(MIN_ORDER..=MAX_ORDER).unwrap_or_default();
    let mut out = Vec::new();
    for &n in values {
        let Ok(settings) = Settings::new(n, 64, 256, orders, 3) else {
            continue;
        };
        for policy in Policy::ALL {
            let planner = Planner::new(policy, settings);
            let mut tally = Tally::default();
            for p in crate::planner::plan_regions(&planner, regions) {
                tally.add_region(&p.state, &p.decisions, p.bloat_pages);
            }
            out.push(ModelledPolicy {
                policy: policy.name().to_owned(),
                max_ptes_none: n,
                bytes_by_size_kb: (MIN_ORDER..=MAX_ORDER)
                    .filter(|&k| tally.order(k).pages > 0)
                    .map(|k| (4u64 << k, crate::render::bytes(tally.order(k).pages)))
                    .collect(),
                bloat_bytes: crate::render::bytes(tally.bloat),
                coverage: tally.coverage(),
            });
        }
    }
    out
}

fn machine(thp: &ThpSettings) -> Machine {
    let k = &thp.khugepaged;
    Machine {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        mem_total_bytes: <procfs::Meminfo as procfs::Current>::current().map_or(0, |m| m.mem_total),
        thp_enabled: thp.enabled.to_string(),
        thp_defrag: thp.defrag.clone(),
        khugepaged: [
            ("pages_to_scan", k.pages_to_scan),
            ("scan_sleep_millisecs", k.scan_sleep_millisecs),
            ("alloc_sleep_millisecs", k.alloc_sleep_millisecs),
            ("max_ptes_none", u64::from(k.max_ptes_none)),
            ("max_ptes_swap", u64::from(k.max_ptes_swap)),
            ("max_ptes_shared", u64::from(k.max_ptes_shared)),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect(),
    }
}

/// How the bench shows its progress on stderr.
struct Progress {
    terminal: bool,
    started: Instant,
    label: String,
    shown: Instant,
}

impl Progress {
    fn arm(&mut self, run: u32, runs: u32, i: usize, n: usize, name: &str) {
        self.label = format!("run {run}/{runs}, arm {}/{n} {name}", i + 1);
        if !self.terminal {
            eprintln!(
                "collapse bench: {} (elapsed {:.0} s)",
                self.label,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn update(&mut self, progress: f64, coverage: f64) {
        if !self.terminal || self.shown.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.shown = Instant::now();
        eprint!(
            "\r\x1b[Kcollapse bench: {}: {:>3.0} % done, coverage {:>5.1} %, elapsed {:.0} s",
            self.label,
            100.0 * progress,
            100.0 * coverage,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// Runs every arm `runs` times, interleaved, and works out the figures.
pub fn run(job: &BenchJob, stop: &AtomicBool) -> Result<BenchReport, BenchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::NotRoot);
    }
    let thp = ThpSettings::read()?;
    if thp.enabled == ThpEnabled::Never {
        return Err(BenchError::ThpNever);
    }
    if job.workload == BenchWorkload::Redis {
        redis::ensure_installed()?;
    }
    let mut notes = Vec::new();
    let mut report = BenchReport {
        version: REPORT_VERSION,
        started_unix_s: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        machine: machine(&thp),
        runs: job.runs,
        ..BenchReport::default()
    };
    // The arms compare collapsing populated 4 KiB pages: with THP `always` faults would map
    // THPs directly, so `madvise` for the bench (restored at the end).
    let mut bench_sysfs = SysfsRestore::journalled();
    if thp.enabled == ThpEnabled::Always {
        bench_sysfs.set_thp("enabled", "madvise")?;
        notes.push("THP enabled was `always`: set to `madvise` for the bench, so that the workloads populate with 4 KiB pages".to_owned());
    }
    let mthp_sizes = thp
        .sizes
        .iter()
        .filter(|s| s.order < 9 && s.enabled != SizeEnabled::Never)
        .count();
    if mthp_sizes > 0 {
        notes.push(format!(
            "{mthp_sizes} mTHP sizes are enabled at fault time here"
        ));
    }
    let tracefs = crate::kernel::tracefs::find();
    notes.push(if tracefs.is_some_and(|r| crate::kernel::tracefs::khugepaged_collapses_mthp(&r)) {
        "this kernel's khugepaged collapses to mTHP sizes, but the bench has no khugepaged-mthp arm yet: the modelled outcome shows what each policy would build".to_owned()
    } else {
        "no khugepaged-mthp arm: this kernel's khugepaged collapses to PMD size only (mTHP collapse needs 7.2); the modelled outcome shows what each policy would build".to_owned()
    });
    let mut progress = Progress {
        terminal: std::io::stderr().is_terminal(),
        started: Instant::now(),
        label: String::new(),
        shown: Instant::now(),
    };
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); job.arms.len()];
    let mut populated: Vec<SnapshotRegion> = Vec::new();
    let outcome = (|| -> Result<(), BenchError> {
        for run in 1..=job.runs {
            for (i, &arm) in job.arms.iter().enumerate() {
                progress.arm(run, job.runs, i, job.arms.len(), &arm.name());
                let mut update = |p: f64, c: f64| progress.update(p, c);
                let mut ctx = RunContext {
                    exe: &job.exe,
                    size: job.size,
                    run_for: job.run_for,
                    stop,
                    progress: &mut update,
                    want_regions: populated.is_empty() && arm == ArmSpec::None,
                };
                let mut r = run_arm(&mut ctx, &job.workload, arm)?;
                if populated.is_empty() && !r.populated.is_empty() {
                    populated = std::mem::take(&mut r.populated);
                }
                results[i].push(r);
                if stop.load(Ordering::Relaxed) {
                    return Err(BenchError::Stopped);
                }
            }
        }
        Ok(())
    })();
    progress.done();
    for r in results.iter().flatten() {
        report.sysfs.extend(r.sysfs.iter().cloned());
    }
    let bench_changes = measure::finish_sysfs(bench_sysfs);
    report.sysfs.extend(bench_changes);
    outcome?;

    let metric = match job.workload {
        BenchWorkload::Command(_) => PerfMetric::Runtime,
        _ => PerfMetric::Throughput,
    };
    report.workload = WorkloadInfo {
        name: match &job.workload {
            BenchWorkload::BuiltIn(crate::workload::BuiltIn::Mixed) => "mixed".into(),
            BenchWorkload::BuiltIn(crate::workload::BuiltIn::SparseStride { .. }) => {
                "sparse-stride".into()
            }
            BenchWorkload::Redis => "redis".into(),
            BenchWorkload::Command(_) => "command".into(),
        },
        command: match &job.workload {
            BenchWorkload::Command(c) => c.clone(),
            BenchWorkload::Redis => vec!["redis-server".into(), "redis-benchmark -t get".into()],
            BenchWorkload::BuiltIn(_) => Vec::new(),
        },
        size_bytes: job.size,
        quick: job.quick,
        metric,
        perf_unit: match (&job.workload, metric) {
            (_, PerfMetric::Runtime) => "s".into(),
            (BenchWorkload::Redis, _) => "GET/s".into(),
            (BenchWorkload::BuiltIn(crate::workload::BuiltIn::Mixed), _) => "lookups/s".into(),
            _ => "reads/s".into(),
        },
    };
    report.arms = assemble(&job.arms, results, metric);
    report.summary = figures::damon_summary(&report.arms);
    let mut values: Vec<u16> = job
        .arms
        .iter()
        .filter_map(|a| match a {
            ArmSpec::Collapse { max_ptes_none, .. } => Some(*max_ptes_none),
            _ => None,
        })
        .chain([thp.khugepaged.max_ptes_none])
        .collect();
    values.sort_unstable();
    values.dedup();
    report.modelled = modelled(&populated, &values);
    report.notes = notes;
    Ok(report)
}

/// Arm reports from the runs: figures against `none` and the best arm, medians, spreads.
fn assemble(specs: &[ArmSpec], results: Vec<Vec<RunResult>>, metric: PerfMetric) -> Vec<ArmReport> {
    let none_median = specs
        .iter()
        .position(|a| *a == ArmSpec::None)
        .map(|i| {
            let f: Vec<&ArmFigures> = results[i].iter().map(|r| &r.figures).collect();
            figures::spread(&f).0
        })
        .unwrap_or_default();
    let best_final = results
        .iter()
        .flatten()
        .filter_map(|r| r.figures.final_coverage)
        .fold(0.0, f64::max);
    specs
        .iter()
        .zip(results)
        .enumerate()
        .map(|(i, (spec, runs))| {
            let runs: Vec<ArmRun> = runs
                .into_iter()
                .enumerate()
                .map(|(k, mut r)| {
                    figures::against(&mut r.figures, &r.samples, &none_median, best_final, metric);
                    ArmRun {
                        run: k as u32 + 1,
                        samples: r.samples,
                        figures: r.figures,
                    }
                })
                .collect();
            let f: Vec<&ArmFigures> = runs.iter().map(|r| &r.figures).collect();
            let (median, min, max) = figures::spread(&f);
            let (policy, max_ptes_none) = match spec {
                ArmSpec::Collapse {
                    policy,
                    max_ptes_none,
                } => (Some(policy.name().to_owned()), Some(*max_ptes_none)),
                _ => (None, None),
            };
            ArmReport {
                name: spec.name(),
                kind: spec.kind(),
                policy,
                max_ptes_none,
                color: i,
                runs,
                median,
                min,
                max,
            }
        })
        .collect()
}
