//! A hand-built `BenchReport` for the report's tests: five arms (none, khugepaged,
//! khugepaged-fast, two collapse arms) of two runs with 40 samples each, modelled policies,
//! DAMON-style figures (one of them not computed, with its note), sysfs changes (one left
//! changed) and notes. The unit tests, the CLI test (collapse-user/tests/report_cli.rs) and the
//! screenshot test (tests/tests/report_html.rs) all include this file, so it names the library
//! as `collapse` (the crate is `extern crate self as collapse` in its own tests).

use std::{collections::BTreeMap, path::PathBuf};

use collapse::bench::{
    ArmFigures, ArmKind, ArmReport, ArmRun, BenchReport, BenchSample, DamonSummary, Machine,
    ModelledPolicy, PerfMetric, REPORT_VERSION, SysfsChange, WorkloadInfo,
};

const MIB: u64 = 1 << 20;
const SAMPLES: usize = 40;
/// The workload's memory once filled, in MiB (`none` grows to this and no more).
const FILLED_MIB: f64 = 512.0;

/// One arm's shape: coverage ramps linearly from 0 at `start_s` to `final_coverage` over
/// `ramp_s`, RSS grows by `extra_mib` as it does.
struct Shape {
    name: &'static str,
    kind: ArmKind,
    policy: Option<(&'static str, u16)>,
    final_coverage: f64,
    start_s: f64,
    ramp_s: f64,
    extra_mib: f64,
    perf: [f64; 2],
    zero_filled_pages: Option<u64>,
    cpu_khugepaged_s: f64,
    cpu_collapse_s: Option<f64>,
}

const SHAPES: [Shape; 5] = [
    Shape {
        name: "none",
        kind: ArmKind::None,
        policy: None,
        final_coverage: 0.0,
        start_s: 0.0,
        ramp_s: 1.0,
        extra_mib: 0.0,
        perf: [1.0e6, 1.0e6],
        zero_filled_pages: None,
        cpu_khugepaged_s: 0.0,
        cpu_collapse_s: None,
    },
    Shape {
        name: "khugepaged",
        kind: ArmKind::Khugepaged,
        policy: None,
        final_coverage: 0.92,
        start_s: 2.0,
        ramp_s: 6.0,
        extra_mib: 88.0,
        perf: [1.14e6, 1.16e6],
        zero_filled_pages: None,
        cpu_khugepaged_s: 0.41,
        cpu_collapse_s: None,
    },
    Shape {
        name: "khugepaged-fast",
        kind: ArmKind::KhugepagedFast,
        policy: None,
        final_coverage: 0.95,
        start_s: 1.0,
        ramp_s: 2.5,
        extra_mib: 90.0,
        perf: [1.16e6, 1.17e6],
        zero_filled_pages: None,
        cpu_khugepaged_s: 1.23,
        cpu_collapse_s: None,
    },
    Shape {
        name: "collapse seed n=255",
        kind: ArmKind::Collapse,
        policy: Some(("seed", 255)),
        final_coverage: 0.85,
        start_s: 0.5,
        ramp_s: 1.5,
        extra_mib: 20.0,
        perf: [1.11e6, 1.13e6],
        zero_filled_pages: Some(5120),
        cpu_khugepaged_s: 0.01,
        cpu_collapse_s: Some(0.31),
    },
    Shape {
        name: "collapse scaled n=128",
        kind: ArmKind::Collapse,
        policy: Some(("scaled", 128)),
        final_coverage: 0.70,
        start_s: 0.5,
        ramp_s: 1.2,
        extra_mib: 8.0,
        perf: [1.05e6, 1.07e6],
        zero_filled_pages: Some(2048),
        cpu_khugepaged_s: 0.01,
        cpu_collapse_s: Some(0.27),
    },
];

fn samples(shape: &Shape, run: usize) -> Vec<BenchSample> {
    // The second run starts a quarter second later and covers 2 % less.
    let (delay, scale) = if run == 0 { (0.0, 1.0) } else { (0.25, 0.98) };
    (0..SAMPLES)
        .map(|i| {
            let t_s = i as f64 * 0.25;
            let filled = (t_s / 2.0).min(1.0);
            let ramp = ((t_s - shape.start_s - delay) / shape.ramp_s).clamp(0.0, 1.0);
            let coverage = shape.final_coverage * scale * ramp;
            let rss_mib = FILLED_MIB * filled + shape.extra_mib * ramp;
            let anon_rss_bytes = (rss_mib * MIB as f64) as u64;
            let anon_huge_bytes = (coverage * anon_rss_bytes as f64) as u64;
            BenchSample {
                t_s,
                anon_huge_bytes,
                anon_rss_bytes,
                coverage: if anon_rss_bytes == 0 {
                    0.0
                } else {
                    anon_huge_bytes as f64 / anon_rss_bytes as f64
                },
                nr_anon_by_size_kb: BTreeMap::from([(2048, anon_huge_bytes / (2 * MIB))]),
                collapses: anon_huge_bytes / (2 * MIB),
                failures: if shape.kind == ArmKind::Collapse && ramp > 0.0 {
                    BTreeMap::from([("EAGAIN".to_owned(), 1)])
                } else {
                    BTreeMap::new()
                },
                progress: (t_s / 9.75).min(1.0),
            }
        })
        .collect()
}

/// The first sample at which coverage reached `share` of `of`.
fn time_to(samples: &[BenchSample], share: f64, of: f64) -> Option<f64> {
    if of <= 0.0 {
        return None;
    }
    samples
        .iter()
        .find(|s| s.coverage >= share * of)
        .map(|s| s.t_s)
}

fn figures(
    shape: &Shape,
    run: usize,
    samples: &[BenchSample],
    best_final: f64,
    none_peak: u64,
) -> ArmFigures {
    let final_coverage = samples.last().map_or(0.0, |s| s.coverage);
    let peak = samples.iter().map(|s| s.anon_rss_bytes).max().unwrap_or(0);
    let overhead = peak as i64 - none_peak as i64;
    let perf = shape.perf[run];
    ArmFigures {
        perf: Some(perf),
        time_to_50_s: time_to(samples, 0.5, final_coverage),
        time_to_90_s: time_to(samples, 0.9, final_coverage),
        time_to_90_of_best_s: time_to(samples, 0.9, best_final),
        final_coverage: Some(final_coverage),
        peak_rss_bytes: Some(peak),
        overhead_bytes: Some(overhead),
        overhead_fraction: Some(overhead as f64 / none_peak as f64),
        zero_filled_pages: shape.zero_filled_pages,
        gain: Some(perf / SHAPES[0].perf[run] - 1.0),
        cpu_khugepaged_s: Some(shape.cpu_khugepaged_s + 0.02 * run as f64),
        cpu_collapse_s: shape.cpu_collapse_s,
        checksum_ok: Some(true),
    }
}

/// Median, min and max of two runs' figures (the median of two is their mean).
fn combine(a: &ArmFigures, b: &ArmFigures) -> [ArmFigures; 3] {
    fn f(a: Option<f64>, b: Option<f64>) -> [Option<f64>; 3] {
        match (a, b) {
            (Some(a), Some(b)) => [Some((a + b) / 2.0), Some(a.min(b)), Some(a.max(b))],
            _ => [None; 3],
        }
    }
    let u = |a: Option<u64>, b: Option<u64>| {
        f(a.map(|v| v as f64), b.map(|v| v as f64)).map(|v| v.map(|v| v as u64))
    };
    let i = |a: Option<i64>, b: Option<i64>| {
        f(a.map(|v| v as f64), b.map(|v| v as f64)).map(|v| v.map(|v| v as i64))
    };
    let perf = f(a.perf, b.perf);
    let t50 = f(a.time_to_50_s, b.time_to_50_s);
    let t90 = f(a.time_to_90_s, b.time_to_90_s);
    let t90b = f(a.time_to_90_of_best_s, b.time_to_90_of_best_s);
    let cov = f(a.final_coverage, b.final_coverage);
    let peak = u(a.peak_rss_bytes, b.peak_rss_bytes);
    let ovh = i(a.overhead_bytes, b.overhead_bytes);
    let ovhf = f(a.overhead_fraction, b.overhead_fraction);
    let zero = u(a.zero_filled_pages, b.zero_filled_pages);
    let gain = f(a.gain, b.gain);
    let cpuk = f(a.cpu_khugepaged_s, b.cpu_khugepaged_s);
    let cpuc = f(a.cpu_collapse_s, b.cpu_collapse_s);
    let ok = a.checksum_ok.zip(b.checksum_ok).map(|(a, b)| a && b);
    [0, 1, 2].map(|k| ArmFigures {
        perf: perf[k],
        time_to_50_s: t50[k],
        time_to_90_s: t90[k],
        time_to_90_of_best_s: t90b[k],
        final_coverage: cov[k],
        peak_rss_bytes: peak[k],
        overhead_bytes: ovh[k],
        overhead_fraction: ovhf[k],
        zero_filled_pages: zero[k],
        gain: gain[k],
        cpu_khugepaged_s: cpuk[k],
        cpu_collapse_s: cpuc[k],
        checksum_ok: ok,
    })
}

/// The sample report.
pub fn sample_report() -> BenchReport {
    let best_final = SHAPES.iter().map(|s| s.final_coverage).fold(0.0, f64::max);
    let none_peaks: Vec<u64> = (0..2)
        .map(|run| {
            samples(&SHAPES[0], run)
                .iter()
                .map(|s| s.anon_rss_bytes)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let arms: Vec<ArmReport> = SHAPES
        .iter()
        .enumerate()
        .map(|(color, shape)| {
            let runs: Vec<ArmRun> = (0..2)
                .map(|run| {
                    let samples = samples(shape, run);
                    let figures = figures(shape, run, &samples, best_final, none_peaks[run]);
                    ArmRun {
                        run: run as u32 + 1,
                        samples,
                        figures,
                    }
                })
                .collect();
            let [median, min, max] = combine(&runs[0].figures, &runs[1].figures);
            ArmReport {
                name: shape.name.to_owned(),
                kind: shape.kind,
                policy: shape.policy.map(|(p, _)| p.to_owned()),
                max_ptes_none: shape.policy.map(|(_, n)| n),
                color,
                runs,
                median,
                min,
                max,
            }
        })
        .collect();
    let khugepaged = &arms[1].median;
    let summary = arms[3..]
        .iter()
        .map(|arm| {
            let removed = arm
                .median
                .overhead_bytes
                .zip(khugepaged.overhead_bytes)
                .map(|(o, k)| 1.0 - o as f64 / k as f64);
            let kept = arm.median.gain.zip(khugepaged.gain).map(|(g, k)| g / k);
            if arm.name.contains("scaled") {
                DamonSummary {
                    arm: arm.name.clone(),
                    overhead_removed: removed,
                    speedup_kept: None,
                    note: Some(
                        "g(khugepaged) is within noise (the runs of scaled spread wider)"
                            .to_owned(),
                    ),
                }
            } else {
                DamonSummary {
                    arm: arm.name.clone(),
                    overhead_removed: removed,
                    speedup_kept: kept,
                    note: None,
                }
            }
        })
        .collect();
    let modelled =
        |policy: &str, n: u16, sizes: &[(u64, u64)], bloat: u64, coverage| ModelledPolicy {
            policy: policy.to_owned(),
            max_ptes_none: n,
            bytes_by_size_kb: sizes.iter().map(|&(kb, mib)| (kb, mib * MIB)).collect(),
            bloat_bytes: bloat * MIB,
            coverage,
        };
    BenchReport {
        version: REPORT_VERSION,
        started_unix_s: 1_709_210_096,
        machine: Machine {
            kernel: "6.1.0-31-amd64".to_owned(),
            cpus: 2,
            mem_total_bytes: 24 << 30,
            thp_enabled: "always [madvise] never".to_owned(),
            thp_defrag: "always defer defer+madvise [madvise] never".to_owned(),
            khugepaged: BTreeMap::from([
                ("max_ptes_none".to_owned(), 511),
                ("pages_to_scan".to_owned(), 4096),
                ("scan_sleep_millisecs".to_owned(), 10000),
            ]),
        },
        workload: WorkloadInfo {
            name: "mixed".to_owned(),
            command: Vec::new(),
            size_bytes: 512 * MIB,
            quick: false,
            metric: PerfMetric::Throughput,
            perf_unit: "lookups/s".to_owned(),
        },
        runs: 2,
        arms,
        modelled: vec![
            modelled("seed", 255, &[(64, 96), (2048, 400)], 24, 0.97),
            modelled("scaled", 128, &[(16, 8), (64, 64), (2048, 380)], 10, 0.9),
            modelled("pmd", 511, &[(2048, 512)], 88, 1.0),
        ],
        summary,
        sysfs: vec![
            SysfsChange {
                path: "/sys/kernel/mm/transparent_hugepage/enabled".to_owned(),
                from: "madvise".to_owned(),
                to: "always".to_owned(),
                restored: true,
            },
            SysfsChange {
                path: "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
                    .to_owned(),
                from: "10000".to_owned(),
                to: "0".to_owned(),
                restored: true,
            },
            SysfsChange {
                path: "/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled".to_owned(),
                from: "never".to_owned(),
                to: "inherit".to_owned(),
                restored: false,
            },
        ],
        notes: vec![
            "khugepaged-mthp skipped: this kernel (6.1) cannot collapse to mTHP sizes".to_owned(),
            "arms ran interleaved: none, khugepaged, khugepaged-fast, collapse seed n=255, collapse scaled n=128, twice".to_owned(),
        ],
    }
}

/// A directory of its own under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("collapse-report-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
