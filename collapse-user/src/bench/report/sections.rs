//! The parts of the report after the summary, as text both writers lay out: the title and
//! overview, the DAMON-style lines, the modelled outcome, the machine, the sysfs changes.

use std::collections::BTreeSet;

use super::format;
use crate::{
    bench::{ArmKind, BenchReport, DamonSummary, PerfMetric},
    render::{mib_of_bytes, size_name_kib},
};

pub(super) fn title(report: &BenchReport) -> String {
    format!("collapse bench: {}", report.workload.name)
}

/// One sentence on what ran, and how perf is measured.
pub(super) fn overview(report: &BenchReport) -> String {
    let w = &report.workload;
    let mut text = format!("Workload {} ({}", w.name, format::size(w.size_bytes));
    if w.quick {
        text.push_str(", --quick");
    }
    text.push(')');
    if !w.command.is_empty() {
        text.push_str(&format!(": `{}`", w.command.join(" ")));
    }
    let runs = report.runs.max(1);
    text.push_str(&if runs > 1 {
        format!("; {runs} runs of each arm, interleaved")
    } else {
        "; one run of each arm".to_owned()
    });
    let unit = if w.perf_unit.is_empty() {
        "ops/s"
    } else {
        &w.perf_unit
    };
    text.push_str(&match w.metric {
        PerfMetric::Throughput => format!("; perf is throughput in {unit}, higher is better"),
        PerfMetric::Runtime => format!("; perf is runtime in {unit}, lower is better"),
    });
    text.push_str(&format!(
        ". Started {}.",
        format::utc(report.started_unix_s)
    ));
    text
}

pub(super) const DAMON_LEGEND: &str = "As in DAMON's ethp evaluation, with khugepaged in the role \
    of THP: memory overhead removed = 1 − ovh(arm) / ovh(khugepaged), speedup kept = g(arm) / \
    g(khugepaged), where ovh is the peak RSS and g the perf gain, both against none.";

/// One collapse arm's DAMON-style figures.
pub(super) struct DamonLine {
    pub(super) arm: String,
    pub(super) text: String,
}

/// A line per collapse arm, in arm order: its two figures, or why one is not there.
pub(super) fn damon_lines(report: &BenchReport) -> Vec<DamonLine> {
    report
        .arms
        .iter()
        .filter(|a| a.kind == ArmKind::Collapse)
        .map(|arm| DamonLine {
            arm: arm.name.clone(),
            text: report
                .summary
                .iter()
                .find(|s| s.arm == arm.name)
                .map_or_else(
                    || "no DAMON-style figures in the report".to_owned(),
                    damon_text,
                ),
        })
        .collect()
}

fn damon_text(s: &DamonSummary) -> String {
    const REMOVED: &str = "of THP memory overhead removed";
    const KEPT: &str = "of THP speedup kept";
    let why = s.note.as_deref().unwrap_or("no figure");
    let part = |v: Option<f64>, what: &str| match v {
        Some(v) => format!("{} % {what}", format::percent(v)),
        None => format!("% {what} not computed: {why}"),
    };
    match (s.overhead_removed, s.speedup_kept) {
        (None, None) => format!("not computed: {why}"),
        (Some(_), Some(_)) => {
            let text = format!(
                "{}, {}",
                part(s.overhead_removed, REMOVED),
                part(s.speedup_kept, KEPT)
            );
            match &s.note {
                Some(note) => format!("{text} ({note})"),
                None => text,
            }
        }
        (removed, kept) => format!("{}; {}", part(removed, REMOVED), part(kept, KEPT)),
    }
}

pub(super) const MODELLED_LEGEND: &str = "Modelled over the workload's populated regions, not \
    run: MiB in folios of each size, bloat (zero-filled memory inside them), and coverage \
    (populated memory inside a folio of any size).";

pub(super) struct ModelledTable {
    pub(super) header: Vec<String>,
    pub(super) rows: Vec<Vec<String>>,
}

/// Per policy: MiB by folio size (every size any policy builds), bloat, coverage.
pub(super) fn modelled(report: &BenchReport) -> ModelledTable {
    let sizes: BTreeSet<u64> = report
        .modelled
        .iter()
        .flat_map(|m| m.bytes_by_size_kb.keys().copied())
        .collect();
    let header = ["policy".to_owned(), "max_ptes_none".to_owned()]
        .into_iter()
        .chain(
            sizes
                .iter()
                .map(|&kb| format!("{} (MiB)", size_name_kib(kb))),
        )
        .chain(["bloat (MiB)".to_owned(), "coverage (%)".to_owned()])
        .collect();
    let rows = report
        .modelled
        .iter()
        .map(|m| {
            [m.policy.clone(), m.max_ptes_none.to_string()]
                .into_iter()
                .chain(sizes.iter().map(|kb| {
                    let bytes = m.bytes_by_size_kb.get(kb).copied().unwrap_or(0);
                    format!("{:.1}", mib_of_bytes(bytes))
                }))
                .chain([
                    format!("{:.1}", mib_of_bytes(m.bloat_bytes)),
                    format::percent(m.coverage),
                ])
                .collect()
        })
        .collect();
    ModelledTable { header, rows }
}

/// The machine as `(what, value)` pairs.
pub(super) fn machine(report: &BenchReport) -> Vec<(&'static str, String)> {
    let m = &report.machine;
    let khugepaged = m
        .khugepaged
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("kernel", m.kernel.clone()),
        ("CPUs", m.cpus.to_string()),
        ("memory", format::size(m.mem_total_bytes)),
        ("THP enabled", format!("`{}`", m.thp_enabled)),
        ("THP defrag", format!("`{}`", m.thp_defrag)),
        (
            "khugepaged",
            if khugepaged.is_empty() {
                format::MISSING.to_owned()
            } else {
                khugepaged
            },
        ),
    ]
}

/// Whether every sysfs value was put back, and what to do about those that were not.
pub(super) fn restored_line(report: &BenchReport) -> String {
    let left: Vec<&str> = report
        .sysfs
        .iter()
        .filter(|c| !c.restored)
        .map(|c| c.path.as_str())
        .collect();
    if left.is_empty() {
        "Every value was restored when the bench ended.".to_owned()
    } else {
        format!(
            "NOT restored: {}. Write each one's `before` value back by hand.",
            left.join(", ")
        )
    }
}
