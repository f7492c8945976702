//! Collapse latencies over a whole run in bounded memory: a log-bucketed histogram in
//! microseconds with 8 buckets per power of two, so a percentile is off by at most one eighth.

use std::time::Duration;

/// Buckets per power of two (as a shift).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for every u64 of microseconds.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A histogram of latencies.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_us: u64,
    sum_us: u128,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_us: 0,
            sum_us: 0,
        }
    }
}

/// The bucket holding `us`: values below `SUB` have a bucket each; above, the leading bit picks
/// the octave and the next `SUB_BITS` bits the bucket within it.
fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    let sub = (us >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The smallest value in bucket `i`, and the bucket's width.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, 1);
    }
    let e = i / SUB + u64::from(SUB_BITS) - 1;
    let sub = i % SUB;
    let width = 1u64 << (e - u64::from(SUB_BITS));
    ((SUB + sub) * width, width)
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
        self.sum_us += u128::from(us);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    pub fn mean(&self) -> Option<Duration> {
        (self.total > 0)
            .then(|| Duration::from_micros((self.sum_us / u128::from(self.total)) as u64))
    }

    /// The nearest-rank `q` quantile (`q` in 0..=1) to within one bucket: the middle of the
    /// bucket holding it, never above the largest value recorded. `None` with nothing recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return Some(Duration::from_micros((lo + width / 2).min(self.max_us)));
            }
        }
        Some(self.max())
    }

    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn buckets_tile_the_line() {
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (lo, width) = bucket_range(i);
            assert_eq!(lo, next, "bucket {i}");
            assert_eq!(bucket(lo), i);
            assert_eq!(bucket(lo + (width - 1)), i);
            next = match lo.checked_add(width) {
                Some(n) => n,
                None => {
                    assert_eq!(i, BUCKETS - 1);
                    break;
                }
            };
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn by_hand() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.p50(), None);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), Duration::from_millis(100));
        let p50 = h.p50().unwrap().as_micros() as f64;
        assert!((p50 - 50_000.0).abs() <= 50_000.0 / 8.0, "{p50}");
        let p99 = h.p99().unwrap().as_micros() as f64;
        assert!((p99 - 99_000.0).abs() <= 99_000.0 / 8.0, "{p99}");
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(h.mean(), Some(Duration::from_micros(50_500)));
        let mut one = LatencyHistogram::default();
        one.record(Duration::from_micros(3));
        assert_eq!(one.p99(), Some(Duration::from_micros(3)));
        one.merge(&h);
        assert_eq!(one.count(), 101);
    }

    proptest! {
        /// Every quantile lands in the bucket of the exact nearest-rank value: off by at most
        /// one eighth of it (or 1 µs below 8 µs).
        #[test]
        fn quantiles_within_one_bucket(
            values in proptest::collection::vec(0u64..10_000_000, 1..300),
            q in 0.0f64..=1.0,
        ) {
            let mut h = LatencyHistogram::default();
            for &v in &values {
                h.record(Duration::from_micros(v));
            }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
            let exact = sorted[rank - 1];
            let got = h.quantile(q).unwrap().as_micros() as u64;
            let (lo, width) = bucket_range(bucket(exact));
            prop_assert!(got >= lo && got < lo + width, "exact {exact}, got {got}");
            prop_assert!(got.abs_diff(exact) <= (exact / 8).max(1));
        }
    }
}
