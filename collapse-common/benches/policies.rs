//! Regions planned per second, per policy: the engine must keep up with snapshots of every
//! region of every traced process (targets: 10 M/s for `pmd` and `merged`, 2 M/s for `seed`
//! and `scaled`, on one core).
//!
//! One million regions are generated once with a fixed seed: a quarter each of dense (~90 %
//! present), sparse (~5 %), clustered runs and half-full random occupancy.

use std::{hint::black_box, time::Duration};

use collapse_common::{
    OccupancyBitmap,
    policy::{OrderSet, Plan, Planner, Policy, RegionState, Settings},
};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const REGIONS: usize = 1_000_000;

/// splitmix64: a fixed-seed generator that needs no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn words(rng: &mut SplitMix, word: impl Fn(&mut SplitMix) -> u64) -> OccupancyBitmap {
    let mut b = OccupancyBitmap::EMPTY;
    for w in &mut b.words {
        *w = word(rng);
    }
    b
}

fn regions() -> Vec<RegionState> {
    let mut rng = SplitMix(0x5eed_c011_a95e);
    (0..REGIONS)
        .map(|i| {
            let present = match i % 4 {
                // 1 - (1/8)(3/4): 90.6 % of bits set.
                0 => words(&mut rng, |r| {
                    !(r.next() & r.next() & r.next() & (r.next() | r.next()))
                }),
                // (1/16)(3/4): 4.7 %.
                1 => words(&mut rng, |r| {
                    r.next() & r.next() & r.next() & r.next() & (r.next() | r.next())
                }),
                // 1 to 8 runs of up to 128 pages.
                2 => {
                    let mut b = OccupancyBitmap::EMPTY;
                    for _ in 0..=rng.below(8) {
                        let start = rng.below(512) as usize;
                        b.set_range(start, start + 1 + rng.below(128) as usize);
                    }
                    b
                }
                _ => words(&mut rng, SplitMix::next),
            };
            RegionState::from_present(present)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let regions = regions();
    let mixes = [
        (
            "n256_all_orders",
            Settings::default()
                .with_max_ptes_none(256)
                .expect("256 is a valid max_ptes_none")
                .with_orders(OrderSet::ALL),
        ),
        ("n511_pmd_only", Settings::default()),
        // The hardest mix for `merged`: only full ranges qualify, so most regions get many
        // small decisions.
        (
            "n0_all_orders",
            Settings::default()
                .with_max_ptes_none(0)
                .expect("0 is a valid max_ptes_none")
                .with_orders(OrderSet::ALL),
        ),
    ];
    for (mix, settings) in mixes {
        let mut group = c.benchmark_group(format!("plan_{mix}"));
        group
            .throughput(Throughput::Elements(REGIONS as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for policy in Policy::ALL {
            group.bench_function(policy.name(), |b| {
                // As the planner runs a policy over a snapshot: thresholds worked out once,
                // one plan reused.
                let planner = Planner::new(policy, settings);
                let mut p = Plan::EMPTY;
                b.iter(|| {
                    let mut sink = 0u64;
                    for region in &regions {
                        planner.plan_into(black_box(region), &mut p);
                        sink += p.decisions().len() as u64 + u64::from(p.bloat_pages());
                    }
                    black_box(sink)
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
