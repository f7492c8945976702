//! The guard rails' arithmetic, with the clock passed in so it is tested without sleeping: the
//! byte-rate token bucket, the per-region failure back-off and the latency back-off of the
//! whole executor's interval.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A token bucket over bytes: `rate` bytes per second, bursts of up to `capacity` bytes.
///
/// [`TokenBucket::reserve`] always grants and says how long to wait before acting, so the
/// balance may go negative (a debt the refill pays back): callers holding the bucket behind a
/// lock reserve under it and sleep outside it, and the rate holds however many threads share it.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` bytes per second (at least 1), holding one second's worth or
    /// `burst` bytes, whichever is more, so one reservation of `burst` bytes always fits.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = rate.max(burst as f64);
        Self {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `bytes` and returns how long from `now` the caller must wait before using them.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        if now > self.last {
            let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.capacity);
            self.last = now;
        }
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Exponential back-off per region after failures: after the k-th failure in a row a region
/// waits `2^k × base` (at most `2^max_exponent × base`) before it is tried again. A success
/// forgets it; so does a long quiet spell (nothing tried for longer than the longest delay
/// after its back-off ended).
#[derive(Clone, Debug)]
pub struct RegionBackOff {
    base: Duration,
    max_exponent: u32,
    regions: HashMap<(i32, u64), BackOffEntry>,
}

#[derive(Clone, Copy, Debug)]
struct BackOffEntry {
    failures: u32,
    until: Instant,
}

impl RegionBackOff {
    /// Delays double up to 64 × base.
    pub const MAX_EXPONENT: u32 = 6;

    pub fn new(base: Duration) -> Self {
        Self {
            base,
            max_exponent: Self::MAX_EXPONENT,
            regions: HashMap::new(),
        }
    }

    /// The delay after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << failures.min(self.max_exponent))
    }

    /// Whether region (`pid`, `addr`) is still waiting at `now`.
    pub fn is_backing_off(&self, pid: i32, addr: u64, now: Instant) -> bool {
        self.regions
            .get(&(pid, addr))
            .is_some_and(|e| now < e.until)
    }

    /// Records a failure at `now`; returns the delay it now waits.
    pub fn failed(&mut self, pid: i32, addr: u64, now: Instant) -> Duration {
        let failures = self
            .regions
            .get(&(pid, addr))
            .map_or(1, |e| e.failures.saturating_add(1));
        let delay = self.delay(failures);
        self.regions.insert(
            (pid, addr),
            BackOffEntry {
                failures,
                // A base interval so long that this overflows means: not again in this run.
                until: now
                    .checked_add(delay)
                    .unwrap_or_else(|| now + Duration::from_secs(1 << 32)),
            },
        );
        delay
    }

    /// A success (or a region that no longer needs collapsing) clears its history.
    pub fn clear(&mut self, pid: i32, addr: u64) {
        self.regions.remove(&(pid, addr));
    }

    /// Drops everything about `pid`.
    pub fn forget_pid(&mut self, pid: i32) {
        self.regions.retain(|&(p, _), _| p != pid);
    }

    /// Drops entries whose back-off ended longer ago than the longest delay.
    pub fn prune(&mut self, now: Instant) {
        let keep = self.delay(self.max_exponent);
        self.regions.retain(|_, e| {
            now.checked_duration_since(e.until)
                .is_none_or(|d| d <= keep)
        });
    }

    /// Regions currently remembered.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

/// The executor's interval under the latency limit, as tcmalloc's usermode collapse does it: a
/// pass whose worst collapse stalled longer than the limit doubles the interval (up to
/// `MAX_FACTOR` × base), and each pass under the limit halves it back towards the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalScaler {
    base: Duration,
    current: Duration,
}

impl IntervalScaler {
    pub const MAX_FACTOR: u32 = 32;

    pub fn new(base: Duration) -> Self {
        Self {
            base,
            current: base,
        }
    }

