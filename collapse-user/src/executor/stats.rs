//! Running totals over every pass, for the live view and the final summary.

use std::{collections::BTreeMap, time::Duration};

use collapse_common::{consts::PMD_SIZE, policy::MAX_ORDER};

use super::{
    latency::LatencyHistogram,
    outcome::{Advice, CollapseOutcome, CollapseResult},
};

/// What the executor has done since it was made.
#[derive(Clone, Debug, Default)]
pub struct ExecutorStats {
    passes: u64,
    psi_pauses: u64,
    /// Outcomes by (result name, reason).
    outcomes: BTreeMap<(&'static str, Option<&'static str>), u64>,
    /// Opt-outs by detail (`prctl`, `nohugepage`, `vma`).
    opt_outs: BTreeMap<&'static str, u64>,
    /// Advice records by order (index = order).
    advice: [u64; MAX_ORDER as usize + 1],
    /// Latency of every region that reached `process_madvise`.
    latency: LatencyHistogram,
    worst_pass_latency: Duration,
}

impl ExecutorStats {
    pub(crate) fn record_pass(
        &mut self,
        outcomes: &[CollapseOutcome],
        advice: &[Advice],
        paused: bool,
        worst: Duration,
    ) {
        self.passes += 1;
        if paused {
            self.psi_pauses += 1;
        }
        for o in outcomes {
            *self
                .outcomes
                .entry((o.result.result_name(), o.result.reason()))
                .or_default() += 1;
            if let Some(detail) = o.result.detail() {
                *self.opt_outs.entry(detail).or_default() += 1;
            }
            if !o.latency.is_zero() {
                self.latency.record(o.latency);
            }
        }
        for a in advice {
            if let Some(n) = self.advice.get_mut(usize::from(a.order)) {
                *n += 1;
            }
        }
        self.worst_pass_latency = self.worst_pass_latency.max(worst);
    }

    /// Passes run, paused ones included.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Passes that acted on nothing because memory pressure was over the limit.
    pub fn psi_pauses(&self) -> u64 {
        self.psi_pauses
    }

    /// Outcomes with result `result_name` (`collapsed`, ...), any reason.
    pub fn count(&self, result_name: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((r, _), _)| *r == result_name)
            .map(|(_, n)| n)
            .sum()
    }

    /// Outcomes with this result and reason (`("skipped", Some("opted-out"))`).
    pub fn count_reason(&self, result_name: &str, reason: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((r, why), _)| *r == result_name && *why == Some(reason))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every (result, reason) seen with its count, in name order.
    pub fn by_reason(&self) -> impl Iterator<Item = (&'static str, Option<&'static str>, u64)> {
        self.outcomes.iter().map(|(&(r, why), &n)| (r, why, n))
    }

    /// Opted-out skips by what opted out (`prctl`, `nohugepage`, `vma`).
    pub fn opt_outs(&self) -> impl Iterator<Item = (&'static str, u64)> {
        self.opt_outs.iter().map(|(&d, &n)| (d, n))
    }

    /// Advice records of `order`.
    pub fn advice_at(&self, order: u8) -> u64 {
        self.advice.get(usize::from(order)).copied().unwrap_or(0)
    }

    /// Advice records by order, only the orders that had some.
    pub fn advice_by_order(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..=MAX_ORDER)
            .map(|k| (k, self.advice_at(k)))
            .filter(|&(_, n)| n > 0)
    }

    /// Bytes made PMD-mapped by collapses.
    pub fn bytes_collapsed(&self) -> u64 {
        self.count(CollapseResult::Collapsed.result_name()) * PMD_SIZE
    }

    /// Latencies of every call to `process_madvise`.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// The slowest collapse of any pass.
    pub fn worst_latency(&self) -> Duration {
        self.worst_pass_latency
    }
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;
    use crate::executor::outcome::{Failure, OptOut, SkipReason};

    #[test]
    fn counts() {
        let o = |result, us| CollapseOutcome {
            pid: 1,
            addr: 0,
            order: 9,
            result,
            latency: Duration::from_micros(us),
        };
        let outcomes = [
            o(CollapseResult::Collapsed, 4000),
            o(CollapseResult::Collapsed, 5000),
            o(CollapseResult::AlreadyHuge, 0),
            o(
                CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Prctl)),
                0,
            ),
            o(
                CollapseResult::Skipped(SkipReason::OptedOut(OptOut::NoHugePage)),
                0,
            ),
            o(CollapseResult::Failed(Failure::Errno(Errno::EAGAIN)), 300),
        ];
        let advice = [Advice {
            pid: 1,
            addr: 0,
            offset: 0,
            order: 4,
            max_ptes_none: 0,
        }; 3];
        let mut s = ExecutorStats::default();
        s.record_pass(&outcomes, &advice, false, Duration::from_millis(5));
        s.record_pass(&[], &[], true, Duration::ZERO);
        assert_eq!(s.passes(), 2);
        assert_eq!(s.psi_pauses(), 1);
        assert_eq!(s.count("collapsed"), 2);
        assert_eq!(s.count("skipped"), 2);
        assert_eq!(s.count_reason("skipped", "opted-out"), 2);
        assert_eq!(s.count_reason("failed", "EAGAIN"), 1);
        assert_eq!(
            s.opt_outs().collect::<Vec<_>>(),
            [("nohugepage", 1), ("prctl", 1)]
        );
        assert_eq!(s.advice_by_order().collect::<Vec<_>>(), [(4, 3)]);
        assert_eq!(s.bytes_collapsed(), 4 << 20);
        assert_eq!(s.latency().count(), 3);
        assert_eq!(s.worst_latency(), Duration::from_millis(5));
    }
}
