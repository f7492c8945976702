//! Property tests of the policy engine against policies.md.
//!
//! The `reference` module re-implements every policy slowly and literally, bit by bit, the
//! way policies.md words it (the `merged` walk with o and k, the `scaled` and `seed` stacks);
//! the fast engine must agree with it on every generated region. The other properties check
//! the output against the definitions directly.

use collapse_common::{
    OccupancyBitmap,
    policy::{Creep, Decision, OrderSet, Plan, Policy, RegionState, Settings, plan, plan_into},
};
use proptest::prelude::*;

const PTES: usize = 512;

/// Literal implementations of policies.md, written for clarity, not speed.
mod reference {
    use super::*;

    /// "Occupied ... means present or swap."
    pub fn occupied(r: &RegionState, start: usize, len: usize) -> u32 {
        (start..start + len)
            .filter(|&i| r.present.get(i) || r.swap.get(i))
            .count() as u32
    }

    /// "Below order 9 a range that contains any swap or shared PTE is refused."
    pub fn refused_below_pmd(r: &RegionState, start: usize, len: usize) -> bool {
        (start..start + len).any(|i| r.swap.get(i) || r.shared.get(i))
    }

    /// "If popcount(swap) > max_ptes_swap or popcount(shared) > max_ptes_shared, the region
    /// gets no decision at all."
    pub fn gate(r: &RegionState, s: &Settings) -> bool {
        let swap = (0..PTES).filter(|&i| r.swap.get(i)).count();
        let shared = (0..PTES).filter(|&i| r.shared.get(i)).count();
        swap <= usize::from(s.max_ptes_swap()) && shared <= usize::from(s.max_ptes_shared())
    }

    /// The count rule shared by `pmd`, `merged` and `scaled`: at least 2^k − allowed
    /// occupied PTEs, at least one, and below 9 no swap or shared PTE.
    fn count_rule(r: &RegionState, o: usize, k: u8, allowed: u32) -> bool {
        let len = 1usize << k;
        if k < 9 && refused_below_pmd(r, o, len) {
            return false;
        }
        let occ = occupied(r, o, len);
        occ >= 1 && occ + allowed >= len as u32
    }

    pub fn pmd_qualifies(r: &RegionState, s: &Settings) -> bool {
        let occ = occupied(r, 0, PTES);
        s.orders().contains(9) && occ >= 1 && 512 - occ <= u32::from(s.max_ptes_none())
    }

    pub fn merged_allowed(s: &Settings, k: u8) -> u32 {
        let n = u32::from(s.max_ptes_none());
        match (k, n) {
            (9, n) => n,
            (_, 0) => 0,
            (k, 511) => (1 << k) - 1,
            _ => 0,
        }
    }

    pub fn merged_qualifies(r: &RegionState, s: &Settings, o: usize, k: u8) -> bool {
        count_rule(r, o, k, merged_allowed(s, k))
    }

    pub fn scaled_allowed(s: &Settings, k: u8) -> u32 {
        let n = u32::from(s.max_ptes_none());
        if k == 9 { n } else { n.min(255) >> (9 - k) }
    }

    pub fn scaled_qualifies(r: &RegionState, s: &Settings, o: usize, k: u8) -> bool {
        count_rule(r, o, k, scaled_allowed(s, k))
    }

    /// "Chunk i is utilised iff its empty PTEs (c − occupied) ≤ n >> (9 − m)."
    pub fn chunk_utilised(r: &RegionState, s: &Settings, chunk: usize) -> bool {
        let m = s.chunk_order();
        let c = 1usize << m;
        let empty = c as u32 - occupied(r, chunk * c, c);
        empty <= u32::from(s.max_ptes_none()) >> (9 - m)
    }

    /// "used = (utilised chunks in it) × c, and qualifies iff used ≥ 2^k − (n >> (9 − k))
    /// and used ≥ 1", with the swap/shared rule of "Terms" below 9 and at least one
    /// occupied PTE.
    pub fn seed_qualifies(r: &RegionState, s: &Settings, o: usize, k: u8) -> bool {
        let m = s.chunk_order();
        let c = 1usize << m;
        let len = 1usize << k;
        if k < m || (k < 9 && refused_below_pmd(r, o, len)) || occupied(r, o, len) == 0 {
            return false;
        }
        let used = (o / c..(o + len) / c)
            .filter(|&i| chunk_utilised(r, s, i))
            .count()
            * c;
        let n = usize::from(s.max_ptes_none());
        used + (n >> (9 - k)) >= len && used >= 1
    }

