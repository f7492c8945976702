//! Hand-checked cases: every worked example of policies.md, plus settings and creep.

use std::{format, string::ToString, vec::Vec};

use super::*;

fn region(runs: &[(usize, usize)]) -> RegionState {
    let mut present = OccupancyBitmap::EMPTY;
    for &(start, end) in runs {
        present.set_range(start, end);
    }
    RegionState::from_present(present)
}

fn settings(n: u16, orders: &[u8]) -> Settings {
    let orders = OrderSet::from_orders(orders.iter().copied()).expect("valid orders");
    Settings::new(n, 64, 256, orders, 3).expect("valid settings")
}

fn decisions(plan: &Plan) -> Vec<(u16, u8)> {
    plan.decisions()
        .iter()
        .map(|d| (d.offset, d.order))
        .collect()
}

fn check(policy: Policy, r: &RegionState, s: &Settings, want: &[(u16, u8)], bloat: u32) {
    let p = plan(policy, r, s);
    assert_eq!(decisions(&p), want, "{policy} decisions");
    assert_eq!(p.bloat_pages(), bloat, "{policy} bloat");
}

/// Example 1: runs [21,53), [243,259), [383,391); n = 300; E = {4, 9}.
///
/// policies.md says "(63 pages)" and "449 empty"; the runs hold 32 + 16 + 8 = 56 pages, so
/// 456 are empty. Every decision and bloat figure of the example matches the runs, and
/// `pmd` refuses either way.
#[test]
fn example_1() {
    let r = region(&[(21, 53), (243, 259), (383, 391)]);
    assert_eq!(r.present.count(), 56);
    let s = settings(300, &[4, 9]);
    check(Policy::Pmd, &r, &s, &[], 0);
    check(Policy::Merged, &r, &s, &[(32, 4)], 0);
    check(Policy::Scaled, &r, &s, &[(16, 4), (32, 4), (240, 4)], 8);
    check(
        Policy::Seed,
        &r,
        &s,
        &[(16, 4), (32, 4), (48, 4), (240, 4), (384, 4)],
        28,
    );
}

/// Example 2: runs [93,109), [111,175), [355,363), [437,445), [503,511); n = 64;
/// E = {3, 4, 5, 9}.
#[test]
fn example_2() {
    let r = region(&[(93, 109), (111, 175), (355, 363), (437, 445), (503, 511)]);
    let s = settings(64, &[3, 4, 5, 9]);
    check(Policy::Pmd, &r, &s, &[], 0);
    check(
        Policy::Merged,
        &r,
        &s,
        &[(96, 3), (112, 4), (128, 5), (160, 3)],
        0,
    );
    check(
        Policy::Scaled,
        &r,
        &s,
        &[(96, 5), (128, 5), (160, 4), (504, 3)],
        4,
    );
    check(
        Policy::Seed,
        &r,
        &s,
        &[(96, 3), (112, 4), (128, 5), (160, 4), (504, 3)],
        2,
    );
}

/// Example 3: [0,64) plus PTE 300; E = {2, 3, 4, 9}.
#[test]
fn example_3() {
    let r = region(&[(0, 64), (300, 301)]);
    let sixteens = [(0, 4), (16, 4), (32, 4), (48, 4)];
    for n in [0, 255] {
        let s = settings(n, &[2, 3, 4, 9]);
        for policy in [Policy::Seed, Policy::Merged, Policy::Scaled] {
            check(policy, &r, &s, &sixteens, 0);
        }
        check(Policy::Pmd, &r, &s, &[], 0);
    }
    let s = settings(511, &[2, 3, 4, 9]);
    for policy in Policy::ALL {
        // 512 - 65 occupied.
        check(policy, &r, &s, &[(0, 9)], 447);
    }
}

/// Example 3 for `pmd`: nothing for n < 447, the PMD from 447 on.
#[test]
fn example_3_pmd_threshold() {
    let r = region(&[(0, 64), (300, 301)]);
    for n in [0, 100, 446] {
        check(Policy::Pmd, &r, &settings(n, &[2, 3, 4, 9]), &[], 0);
    }
    for n in [447, 448, 511] {
        check(Policy::Pmd, &r, &settings(n, &[2, 3, 4, 9]), &[(0, 9)], 447);
    }
}

