//! `collapse run --policy pmd --max-ptes-none N` collapses the same PMDs as khugepaged with
//! `max_ptes_none` N, PMD by PMD, on two children of the same layout: one left to khugepaged,
//! one collapsed by `collapse run --once`. khugepaged is made to scan quickly for the test, and
//! every setting it changes is restored (guards, also on a panic) and checked restored.
//!
//! Child A (khugepaged's) maps its area MADV_NOHUGEPAGE, writes its pages as 4 KiB pages, and
//! only then marks the area MADV_HUGEPAGE, so that no fault allocates a THP and khugepaged (THP
//! `madvise` mode) scans it. Child B (collapse's) maps its area without advice: khugepaged in
//! `madvise` mode never scans it, and MADV_COLLAPSE does not need the advice.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collapse::kernel::thp::{SysfsGuard, THP_ROOT, read_value};
use common::{
    skip::{needs_root_tests, skip_if, thp_never, thp_not_madvise},
    *,
};
use serde_json::Value;

fn khugepaged(name: &str) -> PathBuf {
    Path::new(THP_ROOT).join("khugepaged").join(name)
}

/// The khugepaged settings the test changes.
const CHANGED: [&str; 4] = [
    "max_ptes_none",
    "scan_sleep_millisecs",
    "pages_to_scan",
    "alloc_sleep_millisecs",
];

fn full_scans() -> u64 {
    read_value(&khugepaged("full_scans"))
        .expect("read full_scans")
        .parse()
        .expect("full_scans is a number")
}

/// Present pages per PMD for `max_ptes_none` n: dense, one hole, both sides of khugepaged's
/// threshold (a PMD collapses iff at most n of its PTEs are none, so 512 - n present is the
/// fewest that collapse), about 40 %, sparse, a single page.
fn layout(n: u64) -> Vec<u64> {
    let mut counts = vec![512, 511, 512 - n];
    if 512 - n > 1 {
        counts.push(512 - n - 1);
    }
    counts.extend([205, 8, 1]);
    counts
}

/// Maps `counts.len()` PMDs with `advice` and writes `counts[i]` pages of PMD i: the first half
/// at its start, the rest at its end (the holes in the middle).
fn shape(w: &mut Workload, advice: &str, counts: &[u64]) -> Area {
    let area = Area::map(w, "f", 2 * counts.len() as u64, advice);
    for (i, &k) in counts.iter().enumerate() {
        let base = i as u64 * PAGES_PER_PMD;
        let head = k / 2;
        w.cmd(&format!("touch f {base} {}", base + head));
        let tail = base + PAGES_PER_PMD - (k - head);
        w.cmd(&format!("touch f {tail} {}", base + PAGES_PER_PMD));
    }
    area
}

fn huge_per_pmd(pid: i32, area: &Area) -> Vec<bool> {
    area.regions().map(|r| pmd_mapped(pid, r)).collect()
}

