//! The `run --json` stream (DESIGN.md): one tagged object per line. A `collapse` line per
//! attempted PMD collapse, an `advice` line per decision below PMD size (the first time it is
//! seen), a `pass` line per pass, and a `summary` line at the end. The keys are a contract.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::executor::{Advice, CollapseOutcome};

/// One line of the run stream.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunLine<'a> {
    Collapse(CollapseLine),
    Advice(AdviceLine),
    Pass(PassLine<'a>),
    Summary(SummaryLine<'a>),
}

impl RunLine<'_> {
    /// The line as JSON text (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("run lines serialise")
    }
}

#[derive(Debug, Serialize)]
pub struct CollapseLine {
    pub pid: i32,
    pub addr: String,
    pub order: u8,
    /// `collapsed`, `already_huge`, `skipped` or `failed`.
    pub result: &'static str,
    /// Why it was skipped or failed (an errno name for failures); null otherwise.
    pub reason: Option<&'static str>,
    /// What opted out (`prctl`, `nohugepage`, `vma`), for `opted-out` skips only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    pub latency_us: u64,
}

impl From<&CollapseOutcome> for CollapseLine {
    fn from(o: &CollapseOutcome) -> Self {
        Self {
            pid: o.pid,
            addr: format!("{:#x}", o.addr),
            order: o.order,
            result: o.result.result_name(),
            reason: o.result.reason(),
            detail: o.result.detail(),
            latency_us: o.latency.as_micros() as u64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AdviceLine {
    pub pid: i32,
    /// The PMD region.
    pub addr: String,
    /// First PTE of the range within the region, and its size.
    pub offset: u16,
    pub order: u8,
    pub size_kb: u64,
    /// What a 7.2+ khugepaged needs to build it: sysfs path → the value it must hold.
    pub sysfs: BTreeMap<String, String>,
}

impl From<&Advice> for AdviceLine {
    fn from(a: &Advice) -> Self {
        Self {
            pid: a.pid,
            addr: format!("{:#x}", a.addr),
            offset: a.offset,
            order: a.order,
            size_kb: a.size_kb(),
            sysfs: a
                .sysfs_needs()
                .iter()
                .map(|n| (n.path().display().to_string(), n.wanted()))
                .collect(),
        }
    }
}

/// A target's huge-page coverage now.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TargetLine {
    pub pid: i32,
    pub comm: String,
    pub anon_rss_bytes: u64,
    pub anon_huge_bytes: u64,
    /// AnonHugePages / RssAnon.
    pub coverage: f64,
    /// Its memory cgroup (`/kubepods.slice/...`), empty when unknown.
    pub cgroup: String,
}

/// A memory cgroup holding targets: its own `memory.stat` numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupLine {
    pub cgroup: String,
    pub processes: u64,
    pub anon_bytes: u64,
    pub anon_thp_bytes: u64,
    /// anon_thp / anon.
    pub coverage: f64,
}

#[derive(Debug, Serialize)]
pub struct PassLine<'a> {
    pub pass: u64,
    /// Why it ran: `start` (the first), `interval`, or `change` (a region changed by 64 PTEs or
    /// more since the last pass).
    pub trigger: &'static str,
    pub elapsed_s: f64,
    /// How long until the next pass (grows while collapses are slow).
    pub interval_s: f64,
    /// `some avg10` of /proc/pressure/memory; null without PSI.
    pub psi_avg10: Option<f64>,
    pub paused_by_psi: bool,
    /// Outcomes reported in this pass, by result.
    pub results: BTreeMap<&'static str, u64>,
    pub targets: &'a [TargetLine],
    /// The targets' memory cgroups.
    pub cgroups: &'a [CgroupLine],
}

#[derive(Debug, Serialize)]
pub struct SummaryLine<'a> {
    pub elapsed_s: f64,
    pub passes: u64,
    pub psi_pauses: u64,
    pub dry_run: bool,
    /// Reported outcomes by result (every result present, zeros included).
    pub results: BTreeMap<&'static str, u64>,
    /// Skips and failures by reason.
    pub reasons: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Opted-out skips by what opted out.
    pub opted_out: BTreeMap<&'static str, u64>,
    pub bytes_collapsed: u64,
    /// Empty PTEs of the collapsed regions (as the bitmaps had them): zero-filled pages.
    pub zero_filled_pages: u64,
    /// Distinct decisions below PMD size, by order.
    pub advice_per_order: BTreeMap<u8, u64>,
    pub latency_us: LatencyLine,
    pub targets: &'a [TargetLine],
}

#[derive(Debug, Default, Serialize)]
pub struct LatencyLine {
    pub count: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::errno::Errno;

    use super::*;
    use crate::executor::{CollapseResult, Failure, OptOut, SkipReason};

    #[test]
    fn collapse_line_has_the_keys_of_design_md() {
        let o = CollapseOutcome {
            pid: 42,
            addr: 0x7f3a_4000_0000,
            order: 9,
            result: CollapseResult::Failed(Failure::Errno(Errno::EAGAIN)),
            latency: Duration::from_micros(1234),
        };
        assert_eq!(
            RunLine::Collapse((&o).into()).to_json(),
            r#"{"type":"collapse","pid":42,"addr":"0x7f3a40000000","order":9,"result":"failed","reason":"EAGAIN","latency_us":1234}"#
        );
        let ok = CollapseOutcome {
            result: CollapseResult::Collapsed,
            ..o
        };
        let v: serde_json::Value =
            serde_json::from_str(&RunLine::Collapse((&ok).into()).to_json()).unwrap();
        assert_eq!(v["result"], "collapsed");
        assert!(v["reason"].is_null());
        let out = CollapseOutcome {
            result: CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Prctl)),
            ..o
        };
        let v: serde_json::Value =
            serde_json::from_str(&RunLine::Collapse((&out).into()).to_json()).unwrap();
        assert_eq!(
            (v["reason"].as_str(), v["detail"].as_str()),
            (Some("opted-out"), Some("prctl"))
        );
    }

    #[test]
    fn advice_line() {
        let a = Advice {
            pid: 7,
            addr: 0x4000_0000,
            offset: 16,
            order: 4,
            max_ptes_none: 255,
        };
        assert_eq!(
            RunLine::Advice((&a).into()).to_json(),
            r#"{"type":"advice","pid":7,"addr":"0x40000000","offset":16,"order":4,"size_kb":64,"sysfs":{"/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled":"not never","/sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none":"255"}}"#
        );
    }
}
