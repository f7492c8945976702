//! The executor stage: (region plans, guard rails) → one [`CollapseOutcome`] per PMD decision
//! and one [`Advice`] per smaller one.
//!
//! PMD decisions are carried out with `process_madvise(pidfd, 2 MiB, MADV_COLLAPSE)` through a
//! pidfd opened when the target was selected ([`Executor::select`]), so a pid reused by another
//! process is never touched. Each region is re-checked against pagemap and kpageflags first
//! (the plan says where to look, pagemap says what is true now) and confirmed PMD-mapped after,
//! since MADV_COLLAPSE also returns 0 for a range that was huge already
//! (shared/design/kernel-facts.md). Decisions below PMD size are never executed: MADV_COLLAPSE
//! is PMD-only on every released kernel.
//!
//! The caller drives it: select the targets, then on every tick plan and call
//! [`Executor::execute`], print the pass, and wait [`Pass::next_interval`] before the next.
//! A target exiting or a range unmapped mid-pass is an outcome (`exited`, `unmapped`), never an
//! error or a panic.

mod attempt;
mod latency;
mod outcome;
mod rails;
mod stats;

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use collapse_common::{consts::PMD_SIZE, policy::Planner};

use self::attempt::{PassContext, run_target};
pub use self::{
    latency::LatencyHistogram,
    outcome::{
        Advice, CollapseOutcome, CollapseResult, Failure, OptOut, SkipReason, SysfsNeed, errno_name,
    },
    rails::{IntervalScaler, RegionBackOff, TokenBucket},
    stats::ExecutorStats,
};
use crate::{
    kernel::{
        pidfd::{Pidfd, PidfdError},
        psi,
    },
    planner::RegionPlan,
};

/// The limits the executor works within.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardRails {
    /// Re-check everything, collapse nothing (outcome `dry-run`).
    pub dry_run: bool,
    /// At most this many bytes per second made huge (2 MiB per collapse), as a token bucket
    /// with a one-second burst; unlimited when `None`.
    pub max_rate: Option<u64>,
    /// Act on nothing while `/proc/pressure/memory` `some avg10` is above this percentage.
    pub psi_limit: f64,
    /// A pass whose slowest collapse took longer than this doubles the interval.
    pub max_latency: Duration,
    /// Processes collapsed at once, one thread each (one process's collapses stay serial).
    pub jobs: usize,
    /// The interval between passes when collapses are fast; also the unit of the per-region
    /// back-off.
    pub base_interval: Duration,
}

impl Default for GuardRails {
    /// The defaults of `collapse run`: no dry run, no rate limit, PSI 10 %, 30 ms, one job,
    /// one second.
    fn default() -> Self {
        Self {
            dry_run: false,
            max_rate: None,
            psi_limit: 10.0,
            max_latency: Duration::from_millis(30),
            jobs: 1,
            base_interval: Duration::from_secs(1),
        }
    }
}

/// What one [`Executor::execute`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pass {
    /// One per plan with a PMD decision, in plan order (regions a stopped pass did not reach
    /// are left out).
    pub outcomes: Vec<CollapseOutcome>,
    /// One per decision below PMD size, in plan order.
    pub advice: Vec<Advice>,
    /// `Some(avg10)` when memory pressure was over the limit and nothing was acted on.
    pub paused_by_psi: Option<f64>,
    /// `some avg10` as read before the pass; `None` if the kernel has no PSI (then nothing
    /// pauses).
    pub psi_avg10: Option<f64>,
    /// The slowest region's time in `process_madvise`.
    pub worst_latency: Duration,
    /// How long the caller should wait before the next pass (latency back-off).
    pub next_interval: Duration,
    /// The stop flag ([`Executor::stop_flag`]) ended the pass early.
    pub stopped: bool,
}

/// The executor: selected targets, guard-rail state and running statistics.
pub struct Executor {
    rails: GuardRails,
    planner: Planner,
    targets: HashMap<i32, Pidfd>,
    back_off: Mutex<RegionBackOff>,
    bucket: Option<Mutex<TokenBucket>>,
    interval: IntervalScaler,
    stats: ExecutorStats,
    stop: Arc<AtomicBool>,
}

