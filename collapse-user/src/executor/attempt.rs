//! One target's share of a pass: every PMD decision of one process, in order, serially (its
//! collapses serialise on its `mmap_lock` anyway). Steps per region, each of which may end it:
//! opt-outs, re-check against pagemap and kpageflags, back-off, dry-run, rate, the collapse
//! (retried once on EAGAIN), and the confirm.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collapse_common::{
    consts::{PMD_ORDER, PMD_SIZE},
    policy::Planner,
};
use nix::errno::Errno;

use super::{
    outcome::{COLLAPSE_ORDER, CollapseOutcome, CollapseResult, Failure, OptOut, SkipReason},
    rails::{RegionBackOff, TokenBucket},
};
use crate::{
    kernel::{
        eligibility::{self, CollapseVmas, EligibilityError, VmaVerdict},
        pagemap::{PagemapError, PagemapReader, RegionTruth},
        pidfd::Pidfd,
    },
    planner::RegionPlan,
};

/// What every worker of one pass shares.
pub(super) struct PassContext<'a> {
    pub planner: &'a Planner,
    pub dry_run: bool,
    pub back_off: &'a Mutex<RegionBackOff>,
    pub bucket: Option<&'a Mutex<TokenBucket>>,
    pub stop: &'a AtomicBool,
}

/// The longest single sleep while waiting for tokens, so a stop request is seen promptly.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Outcomes for `plans` (all of process `pid`, each with its index in the pass), in order.
/// `pidfd` is `None` for a process that was never selected. Regions not reached because the
/// pass was stopped have no outcome.
pub(super) fn run_target(
    ctx: &PassContext<'_>,
    pidfd: Option<&Pidfd>,
    plans: &[(usize, &RegionPlan)],
) -> Vec<(usize, CollapseOutcome)> {
    let all = |result: CollapseResult| -> Vec<(usize, CollapseOutcome)> {
        plans
            .iter()
            .map(|&(i, p)| (i, outcome(p, result, Duration::ZERO)))
            .collect()
    };
    let Some(pidfd) = pidfd else {
        return all(CollapseResult::Skipped(SkipReason::NotSelected));
    };
    if !pidfd.is_alive() {
        return all(CollapseResult::Skipped(SkipReason::Exited));
    }
    let pid = pidfd.pid();
    let vmas = match target_facts(pid) {
        Ok(TargetFacts::ThpDisabled) => {
            return all(CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Prctl)));
        }
        Ok(TargetFacts::Vmas(vmas)) => vmas,
        Err(EligibilityError::NoProcess { .. }) => {
            return all(CollapseResult::Skipped(SkipReason::Exited));
        }
        Err(_) if !pidfd.is_alive() => return all(CollapseResult::Skipped(SkipReason::Exited)),
        Err(_) => return all(CollapseResult::Failed(Failure::Unreadable)),
    };
    // /proc is looked up by pid number: the facts are this process's only if it is still
    // alive after reading them (a pid is reused only once its process has exited and been
    // reaped).
    if !pidfd.is_alive() {
        return all(CollapseResult::Skipped(SkipReason::Exited));
    }
    let mut reader = match PagemapReader::open(pid) {
        Ok(r) => r,
        Err(PagemapError::NoProcess { .. }) => {
            return all(CollapseResult::Skipped(SkipReason::Exited));
        }
        Err(_) => return all(CollapseResult::Failed(Failure::Unreadable)),
    };
    // The VMA list once per pass, not once per read: a range unmapped since reads as not
    // populated (`unmapped`).
    let anon = match reader.anon_vmas() {
        Ok(a) => a,
        Err(PagemapError::NoProcess { .. }) => {
            return all(CollapseResult::Skipped(SkipReason::Exited));
        }
        Err(_) => return all(CollapseResult::Failed(Failure::Unreadable)),
    };
    let mut out = Vec::with_capacity(plans.len());
    let mut target = Target {
        pidfd,
        vmas: &vmas,
        anon: &anon,
        reader: &mut reader,
    };
    for (n, &(i, plan)) in plans.iter().enumerate() {
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        let Some((result, latency)) = target.attempt(ctx, plan) else {
            break;
        };
        out.push((i, outcome(plan, result, latency)));
        if result == CollapseResult::Skipped(SkipReason::Exited) {
            // The rest of this process's regions go the same way, without asking /proc.
            out.extend(plans[n + 1..].iter().map(|&(i, p)| {
                (
                    i,
                    outcome(
                        p,
                        CollapseResult::Skipped(SkipReason::Exited),
                        Duration::ZERO,
                    ),
                )
            }));
            break;
        }
    }
    out
}

