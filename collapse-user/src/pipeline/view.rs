//! What `collapse run` shows people: the live view (redrawn in place on a terminal, one line
//! per pass elsewhere) and the summary at the end; and the JSON of a pass and of the summary.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use collapse_common::policy::Planner;

use super::{
    Pipeline,
    json::{CgroupLine, LatencyLine, PassLine, RunLine, SummaryLine, TargetLine},
};
use crate::{
    executor::{CollapseOutcome, LatencyHistogram},
    render::{Table, count, mib_of_bytes, size_name},
};

/// Every result name, in the order they are shown.
const RESULTS: [&str; 4] = ["collapsed", "already_huge", "skipped", "failed"];

/// The last pass, as the views show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PassView {
    pub trigger: Trigger,
    pub elapsed: Duration,
    pub interval: Duration,
    pub psi_avg10: Option<f64>,
    pub paused_by_psi: Option<f64>,
    /// Outcomes reported in this pass, by result.
    pub results: BTreeMap<&'static str, u64>,
    /// Regions collapsed in this pass.
    pub collapsed_now: u64,
    pub targets: Vec<TargetLine>,
    pub cgroups: Vec<CgroupLine>,
}

/// Why a pass ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Trigger {
    /// The first pass, at start.
    #[default]
    Start,
    /// Its interval came.
    Interval,
    /// A traced region changed by `NOTICEABLE_PTES` or more since the last pass.
    Change,
}

impl Trigger {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Interval => "interval",
            Self::Change => "change",
        }
    }
}

impl PassView {
    pub(super) fn json(&self, pass: u64) -> RunLine<'_> {
        RunLine::Pass(PassLine {
            pass,
            trigger: self.trigger.name(),
            elapsed_s: self.elapsed.as_secs_f64(),
            interval_s: self.interval.as_secs_f64(),
            psi_avg10: self.psi_avg10,
            paused_by_psi: self.paused_by_psi.is_some(),
            results: self.results.clone(),
            targets: &self.targets,
            cgroups: &self.cgroups,
        })
    }
}