    pub fn qualifies(policy: Policy, r: &RegionState, s: &Settings, o: usize, k: u8) -> bool {
        match policy {
            Policy::Pmd => o == 0 && k == 9 && pmd_qualifies(r, s),
            Policy::Merged => merged_qualifies(r, s, o, k),
            Policy::Scaled => scaled_qualifies(r, s, o, k),
            Policy::Seed => seed_qualifies(r, s, o, k),
        }
    }

    fn pmd(r: &RegionState, s: &Settings) -> Vec<(u16, u8)> {
        if pmd_qualifies(r, s) {
            vec![(0, 9)]
        } else {
            vec![]
        }
    }

    /// "Walk: offset o = 0, order k = 9. While o < 512: ..."
    fn merged(r: &RegionState, s: &Settings) -> Vec<(u16, u8)> {
        let e = s.orders();
        let mut out = Vec::new();
        let (mut o, mut k) = (0usize, 9u8);
        while o < 512 {
            loop {
                // 1.
                if e.contains(k) && merged_qualifies(r, s, o, k) {
                    out.push((o as u16, k));
                    break;
                }
                // 2.
                if k > 2 && (2..k).any(|j| e.contains(j)) {
                    k -= 1;
                    continue;
                }
                break;
            }
            // 3.
            o += 1 << k;
            k = (o.trailing_zeros() as u8).min(9);
        }
        out
    }

    /// "Depth-first search with an explicit stack, starting with (0, 9). Pop (o, k). If
    /// k ∈ E and [qualifies]: decide (o, k) and do not descend. Otherwise, if k > lowest,
    /// push (o + 2^(k−1), k − 1) and then (o, k − 1)."
    fn stack_search(
        s: &Settings,
        lowest: u8,
        qualifies: impl Fn(usize, u8) -> bool,
    ) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        let mut stack = vec![(0usize, 9u8)];
        while let Some((o, k)) = stack.pop() {
            if s.orders().contains(k) && qualifies(o, k) {
                out.push((o as u16, k));
            } else if k > lowest {
                stack.push((o + (1 << (k - 1)), k - 1));
                stack.push((o, k - 1));
            }
        }
        out
    }

    pub fn decisions(policy: Policy, r: &RegionState, s: &Settings) -> Vec<(u16, u8)> {
        if !gate(r, s) {
            return vec![];
        }
        match policy {
            Policy::Pmd => pmd(r, s),
            Policy::Merged => merged(r, s),
            Policy::Scaled => stack_search(s, 2, |o, k| scaled_qualifies(r, s, o, k)),
            // "descending while k > m"
            Policy::Seed => stack_search(s, s.chunk_order(), |o, k| seed_qualifies(r, s, o, k)),
        }
    }

    /// "Bloat of a decision = 2^k − (occupied PTEs in its range)."
    pub fn bloat(r: &RegionState, decisions: &[(u16, u8)]) -> u32 {
        decisions
            .iter()
            .map(|&(o, k)| (1u32 << k) - occupied(r, usize::from(o), 1 << k))
            .sum()
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bits set with probability `per_mille` / 1000.
fn random_bits(seed: u64, per_mille: u64) -> OccupancyBitmap {
    let mut state = seed;
    let mut b = OccupancyBitmap::EMPTY;
    for i in 0..PTES {
        if splitmix(&mut state) % 1000 < per_mille {
            b.set(i);
        }
    }
    b
}

/// A few runs, some aligned to a random order so that whole ranges fill up.
fn clustered(seed: u64) -> OccupancyBitmap {
    let mut state = seed;
    let mut b = OccupancyBitmap::EMPTY;
    let runs = 1 + splitmix(&mut state) % 8;
    for _ in 0..runs {
        let order = splitmix(&mut state) % 10;
        let mut start = (splitmix(&mut state) % 512) as usize;
        if splitmix(&mut state).is_multiple_of(2) {
            start &= !((1 << order) - 1);
        }
        let len = (splitmix(&mut state) % (1 << order) + 1) as usize;
        b.set_range(start, start + len);
    }
    b
}

fn bitmap() -> impl Strategy<Value = OccupancyBitmap> {
    prop_oneof![
        any::<u64>().prop_map(|s| random_bits(s, 900)),
        any::<u64>().prop_map(|s| random_bits(s, 980)),
        any::<u64>().prop_map(|s| random_bits(s, 50)),
        any::<u64>().prop_map(|s| random_bits(s, 500)),
        any::<u64>().prop_map(clustered),
        any::<[u64; 8]>().prop_map(|words| OccupancyBitmap { words }),
        Just(OccupancyBitmap::FULL),
        Just(OccupancyBitmap::EMPTY),
    ]
}

/// Swap or shared bits: usually none, sometimes a few, sometimes many (to hit the gate).
fn side_bits() -> impl Strategy<Value = OccupancyBitmap> {
    prop_oneof![
        4 => Just(OccupancyBitmap::EMPTY),
        2 => any::<u64>().prop_map(|s| random_bits(s, 5)),
        1 => any::<u64>().prop_map(|s| random_bits(s, 200)),
        1 => (0usize..512, 1usize..80).prop_map(|(s, l)| OccupancyBitmap::from_range(s, s + l)),
    ]
}

fn region() -> impl Strategy<Value = RegionState> {
    (bitmap(), side_bits(), side_bits(), any::<u8>()).prop_map(|(present, swap, shared, mix)| {
        // Shared pages are mapped pages, so mostly a subset of present; swap PTEs map no
        // page, so mostly outside present. Sometimes neither, to check the engine does not
        // rely on it.
        let (swap, shared) = if mix % 4 == 0 {
            (swap, shared)
        } else {
            (swap.difference(&present), shared.intersection(&present))
        };
        RegionState {
            present,
            swap,
            shared,
        }
    })
}

fn max_ptes_none() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(511),
        Just(255),
        Just(256),
        Just(447),
        Just(64),
        0u16..=511
    ]
}

