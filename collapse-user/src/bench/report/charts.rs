//! The report's three charts, one colour per arm in each (`ArmReport::color`): coverage over
//! time, anon RSS over time, and bloat against speedup. Every run of an arm is drawn: the
//! median run (the one whose perf is nearest the arm's median) bold and named in the legend,
//! the others thin and faint behind it.

use crate::{
    bench::{ArmReport, BenchReport, BenchSample},
    render::{Chart, ChartError, Mark, Series, Spread, chart_svg, mib_of_bytes},
};

pub(super) const SIZE: (u32, u32) = (1100, 440);

/// One chart: what it shows, and its SVG.
pub(super) struct ReportChart {
    pub(super) title: &'static str,
    pub(super) caption: String,
    pub(super) svg: String,
}

pub(super) fn charts(report: &BenchReport) -> Result<Vec<ReportChart>, ChartError> {
    Ok(vec![
        coverage(report)?,
        rss(report)?,
        bloat_speedup(report)?,
    ])
}

/// The run drawn bold: perf nearest the median, the first of equals (or the first run).
pub(super) fn median_run(arm: &ArmReport) -> usize {
    let Some(median) = arm.median.perf else {
        return 0;
    };
    arm.runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.figures.perf.map(|p| (i, (p - median).abs())))
        .fold(None, |best: Option<(usize, f64)>, (i, d)| match best {
            Some((_, bd)) if bd <= d => best,
            _ => Some((i, d)),
        })
        .map_or(0, |(i, _)| i)
}

/// A series per run of each arm, from `value` of each sample.
fn over_time(report: &BenchReport, value: fn(&BenchSample) -> f64) -> Vec<Series> {
    report
        .arms
        .iter()
        .flat_map(|arm| {
            let median = median_run(arm);
            let runs: Vec<Series> = arm
                .runs
                .iter()
                .enumerate()
                .map(|(i, run)| Series {
                    name: if i == median {
                        arm.name.clone()
                    } else {
                        String::new()
                    },
                    color: arm.color,
                    points: run.samples.iter().map(|s| (s.t_s, value(s))).collect(),
                    mark: if i == median {
                        Mark::Line {
                            width: 3,
                            faint: false,
                        }
                    } else {
                        Mark::Line {
                            width: 1,
                            faint: true,
                        }
                    },
                    ..Series::default()
                })
                .collect();
            // An arm without runs still has its legend entry.
            if runs.is_empty() {
                vec![Series {
                    name: arm.name.clone(),
                    color: arm.color,
                    mark: Mark::Line {
                        width: 3,
                        faint: false,
                    },
                    ..Series::default()
                }]
            } else {
                runs
            }
        })
        .collect()
}

/// A range over `values` and 0 with a margin of 8 % on both sides.
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((0.0_f64, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = if hi > lo { (hi - lo) * 0.08 } else { 1.0 };
    (lo - pad, hi + pad)
}

fn runs_caption(report: &BenchReport) -> &'static str {
    if report.runs > 1 {
        " Bold: each arm's median run (perf nearest the median); thin: its other runs."
    } else {
        ""
    }
}

fn coverage(report: &BenchReport) -> Result<ReportChart, ChartError> {
    const TITLE: &str = "Coverage over time";
    let series = over_time(report, |s| 100.0 * s.coverage);
    let svg = chart_svg(&Chart {
        title: TITLE,
        x_desc: "time since the arm started (s)",
        y_desc: "coverage (% of anon RSS in huge pages)",
        x_range: None,
        y_range: Some((0.0, 105.0)),
        series: &series,
        size: SIZE,
    })?;
    Ok(ReportChart {
        title: TITLE,
        caption: format!(
            "AnonHugePages / anon RSS of the workload's processes, sampled about 4 times a \
             second.{}",
            runs_caption(report)
        ),
        svg,
    })
}

fn rss(report: &BenchReport) -> Result<ReportChart, ChartError> {
    const TITLE: &str = "RSS over time";
    let series = over_time(report, |s| mib_of_bytes(s.anon_rss_bytes));
    let svg = chart_svg(&Chart {
        title: TITLE,
        x_desc: "time since the arm started (s)",
        y_desc: "anon RSS (MiB)",
        x_range: None,
        y_range: None,
        series: &series,
        size: SIZE,
    })?;
    Ok(ReportChart {
        title: TITLE,
        caption: format!(
            "Anonymous RSS of the workload's processes.{}",
            runs_caption(report)
        ),
        svg,
    })
}

fn bloat_speedup(report: &BenchReport) -> Result<ReportChart, ChartError> {
    const TITLE: &str = "Bloat against speedup";
    let mut missing = Vec::new();
    let series: Vec<Series> = report
        .arms
        .iter()
        .map(|arm| {
            let point = arm
                .median
                .overhead_bytes
                .zip(arm.median.gain)
                .map(|(ovh, gain)| (ovh as f64 / (1024.0 * 1024.0), 100.0 * gain));
            if point.is_none() {
                missing.push(arm.name.as_str());
            }
            let spread = match (
                arm.min.overhead_bytes.zip(arm.max.overhead_bytes),
                arm.min.gain.zip(arm.max.gain),
            ) {
                (Some((olo, ohi)), Some((glo, ghi))) if arm.runs.len() > 1 => Some(Spread {
                    x: (
                        olo as f64 / (1024.0 * 1024.0),
                        ohi as f64 / (1024.0 * 1024.0),
                    ),
                    y: (100.0 * glo, 100.0 * ghi),
                }),
                _ => None,
            };
            Series {
                name: arm.name.clone(),
                color: arm.color,
                points: point.into_iter().collect(),
                labels: point.map(|_| arm.name.clone()).into_iter().collect(),
                spreads: point.and(spread).into_iter().collect(),
                mark: Mark::Dots,
            }
        })
        .collect();
    // Margins on both sides: `none` sits at (0, 0), and a dot on an axis would be cut in half.
    let x_range = padded(series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.0)
            .chain(s.spreads.iter().flat_map(|r| [r.x.0, r.x.1]))
    }));
    let y_range = padded(series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.spreads.iter().flat_map(|r| [r.y.0, r.y.1]))
    }));
    let svg = chart_svg(&Chart {
        title: TITLE,
        x_desc: "memory overhead against none (MiB of peak RSS)",
        y_desc: "gain against none (%)",
        x_range: Some(x_range),
        y_range: Some(y_range),
        series: &series,
        size: SIZE,
    })?;
    let mut caption = "One point per arm at its medians; up and to the left is better.".to_owned();
    if report.runs > 1 {
        caption.push_str(" Whiskers: the min–max over runs.");
    }
    if !missing.is_empty() {
        caption.push_str(&format!(
            " Not drawn (no overhead or gain figure): {}.",
            missing.join(", ")
        ));
    }
    Ok(ReportChart {
        title: TITLE,
        caption,
        svg,
    })
}