/// `policy pmd, max_ptes_none 255, sizes 2M`.
pub(super) fn policy_line(planner: &Planner) -> String {
    let s = planner.settings();
    let sizes: Vec<String> = s.orders().iter().map(size_name).collect();
    format!(
        "policy {}, max_ptes_none {}, sizes {}",
        planner.policy().name(),
        s.max_ptes_none(),
        if sizes.is_empty() {
            "none".to_owned()
        } else {
            sizes.join(",")
        }
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn latency(h: &LatencyHistogram) -> String {
    match (h.p50(), h.p99()) {
        (Some(p50), Some(p99)) => format!("p50 {}, p99 {}", ms(p50), ms(p99)),
        _ => "none yet".to_owned(),
    }
}

fn paused(v: &PassView, limit: f64) -> String {
    match (v.paused_by_psi, v.psi_avg10) {
        (Some(avg), _) => format!("PAUSED: memory PSI some avg10 {avg:.1} > {limit}"),
        (None, Some(avg)) => format!("running (memory PSI {avg:.1})"),
        (None, None) => "running (no PSI on this kernel: never pauses)".to_owned(),
    }
}

/// `skipped 5 (opted-out 2 [prctl 2], below-threshold 3)`.
fn with_reasons(p: &Pipeline, result: &str) -> String {
    format!("{} {}", result.replace('_', " "), counted(p, result))
}

/// `5 (opted-out 2 [prctl 2], below-threshold 3)`.
fn counted(p: &Pipeline, result: &str) -> String {
    let n = p.tally.count(result);
    let reasons = p.tally.reasons(result);
    if reasons.is_empty() {
        return n.to_string();
    }
    let detail: Vec<String> = reasons
        .iter()
        .map(|(why, k)| {
            if *why == "opted-out" && !p.tally.opted_out().is_empty() {
                let by: Vec<String> = p
                    .tally
                    .opted_out()
                    .iter()
                    .map(|(d, k)| format!("{d} {k}"))
                    .collect();
                format!("{why} {k} [{}]", by.join(", "))
            } else {
                format!("{why} {k}")
            }
        })
        .collect();
    format!("{n} ({})", detail.join(", "))
}

fn advice(p: &Pipeline) -> String {
    if p.tally.advice().is_empty() {
        return "none".to_owned();
    }
    p.tally
        .advice()
        .iter()
        .map(|(k, n)| format!("{} {n}", size_name(*k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn targets_table(targets: &[TargetLine]) -> String {
    let mut t = Table::new(["pid", "comm", "anon MiB", "THP MiB", "coverage"]);
    for target in targets {
        t.row([
            target.pid.to_string(),
            target.comm.clone(),
            format!("{:.1}", mib_of_bytes(target.anon_rss_bytes)),
            format!("{:.1}", mib_of_bytes(target.anon_huge_bytes)),
            format!("{:.1}%", 100.0 * target.coverage),
        ]);
    }
    t.render("  ")
}

/// Coverage by memory cgroup (its own memory.stat), when the targets span more than one
/// process.
fn cgroups_table(cgroups: &[CgroupLine]) -> String {
    let mut t = Table::new(["cgroup", "processes", "anon MiB", "THP MiB", "coverage"]);
    for c in cgroups {
        t.row([
            c.cgroup.clone(),
            c.processes.to_string(),
            format!("{:.1}", mib_of_bytes(c.anon_bytes)),
            format!("{:.1}", mib_of_bytes(c.anon_thp_bytes)),
            format!("{:.1}%", 100.0 * c.coverage),
        ]);
    }
    t.render("  ")
}

/// The live view, redrawn in place each pass.
pub(super) fn render_live(p: &Pipeline, v: &PassView) -> String {
    let stats = p.executor.stats();
    let rails = p.executor.rails();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "collapse run  {:>7.1}s  {}{}  interval {:.1}s",
        v.elapsed.as_secs_f64(),
        policy_line(&p.planner),
        if rails.dry_run { "  DRY RUN" } else { "" },
        v.interval.as_secs_f64()
    );
    let _ = writeln!(s, "  {}", paused(v, rails.psi_limit));
    let rate = v.collapsed_now as f64 / v.interval.as_secs_f64().max(1e-3);
    let _ = writeln!(
        s,
        "  collapses/s {rate:.1}   collapsed {:.1} MiB   latency {}   passes {} ({} paused by PSI)",
        mib_of_bytes(stats.bytes_collapsed()),
        latency(stats.latency()),
        p.tally.passes(),
        p.tally.psi_pauses()
    );
    let _ = writeln!(
        s,
        "  results: {}; {}; {}; {}",
        with_reasons(p, "collapsed"),
        with_reasons(p, "already_huge"),
        with_reasons(p, "skipped"),
        with_reasons(p, "failed")
    );
    let _ = writeln!(
        s,
        "  advice (below 2M, not executed: MADV_COLLAPSE is PMD-only): {}",
        advice(p)
    );
    s.push('\n');
    s.push_str(&targets_table(&v.targets));
    if !v.cgroups.is_empty() {
        s.push_str("\nBy memory cgroup:\n");
        s.push_str(&cgroups_table(&v.cgroups));
    }
    s
}

/// One line per pass, where the output is not a terminal.
pub(super) fn render_line(p: &Pipeline, v: &PassView) -> String {
    let stats = p.executor.stats();
    let mut s = format!(
        "{:>8.1}s pass {:<4} collapsed {} ({:.1} MiB) already_huge {} skipped {} failed {} advice {} latency {}",
        v.elapsed.as_secs_f64(),
        p.tally.passes(),
        p.tally.count("collapsed"),
        mib_of_bytes(stats.bytes_collapsed()),
        p.tally.count("already_huge"),
        p.tally.count("skipped"),
        p.tally.failed(),
        p.tally.advice().values().sum::<u64>(),
        latency(stats.latency()),
    );
    if let Some(avg) = v.paused_by_psi {
        let _ = write!(s, " PAUSED (PSI {avg:.1})");
    }
    for t in &v.targets {
        let _ = write!(s, " | {} {:.1}%", t.pid, 100.0 * t.coverage);
    }
    s
}

/// One reported outcome, for `--once` (people).
pub(super) fn render_outcome(o: &CollapseOutcome) -> String {
    format!(
        "{:>8} {:#016x}  {:<40} {}",
        o.pid,
        o.addr,
        o.result.to_string(),
        if o.latency.is_zero() {
            String::new()
        } else {
            ms(o.latency)
        }
    )
}

/// The summary at the end, for people.
pub(super) fn render_summary(p: &Pipeline, v: &PassView) -> String {
    let stats = p.executor.stats();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ncollapse run: {:.1} s, {} ({} paused by memory pressure){}",
        p.started.elapsed().as_secs_f64(),
        count(p.tally.passes(), "pass"),
        p.tally.psi_pauses(),
        if p.executor.rails().dry_run {
            "; dry run: nothing was collapsed"
        } else {
            ""
        }
    );
    let mut rows: Vec<(String, String)> = RESULTS
        .iter()
        .map(|r| (r.replace('_', " "), counted(p, r)))
        .collect();
    rows.push((
        "collapsed MiB".to_owned(),
        format!("{:.1}", mib_of_bytes(stats.bytes_collapsed())),
    ));
    rows.push(("latency".to_owned(), latency(stats.latency())));
    rows.push(("advice".to_owned(), advice(p)));
    for (label, text) in rows {
        let _ = writeln!(s, "  {label:<14} {text}");
    }
    if !p.tally.advice().is_empty() {
        let _ = writeln!(
            s,
            "  (advice: what a 7.2+ khugepaged would build with these settings; `--json` names the sysfs files)"
        );
    }
    if !v.targets.is_empty() {
        s.push('\n');
        s.push_str(&targets_table(&v.targets));
    }
    s
}

pub(super) fn summary_json<'a>(p: &Pipeline, v: &'a PassView) -> RunLine<'a> {
    let stats = p.executor.stats();
    let h = stats.latency();
    let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
    let mut reasons: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for r in ["skipped", "failed"] {
        reasons.insert(r, p.tally.reasons(r).into_iter().collect());
    }
    RunLine::Summary(SummaryLine {
        elapsed_s: p.started.elapsed().as_secs_f64(),
        passes: p.tally.passes(),
        psi_pauses: p.tally.psi_pauses(),
        dry_run: p.executor.rails().dry_run,
        results: RESULTS.iter().map(|&r| (r, p.tally.count(r))).collect(),
        reasons,
        opted_out: p.tally.opted_out().clone(),
        bytes_collapsed: stats.bytes_collapsed(),
        zero_filled_pages: p.tally.zero_filled_pages(),
        advice_per_order: p.tally.advice().clone(),
        latency_us: LatencyLine {
            count: h.count(),
            p50: us(h.p50()),
            p99: us(h.p99()),
            max: (h.count() > 0).then(|| h.max().as_micros() as u64),
        },
        targets: &v.targets,
    })
}
