//! The per-arm figures of DESIGN.md "Bench metrics", computed from the samples: times to a
//! share of the final coverage, overhead and gain against `none`, medians and spreads, and
//! the DAMON-style summary.

use super::model::{ArmFigures, ArmKind, ArmReport, BenchSample, DamonSummary, PerfMetric};

/// Seconds until coverage first reached `threshold` (`None` if it never did or is 0).
pub fn time_to(samples: &[BenchSample], threshold: f64) -> Option<f64> {
    if threshold <= 0.0 {
        return None;
    }
    samples
        .iter()
        .find(|s| s.coverage >= threshold)
        .map(|s| s.t_s)
}

/// The coverage of the last sample.
pub fn final_coverage(samples: &[BenchSample]) -> Option<f64> {
    samples.last().map(|s| s.coverage)
}

/// Fills the figures that depend on the samples alone.
pub fn from_samples(samples: &[BenchSample], f: &mut ArmFigures) {
    let fin = final_coverage(samples);
    f.final_coverage = fin;
    if let Some(fin) = fin.filter(|&c| c > 0.005) {
        f.time_to_50_s = time_to(samples, 0.5 * fin);
        f.time_to_90_s = time_to(samples, 0.9 * fin);
    }
    f.peak_rss_bytes = samples.iter().map(|s| s.anon_rss_bytes).max();
}

/// Perf as a rate: throughput, or 1 / runtime.
fn rate(perf: f64, metric: PerfMetric) -> f64 {
    match metric {
        PerfMetric::Throughput => perf,
        PerfMetric::Runtime => 1.0 / perf.max(1e-12),
    }
}

