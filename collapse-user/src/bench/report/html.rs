//! `report.html`: the Markdown report's content with the three charts, in one file that needs
//! nothing else: inline CSS, inline SVG, no scripts, no external fonts, images or links.

use std::fmt::Write as _;

use super::{charts, format, sections, summary};
use crate::{
    bench::BenchReport,
    render::{ChartError, series_rgb},
};

const STYLE: &str = "
body { margin: 0; background: #f5f6f8; color: #1b1d21;
  font: 15px/1.45 'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 20px 40px; }
h1 { font-size: 26px; margin: 16px 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #d5d8de; padding-bottom: 3px; }
p.overview { margin: 0 0 8px; color: #3a3e46; }
p.legend, figcaption { font-size: 13px; color: #4a4f59; margin: 6px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 8px; text-align: right; white-space: nowrap; }
thead th { border-bottom: 2px solid #9aa0aa; vertical-align: bottom; }
table.summary { font-size: 13px; }
table.summary th, table.summary td { padding: 4px 6px; vertical-align: top; }
table.summary thead th { white-space: normal; vertical-align: bottom; }
.range { color: #5a606b; font-size: 12px; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #eaecf0; }
tbody th { font-weight: 600; }
.unit { font-weight: normal; color: #5a606b; font-size: 12px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 7px; vertical-align: -1px; }
.bad, p.legend.bad { color: #b00020; font-weight: 700; }
code { font: 13px 'DejaVu Sans Mono', monospace; background: #e6e8ec; padding: 0 3px;
  border-radius: 3px; }
figure.chart { margin: 16px 0 22px; }
figure.chart svg { display: block; max-width: 100%; height: auto;
  border: 1px solid #cfd3da; }
ul { padding-left: 22px; margin: 6px 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 0; }
dt { color: #4a4f59; }
dd { margin: 0; }
";

/// Text for HTML: `&`, `<`, `>` and quotes escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text whose `` `spans` `` become `<code>`, as in the Markdown.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

fn hex(color: usize) -> String {
    let [r, g, b] = series_rgb(color);
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    out.push_str("<div class=\"scroll\"><table>\n<thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{}</td>", inline(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

/// The chart's SVG for inlining: HTML needs no namespace on it (and the report then names no
/// address at all); it gets a role and a name for screen readers.
fn inline_svg(svg: &str, title: &str) -> String {
    svg.replacen(
        " xmlns=\"http://www.w3.org/2000/svg\"",
        &format!(" role=\"img\" aria-label=\"{}\"", escape(title)),
        1,
    )
}

pub(super) fn render(report: &BenchReport) -> Result<String, ChartError> {
    let charts = charts::charts(report)?;
    let mut out = String::new();
    let title = sections::title(report);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(
        out,
        "<p class=\"overview\">{}</p>",
        inline(&sections::overview(report))
    );

    out.push_str("<h2>Summary</h2>\n");
    summary_table(&mut out, report);
    let _ = writeln!(
        out,
        "<p class=\"legend\">{}</p>",
        escape(&summary::legend(report))
    );

    out.push_str("<h2>Against khugepaged (DAMON-style)</h2>\n<ul>\n");
    for line in sections::damon_lines(report) {
        let _ = writeln!(
            out,
            "<li><strong>{}</strong>: {}</li>",
            escape(&line.arm),
            inline(&line.text)
        );
    }
    let _ = writeln!(
        out,
        "</ul>\n<p class=\"legend\">{}</p>",
        escape(sections::DAMON_LEGEND)
    );

    out.push_str("<h2>Charts</h2>\n");
    for chart in &charts {
        let _ = writeln!(
            out,
            "<figure class=\"chart\">\n{}<figcaption>{}</figcaption>\n</figure>",
            inline_svg(&chart.svg, chart.title),
            escape(&chart.caption)
        );
    }

    out.push_str("<h2>Modelled mTHP outcome per policy</h2>\n");
    let modelled = sections::modelled(report);
    if modelled.rows.is_empty() {
        out.push_str("<p>No policy was modelled.</p>\n");
    } else {
        table(&mut out, &modelled.header, &modelled.rows);
        let _ = writeln!(
            out,
            "<p class=\"legend\">{}</p>",
            escape(sections::MODELLED_LEGEND)
        );
    }

    out.push_str("<h2>Machine</h2>\n<dl>\n");
    for (key, value) in sections::machine(report) {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(key), inline(&value));
    }
    out.push_str("</dl>\n");

    out.push_str("<h2>sysfs changes</h2>\n");
    if report.sysfs.is_empty() {
        out.push_str("<p>The bench changed nothing in sysfs.</p>\n");
    } else {
        out.push_str(
            "<div class=\"scroll\"><table>\n<thead><tr><th>path</th><th>before</th>\
             <th>during</th><th>restored</th></tr></thead>\n<tbody>\n",
        );
        for c in &report.sysfs {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td>{}</tr>",
                escape(&c.path),
                escape(&c.from),
                escape(&c.to),
                if c.restored {
                    "<td>yes</td>"
                } else {
                    "<td class=\"bad\">NO</td>"
                }
            );
        }
        out.push_str("</tbody></table></div>\n");
        let line = sections::restored_line(report);
        let class = if report.sysfs.iter().all(|c| c.restored) {
            "legend"
        } else {
            "legend bad"
        };
        let _ = writeln!(out, "<p class=\"{class}\">{}</p>", inline(&line));
    }

    out.push_str("<h2>Notes</h2>\n");
    if report.notes.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<ul>\n");
        for note in &report.notes {
            let _ = writeln!(out, "<li>{}</li>", inline(note));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</main>\n</body>\n</html>\n");
    Ok(out)
}

/// The summary: column names over their units, a colour swatch before each arm (the colour
/// it has in every chart), a failed checksum in red.
fn summary_table(out: &mut String, report: &BenchReport) {
    let summary::Summary { columns, rows } = summary::summary(report);
    out.push_str("<div class=\"scroll\"><table class=\"summary\">\n<thead><tr>");
    for (name, unit) in &columns {
        if unit.is_empty() {
            let _ = write!(out, "<th>{}</th>", escape(name));
        } else {
            let _ = write!(
                out,
                "<th>{}<br><span class=\"unit\">{}</span></th>",
                escape(name),
                escape(unit)
            );
        }
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (arm, row) in report.arms.iter().zip(&rows) {
        let _ = write!(
            out,
            "<tr><th scope=\"row\"><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
            hex(arm.color),
            escape(&row[0])
        );
        // The perf range under the median keeps the table narrow.
        match format::perf_parts(arm, report.workload.metric) {
            (median, Some(range)) => {
                let _ = write!(
                    out,
                    "<td>{}<br><span class=\"range\">{}</span></td>",
                    escape(&median),
                    escape(&range)
                );
            }
            (median, None) => {
                let _ = write!(out, "<td>{}</td>", escape(&median));
            }
        }
        for c in &row[2..] {
            let class = if c == "FAILED" { " class=\"bad\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::report::sample::sample_report;

    /// The SVG elements in document order: (tag, attributes and content as written).
    fn elements(svg: &str) -> Vec<&str> {
        svg.split('<')
            .skip(1)
            .filter(|e| !e.starts_with('/'))
            .collect()
    }

    fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
        let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = element[start..].find('"')?;
        Some(&element[start..start + len])
    }

    /// Each legend entry of a chart: its name, and the colour of the swatch drawn just
    /// before it.
    fn legend(svg: &str) -> BTreeMap<String, String> {
        let elements = elements(svg);
        let mut out = BTreeMap::new();
        for pair in elements.windows(2) {
            let (swatch, text) = (pair[0], pair[1]);
            if !text.starts_with("text") {
                continue;
            }
            let color = if swatch.starts_with("circle") {
                attr(swatch, "fill")
            } else if swatch.starts_with("polyline") {
                attr(swatch, "stroke")
            } else {
                None
            };
            if let Some(color) = color {
                let name = text.split_once('>').unwrap().1.trim();
                out.insert(name.to_owned(), color.to_lowercase());
            }
        }
        out
    }

    #[test]
    fn self_contained_with_three_charts_and_one_colour_per_arm() {
        let report = sample_report();
        let html = render(&report).unwrap();
        assert!(!html.contains("http"), "an address in the report");
        assert!(!html.contains("<script"), "a script in the report");
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "{external} in the report");
        }
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert_eq!(html.matches("</svg>").count(), 3);
        for arm in &report.arms {
            assert!(html.contains(&escape(&arm.name)), "{}", arm.name);
        }
        let svgs: Vec<&str> = html
            .split("<svg")
            .skip(1)
            .map(|s| s.split("</svg>").next().unwrap())
            .collect();
        for (i, svg) in svgs.iter().enumerate() {
            let legend = legend(svg);
            for arm in &report.arms {
                assert_eq!(
                    legend.get(&arm.name),
                    Some(&hex(arm.color)),
                    "chart {i}, arm {}: {legend:?}",
                    arm.name
                );
            }
        }
        // The colours are the arms' own, and no two arms share one.
        let colors: std::collections::BTreeSet<String> =
            report.arms.iter().map(|a| hex(a.color)).collect();
        assert_eq!(colors.len(), report.arms.len());
        // Units on the axes.
        for desc in [
            "time since the arm started (s)",
            "coverage (% of anon RSS in huge pages)",
            "anon RSS (MiB)",
            "memory overhead against none (MiB of peak RSS)",
            "gain against none (%)",
        ] {
            assert!(html.contains(&escape(desc)), "{desc}");
        }
        // Each run of each arm over time: 2 runs of 5 arms in both time charts, besides the
        // legend's swatches (the axes and ticks are black).
        for svg in &svgs[..2] {
            let lines = elements(svg)
                .into_iter()
                .filter(|e| e.starts_with("polyline"))
                .filter(|e| colors.contains(&attr(e, "stroke").unwrap().to_lowercase()))
                .count();
            assert_eq!(lines, 10 + report.arms.len(), "{svg}");
        }
        // The scatter: a labelled point per arm (and a dot per legend entry).
        assert_eq!(svgs[2].matches("<circle").count(), 2 * report.arms.len());
        for arm in &report.arms {
            assert_eq!(
                svgs[2]
                    .matches(&format!(">\n{}\n</text>", escape(&arm.name)))
                    .count(),
                2,
                "label and legend entry of {}",
                arm.name
            );
        }
    }

    #[test]
    fn escapes_and_inline_code() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(inline("set `x<y` back"), "set <code>x&lt;y</code> back");
    }
}