#[test]
fn gate_refuses_the_whole_region() {
    let mut r = region(&[(0, 512)]);
    r.swap.set_range(0, 65);
    let s = settings(511, &[2, 3, 4, 9]);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[], 0);
    }
    r.swap.clear(64);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[(0, 9)], 0);
    }
    let mut r = region(&[(0, 512)]);
    r.shared.set_range(0, 257);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[], 0);
    }
}

#[test]
fn swap_counts_at_pmd_and_refuses_below() {
    // 448 present + 8 swap = 456 occupied; with n = 64 the PMD needs 448.
    let mut r = region(&[(0, 448)]);
    r.swap.set_range(448, 456);
    let s = settings(64, &[2, 3, 4, 9]);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[(0, 9)], 56);
    }
    // Without order 9, ranges holding swap or shared are refused; their neighbours are not.
    let mut r = region(&[(0, 64)]);
    r.swap.set(5);
    r.shared.set(17);
    let s = settings(0, &[2, 3, 4]);
    let want = [(0, 2), (8, 3), (20, 2), (24, 3), (32, 4), (48, 4)];
    for policy in [Policy::Merged, Policy::Scaled] {
        check(policy, &r, &s, &want, 0);
    }
    // Seed does not go below m = 3.
    check(
        Policy::Seed,
        &r,
        &s,
        &[(8, 3), (24, 3), (32, 4), (48, 4)],
        0,
    );
}

#[test]
fn swap_only_range_is_occupied_at_pmd() {
    let mut r = RegionState::default();
    r.swap.set(7);
    let s = settings(511, &[2, 9]);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[(0, 9)], 511);
    }
    // Below 9 the only occupied PTE is swap, so nothing qualifies.
    let s = settings(511, &[2, 3, 4, 5, 6, 7, 8]);
    for policy in Policy::ALL {
        check(policy, &r, &s, &[], 0);
    }
}

#[test]
fn empty_region_and_empty_orders_give_nothing() {
    let s = settings(511, &[2, 3, 4, 5, 6, 7, 8, 9]);
    let none = Settings::new(511, 64, 256, OrderSet::empty(), 3).expect("empty set is valid");
    for policy in Policy::ALL {
        check(policy, &RegionState::default(), &s, &[], 0);
        check(policy, &region(&[(0, 512)]), &none, &[], 0);
    }
}

#[test]
fn merged_walk_uses_the_largest_full_range() {
    // Full [64, 192): order 7 at 128 is full, [64,128) is order 6.
    let r = region(&[(64, 192)]);
    let s = settings(0, &[2, 3, 4, 5, 6, 7, 8, 9]);
    check(Policy::Merged, &r, &s, &[(64, 6), (128, 6)], 0);
    let r = region(&[(128, 256), (256, 260)]);
    check(Policy::Merged, &r, &s, &[(128, 7), (256, 2)], 0);
    // Intermediate n: the kernel treats orders below 9 as n = 0.
    let s = settings(100, &[2, 3, 4, 5, 6, 7, 8, 9]);
    assert!(merged_warns(&s));
    check(Policy::Merged, &r, &s, &[(128, 7), (256, 2)], 0);
    // n = 511: one page is enough, the largest enabled order below 9 is taken.
    let s = settings(511, &[2, 8]);
    check(
        Policy::Merged,
        &region(&[(3, 4), (300, 301)]),
        &s,
        &[(0, 8), (256, 8)],
        510,
    );
}

#[test]
fn plan_totals() {
    let r = region(&[(93, 109), (111, 175), (355, 363), (437, 445), (503, 511)]);
    let p = plan(Policy::Seed, &r, &settings(64, &[3, 4, 5, 9]));
    assert_eq!(p.pages_at_order(3), 16);
    assert_eq!(p.pages_at_order(4), 32);
    assert_eq!(p.pages_at_order(5), 32);
    assert_eq!(p.pages_at_order(9), 0);
    assert_eq!(p.covered_pages(), 80);
    assert!(!p.is_empty());
    assert!(Plan::default().is_empty());
}

