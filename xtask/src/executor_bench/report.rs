//! The bench's figures over rounds (median and min–max), its tables, the targets, and
//! target/bench/executor.json.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::arms::{Arm, ArmRun, TARGET_COVERAGE};

/// The targets.
const T90_VS_FAST_KHUGEPAGED: f64 = 1.5;
const T90_SPEEDUP_VS_DEFAULT: f64 = 50.0;
const CPU_VS_PLAIN: f64 = 1.2;
const JOBS_SPEEDUP: f64 = 1.6;

/// One figure over the runs of an arm. `None` values (not reached within the arm's limit)
/// count as infinite, so a median of them is "not reached" too.
#[derive(Clone, Debug)]
pub(crate) struct Figure {
    values: Vec<f64>,
}

impl Figure {
    fn of(runs: &[&ArmRun], f: impl Fn(&ArmRun) -> Option<f64>) -> Option<Self> {
        let mut values: Vec<f64> = runs.iter().map(|r| f(r).unwrap_or(f64::INFINITY)).collect();
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then_some(Self { values })
    }

    pub(crate) fn median(&self) -> f64 {
        let n = self.values.len();
        if n % 2 == 1 {
            self.values[n / 2]
        } else {
            (self.values[n / 2 - 1] + self.values[n / 2]) / 2.0
        }
    }

    fn min(&self) -> f64 {
        self.values[0]
    }

    fn max(&self) -> f64 {
        self.values[self.values.len() - 1]
    }

    /// `4.61 [4.50–4.80]`, or `4.61` for one run; `decimals` after the point.
    fn show(&self, decimals: usize, limit: Option<f64>) -> String {
        let one = |v: f64| {
            if v.is_finite() {
                format!("{v:.decimals$}")
            } else {
                limit.map_or_else(|| "n/a".to_owned(), |l| format!("> {l:.0}"))
            }
        };
        if self.values.len() == 1 || one(self.min()) == one(self.max()) {
            one(self.median())
        } else {
            format!(
                "{} [{}–{}]",
                one(self.median()),
                one(self.min()),
                one(self.max())
            )
        }
    }

    fn json(&self) -> Value {
        let v = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
        json!({ "median": v(self.median()), "min": v(self.min()), "max": v(self.max()) })
    }
}

/// The runs of one arm and its figures.
pub(crate) struct ArmSummary<'a> {
    arm: Arm,
    runs: Vec<&'a ArmRun>,
    limit: f64,
    t90: Option<Figure>,
    startup: Option<Figure>,
    t90_after_startup: Option<Figure>,
    done: Option<Figure>,
    cpu_own: Option<Figure>,
    cpu_startup: Option<Figure>,
    cpu_collapsing: Option<Figure>,
    cpu_khugepaged: Option<Figure>,
    cpu_to_90: Option<Figure>,
    throughput: Option<Figure>,
    final_coverage: Option<Figure>,
    t90_extrapolated: Option<Figure>,
}

impl<'a> ArmSummary<'a> {
    fn new(arm: Arm, all: &'a [ArmRun]) -> Option<Self> {
        let runs: Vec<&ArmRun> = all.iter().filter(|r| r.arm == arm).collect();
        let limit = runs.first()?.limit;
        let collapse = arm.runs_collapse();
        let own = arm != Arm::KhugepagedFast && arm != Arm::KhugepagedDefault;
        let reached_none = runs.iter().all(|r| r.t90.is_none());
        Some(Self {
            arm,
            limit,
            t90: Figure::of(&runs, |r| r.t90),
            startup: collapse.then(|| Figure::of(&runs, |r| r.startup)).flatten(),
            t90_after_startup: collapse
                .then(|| Figure::of(&runs, |r| Some(r.t90? - r.startup?)))
                .flatten(),
            done: Figure::of(&runs, |r| Some(r.done)),
            cpu_own: own
                .then(|| Figure::of(&runs, |r| Some(r.cpu_own)))
                .flatten(),
            cpu_startup: collapse
                .then(|| Figure::of(&runs, |r| r.cpu_startup))
                .flatten(),
            cpu_collapsing: own
                .then(|| Figure::of(&runs, |r| Some(r.cpu_collapsing())))
                .flatten(),
            cpu_khugepaged: Figure::of(&runs, |r| Some(r.cpu_khugepaged)),
            cpu_to_90: Figure::of(&runs, |r| r.cpu_to_90),
            throughput: own
                .then(|| Figure::of(&runs, ArmRun::throughput_mib_s))
                .flatten(),
            final_coverage: Figure::of(&runs, |r| Some(r.final_coverage * 100.0)),
            t90_extrapolated: reached_none
                .then(|| Figure::of(&runs, ArmRun::t90_extrapolated))
                .flatten(),
            runs,
        })
    }
}

