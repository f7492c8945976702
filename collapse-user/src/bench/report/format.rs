//! How the report writes one figure: the same text in the terminal, the Markdown and the HTML.

use crate::{
    bench::{ArmFigures, ArmKind, ArmReport, PerfMetric},
    render::{mib, mib_of_bytes},
};

/// A figure that is not there: not reached, not applicable or not measured.
pub(super) const MISSING: &str = "–";

/// Three significant digits: `0.123`, `4.56`, `78.9`, `1234`.
pub(super) fn significant(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A rate with a k, M or G suffix, three significant digits: `985k`, `1.02M`.
fn rate(v: f64) -> String {
    let a = v.abs();
    for (scale, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if a >= scale {
            return format!("{}{suffix}", significant(v / scale));
        }
    }
    significant(v)
}

/// perf in its unit: throughput with a suffix, runtime in seconds.
pub(super) fn perf(v: f64, metric: PerfMetric) -> String {
    match metric {
        PerfMetric::Throughput => rate(v),
        PerfMetric::Runtime => significant(v),
    }
}

/// The median perf, and its min–max over runs when there was more than one run.
pub(super) fn perf_parts(arm: &ArmReport, metric: PerfMetric) -> (String, Option<String>) {
    let Some(median) = arm.median.perf else {
        return (MISSING.to_owned(), None);
    };
    let range = match (arm.runs.len() > 1, arm.min.perf, arm.max.perf) {
        (true, Some(lo), Some(hi)) => Some(format!("{}–{}", perf(lo, metric), perf(hi, metric))),
        _ => None,
    };
    (perf(median, metric), range)
}

/// The median perf, with the min–max over runs when there was more than one: `1.15M
/// (1.14M–1.16M)`.
pub(super) fn perf_cell(arm: &ArmReport, metric: PerfMetric) -> String {
    match perf_parts(arm, metric) {
        (median, Some(range)) => format!("{median} ({range})"),
        (median, None) => median,
    }
}

/// A fraction as a percentage with one decimal: `92.1`.
pub(super) fn percent(f: f64) -> String {
    format!("{:.1}", 100.0 * f)
}

/// A fraction as a signed percentage: `+15.0`, `-2.3`.
pub(super) fn signed_percent(f: f64) -> String {
    format!("{:+.1}", 100.0 * f)
}

/// Seconds: `3.2`, `125`.
pub(super) fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// CPU seconds: `0.42`.
pub(super) fn cpu_seconds(s: f64) -> String {
    format!("{s:.2}")
}

fn or_missing<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| MISSING.to_owned(), f)
}

/// The cells of one arm's summary row, in [`super::summary::COLUMNS`] order.
pub(super) fn row(arm: &ArmReport, metric: PerfMetric) -> Vec<String> {
    let ArmFigures {
        perf: _,
        time_to_50_s,
        time_to_90_s,
        time_to_90_of_best_s,
        final_coverage,
        peak_rss_bytes,
        overhead_bytes,
        overhead_fraction,
        zero_filled_pages,
        gain,
        cpu_khugepaged_s,
        cpu_collapse_s,
        checksum_ok,
    } = arm.median;
    let baseline = arm.kind == ArmKind::None;
    let against_none = |text: String| {
        if baseline {
            "baseline".to_owned()
        } else {
            text
        }
    };
    vec![
        arm.name.clone(),
        perf_cell(arm, metric),
        against_none(or_missing(gain, signed_percent)),
        or_missing(time_to_50_s, seconds),
        or_missing(time_to_90_s, seconds),
        or_missing(time_to_90_of_best_s, seconds),
        or_missing(final_coverage, percent),
        or_missing(peak_rss_bytes, |b| format!("{:.0}", mib_of_bytes(b))),
        against_none(or_missing(overhead_bytes, |b| {
            format!("{:+.1}", b as f64 / (1024.0 * 1024.0))
        })),
        against_none(or_missing(overhead_fraction, signed_percent)),
        or_missing(zero_filled_pages, |p| format!("{:.1}", mib(p))),
        or_missing(cpu_khugepaged_s, cpu_seconds),
        or_missing(cpu_collapse_s, cpu_seconds),
        or_missing(checksum_ok, |ok| {
            if ok { "ok" } else { "FAILED" }.to_owned()
        }),
    ]
}

/// `2026-05-17 03:40 UTC` from seconds since the Unix epoch.
pub(super) fn utc(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// `512 MiB`, `1.5 GiB`.
pub(super) fn size(bytes: u64) -> String {
    let mib = mib_of_bytes(bytes);
    if mib >= 1024.0 {
        format!("{} GiB", significant(mib / 1024.0))
    } else {
        format!("{} MiB", significant(mib))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures() {
        assert_eq!(rate(1_024_000.0), "1.02M");
        assert_eq!(rate(985_000.0), "985k");
        assert_eq!(rate(12.0), "12.0");
        assert_eq!(perf(2.345, PerfMetric::Runtime), "2.35");
        assert_eq!(significant(0.01234), "0.012");
        assert_eq!(percent(0.9214), "92.1");
        assert_eq!(signed_percent(0.15), "+15.0");
        assert_eq!(signed_percent(-0.023), "-2.3");
        assert_eq!(seconds(3.24), "3.2");
        assert_eq!(seconds(125.4), "125");
        assert_eq!(size(512 << 20), "512 MiB");
        assert_eq!(size(3 << 29), "1.50 GiB");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34 UTC");
    }
}
