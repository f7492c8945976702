//! `--sweep`: every policy over a list of max_ptes_none values, as a table, JSON lines, and
//! an SVG chart of coverage against bloat.

use std::{
    fmt::Write as _,
    fs,
    io::{self, Write},
    path::Path,
};

use collapse_common::policy::{Plan, Planner, Policy, Settings, merged_warns};

use super::{
    Job,
    error::PlanError,
    json::{PlanLine, SweepLine, json_line},
    report::header,
    tally::Tally,
};
use crate::{
    render::{Chart, ChartError, Series, Table, chart_svg, count, mib, size_name},
    snapshot::SnapshotRegion,
};

/// One policy at one max_ptes_none, over every region.
#[derive(Clone, Debug)]
pub struct SweepPoint {
    pub policy: Policy,
    pub max_ptes_none: u16,
    pub tally: Tally,
    /// `merged` with this value prints the kernel's warning.
    pub merged_warns: bool,
}

/// Policies in the given order, each over `values` ascending.
pub fn run(
    regions: &[SnapshotRegion],
    policies: &[Policy],
    values: &[u16],
    base: &Settings,
) -> Result<Vec<SweepPoint>, PlanError> {
    let mut points = Vec::with_capacity(policies.len() * values.len());
    for &policy in policies {
        for &n in values {
            let settings = base
                .with_max_ptes_none(n)
                .map_err(|source| PlanError::SweepValue { value: n, source })?;
            let mut tally = Tally::default();
            let planner = Planner::new(policy, settings);
            let mut p = Plan::EMPTY;
            for region in regions {
                planner.plan_into(&region.state, &mut p);
                tally.add_region(&region.state, p.decisions(), p.bloat_pages());
            }
            let merged_warns = policy == Policy::Merged && merged_warns(&settings);
            points.push(SweepPoint {
                policy,
                max_ptes_none: n,
                tally,
                merged_warns,
            });
        }
    }
    Ok(points)
}

/// JSON lines or the table.
pub fn write(
    out: &mut impl Write,
    job: &Job<'_>,
    points: &[SweepPoint],
    plot: Option<&Path>,
) -> io::Result<()> {
    let orders = job.settings.settings.orders();
    if job.json {
        for point in points {
            let t = &point.tally;
            let line = SweepLine {
                policy: point.policy.name(),
                max_ptes_none: point.max_ptes_none,
                totals: t.json(orders),
                merged_warns: point.merged_warns,
                warnings: job.warnings.clone(),
            };
            json_line(out, &PlanLine::Sweep(line))?;
        }
        return Ok(());
    }
    let mut text = header(job, false);
    let (regions, populated) = points.first().map_or((job.regions.len() as u64, 0), |p| {
        (p.tally.regions, p.tally.populated)
    });
    let _ = writeln!(
        text,
        "input     {}: {}, {:.2} MiB populated",
        job.input,
        count(regions, "region"),
        mib(populated)
    );
    text.push_str("\ncoverage: % of the populated memory that ends up in a folio of each size\n");
    let mut head = vec![
        "policy".to_owned(),
        "max_ptes_none".to_owned(),
        "all %".to_owned(),
    ];
    head.extend(orders.iter().map(|k| format!("{} %", size_name(k))));
    head.extend(["covered MiB", "bloat pages", "bloat MiB"].map(String::from));
    let mut table = Table::new(head);
    let mut marked = false;
    for point in points {
        let t = &point.tally;
        let mut name = point.policy.name().to_owned();
        if point.merged_warns {
            name.push('*');
            marked = true;
        }
        let mut cells = vec![
            name,
            point.max_ptes_none.to_string(),
            format!("{:.1}", 100.0 * t.coverage()),
        ];
        cells.extend(
            orders
                .iter()
                .map(|k| format!("{:.1}", 100.0 * t.coverage_at(k))),
        );
        cells.extend([
            format!("{:.2}", mib(t.covered_pages())),
            t.bloat.to_string(),
            format!("{:.2}", mib(t.bloat)),
        ]);
        table.row(cells);
    }
    text.push_str(&table.render("  "));
    if marked {
        text.push_str(
            "  * max_ptes_none is neither 0 nor 511: the kernel (7.2) warns and allows no empty PTEs below 2M\n",
        );
    }
    if let Some(path) = plot {
        let _ = writeln!(text, "\nchart written to {}", path.display());
    }
    out.write_all(text.as_bytes())
}

/// An SVG chart: coverage (% of populated) against bloat (MiB), one line per policy, each
/// point labelled with its max_ptes_none (a run of values that land on the same point gets
/// one label, `0-255`).
pub(crate) fn plot(
    points: &[SweepPoint],
    policies: &[Policy],
    path: &Path,
) -> Result<(), PlanError> {
    let svg = render_svg(points, policies)?;
    fs::write(path, svg).map_err(|source| PlanError::Plot {
        path: path.to_owned(),
        source,
    })
}

fn render_svg(points: &[SweepPoint], policies: &[Policy]) -> Result<String, ChartError> {
    let series: Vec<Series> = policies
        .iter()
        .enumerate()
        .map(|(i, &policy)| {
            let raw: Vec<(f64, f64, u16)> = points
                .iter()
                .filter(|p| p.policy == policy)
                .map(|p| {
                    (
                        mib(p.tally.bloat),
                        100.0 * p.tally.coverage(),
                        p.max_ptes_none,
                    )
                })
                .collect();
            let (points, labels) = labelled_points(&raw)
                .into_iter()
                .map(|(x, y, label)| ((x, y), label))
                .unzip();
            Series {
                name: policy.name().to_owned(),
                color: i,
                points,
                labels,
                ..Series::default()
            }
        })
        .collect();
    chart_svg(&Chart {
        title: "collapse plan --sweep: coverage against bloat",
        x_desc: "bloat (MiB of zero-filled pages)",
        y_desc: "coverage (% of populated memory)",
        x_range: None,
        y_range: Some((0.0, 105.0)),
        series: &series,
        size: (960, 640),
    })
}

/// Consecutive values on the same point merged into one labelled point.
fn labelled_points(series: &[(f64, f64, u16)]) -> Vec<(f64, f64, String)> {
    let mut out: Vec<(f64, f64, u16, u16)> = Vec::new();
    for &(x, y, n) in series {
        match out.last_mut() {
            Some(last) if last.0 == x && last.1 == y => last.3 = n,
            _ => out.push((x, y, n, n)),
        }
    }
    out.into_iter()
        .map(|(x, y, first, last)| {
            let label = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            (x, y, label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_merge_equal_points() {
        let series = [
            (0.0, 0.0, 0),
            (0.0, 0.0, 32),
            (1.0, 5.0, 64),
            (2.0, 5.0, 128),
            (2.0, 5.0, 511),
        ];
        let labels: Vec<String> = labelled_points(&series).into_iter().map(|p| p.2).collect();
        assert_eq!(labels, ["0-32", "64", "128-511"]);
    }
}