/// The figures that compare a run with `none`'s median and the best arm's coverage.
pub fn against(
    f: &mut ArmFigures,
    samples: &[BenchSample],
    none: &ArmFigures,
    best_final: f64,
    metric: PerfMetric,
) {
    if let (Some(p), Some(base)) = (f.perf, none.perf) {
        let (p, base) = (rate(p, metric), rate(base, metric));
        f.gain = (base > 0.0).then(|| (p - base) / base);
    }
    if let (Some(peak), Some(base)) = (f.peak_rss_bytes, none.peak_rss_bytes) {
        let ovh = peak as i64 - base as i64;
        f.overhead_bytes = Some(ovh);
        f.overhead_fraction = (base > 0).then(|| ovh as f64 / base as f64);
    }
    f.time_to_90_of_best_s = time_to(samples, 0.9 * best_final);
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median, min and max of every figure over `runs` (each figure over the runs that have it).
pub fn spread(runs: &[&ArmFigures]) -> (ArmFigures, ArmFigures, ArmFigures) {
    let mut med = ArmFigures::default();
    let mut min = ArmFigures::default();
    let mut max = ArmFigures::default();
    macro_rules! each {
        ($($field:ident: $t:ty),* $(,)?) => {$(
            let v: Vec<f64> = runs.iter().filter_map(|f| f.$field.map(|x| x as f64)).collect();
            med.$field = median(v.clone()).map(|x| x as $t);
            min.$field = v.iter().copied().reduce(f64::min).map(|x| x as $t);
            max.$field = v.iter().copied().reduce(f64::max).map(|x| x as $t);
        )*};
    }
    each!(
        perf: f64,
        time_to_50_s: f64,
        time_to_90_s: f64,
        time_to_90_of_best_s: f64,
        final_coverage: f64,
        peak_rss_bytes: u64,
        overhead_bytes: i64,
        overhead_fraction: f64,
        zero_filled_pages: u64,
        gain: f64,
        cpu_khugepaged_s: f64,
        cpu_collapse_s: f64,
    );
    let all_ok = runs.iter().all(|f| f.checksum_ok != Some(false));
    let any = runs.iter().any(|f| f.checksum_ok.is_some());
    let verdict = any.then_some(all_ok);
    med.checksum_ok = verdict;
    min.checksum_ok = verdict;
    max.checksum_ok = verdict;
    (med, min, max)
}

/// DAMON's ethp terms for each `collapse` arm, with `khugepaged` in the role of THP. A
/// khugepaged figure within noise (smaller than the spread of `none`'s perf, or of the RSS, over
/// the runs; with one run, smaller than 1 %) is said, not divided by.
pub fn damon_summary(arms: &[ArmReport]) -> Vec<DamonSummary> {
    let Some(k) = arms.iter().find(|a| a.kind == ArmKind::Khugepaged) else {
        return Vec::new();
    };
    let none = arms.iter().find(|a| a.kind == ArmKind::None);
    let rel_spread = |a: Option<&ArmReport>, pick: fn(&super::model::ArmFigures) -> Option<f64>| {
        a.and_then(|a| {
            let (lo, hi, mid) = (pick(&a.min)?, pick(&a.max)?, pick(&a.median)?);
            (mid.abs() > 0.0).then(|| (hi - lo) / mid.abs())
        })
        .unwrap_or(0.0)
        .max(0.01)
    };
    let perf_noise = rel_spread(none, |f| f.perf);
    let rss_noise = rel_spread(none, |f| f.peak_rss_bytes.map(|b| b as f64));
    arms.iter()
        .filter(|a| a.kind == ArmKind::Collapse)
        .map(|a| {
            let mut notes = Vec::new();
            // Dividing makes sense only by a real overhead and a real speedup: one within
            // noise, or a slowdown, is said instead.
            let overhead_removed = match (a.median.overhead_fraction, k.median.overhead_fraction)
            {
                (Some(arm), Some(kh)) if kh > rss_noise => Some(1.0 - arm / kh),
                (_, Some(kh)) => {
                    notes.push(format!(
                        "khugepaged's memory overhead ({:+.1} %) is within noise ({:.1} %)",
                        100.0 * kh,
                        100.0 * rss_noise
                    ));
                    None
                }
                _ => None,
            };
            let speedup_kept = match (a.median.gain, k.median.gain) {
                (Some(arm), Some(kh)) if kh > perf_noise => Some(arm / kh),
                (_, Some(kh)) if kh < -perf_noise => {
                    notes.push(format!(
                        "khugepaged made the workload slower ({:+.1} %): there is no speedup to keep",
                        100.0 * kh
                    ));
                    None
                }
                (_, Some(kh)) => {
                    notes.push(format!(
                        "khugepaged's speedup ({:+.1} %) is within noise ({:.1} %)",
                        100.0 * kh,
                        100.0 * perf_noise
                    ));
                    None
                }
                _ => None,
            };
            DamonSummary {
                arm: a.name.clone(),
                overhead_removed,
                speedup_kept,
                note: (!notes.is_empty()).then(|| notes.join("; ")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, c: f64, rss: u64) -> BenchSample {
        BenchSample {
            t_s: t,
            coverage: c,
            anon_rss_bytes: rss,
            ..BenchSample::default()
        }
    }

    #[test]
    fn times_overhead_and_gain() {
        let samples = [
            s(0.0, 0.0, 10),
            s(0.5, 0.3, 20),
            s(1.0, 0.6, 30),
            s(1.5, 0.6, 25),
        ];
        let mut f = ArmFigures {
            perf: Some(150.0),
            ..ArmFigures::default()
        };
        from_samples(&samples, &mut f);
        assert_eq!(f.final_coverage, Some(0.6));
        assert_eq!(f.time_to_50_s, Some(0.5));
        assert_eq!(f.time_to_90_s, Some(1.0));
        assert_eq!(f.peak_rss_bytes, Some(30));
        let none = ArmFigures {
            perf: Some(100.0),
            peak_rss_bytes: Some(20),
            ..ArmFigures::default()
        };
        against(&mut f, &samples, &none, 0.8, PerfMetric::Throughput);
        assert_eq!(f.gain, Some(0.5));
        assert_eq!(f.overhead_bytes, Some(10));
        assert_eq!(f.overhead_fraction, Some(0.5));
        // 90 % of the best arm's 0.8 is 0.72: never reached.
        assert_eq!(f.time_to_90_of_best_s, None);
        // Runtime: half the time is a gain of 1.
        let mut r = ArmFigures {
            perf: Some(5.0),
            ..ArmFigures::default()
        };
        against(
            &mut r,
            &samples,
            &ArmFigures {
                perf: Some(10.0),
                ..ArmFigures::default()
            },
            0.0,
            PerfMetric::Runtime,
        );
        assert_eq!(r.gain, Some(1.0));
    }

    #[test]
    fn medians_and_damon_terms() {
        let a = ArmFigures {
            perf: Some(1.0),
            checksum_ok: Some(true),
            ..ArmFigures::default()
        };
        let b = ArmFigures {
            perf: Some(3.0),
            checksum_ok: Some(true),
            ..ArmFigures::default()
        };
        let c = ArmFigures {
            perf: Some(2.0),
            checksum_ok: Some(false),
            ..ArmFigures::default()
        };
        let (med, min, max) = spread(&[&a, &b, &c]);
        assert_eq!(
            (med.perf, min.perf, max.perf),
            (Some(2.0), Some(1.0), Some(3.0))
        );
        assert_eq!(med.checksum_ok, Some(false));

        let arm = |kind, name: &str, gain, ovh| ArmReport {
            name: name.into(),
            kind,
            median: ArmFigures {
                gain: Some(gain),
                overhead_fraction: Some(ovh),
                ..ArmFigures::default()
            },
            ..ArmReport::default()
        };
        let arms = [
            arm(ArmKind::None, "none", 0.0, 0.0),
            arm(ArmKind::Khugepaged, "khugepaged", 0.20, 0.40),
            arm(ArmKind::Collapse, "collapse seed n=255", 0.15, 0.10),
        ];
        let d = damon_summary(&arms);
        assert_eq!(d.len(), 1);
        assert!((d[0].overhead_removed.unwrap() - 0.75).abs() < 1e-9);
        assert!((d[0].speedup_kept.unwrap() - 0.75).abs() < 1e-9);
        // khugepaged within noise: said, not divided by.
        let arms = [
            arm(ArmKind::None, "none", 0.0, 0.0),
            arm(ArmKind::Khugepaged, "khugepaged", 0.001, 0.40),
            arm(ArmKind::Collapse, "collapse", 0.15, 0.10),
        ];
        let d = damon_summary(&arms);
        assert_eq!(d[0].speedup_kept, None);
        assert!(d[0].note.as_deref().unwrap().contains("within noise"));
        // A slowdown is no speedup to keep.
        let arms = [
            arm(ArmKind::None, "none", 0.0, 0.0),
            arm(ArmKind::Khugepaged, "khugepaged", -0.2, 0.40),
            arm(ArmKind::Collapse, "collapse", 0.15, 0.10),
        ];
        let d = damon_summary(&arms);
        assert_eq!(d[0].speedup_kept, None);
        assert!(
            d[0].note.as_deref().unwrap().contains("slower"),
            "{:?}",
            d[0].note
        );
    }
}