/// Waits until khugepaged has completed two full scans since now: every registered area has
/// then been scanned at least once from start to end.
fn wait_two_full_scans() {
    let start = full_scans();
    let deadline = Instant::now() + Duration::from_secs(60);
    while full_scans() < start + 2 {
        assert!(
            Instant::now() < deadline,
            "khugepaged did not finish two full scans in 60 s (full_scans {start} -> {})",
            full_scans()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One value of n: khugepaged on A, `collapse run` on B; both per-PMD vectors.
fn compare(n: u64) -> (Vec<u64>, Vec<bool>, Vec<bool>) {
    let counts = layout(n);
    let _none =
        SysfsGuard::set(khugepaged("max_ptes_none"), &n.to_string()).expect("set max_ptes_none");
    let mut a = Workload::spawn();
    let mut b = Workload::spawn();
    let area_a = shape(&mut a, "nohuge", &counts);
    let area_b = shape(&mut b, "plain", &counts);
    for (what, pid, area) in [("A", a.pid, &area_a), ("B", b.pid, &area_b)] {
        let truth = within(&truth(pid), area.addr, area.pages * 4096);
        let got: Vec<u64> = area
            .regions()
            .map(|r| truth.get(&r).map_or(0, |b| u64::from(b.count())))
            .collect();
        assert_eq!(got, counts, "child {what}: present pages per PMD");
        assert_huge_exactly(&format!("child {what} before"), pid, &[*area], &[]);
    }

    a.cmd(&format!("huge f 0 {}", area_a.pages));
    wait_two_full_scans();
    let by_khugepaged = huge_per_pmd(a.pid, &area_a);
    // khugepaged in `madvise` mode left B alone: what B shows next is collapse's doing.
    assert_huge_exactly("child B after khugepaged's scans", b.pid, &[area_b], &[]);

    let (pid, n_arg) = (b.pid.to_string(), n.to_string());
    let out = collapse_output(&[
        "run",
        "--once",
        "--json",
        "--policy",
        "pmd",
        "--max-ptes-none",
        &n_arg,
        "--pid",
        &pid,
    ]);
    assert!(
        out.status.success(),
        "collapse run: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let by_collapse = huge_per_pmd(b.pid, &area_b);
    // Its lines say the same: `collapsed` exactly for the PMDs now PMD-mapped.
    let lines = json_lines(&out);
    let said: Vec<bool> = area_b
        .regions()
        .map(|r| {
            lines.iter().any(|v: &Value| {
                v["type"] == "collapse"
                    && v["addr"] == format!("{r:#x}")
                    && v["result"] == "collapsed"
            })
        })
        .collect();
    assert_eq!(said, by_collapse, "collapse's lines vs pagemap: {lines:?}");
    (counts, by_khugepaged, by_collapse)
}

#[test]
fn collapse_run_pmd_matches_khugepaged_per_pmd() {
    skip_if!(needs_root_tests().or_else(thp_never));
    // In `madvise` mode khugepaged scans only MADV_HUGEPAGE areas: child B's are left alone.
    skip_if!(thp_not_madvise());
    let before: Vec<String> = CHANGED
        .iter()
        .map(|s| read_value(&khugepaged(s)).expect("read khugepaged setting"))
        .collect();
    let mut table = Vec::new();
    {
        // Scanning every 100 ms, 64 PMDs per wake-up, retrying a failed allocation soon.
        let _fast = [
            ("scan_sleep_millisecs", "100"),
            ("pages_to_scan", "32768"),
            ("alloc_sleep_millisecs", "100"),
        ]
        .map(|(name, v)| SysfsGuard::set(khugepaged(name), v).expect("set khugepaged"));
        for n in [0, 255, 511] {
            let (counts, k, c) = compare(n);
            table.push((n, counts, k, c));
        }
    }
    let after: Vec<String> = CHANGED
        .iter()
        .map(|s| read_value(&khugepaged(s)).expect("read khugepaged setting"))
        .collect();

    let mark = |v: &[bool]| {
        v.iter()
            .map(|&h| if h { 'H' } else { '.' })
            .collect::<String>()
    };
    eprintln!("n    present per PMD                khugepaged  collapse");
    for (n, counts, k, c) in &table {
        eprintln!(
            "{n:<4} {:<30} {:<11} {}",
            format!("{counts:?}"),
            mark(k),
            mark(c)
        );
    }
    assert_eq!(
        before, after,
        "khugepaged settings {CHANGED:?} not restored"
    );
    for (n, counts, k, c) in &table {
        assert_eq!(
            k,
            c,
            "max_ptes_none {n}, present {counts:?}: khugepaged {} vs collapse {}",
            mark(k),
            mark(c)
        );
        // Neither side may pass by doing nothing: the rule itself.
        let rule: Vec<bool> = counts.iter().map(|&p| 512 - p <= *n).collect();
        assert_eq!(
            k,
            &rule,
            "max_ptes_none {n}, present {counts:?}: khugepaged {} vs the rule {}",
            mark(k),
            mark(&rule)
        );
    }
}