#[test]
fn seed_chunk_orders() {
    // m = 6: chunks are words; n = 0 needs full words.
    let r = region(&[(0, 64), (128, 190)]);
    let s = Settings::new(0, 64, 256, OrderSet::ALL, 6).expect("valid");
    check(Policy::Seed, &r, &s, &[(0, 6)], 0);
    // m = 8 and n = 511: a chunk needs one page; order 8 needs one chunk.
    let s =
        Settings::new(511, 64, 256, OrderSet::from_orders([8]).expect("valid"), 8).expect("valid");
    check(Policy::Seed, &region(&[(300, 301)]), &s, &[(256, 8)], 255);
    // m = 2 with n = 255: a chunk of 4 is utilised with 4 - (255 >> 7) = 3 pages.
    let s =
        Settings::new(255, 64, 256, OrderSet::from_orders([2]).expect("valid"), 2).expect("valid");
    check(Policy::Seed, &region(&[(0, 3), (5, 7)]), &s, &[(0, 2)], 1);
}

#[test]
fn settings_validation_and_messages() {
    let d = Settings::default();
    assert_eq!(
        (
            d.max_ptes_none(),
            d.max_ptes_swap(),
            d.max_ptes_shared(),
            d.chunk_order()
        ),
        (511, 64, 256, 3)
    );
    assert_eq!(d.orders().iter().collect::<Vec<_>>(), [9]);
    let all = OrderSet::ALL;
    assert_eq!(
        Settings::new(512, 0, 0, all, 3),
        Err(SettingsError::MaxPtesNone(512))
    );
    assert_eq!(
        Settings::new(0, 512, 0, all, 3),
        Err(SettingsError::MaxPtesSwap(512))
    );
    assert_eq!(
        Settings::new(0, 0, 600, all, 3),
        Err(SettingsError::MaxPtesShared(600))
    );
    assert_eq!(
        Settings::new(0, 0, 0, all, 1),
        Err(SettingsError::ChunkOrder(1))
    );
    assert_eq!(
        Settings::new(0, 0, 0, all, 9),
        Err(SettingsError::ChunkOrder(9))
    );
    assert!(Settings::new(511, 511, 511, all, 8).is_ok());
    assert_eq!(
        d.with_max_ptes_none(600),
        Err(SettingsError::MaxPtesNone(600))
    );
    assert_eq!(d.with_max_ptes_none(7).map(|s| s.max_ptes_none()), Ok(7));
    assert_eq!(
        OrderSet::from_orders([2, 10]),
        Err(SettingsError::Order(10))
    );
    assert_eq!(OrderSet::from_orders([1]), Err(SettingsError::Order(1)));
    let mut set = OrderSet::empty();
    assert_eq!(set.insert(0), Err(SettingsError::Order(0)));
    assert!(set.is_empty());
    assert_eq!(set.insert(5), Ok(()));
    assert!(set.contains(5) && !set.contains(4) && !set.contains(200));
    assert_eq!(
        OrderSet::ALL.iter().collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7, 8, 9]
    );
    assert!(OrderSet::ALL.has_below(3) && !OrderSet::ALL.has_below(2));
    assert_eq!(
        SettingsError::MaxPtesNone(600).to_string(),
        "max_ptes_none 600 is outside 0..511"
    );
    assert_eq!(
        SettingsError::MaxPtesSwap(512).to_string(),
        "max_ptes_swap 512 is outside 0..511"
    );
    assert_eq!(
        SettingsError::MaxPtesShared(512).to_string(),
        "max_ptes_shared 512 is outside 0..511"
    );
    assert_eq!(
        SettingsError::Order(10).to_string(),
        "order 10 is outside 2..9"
    );
    assert_eq!(
        SettingsError::ChunkOrder(9).to_string(),
        "chunk order 9 is outside 2..8"
    );
}

#[test]
fn policy_names() {
    for policy in Policy::ALL {
        assert_eq!(Policy::from_name(policy.name()), Some(policy));
        assert_eq!(format!("{policy}"), policy.name());
    }
    assert_eq!(Policy::from_name("Seed"), None);
    assert_eq!(Policy::from_name("khugepaged"), None);
    assert_eq!(Policy::default(), Policy::Seed);
}

#[test]
fn merged_warning() {
    assert!(!merged_warns(&settings(0, &[2, 9])));
    assert!(!merged_warns(&settings(511, &[2, 9])));
    assert!(!merged_warns(&settings(100, &[9])));
    assert!(merged_warns(&settings(100, &[8])));
    assert!(merged_warns(&settings(1, &[2, 9])));
}

