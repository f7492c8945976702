//! One policy over every region: the human report and the JSON lines of DESIGN.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, Write},
};

use collapse_common::policy::{Decision, Plan, Planner, Policy};

use super::{
    Job, creep,
    json::{DecisionJson, PlanLine, RegionLine, SettingsJson, SummaryLine, json_line},
    settings::Origin,
    tally::Tally,
};
use crate::render::{Table, count, mib, size_name};

/// The plan of `job` (and, with `passes`, the creep model) to `out`, as JSON lines or as the
/// report.
pub(crate) fn write(out: &mut impl Write, job: &Job<'_>, passes: Option<u32>) -> io::Result<()> {
    let policy = job.settings.policy;
    let settings = &job.settings.settings;
    let mut total = Tally::default();
    let mut per_pid: BTreeMap<i32, Tally> = BTreeMap::new();
    let mut decisions_json = Vec::new();
    let planner = Planner::new(policy, *settings);
    let mut p = Plan::EMPTY;
    for region in job.regions {
        planner.plan_into(&region.state, &mut p);
        total.add_region(&region.state, p.decisions(), p.bloat_pages());
        per_pid.entry(region.pid).or_default().add_region(
            &region.state,
            p.decisions(),
            p.bloat_pages(),
        );
        if job.json {
            decisions_json.clear();
            decisions_json.extend(
                p.decisions()
                    .iter()
                    .map(|&Decision { offset, order }| DecisionJson { offset, order }),
            );
            let line = RegionLine {
                pid: region.pid,
                addr: format!("{:#x}", region.addr),
                decisions: &decisions_json,
                bloat_pages: p.bloat_pages(),
            };
            json_line(out, &PlanLine::Region(line))?;
        }
    }
    let creep_rows = passes.map(|n| creep::run(job.regions, policy, settings, n));

    if job.json {
        if let Some(rows) = &creep_rows {
            creep::write_json(out, rows, settings.orders())?;
        }
        let orders = settings.orders();
        let summary = SummaryLine {
            policy: policy.name(),
            settings: SettingsJson::new(job),
            processes: per_pid.len(),
            regions: total.regions,
            decisions: total.decisions(),
            totals: total.json(orders),
            passes: creep_rows.as_ref().map(Vec::len),
            warnings: &job.warnings,
        };
        return json_line(out, &PlanLine::Summary(summary));
    }

    let mut text = header(job, true);
    text.push_str(&format!(
        "input     {}: {}, {}, {:.2} MiB populated\n",
        job.input,
        count(total.regions, "region"),
        count(per_pid.len() as u64, "process"),
        mib(total.populated),
    ));
    for (pid, tally) in &per_pid {
        text.push_str(&format!(
            "\npid {pid}  {}, {:.2} MiB populated\n",
            count(tally.regions, "region"),
            mib(tally.populated)
        ));
        text.push_str(&order_table(tally, job).render("  "));
    }
    text.push_str(&format!(
        "\ntotal  {}, {}, {:.2} MiB populated\n",
        count(per_pid.len() as u64, "process"),
        count(total.regions, "region"),
        mib(total.populated),
    ));
    text.push_str(&order_table(&total, job).render("  "));
    if let Some(rows) = &creep_rows {
        text.push('\n');
        text.push_str(&creep::render(rows, job));
    }
    out.write_all(text.as_bytes())
}

/// Settings (and where they came from) and warnings: the top of every report. Without
/// `with_policy` (the sweep varies policy and max_ptes_none), the rest and the seed chunk.
pub(crate) fn header(job: &Job<'_>, with_policy: bool) -> String {
    let s = &job.settings.settings;
    let orders: Vec<String> = s.orders().iter().map(size_name).collect();
    let orders = if orders.is_empty() {
        "none".to_owned()
    } else {
        orders.join(",")
    };
    let mut line = Vec::new();
    if with_policy {
        line.push(format!("policy {}", job.settings.policy.name()));
        line.push(format!("max_ptes_none {}", s.max_ptes_none()));
    }
    line.push(format!("max_ptes_swap {}", s.max_ptes_swap()));
    line.push(format!("max_ptes_shared {}", s.max_ptes_shared()));
    line.push(format!("orders {orders}"));
    if !with_policy || job.settings.policy == Policy::Seed {
        line.push(format!("chunk {} (seed)", size_name(s.chunk_order())));
    }
    let mut text = format!("settings  {}\n", line.join(", "));
    let flags = job.settings.flags.join(", ");
    let source = match (&job.settings.origin, flags.is_empty()) {
        (Origin::Flags, _) => "from the command line".to_owned(),
        (Origin::Kernel, true) => "from the kernel (THP sysfs)".to_owned(),
        (Origin::Kernel, false) => format!("from the kernel (THP sysfs), overridden by {flags}"),
        (Origin::Defaults { .. }, true) => {
            "the kernel's defaults (THP sysfs unreadable)".to_owned()
        }
        (Origin::Defaults { .. }, false) => {
            format!("the kernel's defaults (THP sysfs unreadable), overridden by {flags}")
        }
    };
    let _ = writeln!(text, "          {source}");
    for warning in &job.warnings {
        let _ = writeln!(text, "warning   {warning}");
    }
    text
}

/// Per enabled size: decisions, memory in those folios, share of the populated memory they
/// hold, and the zero-filled pages they add.
fn order_table(tally: &Tally, job: &Job<'_>) -> Table {
    let mut table = Table::new([
        "size",
        "decisions",
        "covered MiB",
        "% of populated",
        "bloat pages",
        "bloat MiB",
    ]);
    // Enabled orders, plus any order the engine chose anyway (it never should).
    let orders: BTreeSet<u8> = job
        .settings
        .settings
        .orders()
        .iter()
        .chain((0..=9).filter(|&k| tally.order(k).decisions > 0))
        .collect();
    for k in orders {
        let t = tally.order(k);
        let bloat = t.pages - t.occupied;
        table.row([
            size_name(k),
            t.decisions.to_string(),
            format!("{:.2}", mib(t.pages)),
            format!("{:.1}", 100.0 * tally.coverage_at(k)),
            bloat.to_string(),
            format!("{:.2}", mib(bloat)),
        ]);
    }
    table.row([
        "all".to_owned(),
        tally.decisions().to_string(),
        format!("{:.2}", mib(tally.covered_pages())),
        format!("{:.1}", 100.0 * tally.coverage()),
        tally.bloat.to_string(),
        format!("{:.2}", mib(tally.bloat)),
    ]);
    table
}