pub(crate) struct Report<'a> {
    arms: Vec<ArmSummary<'a>>,
}

/// A target of the issue, measured.
struct Target {
    name: String,
    measured: String,
    verdict: &'static str,
    ratio: Option<f64>,
    /// The same ratio within each round that ran both arms: how far the median's verdict
    /// holds on this machine's noise.
    by_round: Vec<f64>,
    note: String,
}

impl Target {
    /// "met" when the ratio of medians is within the limit, qualified when some round's
    /// ratio is not.
    fn verdict(ratio: f64, by_round: &[f64], within: impl Fn(f64) -> bool) -> &'static str {
        match (within(ratio), by_round.iter().all(|&r| within(r))) {
            (true, true) => "met",
            (true, false) => "met (not in every round)",
            (false, _) if by_round.iter().any(|&r| within(r)) => "NOT met (met in some rounds)",
            (false, _) => "NOT met",
        }
    }
}

impl<'a> Report<'a> {
    pub(crate) fn new(runs: &'a [ArmRun], order: &[Arm]) -> Self {
        Self {
            arms: order
                .iter()
                .filter_map(|&a| ArmSummary::new(a, runs))
                .collect(),
        }
    }

    fn arm(&self, arm: Arm) -> Option<&ArmSummary<'a>> {
        self.arms.iter().find(|s| s.arm == arm)
    }

    /// The tables people read.
    pub(crate) fn render(&self, heading: &str) -> String {
        let mut out = String::new();
        let dash = "-";
        let cell = |f: &Option<Figure>, d: usize, limit: Option<f64>| {
            f.as_ref().map_or(dash.to_owned(), |f| f.show(d, limit))
        };
        let _ = writeln!(out, "{heading}");
        let _ = writeln!(
            out,
            "time (s) from the arm's start; median [min–max] over its runs\n\
             {:<24} {:>4} {:>22} {:>20} {:>22} {:>20} {:>8}",
            "arm", "runs", "to 90 %", "start-up", "to 90 % after start", "done", "final %"
        );
        for s in &self.arms {
            let _ = writeln!(
                out,
                "{:<24} {:>4} {:>22} {:>20} {:>22} {:>20} {:>8}",
                s.arm.label(),
                s.runs.len(),
                cell(&s.t90, 2, Some(s.limit)),
                cell(&s.startup, 2, None),
                cell(&s.t90_after_startup, 2, None),
                cell(&s.done, 2, None),
                cell(&s.final_coverage, 1, None),
            );
        }
        let _ = writeln!(
            out,
            "\nCPU (s, utime + stime) up to done, and throughput of the collapsing itself\n\
             {:<24} {:>20} {:>18} {:>20} {:>18} {:>18} {:>20}",
            "arm",
            "own",
            "of it start-up",
            "own less start-up",
            "khugepaged",
            "all, to 90 %",
            "MiB/s"
        );
        for s in &self.arms {
            let _ = writeln!(
                out,
                "{:<24} {:>20} {:>18} {:>20} {:>18} {:>18} {:>20}",
                s.arm.label(),
                cell(&s.cpu_own, 2, None),
                cell(&s.cpu_startup, 2, None),
                cell(&s.cpu_collapsing, 2, None),
                cell(&s.cpu_khugepaged, 2, None),
                cell(&s.cpu_to_90, 2, None),
                cell(&s.throughput, 0, None),
            );
        }
        if let Some(b) = self.arm(Arm::KhugepagedDefault)
            && let Some(x) = &b.t90_extrapolated
        {
            let _ = writeln!(
                out,
                "\n(b) stopped at {:.0} s at {} % huge; at that steady rate 90 % would take about \
                 {} s (a straight-line extrapolation, not a measurement)",
                b.limit,
                cell(&b.final_coverage, 1, None),
                x.show(0, None),
            );
        }
        let _ = writeln!(out, "\ntargets (ratios of medians)");
        let _ = writeln!(out, "{:<52} {:>34}  verdict", "target", "measured");
        for t in self.targets() {
            let _ = writeln!(out, "{:<52} {:>34}  {}", t.name, t.measured, t.verdict);
            if t.by_round.len() > 1 {
                let rs: Vec<String> = t.by_round.iter().map(|r| format!("{r:.2}")).collect();
                let _ = writeln!(out, "    the same ratio round by round: {}", rs.join(", "));
            }
            if !t.note.is_empty() {
                let _ = writeln!(out, "    {}", t.note);
            }
        }
        out
    }

    fn median(
        &self,
        arm: Arm,
        f: impl for<'s> Fn(&'s ArmSummary<'a>) -> &'s Option<Figure>,
    ) -> Option<f64> {
        self.arm(arm)
            .and_then(|s| f(s).as_ref())
            .map(Figure::median)
    }

    /// `ratio(run of num, run of den)` for each round that ran both arms.
    fn by_round(
        &self,
        num: Arm,
        den: Arm,
        ratio: impl Fn(&ArmRun, &ArmRun) -> Option<f64>,
    ) -> Vec<f64> {
        let (Some(n), Some(d)) = (self.arm(num), self.arm(den)) else {
            return Vec::new();
        };
        n.runs
            .iter()
            .filter_map(|rn| {
                let rd = d.runs.iter().find(|rd| rd.round == rn.round)?;
                ratio(rn, rd).filter(|r| r.is_finite())
            })
            .collect()
    }

    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let a = self.median(Arm::CollapseRun, |s| &s.t90);
        let a_after = self.median(Arm::CollapseRun, |s| &s.t90_after_startup);
        if let (Some(a), Some(c)) = (a, self.median(Arm::KhugepagedFast, |s| &s.t90)) {
            let ratio = a / c;
            let by_round = self.by_round(Arm::CollapseRun, Arm::KhugepagedFast, |n, d| {
                Some(n.t90? / d.t90?)
            });
            out.push(Target {
                name: format!("(a) to 90 % within {T90_VS_FAST_KHUGEPAGED} x of (c)"),
                measured: format!("{ratio:.2} x ({a:.2} s vs {c:.2} s)"),
                verdict: Target::verdict(ratio, &by_round, |r| r <= T90_VS_FAST_KHUGEPAGED),
                ratio: Some(ratio),
                by_round,
                note: a_after.map_or_else(String::new, |x| {
                    format!(
                        "(a) counts its start-up; after it, {x:.2} s = {:.2} x of (c)",
                        x / c
                    )
                }),
            });
        }
        if let (Some(a), Some(b)) = (a, self.arm(Arm::KhugepagedDefault)) {
            let bt = b.t90.as_ref().map(Figure::median).unwrap_or(f64::INFINITY);
            let name =
                format!("(a) to 90 % at least {T90_SPEEDUP_VS_DEFAULT:.0} x faster than (b)");
            if bt.is_finite() {
                let ratio = bt / a;
                out.push(Target {
                    name,
                    measured: format!("{ratio:.0} x ({bt:.0} s vs {a:.2} s)"),
                    verdict: Target::verdict(ratio, &[], |r| r >= T90_SPEEDUP_VS_DEFAULT),
                    ratio: Some(ratio),
                    by_round: Vec::new(),
                    note: String::new(),
                });
            } else {
                let bound = b.limit / a;
                let extrapolated = b.t90_extrapolated.as_ref().map(|x| x.median() / a);
                let met = bound >= T90_SPEEDUP_VS_DEFAULT;
                out.push(Target {
                    name,
                    measured: format!("> {bound:.0} x (> {:.0} s vs {a:.2} s)", b.limit),
                    verdict: if met {
                        "met"
                    } else if extrapolated.is_some_and(|x| x >= T90_SPEEDUP_VS_DEFAULT) {
                        "met by extrapolation"
                    } else {
                        "not shown"
                    },
                    ratio: extrapolated,
                    by_round: Vec::new(),
                    note: extrapolated.map_or_else(String::new, |x| {
                        format!(
                            "the {:.0} s cut-off only proves {bound:.0} x; extrapolated, (b) \
                             needs about {x:.0} x as long",
                            b.limit
                        )
                    }),
                });
            }
        }
        let plain = self.median(Arm::PlainMadvise, |s| &s.cpu_own);
        if let (Some(own), Some(total), Some(p)) = (
            self.median(Arm::CollapseRun, |s| &s.cpu_collapsing),
            self.median(Arm::CollapseRun, |s| &s.cpu_own),
            plain,
        ) {
            let ratio = own / p;
            let by_round = self.by_round(Arm::CollapseRun, Arm::PlainMadvise, |n, d| {
                Some(n.cpu_collapsing() / d.cpu_own)
            });
            out.push(Target {
                name: format!("executor CPU within {CPU_VS_PLAIN} x of plain process_madvise"),
                measured: format!("{ratio:.2} x ({own:.2} s vs {p:.2} s)"),
                verdict: Target::verdict(ratio, &by_round, |r| r <= CPU_VS_PLAIN),
                ratio: Some(ratio),
                by_round,
                note: format!(
                    "with its start-up (loading, seeding, first plan) the whole `collapse run` \
                     used {total:.2} s = {:.2} x",
                    total / p
                ),
            });
        }
        if let (Some(one), Some(two)) = (
            self.median(Arm::Jobs(1), |s| &s.throughput),
            self.median(Arm::Jobs(2), |s| &s.throughput),
        ) {
            let ratio = two / one;
            let by_round = self.by_round(Arm::Jobs(2), Arm::Jobs(1), |n, d| {
                Some(n.throughput_mib_s()? / d.throughput_mib_s()?)
            });
            out.push(Target {
                name: format!(
                    "two targets: --jobs 2 at least {JOBS_SPEEDUP} x the throughput of --jobs 1"
                ),
                measured: format!("{ratio:.2} x ({two:.0} vs {one:.0} MiB/s)"),
                verdict: Target::verdict(ratio, &by_round, |r| r >= JOBS_SPEEDUP),
                ratio: Some(ratio),
                by_round,
                note: String::new(),
            });
        }
        out
    }

    /// Everything, per run and summarised, for executor.json.
    pub(crate) fn json(&self) -> Value {
        let arms: Vec<Value> = self
            .arms
            .iter()
            .map(|s| {
                let fig = |f: &Option<Figure>| f.as_ref().map_or(Value::Null, Figure::json);
                json!({
                    "arm": s.arm.key(),
                    "label": s.arm.label(),
                    "limit_s": s.limit,
                    "summary": {
                        "t90_s": fig(&s.t90),
                        "t90_extrapolated_s": fig(&s.t90_extrapolated),
                        "startup_s": fig(&s.startup),
                        "t90_after_startup_s": fig(&s.t90_after_startup),
                        "done_s": fig(&s.done),
                        "cpu_own_s": fig(&s.cpu_own),
                        "cpu_startup_s": fig(&s.cpu_startup),
                        "cpu_own_less_startup_s": fig(&s.cpu_collapsing),
                        "cpu_khugepaged_s": fig(&s.cpu_khugepaged),
                        "cpu_to_90_s": fig(&s.cpu_to_90),
                        "throughput_mib_s": fig(&s.throughput),
                        "final_coverage_pct": fig(&s.final_coverage),
                    },
                    "runs": s.runs.iter().map(|r| run_json(r)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let targets: Vec<Value> = self
            .targets()
            .into_iter()
            .map(|t| {
                json!({
                    "target": t.name,
                    "measured": t.measured,
                    "ratio": t.ratio.filter(|r| r.is_finite()),
                    "ratio_by_round": t.by_round,
                    "verdict": t.verdict,
                    "note": t.note,
                })
            })
            .collect();
        json!({ "arms": arms, "targets": targets, "target_coverage": TARGET_COVERAGE })
    }
}

fn run_json(r: &ArmRun) -> Value {
    json!({
        "round": r.round,
        "children": r.children,
        "area_bytes": r.area_bytes,
        "end": r.end.name(),
        "done_s": r.done,
        "t90_s": r.t90,
        "t90_extrapolated_s": r.t90_extrapolated(),
        "startup_s": r.startup,
        "cpu_startup_s": r.cpu_startup,
        "cpu_own_s": r.cpu_own,
        "cpu_khugepaged_s": r.cpu_khugepaged,
        "cpu_to_90_s": r.cpu_to_90,
        "final_coverage": r.final_coverage,
        "bytes_collapsed": r.bytes_collapsed,
        "collapse_window_s": r.collapse_window,
        "throughput_mib_s": r.throughput_mib_s(),
        "free_before": {
            "mem_available_bytes": r.free_before.available,
            "free_pmd_block_bytes": r.free_before.free_pmd_blocks,
        },
        "vmstat_delta": r.vmstat,
        "khugepaged_delta": r.khugepaged_counters,
        "khugepaged_settings": r.khugepaged_settings,
        "run_summary": r.run_summary,
        "plain_results": r.plain_results,
        // [t_s, anon_huge_bytes, rss_anon_bytes, cpu_own_s, cpu_khugepaged_s]
        "samples": r.samples.iter().map(|s| json!([
            (s.t * 1000.0).round() / 1000.0,
            s.coverage.anon_huge,
            s.coverage.rss_anon,
            (s.cpu_own * 100.0).round() / 100.0,
            (s.cpu_khugepaged * 100.0).round() / 100.0,
        ])).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::{Figure, Target};

    #[test]
    fn median_and_range() {
        let f = Figure {
            values: vec![1.0, 2.0, 4.0],
        };
        assert_eq!(f.median(), 2.0);
        assert_eq!(f.show(1, None), "2.0 [1.0–4.0]");
        let g = Figure {
            values: vec![1.0, 3.0],
        };
        assert_eq!(g.median(), 2.0);
        let h = Figure {
            values: vec![99.97, 99.98],
        };
        assert_eq!(h.show(1, None), "100.0");
    }

    #[test]
    fn a_verdict_says_when_rounds_disagree_with_the_median() {
        let le = |r: f64| r <= 1.2;
        assert_eq!(Target::verdict(1.1, &[1.0, 1.1], le), "met");
        assert_eq!(
            Target::verdict(1.1, &[1.0, 1.6], le),
            "met (not in every round)"
        );
        assert_eq!(
            Target::verdict(1.3, &[1.0, 1.6], le),
            "NOT met (met in some rounds)"
        );
        assert_eq!(Target::verdict(1.3, &[1.3, 1.6], le), "NOT met");
        assert_eq!(Target::verdict(1.3, &[], le), "NOT met");
    }

    #[test]
    fn a_figure_never_reached_shows_its_limit() {
        let f = Figure {
            values: vec![f64::INFINITY],
        };
        assert_eq!(f.show(2, Some(120.0)), "> 120");
        let g = Figure {
            values: vec![4.0, f64::INFINITY, f64::INFINITY],
        };
        assert_eq!(g.show(2, Some(120.0)), "> 120 [4.00–> 120]");
    }
}