fn outcome(plan: &RegionPlan, result: CollapseResult, latency: Duration) -> CollapseOutcome {
    CollapseOutcome {
        pid: plan.pid,
        addr: plan.addr,
        order: COLLAPSE_ORDER,
        result,
        latency,
    }
}

enum TargetFacts {
    ThpDisabled,
    Vmas(CollapseVmas),
}

/// The per-process facts, read once per pass: the prctl opt-out, then smaps.
fn target_facts(pid: i32) -> Result<TargetFacts, EligibilityError> {
    if eligibility::thp_disabled(pid)? {
        return Ok(TargetFacts::ThpDisabled);
    }
    Ok(TargetFacts::Vmas(CollapseVmas::read(pid)?))
}

/// One selected, live process during a pass.
struct Target<'a> {
    pidfd: &'a Pidfd,
    vmas: &'a CollapseVmas,
    /// Its anonymous VMAs as of the start of the pass.
    anon: &'a [std::ops::Range<u64>],
    reader: &'a mut PagemapReader,
}

impl Target<'_> {
    /// The result for one region and the time spent in `process_madvise`; `None` if the pass
    /// was stopped before the region was acted on.
    fn attempt(
        &mut self,
        ctx: &PassContext<'_>,
        plan: &RegionPlan,
    ) -> Option<(CollapseResult, Duration)> {
        let addr = plan.addr;
        let pid = self.pidfd.pid();
        let skip = |reason| Some((CollapseResult::Skipped(reason), Duration::ZERO));
        match self.vmas.verdict(addr) {
            VmaVerdict::Eligible => {}
            VmaVerdict::NoHugePage => return skip(SkipReason::OptedOut(OptOut::NoHugePage)),
            VmaVerdict::NotCovered | VmaVerdict::Unsuitable => {
                return skip(SkipReason::OptedOut(OptOut::Vma));
            }
            VmaVerdict::Unmapped => return skip(SkipReason::Unmapped),
        }
        if let Err(result) = self.recheck(ctx.planner, addr) {
            if result == CollapseResult::AlreadyHuge {
                lock(ctx.back_off).clear(pid, addr);
            }
            return Some((result, Duration::ZERO));
        }
        if lock(ctx.back_off).is_backing_off(pid, addr, Instant::now()) {
            return skip(SkipReason::BackingOff);
        }
        if ctx.dry_run {
            return skip(SkipReason::DryRun);
        }
        if let Some(bucket) = ctx.bucket {
            let wait = lock(bucket).reserve(PMD_SIZE, Instant::now());
            if !sleep_unless_stopped(wait, ctx.stop) {
                return None;
            }
        }
        let t0 = Instant::now();
        let mut called = self.pidfd.collapse(addr, PMD_SIZE);
        if called == Err(Errno::EAGAIN) {
            called = self.pidfd.collapse(addr, PMD_SIZE);
        }
        let latency = t0.elapsed();
        let result = match called {
            Ok(()) => self.confirm(addr),
            Err(Errno::ESRCH) => CollapseResult::Skipped(SkipReason::Exited),
            Err(e) => self.explain(addr, e),
        };
        match result {
            CollapseResult::Collapsed => lock(ctx.back_off).clear(pid, addr),
            CollapseResult::Failed(_) => {
                lock(ctx.back_off).failed(pid, addr, Instant::now());
            }
            _ => {}
        }
        Some((result, latency))
    }

    /// pagemap says what is true now: `Err` with the result if the region is not to be
    /// collapsed.
    fn recheck(&mut self, planner: &Planner, addr: u64) -> Result<(), CollapseResult> {
        let truth = self.read(addr)?;
        if truth.vma_mask.is_empty() || !truth.is_populated() {
            return Err(CollapseResult::Skipped(SkipReason::Unmapped));
        }
        if truth.pmd_mapped {
            return Err(CollapseResult::AlreadyHuge);
        }
        let fresh = planner.plan(&truth.state());
        if !fresh.decisions().iter().any(|d| d.order == PMD_ORDER) {
            return Err(CollapseResult::Skipped(SkipReason::BelowThreshold));
        }
        Ok(())
    }

    /// After `process_madvise` returned 0, which it also does for a range that was or became
    /// PMD-mapped by other means: only pagemap tells a collapse.
    fn confirm(&mut self, addr: u64) -> CollapseResult {
        match self.read(addr) {
            Ok(truth) if truth.pmd_mapped => CollapseResult::Collapsed,
            Ok(_) => CollapseResult::Failed(Failure::Unconfirmed),
            Err(result) => result,
        }
    }

    /// What a failed call means: the process or the range may have gone, or opted out since
    /// the checks (MADV_COLLAPSE answers EINVAL to an opt-out and ENOMEM or EFAULT to an
    /// unmapped range, `mm/madvise.c`, `mm/khugepaged.c` `madvise_collapse_errno`).
    fn explain(&mut self, addr: u64, e: Errno) -> CollapseResult {
        let failed = CollapseResult::Failed(Failure::Errno(e));
        if !self.pidfd.is_alive() {
            return CollapseResult::Skipped(SkipReason::Exited);
        }
        match self.read(addr) {
            Ok(t) if t.vma_mask.is_empty() || !t.is_populated() => {
                return CollapseResult::Skipped(SkipReason::Unmapped);
            }
            Ok(_) => {}
            Err(CollapseResult::Skipped(SkipReason::Exited)) => {
                return CollapseResult::Skipped(SkipReason::Exited);
            }
            Err(_) => return failed,
        }
        if e != Errno::EINVAL {
            return failed;
        }
        let pid = self.pidfd.pid();
        let opted_out = match target_facts(pid) {
            Ok(TargetFacts::ThpDisabled) => Some(OptOut::Prctl),
            Ok(TargetFacts::Vmas(vmas)) => match vmas.verdict(addr) {
                VmaVerdict::NoHugePage => Some(OptOut::NoHugePage),
                VmaVerdict::NotCovered | VmaVerdict::Unsuitable => Some(OptOut::Vma),
                VmaVerdict::Unmapped => {
                    return CollapseResult::Skipped(SkipReason::Unmapped);
                }
                VmaVerdict::Eligible => None,
            },
            Err(_) => None,
        };
        match opted_out {
            Some(o) if self.pidfd.is_alive() => CollapseResult::Skipped(SkipReason::OptedOut(o)),
            _ => failed,
        }
    }

    /// The region's truth, or the result that reading it implies (`exited`, `unreadable`).
    fn read(&mut self, addr: u64) -> Result<RegionTruth, CollapseResult> {
        let exited = CollapseResult::Skipped(SkipReason::Exited);
        match self.reader.read_region_within(self.anon, addr) {
            // The VMA list behind a read is looked up by pid number: see `run_target`.
            Ok(t) if self.pidfd.is_alive() => Ok(t),
            Ok(_) | Err(PagemapError::NoProcess { .. }) => Err(exited),
            Err(_) if !self.pidfd.is_alive() => Err(exited),
            Err(_) => Err(CollapseResult::Failed(Failure::Unreadable)),
        }
    }
}

/// A poisoned lock only means another worker panicked mid-update of plain counters: go on.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sleeps `wait`, in slices, unless `stop` is set; whether it slept it all.
fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + wait;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeping_stops_when_asked() {
        let stop = AtomicBool::new(false);
        assert!(sleep_unless_stopped(Duration::ZERO, &stop));
        assert!(sleep_unless_stopped(Duration::from_millis(5), &stop));
        stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        assert!(!sleep_unless_stopped(Duration::from_secs(60), &stop));
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