fn orders() -> impl Strategy<Value = OrderSet> {
    prop_oneof![
        Just(OrderSet::ALL),
        Just(OrderSet::PMD),
        any::<u8>().prop_map(|bits| {
            OrderSet::from_orders((2u8..=9).filter(|k| bits >> (k - 2) & 1 == 1))
                .expect("orders 2..=9 are valid")
        }),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    let limit = || prop_oneof![Just(64u16), Just(256), Just(0), 0u16..=511];
    (max_ptes_none(), limit(), limit(), orders(), 2u8..=8).prop_map(|(n, sw, sh, e, m)| {
        Settings::new(n, sw, sh, e, m).expect("generated settings are in range")
    })
}

fn pairs(p: &Plan) -> Vec<(u16, u8)> {
    p.decisions().iter().map(|d| (d.offset, d.order)).collect()
}

/// Ascending, non-overlapping, aligned, enabled, qualifying, at least one occupied PTE,
/// bloat as defined: checked from the definitions, not from the engine.
fn check_plan(
    policy: Policy,
    r: &RegionState,
    s: &Settings,
    p: &Plan,
) -> Result<(), TestCaseError> {
    let mut next_free = 0u32;
    for &Decision { offset, order } in p.decisions() {
        let (o, len) = (u32::from(offset), 1u32 << order);
        prop_assert!(
            o >= next_free,
            "{policy}: ({offset},{order}) overlaps or is out of order"
        );
        prop_assert_eq!(o % len, 0, "{}: ({},{}) misaligned", policy, offset, order);
        prop_assert!(o + len <= 512);
        prop_assert!(
            s.orders().contains(order),
            "{policy}: order {order} not enabled"
        );
        if policy == Policy::Seed {
            prop_assert!(order >= s.chunk_order());
        }
        prop_assert!(reference::occupied(r, o as usize, len as usize) >= 1);
        prop_assert!(
            reference::qualifies(policy, r, s, o as usize, order),
            "{policy}: ({offset},{order}) does not meet its threshold"
        );
        next_free = o + len;
    }
    prop_assert_eq!(p.bloat_pages(), reference::bloat(r, &pairs(p)));
    prop_assert_eq!(
        p.covered_pages(),
        p.decisions().iter().map(|d| 1u32 << d.order).sum::<u32>()
    );
    let by_order: u32 = (2..=9).map(|k| p.pages_at_order(k)).sum();
    prop_assert_eq!(by_order, p.covered_pages());
    if !reference::gate(r, s) {
        prop_assert!(p.is_empty(), "{policy}: decisions past a failed gate");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// The strongest check: the fast engine equals the literal reading of policies.md.
    #[test]
    fn engine_equals_reference(r in region(), s in settings(), dirty in region()) {
        // A reused plan starts out holding another region's decisions.
        let mut reused = plan(Policy::Scaled, &dirty, &s.with_orders(OrderSet::ALL));
        for policy in Policy::ALL {
            let p = plan(policy, &r, &s);
            plan_into(policy, &r, &s, &mut reused);
            prop_assert_eq!(reused.decisions(), p.decisions());
            prop_assert_eq!(reused, p);
            let want = reference::decisions(policy, &r, &s);
            prop_assert_eq!(pairs(&p), want.clone(), "{}", policy);
            prop_assert_eq!(p.bloat_pages(), reference::bloat(&r, &want), "{} bloat", policy);
        }
    }

    #[test]
    fn plans_meet_the_definitions(r in region(), s in settings()) {
        for policy in Policy::ALL {
            check_plan(policy, &r, &s, &plan(policy, &r, &s))?;
        }
    }

    /// With E = {9}, `merged` is khugepaged before 7.2.
    #[test]
    fn merged_is_pmd_when_only_pmd_is_enabled(r in region(), s in settings()) {
        let s = s.with_orders(OrderSet::PMD);
        prop_assert_eq!(plan(Policy::Merged, &r, &s), plan(Policy::Pmd, &r, &s));
    }

    /// policies.md "`seed`" notes: n = 0 means only full ranges, n = 511 takes the PMD
    /// whenever one page is occupied and 9 ∈ E. n = 0 fills no hole under any policy.
    #[test]
    fn extreme_max_ptes_none(r in region(), s in settings()) {
        let s0 = s.with_max_ptes_none(0).expect("0 is valid");
        for policy in Policy::ALL {
            prop_assert_eq!(plan(policy, &r, &s0).bloat_pages(), 0);
        }
        let s511 = s.with_max_ptes_none(511).expect("511 is valid").with_orders(OrderSet::ALL);
        let any = !r.present.union(&r.swap).is_empty() && reference::gate(&r, &s511);
        for policy in Policy::ALL {
            let want: &[(u16, u8)] = if any { &[(0, 9)] } else { &[] };
            prop_assert_eq!(pairs(&plan(policy, &r, &s511)), want);
        }
    }

    /// Creep: coverage and bloat never shrink, every pass is a valid plan of the current
    /// state with the ranges already inside a large enough folio left out, and `merged`
    /// reaches its fixed point at the second pass.
    #[test]
    fn creep_only_grows(r in region(), s in settings()) {
        for policy in Policy::ALL {
            let mut creep = Creep::new(&r);
            let (mut present, mut covered, mut bloat) = (r.present.count(), 0, 0);
            let mut folio = [None::<u8>; 512];
            for pass_no in 0..12 {
                let before = *creep.state();
                let pass = creep.pass(policy, &s);
                // The pass = the reference plan of the state before it, minus ranges already
                // inside one folio of their order or larger.
                let want: Vec<(u16, u8)> = reference::decisions(policy, &before, &s)
                    .into_iter()
                    .filter(|&(o, k)| folio[usize::from(o)].is_none_or(|f| f < k))
                    .collect();
                prop_assert_eq!(pairs(&pass.plan), want.clone(), "{} pass {}", policy, pass_no);
                prop_assert_eq!(pass.plan.bloat_pages(), reference::bloat(&before, &want));
                prop_assert_eq!(pass.fixed_point, want.is_empty());
                for &(o, k) in &want {
                    let range = usize::from(o)..usize::from(o) + (1 << k);
                    folio[range].fill(Some(k));
                }
                let now = creep.state();
                for (i, f) in folio.iter().enumerate() {
                    if f.is_some() {
                        prop_assert!(now.present.get(i) && !now.swap.get(i) && !now.shared.get(i));
                    }
                    prop_assert_eq!(creep.folio_order(i), *f);
                }
                // "total bloat against the ORIGINAL occupancy"
                let total = (0..512)
                    .filter(|&i| now.present.get(i) && !r.present.get(i) && !r.swap.get(i))
                    .count() as u32;
                prop_assert_eq!(pass.bloat_pages_total, total);
                prop_assert!(now.present.count() >= present);
                prop_assert!(creep.covered_pages() >= covered);
                prop_assert!(pass.bloat_pages_total >= bloat);
                present = now.present.count();
                covered = creep.covered_pages();
                bloat = pass.bloat_pages_total;
                if policy == Policy::Merged && pass_no == 1 {
                    prop_assert!(pass.fixed_point, "merged crept");
                }
                if pass.fixed_point {
                    // A fixed point stays one.
                    prop_assert!(creep.pass(policy, &s).fixed_point);
                    break;
                }
            }
        }
    }
}
