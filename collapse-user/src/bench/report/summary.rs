//! The summary table people read first, one row per arm: the same cells in the terminal (when
//! the bench ends), in `report.md` and in `report.html`.

use super::format;
use crate::{bench::BenchReport, render::Table};

/// One column: its name, and its unit (empty: none) on a line of its own in the terminal and
/// in brackets in the Markdown and the HTML.
pub(super) struct Column {
    pub(super) name: &'static str,
    pub(super) unit: &'static str,
}

const fn column(name: &'static str, unit: &'static str) -> Column {
    Column { name, unit }
}

/// The columns after `arm` and `perf` (whose unit is the workload's).
pub(super) const COLUMNS: [Column; 12] = [
    column("gain", "%"),
    column("50 % at", "s"),
    column("90 % at", "s"),
    column("90 % best", "s"),
    column("coverage", "%"),
    column("peak RSS", "MiB"),
    column("overhead", "MiB"),
    column("overhead", "%"),
    column("zero-filled", "MiB"),
    column("khugepaged", "CPU s"),
    column("collapse", "CPU s"),
    column("checksum", ""),
];

/// The whole table: every column with its unit, and one row of cells per arm.
pub(super) struct Summary {
    pub(super) columns: Vec<(String, String)>,
    pub(super) rows: Vec<Vec<String>>,
}

pub(super) fn summary(report: &BenchReport) -> Summary {
    let metric = report.workload.metric;
    let perf_unit = match report.workload.perf_unit.as_str() {
        "" => match metric {
            crate::bench::PerfMetric::Throughput => "ops/s".to_owned(),
            crate::bench::PerfMetric::Runtime => "s".to_owned(),
        },
        unit => unit.to_owned(),
    };
    let columns = [
        ("arm".to_owned(), String::new()),
        ("perf".to_owned(), perf_unit),
    ]
    .into_iter()
    .chain(
        COLUMNS
            .iter()
            .map(|c| (c.name.to_owned(), c.unit.to_owned())),
    )
    .collect();
    Summary {
        columns,
        rows: report
            .arms
            .iter()
            .map(|arm| format::row(arm, metric))
            .collect(),
    }
}

/// What the figures of the summary mean, for the line below it.
pub(super) fn legend(report: &BenchReport) -> String {
    let runs = report.runs.max(1);
    let best = report
        .arms
        .iter()
        .filter_map(|a| a.median.final_coverage)
        .fold(None, |best: Option<f64>, c| {
            Some(best.map_or(c, |b| b.max(c)))
        });
    let spread = if runs > 1 {
        format!(
            "Medians over {runs} runs per arm, interleaved; perf with its min–max over the runs."
        )
    } else {
        "One run per arm.".to_owned()
    };
    let best = best.map_or_else(String::new, |b| {
        format!(" (the best arm's final coverage, {} %)", format::percent(b))
    });
    format!(
        "{spread} gain: perf against none. 50 % / 90 % at: the first sample at which coverage \
         (AnonHugePages / anon RSS) reached that share of the arm's own final coverage; 90 % \
         best: of the best final coverage{best}. overhead: peak RSS − peak RSS of none. \
         zero-filled: pages inside collapsed ranges that were empty before. CPU: khugepaged's \
         thread and the collapse process over the arm. {} : not reached or not measured.",
        format::MISSING
    )
}

/// The summary table for the terminal: a line of column names, a line of units, one row per
/// arm, each line indented by two spaces.
pub fn summary_table(report: &BenchReport) -> String {
    let Summary { columns, rows } = summary(report);
    let mut table = Table::new(columns.iter().map(|(name, _)| name.as_str()));
    table.row(columns.iter().map(|(_, unit)| unit.as_str()));
    for row in rows {
        table.row(row);
    }
    table.render("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::sample::sample_report;

    #[test]
    fn terminal_table_has_a_row_per_arm_and_lines_up() {
        let report = sample_report();
        let text = summary_table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + report.arms.len(), "{text}");
        assert!(lines[0].trim_start().starts_with("arm"), "{text}");
        assert!(lines[1].contains("lookups/s"), "{text}");
        for (line, arm) in lines[2..].iter().zip(&report.arms) {
            assert!(line.starts_with(&format!("  {}  ", arm.name)), "{line}");
        }
        // Right-aligned: every row ends where the header does (the checksum column).
        let width = lines[0].chars().count();
        for line in &lines[2..] {
            assert_eq!(line.chars().count(), width, "{text}");
        }
        let none = lines[2];
        assert!(none.contains("baseline"), "{none}");
        // Two runs: perf carries its min–max.
        let khugepaged = lines[3];
        assert!(khugepaged.contains("1.15M (1.14M–1.16M)"), "{khugepaged}");
        assert!(khugepaged.ends_with("ok"), "{khugepaged}");
    }
}
