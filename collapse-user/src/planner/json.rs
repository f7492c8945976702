//! The `plan --json` stream (DESIGN.md): one tagged object per line, `region` lines in input
//! order, `pass` lines with `--passes`, then one `summary`; `sweep` lines for `--sweep`. The keys
//! are a contract: other tools read them.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use collapse_common::policy::OrderSet;
use serde::Serialize;

use super::{Job, settings::Origin, tally::Tally};
use crate::render::bytes;

/// One line of the plan stream.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlanLine<'a> {
    Region(RegionLine<'a>),
    Pass(PassLine),
    Summary(SummaryLine<'a>),
    Sweep(SweepLine),
}

#[derive(Serialize)]
pub struct RegionLine<'a> {
    pub pid: i32,
    pub addr: String,
    pub decisions: &'a [DecisionJson],
    pub bloat_pages: u32,
}

#[derive(Serialize)]
pub struct DecisionJson {
    pub offset: u16,
    pub order: u8,
}

/// The settings a result was computed with, as JSON.
#[derive(Serialize)]
pub struct SettingsJson {
    pub max_ptes_none: u16,
    pub max_ptes_swap: u16,
    pub max_ptes_shared: u16,
    pub orders: Vec<u8>,
    pub chunk_order: u8,
    /// `kernel` (THP sysfs), `defaults` (sysfs unreadable) or `flags` (sysfs not needed).
    pub source: &'static str,
    /// The flags that overrode the kernel's values.
    pub flags: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct SummaryLine<'a> {
    pub policy: &'static str,
    pub settings: SettingsJson,
    pub processes: usize,
    pub regions: u64,
    pub decisions: u64,
    #[serde(flatten)]
    pub totals: TotalsJson,
    /// With `--passes`: how many pass lines came before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes: Option<usize>,
    pub warnings: &'a [String],
}

#[derive(Serialize)]
pub struct PassLine {
    pub pass: usize,
    pub decisions: u64,
    pub decisions_per_order: BTreeMap<u8, u64>,
    pub pages_per_order: BTreeMap<u8, u64>,
    pub bloat_pages: u64,
    pub bloat_bytes: u64,
    pub fixed_point: bool,
}

#[derive(Serialize)]
pub struct SweepLine {
    pub policy: &'static str,
    pub max_ptes_none: u16,
    #[serde(flatten)]
    pub totals: TotalsJson,
    /// `merged` at this max_ptes_none gets the kernel's warning (no empty PTEs below 2M).
    pub merged_warns: bool,
    /// What the report says above the table (settings unreadable, no size enabled).
    pub warnings: Vec<String>,
}

/// The totals every JSON line of `collapse plan` carries (summary, sweep).
#[derive(Serialize)]
pub struct TotalsJson {
    pub decisions_per_order: BTreeMap<u8, u64>,
    pub pages_per_order: BTreeMap<u8, u64>,
    pub covered_pages: u64,
    pub populated_pages: u64,
    pub bloat_pages: u64,
    pub bloat_bytes: u64,
    /// Populated (present or swap) PTEs inside a decision, as a fraction of all populated ones.
    pub coverage: f64,
}

impl SettingsJson {
    pub(crate) fn new(job: &Job<'_>) -> Self {
        let s = &job.settings.settings;
        Self {
            max_ptes_none: s.max_ptes_none(),
            max_ptes_swap: s.max_ptes_swap(),
            max_ptes_shared: s.max_ptes_shared(),
            orders: s.orders().iter().collect(),
            chunk_order: s.chunk_order(),
            source: match job.settings.origin {
                Origin::Kernel => "kernel",
                Origin::Defaults { .. } => "defaults",
                Origin::Flags => "flags",
            },
            flags: job.settings.flags.clone(),
        }
    }
}

impl Tally {
    pub fn json(&self, orders: OrderSet) -> TotalsJson {
        TotalsJson {
            decisions_per_order: self.decisions_per_order(orders),
            pages_per_order: self.pages_per_order(orders),
            covered_pages: self.covered_pages(),
            populated_pages: self.populated,
            bloat_pages: self.bloat,
            bloat_bytes: bytes(self.bloat),
            coverage: self.coverage(),
        }
    }
}

/// One line of the stream and its newline.
pub(crate) fn json_line(out: &mut impl Write, line: &PlanLine<'_>) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}
