//! `report.md`: the summary table first, then the DAMON-style figures per collapse arm, the
//! modelled mTHP outcome per policy, the workload and machine, the sysfs changes, the notes.

use std::fmt::Write as _;

use super::{sections, summary};
use crate::bench::BenchReport;

/// A Markdown table cell: a `|` inside would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A pipe table; the first column left-aligned, the rest right-aligned.
fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.collect();
        format!("| {} |\n", cells.join(" | "))
    };
    out.push_str(&line(&mut header.iter().map(|h| cell(h))));
    out.push_str(&line(
        &mut (0..header.len()).map(|i| if i == 0 { ":---" } else { "---:" }.to_owned()),
    ));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(|c| cell(c))));
    }
}

fn with_unit((name, unit): &(String, String)) -> String {
    if unit.is_empty() {
        name.clone()
    } else {
        format!("{name} ({unit})")
    }
}

pub(super) fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", sections::title(report));
    let _ = writeln!(out, "{}\n", sections::overview(report));

    out.push_str("## Summary\n\n");
    let summary::Summary { columns, rows } = summary::summary(report);
    let header: Vec<String> = columns.iter().map(with_unit).collect();
    table(&mut out, &header, &rows);
    let _ = writeln!(out, "\n{}\n", summary::legend(report));
    out.push_str(
        "Charts of coverage and RSS over time, and of bloat against speedup: report.html.\n\n",
    );

    out.push_str("## Against khugepaged (DAMON-style)\n\n");
    for line in sections::damon_lines(report) {
        let _ = writeln!(out, "- **{}**: {}", line.arm, line.text);
    }
    let _ = writeln!(out, "\n{}\n", sections::DAMON_LEGEND);

    out.push_str("## Modelled mTHP outcome per policy\n\n");
    let modelled = sections::modelled(report);
    if modelled.rows.is_empty() {
        out.push_str("No policy was modelled.\n\n");
    } else {
        table(&mut out, &modelled.header, &modelled.rows);
        let _ = writeln!(out, "\n{}\n", sections::MODELLED_LEGEND);
    }

    out.push_str("## Machine\n\n");
    for (key, value) in sections::machine(report) {
        let _ = writeln!(out, "- {key}: {value}");
    }
    out.push('\n');

    out.push_str("## sysfs changes\n\n");
    if report.sysfs.is_empty() {
        out.push_str("The bench changed nothing in sysfs.\n\n");
    } else {
        let header = ["path", "before", "during", "restored"].map(str::to_owned);
        let rows: Vec<Vec<String>> = report
            .sysfs
            .iter()
            .map(|c| {
                vec![
                    format!("`{}`", c.path),
                    format!("`{}`", c.from),
                    format!("`{}`", c.to),
                    if c.restored { "yes" } else { "**NO**" }.to_owned(),
                ]
            })
            .collect();
        table(&mut out, &header, &rows);
        let _ = writeln!(out, "\n{}\n", sections::restored_line(report));
    }

    out.push_str("## Notes\n\n");
    if report.notes.is_empty() {
        out.push_str("None.\n");
    } else {
        for note in &report.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{ArmKind, report::sample::sample_report};

    #[test]
    fn summary_first_then_damon_modelled_machine_sysfs_notes() {
        let report = sample_report();
        let md = render(&report);
        let order = [
            "# collapse bench: mixed",
            "## Summary",
            "## Against khugepaged (DAMON-style)",
            "## Modelled mTHP outcome per policy",
            "## Machine",
            "## sysfs changes",
            "## Notes",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|h| md.find(h).unwrap_or_else(|| panic!("{h} missing:\n{md}")))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{md}");
        assert!(
            md.contains("| arm | perf (lookups/s) | gain (%) | 50 % at (s) |"),
            "{md}"
        );
        for arm in &report.arms {
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", arm.name)))
                .unwrap_or_else(|| panic!("no row for {}:\n{md}", arm.name));
            // As many cells as the header.
            assert_eq!(row.matches(" | ").count(), 13, "{row}");
        }
        // Every collapse arm has its DAMON line; the one without a speedup figure says why.
        let collapse: Vec<_> = report
            .arms
            .iter()
            .filter(|a| a.kind == ArmKind::Collapse)
            .collect();
        assert_eq!(collapse.len(), 2);
        assert!(
            md.contains("- **collapse seed n=255**: 77.3 % of THP memory overhead removed, 80.0 % of THP speedup kept\n"),
            "{md}"
        );
        assert!(
            md.contains("- **collapse scaled n=128**: 90.9 % of THP memory overhead removed; % of THP speedup kept not computed: g(khugepaged) is within noise"),
            "{md}"
        );
        // Modelled sizes as columns, bloat; the machine; the sysfs value left changed; notes.
        assert!(md.contains("| policy | max_ptes_none | 16K (MiB) | 64K (MiB) | 2M (MiB) | bloat (MiB) | coverage (%) |"), "{md}");
        assert!(
            md.contains("| seed | 255 | 0.0 | 96.0 | 400.0 | 24.0 | 97.0 |"),
            "{md}"
        );
        assert!(md.contains("- kernel: 6.1.0-31-amd64"), "{md}");
        assert!(md.contains("| `/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled` | `never` | `inherit` | **NO** |"), "{md}");
        assert!(md.contains("NOT restored"), "{md}");
        for note in &report.notes {
            assert!(md.contains(&format!("- {note}\n")), "{note}");
        }
    }
}
