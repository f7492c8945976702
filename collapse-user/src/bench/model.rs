//! `BenchReport`, the bench's hand-off to the report files: everything `report.json` holds,
//! and all that `collapse report DIR` needs to draw `report.md` and `report.html` again.
//! Definitions follow DESIGN.md "Bench metrics".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bumped when a key changes meaning or goes away (new keys do not bump it).
pub const REPORT_VERSION: u32 = 1;

/// One `collapse bench`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub version: u32,
    /// Seconds since the Unix epoch when the bench started.
    pub started_unix_s: u64,
    pub machine: Machine,
    pub workload: WorkloadInfo,
    /// Runs of each arm (`--runs`); arms were interleaved A B C A B C ...
    pub runs: u32,
    /// In the order they ran; `ArmReport::color` is the palette index every chart uses.
    pub arms: Vec<ArmReport>,
    /// Per policy: what it would build by size, and its bloat (modelled, not run).
    pub modelled: Vec<ModelledPolicy>,
    /// Per `collapse` arm: DAMON-style figures against `none` and `khugepaged`.
    pub summary: Vec<DamonSummary>,
    /// Every sysfs value the bench changed, and whether it was restored.
    pub sysfs: Vec<SysfsChange>,
    /// Things a reader should know (noise, skipped arms, a kernel without mTHP collapse).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: u32,
    pub mem_total_bytes: u64,
    /// `transparent_hugepage/enabled` and `defrag` before the bench.
    pub thp_enabled: String,
    pub thp_defrag: String,
    /// khugepaged's settings before the bench (`pages_to_scan`, `scan_sleep_millisecs`, ...).
    pub khugepaged: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// `mixed`, `sparse-stride`, `redis`, or `command`.
    pub name: String,
    /// The command line for `command` (and the server and load for `redis`).
    pub command: Vec<String>,
    /// Memory the workload maps, in bytes (`--size`).
    pub size_bytes: u64,
    pub quick: bool,
    /// What `perf` measures: `throughput` (ops/s, higher is better) or `runtime` (seconds,
    /// lower is better).
    pub metric: PerfMetric,
    /// The unit of `perf` for people: `lookups/s`, `GET/s`, `s`.
    pub perf_unit: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerfMetric {
    #[default]
    Throughput,
    Runtime,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArmKind {
    /// No collapse, THP off for the workload.
    #[default]
    None,
    /// Kernel defaults; the workload registered with MADV_HUGEPAGE (THP `always` for commands).
    Khugepaged,
    /// khugepaged with `scan_sleep_millisecs` 0.
    KhugepagedFast,
    /// khugepaged collapsing to mTHP sizes (7.2+ kernels only).
    KhugepagedMthp,
    /// `collapse run` with a policy and max_ptes_none.
    Collapse,
}

/// One arm over all its runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    /// `none`, `khugepaged`, `khugepaged-fast`, `collapse seed n=255`, ...
    pub name: String,
    pub kind: ArmKind,
    /// For `collapse` arms.
    pub policy: Option<String>,
    pub max_ptes_none: Option<u16>,
    /// Palette index: the same colour in every chart.
    pub color: usize,
    pub runs: Vec<ArmRun>,
    /// The median of each figure over the runs.
    pub median: ArmFigures,
    /// The smallest and largest of each figure over the runs.
    pub min: ArmFigures,
    pub max: ArmFigures,
}

/// One run of one arm.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmRun {
    /// 1-based.
    pub run: u32,
    /// About 4 per second, from the arm's start.
    pub samples: Vec<BenchSample>,
    pub figures: ArmFigures,
}

/// What the sampler saw at one instant of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchSample {
    /// Seconds since the arm started.
    pub t_s: f64,
    /// Summed over the workload's processes (smaps_rollup, status).
    pub anon_huge_bytes: u64,
    pub anon_rss_bytes: u64,
    /// anon_huge / anon_rss.
    pub coverage: f64,
    /// `hugepages-<kB>kB/stats/nr_anon`, machine-wide, by size in KiB (mTHP included).
    pub nr_anon_by_size_kb: BTreeMap<u64, u64>,
    /// Collapses so far in this run: `collapse run`'s, or khugepaged's (vmstat
    /// thp_collapse_alloc delta).
    pub collapses: u64,
    /// Failed collapses so far, by reason (errno names, khugepaged's scan results).
    pub failures: BTreeMap<String, u64>,
    /// The workload's own progress, 0..1.
    pub progress: f64,
}

/// The figures of one run (or a median, min or max of them). `None`: not reached, not
/// applicable, or not measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmFigures {
    /// Throughput (ops/s) or runtime (s), as `WorkloadInfo::metric` says.
    pub perf: Option<f64>,
    /// Seconds until coverage reached 50 % / 90 % of this arm's final coverage.
    pub time_to_50_s: Option<f64>,
    pub time_to_90_s: Option<f64>,
    /// Seconds until coverage reached 90 % of the best arm's final coverage.
    pub time_to_90_of_best_s: Option<f64>,
    pub final_coverage: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// peak RSS − peak RSS of `none` (DESIGN.md ovh), bytes; and as a fraction of RSS(none).
    pub overhead_bytes: Option<i64>,
    pub overhead_fraction: Option<f64>,
    /// Zero-filled pages inside collapsed ranges, counted from the bitmaps before the
    /// collapse (`collapse` arms; khugepaged's are not seen).
    pub zero_filled_pages: Option<u64>,
    /// (perf − perf(none)) / perf(none), with perf as throughput or 1 / runtime.
    pub gain: Option<f64>,
    /// CPU seconds over the arm: khugepaged's kernel thread, and the `collapse` process.
    pub cpu_khugepaged_s: Option<f64>,
    pub cpu_collapse_s: Option<f64>,
    /// The workload verified its data at the end.
    pub checksum_ok: Option<bool>,
}

/// What one policy would build, modelled over the workload's populated regions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelledPolicy {
    pub policy: String,
    pub max_ptes_none: u16,
    /// Bytes in folios of each size (KiB).
    pub bytes_by_size_kb: BTreeMap<u64, u64>,
    pub bloat_bytes: u64,
    /// Populated memory inside a folio of any size.
    pub coverage: f64,
}

/// DAMON's ethp evaluation terms for one `collapse` arm, against `none` and `khugepaged`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DamonSummary {
    pub arm: String,
    /// 1 − ovh(arm) / ovh(khugepaged); `None` when ovh(khugepaged) is within noise.
    pub overhead_removed: Option<f64>,
    /// g(arm) / g(khugepaged); `None` when g(khugepaged) is within noise.
    pub speedup_kept: Option<f64>,
    /// Why a figure is `None`.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysfsChange {
    pub path: String,
    pub from: String,
    pub to: String,
    pub restored: bool,
}
