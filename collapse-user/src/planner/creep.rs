//! `--passes N`: the creep model of policies.md, summed over every region.

use std::io::{self, Write};

use collapse_common::policy::{Creep, OrderSet, Policy, Settings};

use super::{
    Job,
    json::{PassLine, PlanLine, json_line},
    tally::Tally,
};
use crate::{
    render::{Table, bytes, count, mib, size_name, yes_no},
    snapshot::SnapshotRegion,
};

/// One pass over every region.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PassRow {
    /// 1-based.
    pub pass: usize,
    /// The decisions new in this pass, counted against the original occupancy.
    pub tally: Tally,
    /// Zero-filled pages after this pass, against the original occupancy.
    pub bloat_total: u64,
    /// Every region is at a fixed point: this pass changed nothing.
    pub fixed_point: bool,
}

/// Up to `max_passes` passes of `policy` over each region's own output. Stops early after the
/// first pass at which every region is at a fixed point (that pass is the last row).
pub(crate) fn run(
    regions: &[SnapshotRegion],
    policy: Policy,
    settings: &Settings,
    max_passes: u32,
) -> Vec<PassRow> {
    let mut rows: Vec<PassRow> = Vec::new();
    // A region that reaches its fixed point at pass i keeps its bloat, and stays fixed, in
    // every later pass: added from index i + 1 on by a running sum, rather than region by
    // region into every later row.
    let mut carry_bloat: Vec<u64> = Vec::new();
    let mut carry_fixed: Vec<usize> = Vec::new();
    let mut fixed_here: Vec<usize> = Vec::new();
    for region in regions {
        let occ = region.state.occupied();
        let mut creep = Creep::new(&region.state);
        for i in 0..max_passes as usize {
            let pass = creep.pass(policy, settings);
            if rows.len() <= i {
                rows.push(PassRow {
                    pass: i + 1,
                    ..PassRow::default()
                });
                carry_bloat.push(0);
                carry_fixed.push(0);
                fixed_here.push(0);
            }
            let row = &mut rows[i];
            row.tally.add_decisions(&occ, pass.plan.decisions());
            row.bloat_total += u64::from(pass.bloat_pages_total);
            if pass.fixed_point {
                fixed_here[i] += 1;
                if i + 1 >= carry_bloat.len() {
                    carry_bloat.resize(i + 2, 0);
                    carry_fixed.resize(i + 2, 0);
                }
                carry_bloat[i + 1] += u64::from(pass.bloat_pages_total);
                carry_fixed[i + 1] += 1;
                break;
            }
        }
    }
    let (mut bloat, mut fixed) = (0, 0);
    for (i, row) in rows.iter_mut().enumerate() {
        bloat += carry_bloat[i];
        fixed += carry_fixed[i];
        row.bloat_total += bloat;
        row.fixed_point = fixed + fixed_here[i] == regions.len();
    }
    if let Some(last) = rows.iter().position(|r| r.fixed_point) {
        rows.truncate(last + 1);
    }
    rows
}

pub(crate) fn write_json(
    out: &mut impl Write,
    rows: &[PassRow],
    orders: OrderSet,
) -> io::Result<()> {
    for row in rows {
        json_line(
            out,
            &PlanLine::Pass(PassLine {
                pass: row.pass,
                decisions: row.tally.decisions(),
                decisions_per_order: row.tally.decisions_per_order(orders),
                pages_per_order: row.tally.pages_per_order(orders),
                bloat_pages: row.bloat_total,
                bloat_bytes: bytes(row.bloat_total),
                fixed_point: row.fixed_point,
            }),
        )?;
    }
    Ok(())
}

/// The creep table: per pass the new decisions per size and the bloat so far.
pub(crate) fn render(rows: &[PassRow], job: &Job<'_>) -> String {
    let orders = job.settings.settings.orders();
    let mut text = format!(
        "creep  {} applied to its own output: {}\n",
        job.settings.policy.name(),
        count(rows.len() as u64, "pass")
    );
    if rows.is_empty() {
        text.push_str("  no regions\n");
        return text;
    }
    let mut header = vec!["pass".to_owned(), "new decisions".to_owned()];
    header.extend(orders.iter().map(size_name));
    header.extend(["new MiB", "bloat pages", "bloat MiB", "fixed point"].map(String::from));
    let mut table = Table::new(header);
    for row in rows {
        let mut cells = vec![row.pass.to_string(), row.tally.decisions().to_string()];
        cells.extend(
            orders
                .iter()
                .map(|k| row.tally.order(k).decisions.to_string()),
        );
        cells.extend([
            format!("{:.2}", mib(row.tally.covered_pages())),
            row.bloat_total.to_string(),
            format!("{:.2}", mib(row.bloat_total)),
            yes_no(row.fixed_point).to_owned(),
        ]);
        table.row(cells);
    }
    text.push_str(&table.render("  "));
    text.push_str("  (bloat: zero-filled pages so far, against the original occupancy)\n");
    let last = rows.last().expect("not empty");
    if last.fixed_point {
        text.push_str(&format!("  fixed point after pass {}\n", last.pass));
    } else {
        text.push_str(&format!("  no fixed point within {} passes\n", last.pass));
    }
    text
}