#[test]
fn creep_example_1_seed() {
    // Only orders 4 and 9 are enabled and order-4 ranges are judged on their own chunks,
    // so the first pass is final.
    let r = region(&[(21, 53), (243, 259), (383, 391)]);
    let s = settings(300, &[4, 9]);
    let mut creep = Creep::new(&r);
    let first = creep.pass(Policy::Seed, &s);
    assert_eq!(
        decisions(&first.plan),
        [(16, 4), (32, 4), (48, 4), (240, 4), (384, 4)]
    );
    assert_eq!(first.bloat_pages_total, 28);
    assert!(!first.fixed_point);
    // 80 present: order 9 needs 512 - 300 = 212; nothing else is left to take.
    let second = creep.pass(Policy::Seed, &s);
    assert!(second.plan.is_empty() && second.fixed_point);
    assert_eq!(second.bloat_pages_total, 28);
    assert_eq!(creep.covered_pages(), 80);
    assert_eq!(creep.folio_order(16), Some(4));
    assert_eq!(creep.folio_order(0), None);
}

#[test]
fn creep_reaches_the_pmd() {
    // scaled, n = 255: order k allows 2^(k-1) - 1 empty PTEs, so a full half plus one page
    // qualifies. [0,9) takes (0,4); with one page in the other half of each larger range,
    // each pass doubles the folio until the PMD needs 512 - 255 = 257 = 256 + PTE 256.
    let r = region(&[(0, 9), (16, 17), (32, 33), (64, 65), (128, 129), (256, 257)]);
    let s = settings(255, &[2, 3, 4, 5, 6, 7, 8, 9]);
    let mut creep = Creep::new(&r);
    let mut orders = Vec::new();
    let mut bloat = Vec::new();
    for _ in 0..10 {
        let pass = creep.pass(Policy::Scaled, &s);
        if pass.fixed_point {
            break;
        }
        assert_eq!(pass.plan.decisions().len(), 1);
        orders.extend(pass.plan.decisions().iter().map(|d| d.order));
        bloat.push(pass.bloat_pages_total);
    }
    assert_eq!(orders, [4, 5, 6, 7, 8, 9]);
    assert_eq!(bloat, [7, 22, 53, 116, 243, 498]);
    assert_eq!(creep.state().present, OccupancyBitmap::FULL);
    assert_eq!(creep.original().present.count(), 14);
    assert_eq!(creep.covered_pages(), 512);
    // merged (orders below 9 need full ranges here) takes [0,8) and never more.
    let mut creep = Creep::new(&r);
    assert_eq!(decisions(&creep.pass(Policy::Merged, &s).plan), [(0, 3)]);
    assert!(creep.pass(Policy::Merged, &s).fixed_point);
}

#[test]
fn creep_clears_swap_and_shared() {
    let mut r = region(&[(0, 500)]);
    r.swap.set_range(500, 510);
    r.shared.set_range(0, 10);
    let s = settings(2, &[9]);
    let mut creep = Creep::new(&r);
    let pass = creep.pass(Policy::Merged, &s);
    assert_eq!(decisions(&pass.plan), [(0, 9)]);
    assert_eq!(pass.plan.bloat_pages(), 2);
    assert_eq!(pass.bloat_pages_total, 2);
    assert_eq!(creep.state().present, OccupancyBitmap::FULL);
    assert!(creep.state().swap.is_empty() && creep.state().shared.is_empty());
    assert!(creep.pass(Policy::Merged, &s).fixed_point);
}

#[test]
fn reused_plan_compares_by_its_decisions() {
    let s = settings(0, &[2, 3, 4, 5, 6, 7, 8, 9]);
    let mut reused = plan(Policy::Merged, &region(&[(0, 4), (8, 12), (16, 20)]), &s);
    assert_eq!(reused.decisions().len(), 3);
    plan_into(Policy::Merged, &region(&[(64, 68)]), &s, &mut reused);
    let fresh = plan(Policy::Merged, &region(&[(64, 68)]), &s);
    assert_eq!(decisions(&reused), [(64, 2)]);
    assert_eq!(reused, fresh);
    assert_eq!(format!("{reused:?}"), format!("{fresh:?}"));
    assert_eq!(
        format!("{fresh:?}"),
        "Plan { decisions: [Decision { offset: 64, order: 2 }], bloat_pages: 0 }"
    );
}