impl Executor {
    /// `planner` re-plans each region from pagemap before acting: the same policy and settings
    /// the plans were made with.
    pub fn new(rails: GuardRails, planner: Planner) -> Self {
        Self {
            rails,
            planner,
            targets: HashMap::new(),
            back_off: Mutex::new(RegionBackOff::new(rails.base_interval)),
            bucket: rails
                .max_rate
                .map(|rate| Mutex::new(TokenBucket::new(rate, PMD_SIZE, Instant::now()))),
            interval: IntervalScaler::new(rails.base_interval),
            stats: ExecutorStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// New guard rails and policy from the next pass on (SIGHUP re-read the config): a new
    /// token bucket when the rate changed, a new interval when the base interval did; the
    /// targets, back-offs and totals stay.
    pub fn reconfigure(&mut self, rails: GuardRails, planner: Planner) {
        if rails.max_rate != self.rails.max_rate {
            self.bucket = rails
                .max_rate
                .map(|rate| Mutex::new(TokenBucket::new(rate, PMD_SIZE, Instant::now())));
        }
        if rails.base_interval != self.rails.base_interval {
            self.interval = IntervalScaler::new(rails.base_interval);
        }
        self.rails = rails;
        self.planner = planner;
    }

    pub fn rails(&self) -> &GuardRails {
        &self.rails
    }

    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// Makes `pid` a target: opens its pidfd now, so that only this process is ever acted on.
    /// Selecting a pid that is selected already keeps the handle it has, even if that process
    /// has exited: a new process with the same pid is a new target only after
    /// [`Executor::forget`].
    pub fn select(&mut self, pid: i32) -> Result<(), PidfdError> {
        if let Entry::Vacant(slot) = self.targets.entry(pid) {
            slot.insert(Pidfd::open(pid)?);
        }
        Ok(())
    }

    /// Stops targeting `pid` and drops its back-off history.
    pub fn forget(&mut self, pid: i32) {
        self.targets.remove(&pid);
        attempt_lock(&self.back_off).forget_pid(pid);
    }

    /// Forgets every target that has exited; returns their pids, ascending.
    pub fn forget_exited(&mut self) -> Vec<i32> {
        let mut gone: Vec<i32> = self
            .targets
            .iter()
            .filter(|(_, fd)| !fd.is_alive())
            .map(|(&pid, _)| pid)
            .collect();
        gone.sort_unstable();
        for &pid in &gone {
            self.forget(pid);
        }
        gone
    }

    pub fn is_selected(&self, pid: i32) -> bool {
        self.targets.contains_key(&pid)
    }

    /// The selected pids, ascending.
    pub fn selected(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.targets.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// Setting this flag (from a signal handler's task, another thread) ends the pass in
    /// progress at the next region, also during a wait for rate tokens, and makes later passes
    /// return at once; clear it to run again.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The interval the latency back-off asks for now.
    pub fn interval(&self) -> Duration {
        self.interval.current()
    }

    pub fn stats(&self) -> &ExecutorStats {
        &self.stats
    }

    /// One pass over `plans`: every plan with a PMD decision gets an outcome, every smaller
    /// decision an advice record.
    pub fn execute(&mut self, plans: &[RegionPlan]) -> Pass {
        let advice: Vec<Advice> = plans
            .iter()
            .flat_map(|p| {
                p.below_pmd().map(|d| Advice {
                    pid: p.pid,
                    addr: p.addr,
                    offset: d.offset,
                    order: d.order,
                    max_ptes_none: self.planner.settings().max_ptes_none(),
                })
            })
            .collect();
        let psi_avg10 = psi::memory_some_avg10().ok();
        let paused_by_psi = psi_avg10.filter(|&v| v > self.rails.psi_limit);
        let mut pass = Pass {
            advice,
            psi_avg10,
            paused_by_psi,
            next_interval: self.interval.current(),
            ..Pass::default()
        };
        if paused_by_psi.is_some() || self.stop.load(Ordering::Relaxed) {
            pass.stopped = self.stop.load(Ordering::Relaxed);
            self.stats
                .record_pass(&[], &pass.advice, paused_by_psi.is_some(), Duration::ZERO);
            return pass;
        }
        attempt_lock(&self.back_off).prune(Instant::now());

        // Plans grouped by process, groups in order of first appearance.
        let mut groups: Vec<(i32, Vec<(usize, &RegionPlan)>)> = Vec::new();
        let mut group_of: HashMap<i32, usize> = HashMap::new();
        for (i, p) in plans.iter().enumerate().filter(|(_, p)| p.is_pmd()) {
            let g = *group_of.entry(p.pid).or_insert_with(|| {
                groups.push((p.pid, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push((i, p));
        }
        let ctx = PassContext {
            planner: &self.planner,
            dry_run: self.rails.dry_run,
            back_off: &self.back_off,
            bucket: self.bucket.as_ref(),
            stop: &self.stop,
        };
        let targets = &self.targets;
        let run = |g: &(i32, Vec<(usize, &RegionPlan)>)| run_target(&ctx, targets.get(&g.0), &g.1);
        let jobs = self.rails.jobs.clamp(1, groups.len().max(1));
        let mut outcomes: Vec<(usize, CollapseOutcome)> = if jobs == 1 {
            groups.iter().flat_map(run).collect()
        } else {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..jobs)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut mine = Vec::new();
                            while let Some(g) = groups.get(next.fetch_add(1, Ordering::Relaxed)) {
                                mine.extend(run(g));
                            }
                            mine
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    // A worker panicking is a bug here; its regions are simply missing.
                    .flat_map(|w| w.join().unwrap_or_default())
                    .collect()
            })
        };
        outcomes.sort_by_key(|&(i, _)| i);
        pass.outcomes = outcomes.into_iter().map(|(_, o)| o).collect();
        pass.stopped = self.stop.load(Ordering::Relaxed);
        pass.worst_latency = pass
            .outcomes
            .iter()
            .map(|o| o.latency)
            .max()
            .unwrap_or_default();
        pass.next_interval = self
            .interval
            .after_pass(pass.worst_latency, self.rails.max_latency);
        self.stats
            .record_pass(&pass.outcomes, &pass.advice, false, pass.worst_latency);
        pass
    }
}

fn attempt_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use collapse_common::{
        OccupancyBitmap,
        policy::{Decision, Policy, RegionState, Settings},
    };

    use super::*;

    fn planner() -> Planner {
        Planner::new(
            Policy::Pmd,
            Settings::default().with_max_ptes_none(255).unwrap(),
        )
    }

    fn plan(pid: i32, addr: u64, decisions: &[Decision]) -> RegionPlan {
        RegionPlan {
            pid,
            addr,
            state: RegionState::from_present(OccupancyBitmap::FULL),
            decisions: decisions.to_vec(),
            bloat_pages: 0,
        }
    }

    const PMD: Decision = Decision {
        offset: 0,
        order: 9,
    };

    #[test]
    fn unselected_processes_are_never_touched_and_small_decisions_are_advice() {
        let mut ex = Executor::new(
            GuardRails {
                psi_limit: f64::INFINITY,
                ..GuardRails::default()
            },
            planner(),
        );
        let me = std::process::id() as i32;
        let plans = [
            plan(me, 0x20_0000, &[PMD]),
            plan(
                me,
                0x40_0000,
                &[
                    Decision {
                        offset: 0,
                        order: 4,
                    },
                    Decision {
                        offset: 64,
                        order: 6,
                    },
                ],
            ),
            plan(me, 0x60_0000, &[]),
            plan(me + 1, 0x60_0000, &[PMD]),
        ];
        let pass = ex.execute(&plans);
        assert_eq!(pass.outcomes.len(), 2);
        assert!(pass.outcomes.iter().all(|o| o.result
            == CollapseResult::Skipped(SkipReason::NotSelected)
            && o.latency.is_zero()
            && o.order == 9));
        assert_eq!(
            pass.outcomes.iter().map(|o| o.pid).collect::<Vec<_>>(),
            [me, me + 1],
            "plan order"
        );
        assert_eq!(
            pass.advice
                .iter()
                .map(|a| (a.addr, a.offset, a.order, a.max_ptes_none))
                .collect::<Vec<_>>(),
            [(0x40_0000, 0, 4, 255), (0x40_0000, 64, 6, 255)]
        );
        assert_eq!(ex.stats().count_reason("skipped", "not-selected"), 2);
        assert_eq!(ex.stats().advice_at(4), 1);
        assert_eq!(pass.next_interval, Duration::from_secs(1));
    }

    #[test]
    fn pressure_over_the_limit_acts_on_nothing() {
        if psi::memory_some_avg10().is_err() {
            eprintln!("skipped: no PSI here");
            return;
        }
        let mut ex = Executor::new(
            GuardRails {
                psi_limit: -1.0,
                ..GuardRails::default()
            },
            planner(),
        );
        let pass = ex.execute(&[plan(1, 0x20_0000, &[PMD])]);
        assert!(pass.paused_by_psi.is_some());
        assert!(pass.outcomes.is_empty());
        assert_eq!(ex.stats().psi_pauses(), 1);
    }

    #[test]
    fn a_stopped_executor_does_nothing() {
        let mut ex = Executor::new(
            GuardRails {
                psi_limit: f64::INFINITY,
                ..GuardRails::default()
            },
            planner(),
        );
        ex.stop_flag().store(true, Ordering::Relaxed);
        let pass = ex.execute(&[plan(1, 0x20_0000, &[PMD])]);
        assert!(pass.stopped);
        assert!(pass.outcomes.is_empty());
    }

    #[test]
    fn selecting_keeps_the_first_handle() {
        let mut ex = Executor::new(GuardRails::default(), planner());
        let me = std::process::id() as i32;
        ex.select(me).unwrap();
        ex.select(me).unwrap();
        assert_eq!(ex.selected(), [me]);
        assert!(matches!(
            ex.select(4_194_305),
            Err(PidfdError::NoProcess { .. })
        ));
        assert!(ex.forget_exited().is_empty());
        ex.forget(me);
        assert!(!ex.is_selected(me));
    }
}