    pub fn current(&self) -> Duration {
        self.current
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    /// Adjusts after a pass whose worst collapse latency was `worst`; returns the next
    /// interval.
    pub fn after_pass(&mut self, worst: Duration, limit: Duration) -> Duration {
        let max = self.base.saturating_mul(Self::MAX_FACTOR);
        self.current = if worst > limit {
            self.current.saturating_mul(2).min(max)
        } else {
            (self.current / 2).max(self.base)
        };
        self.current
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn bucket_by_hand() {
        let t0 = Instant::now();
        // 4 MiB/s, 2 MiB collapses: a full bucket holds two, then one every half second.
        let mut b = TokenBucket::new(4 * MIB, 2 * MIB, t0);
        assert_eq!(b.reserve(2 * MIB, t0), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t0), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t0), Duration::from_millis(500));
        assert_eq!(b.reserve(2 * MIB, t0), Duration::from_secs(1));
        // After the debt is paid (1 s) and another second of refill: one second's worth.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(b.reserve(2 * MIB, t2), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t2), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t2), Duration::from_millis(500));
        // A long idle spell saves up one second's worth, no more.
        let t12 = t2 + Duration::from_secs(10);
        assert_eq!(b.reserve(2 * MIB, t12), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t12), Duration::ZERO);
        assert_eq!(b.reserve(2 * MIB, t12), Duration::from_millis(500));
        // A rate below one collapse per second still lets one collapse through at once.
        let mut slow = TokenBucket::new(MIB, 2 * MIB, t0);
        assert_eq!(slow.reserve(2 * MIB, t0), Duration::ZERO);
        assert_eq!(slow.reserve(2 * MIB, t0), Duration::from_secs(2));
        // A clock that seems to go back refills nothing.
        let mut b = TokenBucket::new(4 * MIB, 2 * MIB, t2);
        b.reserve(4 * MIB, t2);
        assert_eq!(b.reserve(2 * MIB, t0), Duration::from_millis(500));
    }

    proptest! {
        /// Whatever the arrival times, what is granted by time T never exceeds the capacity
        /// plus rate × (T − start), and a lone reservation into a full bucket never waits.
        #[test]
        fn bucket_never_exceeds_the_rate(
            rate_mib in 1u64..64,
            gaps_ms in proptest::collection::vec(0u64..400, 1..60),
        ) {
            let t0 = Instant::now();
            let rate = rate_mib * MIB;
            let burst = 2 * MIB;
            let mut b = TokenBucket::new(rate, burst, t0);
            let capacity = (rate as f64).max(burst as f64);
            let mut now = t0;
            let mut grants: Vec<Instant> = Vec::new();
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                grants.push(now + b.reserve(burst, now));
            }
            grants.sort();
            for (i, t) in grants.iter().enumerate() {
                let granted = (i as f64 + 1.0) * burst as f64;
                let allowed = capacity + rate as f64 * t.duration_since(t0).as_secs_f64();
                // A microsecond of slack for Duration's rounding.
                prop_assert!(granted <= allowed + rate as f64 * 1e-6,
                    "{granted} bytes by {:?}, allowed {allowed}", t.duration_since(t0));
            }
            let mut fresh = TokenBucket::new(rate, burst, t0);
            prop_assert_eq!(fresh.reserve(burst, t0), Duration::ZERO);
        }

        /// The interval stays within [base, 32 × base], grows only after a slow pass and
        /// shrinks only after a fast one.
        #[test]
        fn interval_stays_in_bounds(slow in proptest::collection::vec(any::<bool>(), 0..100)) {
            let base = Duration::from_millis(250);
            let limit = Duration::from_millis(30);
            let mut s = IntervalScaler::new(base);
            for slow in slow {
                let before = s.current();
                let worst = if slow { limit * 2 } else { limit };
                let after = s.after_pass(worst, limit);
                prop_assert!(after >= base && after <= base * IntervalScaler::MAX_FACTOR);
                if slow { prop_assert!(after >= before) } else { prop_assert!(after <= before) }
            }
        }
    }

    #[test]
    fn back_off_doubles_and_clears() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = RegionBackOff::new(s);
        assert!(!b.is_backing_off(1, 0x20_0000, t0));
        assert_eq!(b.failed(1, 0x20_0000, t0), 2 * s);
        assert!(b.is_backing_off(1, 0x20_0000, t0 + s));
        assert!(!b.is_backing_off(1, 0x20_0000, t0 + 2 * s));
        // Other regions and other pids are not held back.
        assert!(!b.is_backing_off(1, 0x40_0000, t0));
        assert!(!b.is_backing_off(2, 0x20_0000, t0));
        let t2 = t0 + 2 * s;
        assert_eq!(b.failed(1, 0x20_0000, t2), 4 * s);
        assert_eq!(b.failed(1, 0x20_0000, t2), 8 * s);
        for _ in 0..10 {
            b.failed(1, 0x20_0000, t2);
        }
        assert_eq!(b.failed(1, 0x20_0000, t2), 64 * s, "capped");
        b.clear(1, 0x20_0000);
        assert!(!b.is_backing_off(1, 0x20_0000, t2));
        assert_eq!(
            b.failed(1, 0x20_0000, t2),
            2 * s,
            "a success restarts the count"
        );

        b.failed(2, 0x20_0000, t2);
        b.forget_pid(1);
        assert_eq!(b.len(), 1);
        // Long after its back-off ended, an entry is dropped.
        b.prune(t2 + 2 * s + 64 * s);
        assert_eq!(b.len(), 1);
        b.prune(t2 + 2 * s + 65 * s);
        assert!(b.is_empty());
    }

    #[test]
    fn interval_by_hand() {
        let base = Duration::from_secs(1);
        let limit = Duration::from_millis(30);
        let slow = Duration::from_millis(31);
        let mut s = IntervalScaler::new(base);
        assert_eq!(
            s.after_pass(limit, limit),
            base,
            "at the limit is not over it"
        );
        assert_eq!(s.after_pass(slow, limit), 2 * base);
        assert_eq!(s.after_pass(slow, limit), 4 * base);
        for _ in 0..10 {
            s.after_pass(slow, limit);
        }
        assert_eq!(s.current(), 32 * base);
        assert_eq!(s.after_pass(Duration::ZERO, limit), 16 * base);
        for _ in 0..10 {
            s.after_pass(Duration::ZERO, limit);
        }
        assert_eq!(s.current(), base);
    }
}
