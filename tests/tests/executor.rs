//! The executor against the real kernel, used in-process: plans made from pagemap, carried out
//! with process_madvise(MADV_COLLAPSE) on workload children, and every outcome checked against
//! pagemap afterwards. The children map their areas without advice (`plain`) or with
//! MADV_NOHUGEPAGE, so with THP in `madvise` mode neither faults nor khugepaged make anything
//! huge behind the test's back.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use collapse::{
    executor::{
        CollapseOutcome, CollapseResult, Executor, Failure, GuardRails, OptOut, SkipReason,
    },
    kernel::{pagemap, pidfd::Pidfd},
    planner::{RegionPlan, plan_regions},
    snapshot::SnapshotRegion,
};
use collapse_common::{
    consts::PMD_SIZE,
    policy::{Planner, Policy, Settings},
};
use common::{
    cloned::Cloned,
    skip::{needs_root_tests, skip_if},
    *,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// `pmd` with max_ptes_none 255: a PMD qualifies iff at least 257 of its PTEs are present.
fn planner() -> Planner {
    Planner::new(
        Policy::Pmd,
        Settings::default()
            .with_max_ptes_none(255)
            .expect("valid settings"),
    )
}

/// Guard rails that never pause for pressure (this machine's is not the test's subject).
fn rails() -> GuardRails {
    GuardRails {
        psi_limit: 100.0,
        ..GuardRails::default()
    }
}

/// Region plans of `pid` from pagemap now, for the regions inside `areas` only.
fn plans(planner: &Planner, pid: i32, areas: &[Area]) -> Vec<RegionPlan> {
    let regions: Vec<SnapshotRegion> = pagemap::read_regions(pid)
        .expect("read pagemap")
        .into_iter()
        .filter(|t| {
            areas
                .iter()
                .any(|a| t.addr >= a.addr && t.addr < a.addr + a.pages * 4096)
        })
        .map(|t| SnapshotRegion {
            pid,
            addr: t.addr,
            state: t.state(),
        })
        .collect();
    plan_regions(planner, &regions)
}

fn pmd_addrs(plans: &[RegionPlan]) -> Vec<u64> {
    plans
        .iter()
        .filter(|p| p.is_pmd())
        .map(|p| p.addr)
        .collect()
}

fn is_huge(pid: i32, addr: u64) -> bool {
    pagemap::read_region(pid, addr)
        .expect("read region")
        .pmd_mapped
}

fn results(outcomes: &[CollapseOutcome]) -> BTreeMap<(i32, u64), CollapseResult> {
    outcomes
        .iter()
        .map(|o| ((o.pid, o.addr), o.result))
        .collect()
}

/// Asserts that exactly the regions in `huge` of `areas` are PMD-mapped.
fn assert_huge_exactly(what: &str, pid: i32, areas: &[Area], huge: &[u64]) {
    for a in areas {
        for r in a.regions() {
            assert_eq!(
                is_huge(pid, r),
                huge.contains(&r),
                "{what}: region {r:#x} of {} PMD-mapped?",
                a.name
            );
        }
    }
}

/// Asserts that no region acted on without a call to process_madvise has a latency: skips
/// and already_huge are decided before the call.
fn assert_uncalled_have_no_latency(outcomes: &[CollapseOutcome]) {
    for o in outcomes {
        let called = matches!(
            o.result,
            CollapseResult::Collapsed | CollapseResult::Failed(_)
        );
        assert_eq!(
            !o.latency.is_zero(),
            called,
            "{:#x}: {} with latency {:?}",
            o.addr,
            o.result,
            o.latency
        );
    }
}

#[test]
fn collapses_exactly_the_pmds_that_qualify_and_nothing_else() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut target = Workload::spawn();
    let mut no_thp = Workload::spawn();
    let mut stranger = Workload::spawn();
    no_thp.cmd("thp off");
    let areas = populate(&mut target);
    let no_thp_areas = populate(&mut no_thp);
    let stranger_areas = populate(&mut stranger);
    let before = [
        checksums(&mut target, &areas),
        checksums(&mut no_thp, &no_thp_areas),
        checksums(&mut stranger, &stranger_areas),
    ];

    let mut ex = Executor::new(GuardRails { jobs: 2, ..rails() }, planner);
    ex.select(target.pid).expect("select target");
    ex.select(no_thp.pid).expect("select the prctl child");
    let mut all = plans(&planner, target.pid, &areas);
    all.extend(plans(&planner, no_thp.pid, &no_thp_areas));
    all.extend(plans(&planner, stranger.pid, &stranger_areas));

    // The policy picks the dense and the MADV_NOHUGEPAGE regions, never 40 % or sparse.
    let (dense, nh) = (&areas[0], &areas[3]);
    let mut picked: Vec<u64> = dense.regions().chain(nh.regions()).collect();
    picked.sort_unstable();
    assert_eq!(
        pmd_addrs(&plans(&planner, target.pid, &areas)),
        picked,
        "planned PMD decisions"
    );

    let pass = ex.execute(&all);
    assert_eq!(pass.outcomes.len(), 18, "{:#?}", pass.outcomes);
    assert_uncalled_have_no_latency(&pass.outcomes);
    let got = results(&pass.outcomes);
    for r in dense.regions() {
        assert_eq!(got[&(target.pid, r)], CollapseResult::Collapsed, "{r:#x}");
    }
    for r in nh.regions() {
        assert_eq!(
            got[&(target.pid, r)],
            CollapseResult::Skipped(SkipReason::OptedOut(OptOut::NoHugePage)),
            "{r:#x}"
        );
    }
    for (pid, areas, want) in [
        (
            no_thp.pid,
            &no_thp_areas,
            CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Prctl)),
        ),
        (
            stranger.pid,
            &stranger_areas,
            CollapseResult::Skipped(SkipReason::NotSelected),
        ),
    ] {
        for r in areas[0].regions().chain(areas[3].regions()) {
            assert_eq!(got[&(pid, r)], want, "pid {pid} region {r:#x}");
        }
    }

    let dense_regions: Vec<u64> = dense.regions().collect();
    assert_huge_exactly("target", target.pid, &areas, &dense_regions);
    assert_huge_exactly("THP disabled by prctl", no_thp.pid, &no_thp_areas, &[]);
    assert_huge_exactly("not selected", stranger.pid, &stranger_areas, &[]);
    let after = [
        checksums(&mut target, &areas),
        checksums(&mut no_thp, &no_thp_areas),
        checksums(&mut stranger, &stranger_areas),
    ];
    assert_eq!(before, after, "memory contents changed");

    let stats = ex.stats();
    assert_eq!(stats.count("collapsed"), 4);
    assert_eq!(stats.count_reason("skipped", "opted-out"), 8);
    assert_eq!(stats.count_reason("skipped", "not-selected"), 6);
    assert_eq!(stats.latency().count(), 4);
    assert!(stats.latency().p50().is_some_and(|d| !d.is_zero()));

    // Planned again from pagemap: the collapsed regions are found huge, nothing is called.
    let again = ex.execute(&plans(&planner, target.pid, &areas));
    assert_uncalled_have_no_latency(&again.outcomes);
    let got = results(&again.outcomes);
    for r in dense.regions() {
        assert_eq!(got[&(target.pid, r)], CollapseResult::AlreadyHuge, "{r:#x}");
    }
    assert_eq!(again.outcomes.len(), 6);
    assert_eq!(again.worst_latency, Duration::ZERO);
}

#[test]
fn regions_changed_since_planning_are_rechecked() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut w = Workload::spawn();
    let d = Area::map(&mut w, "d", 12, "plain");
    w.cmd("fill d 0 3072");
    let planned = plans(&planner, w.pid, &[d]);
    let r: Vec<u64> = d.regions().collect();
    assert_eq!(pmd_addrs(&planned), r, "six dense regions planned");

    // After planning: r0 drops to 212 pages, r1 is unmapped, r2 becomes MADV_NOHUGEPAGE,
    // r3 is split between a plain and a MADV_NOHUGEPAGE VMA, r5 is emptied; r4 stays.
    w.cmd("dontneed d 0 300");
    w.cmd("unmap d 512 1024");
    w.cmd("nohuge d 1024 1536");
    w.cmd("nohuge d 1792 2048");
    w.cmd("dontneed d 2560 3072");

    let mut ex = Executor::new(rails(), planner);
    ex.select(w.pid).expect("select");
    let pass = ex.execute(&planned);
    let got: Vec<CollapseResult> = pass.outcomes.iter().map(|o| o.result).collect();
    assert_eq!(
        got,
        [
            CollapseResult::Skipped(SkipReason::BelowThreshold),
            CollapseResult::Skipped(SkipReason::Unmapped),
            CollapseResult::Skipped(SkipReason::OptedOut(OptOut::NoHugePage)),
            CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Vma)),
            CollapseResult::Collapsed,
            CollapseResult::Skipped(SkipReason::Unmapped),
        ]
    );
    assert_uncalled_have_no_latency(&pass.outcomes);
    for (i, &addr) in r.iter().enumerate() {
        assert_eq!(is_huge(w.pid, addr), i == 4, "region {i}");
    }
}

#[test]
fn a_collapse_split_right_after_is_unconfirmed_and_backs_off() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut w = Workload::spawn();
    let c = Area::map(&mut w, "c", 8, "plain");
    w.cmd("fill c 0 2048");
    // A thread of the child keeps dropping page 0: the PMD MADV_COLLAPSE installs there is
    // split again as soon as the child gets the mmap lock back, so process_madvise returns 0
    // for a region that pagemap, read a moment later, often no longer shows PMD-mapped. Who
    // wins is a race (about half the time here): try until the confirm catches one.
    w.cmd("churn c 0 1");
    let r: Vec<u64> = c.regions().collect();
    let mut ex = Executor::new(rails(), planner);
    ex.select(w.pid).expect("select");
    let first = ex.execute(&plans(&planner, w.pid, &[c]));
    assert_eq!(
        first.outcomes[1..]
            .iter()
            .map(|o| o.result)
            .collect::<Vec<_>>(),
        [CollapseResult::Collapsed; 3],
        "the regions nobody churns"
    );
    let mut seen = vec![first.outcomes[0].result];
    while seen.last() != Some(&CollapseResult::Failed(Failure::Unconfirmed)) && seen.len() < 20 {
        // Selecting afresh drops the back-off of a failure that was not the one sought.
        ex.forget(w.pid);
        ex.select(w.pid).expect("select");
        let pass = ex.execute(&plans(&planner, w.pid, &[c]));
        seen.push(pass.outcomes[0].result);
    }
    assert_eq!(
        seen.last(),
        Some(&CollapseResult::Failed(Failure::Unconfirmed)),
        "a region split right after its collapse was never reported unconfirmed: {seen:?}"
    );
    // A pass may also find the last collapse not yet split again: huge already.
    assert!(
        seen.iter().all(|r| matches!(
            r,
            CollapseResult::Collapsed
                | CollapseResult::AlreadyHuge
                | CollapseResult::Failed(Failure::Unconfirmed)
        )),
        "{seen:?}"
    );
    // At once again: the failed region waits out its back-off (2 × the 1 s base interval), the
    // others are found huge.
    let again = ex.execute(&plans(&planner, w.pid, &[c]));
    let got: Vec<CollapseResult> = again.outcomes.iter().map(|o| o.result).collect();
    assert_eq!(
        got,
        [
            CollapseResult::Skipped(SkipReason::BackingOff),
            CollapseResult::AlreadyHuge,
            CollapseResult::AlreadyHuge,
            CollapseResult::AlreadyHuge,
        ]
    );
    assert!(!is_huge(w.pid, r[0]));
    assert!(ex.stats().count_reason("failed", "unconfirmed") >= 1);
}

#[test]
fn dry_run_changes_nothing() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut w = Workload::spawn();
    let areas = populate(&mut w);
    let before = checksums(&mut w, &areas);
    let mut ex = Executor::new(
        GuardRails {
            dry_run: true,
            ..rails()
        },
        planner,
    );
    ex.select(w.pid).expect("select");
    let pass = ex.execute(&plans(&planner, w.pid, &areas));
    let got = results(&pass.outcomes);
    for r in areas[0].regions() {
        assert_eq!(
            got[&(w.pid, r)],
            CollapseResult::Skipped(SkipReason::DryRun)
        );
    }
    assert_uncalled_have_no_latency(&pass.outcomes);
    assert_huge_exactly("dry run", w.pid, &areas, &[]);
    assert_eq!(checksums(&mut w, &areas), before);
}

#[test]
fn a_target_killed_before_executing_is_exited() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut doomed = Workload::spawn();
    let mut alive = Workload::spawn();
    let mut planned = Vec::new();
    let mut ex = Executor::new(rails(), planner);
    let mut alive_area = None;
    for w in [&mut doomed, &mut alive] {
        let a = Area::map(w, "a", 8, "plain");
        w.cmd("fill a 0 2048");
        planned.extend(plans(&planner, w.pid, &[a]));
        ex.select(w.pid).expect("select");
        alive_area = Some(a);
    }
    let watch = Pidfd::open(doomed.pid).expect("pidfd");
    // Only the child this test started, by its pid.
    kill(Pid::from_raw(doomed.pid), Signal::SIGKILL).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!watch.is_alive(), "the killed child did not exit");

    let pass = ex.execute(&planned);
    assert_eq!(pass.outcomes.len(), 8);
    for o in &pass.outcomes {
        let want = if o.pid == doomed.pid {
            CollapseResult::Skipped(SkipReason::Exited)
        } else {
            CollapseResult::Collapsed
        };
        assert_eq!(o.result, want, "pid {} {:#x}", o.pid, o.addr);
    }
    let area = alive_area.expect("area");
    let all: Vec<u64> = area.regions().collect();
    assert_huge_exactly("the live child", alive.pid, &[area], &all);
    assert_eq!(ex.forget_exited(), [doomed.pid]);
    assert_eq!(ex.selected(), [alive.pid]);
}

#[test]
fn a_reused_pid_is_never_touched() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut target = Cloned::spawn(&collapse_bin(), None).expect("a child");
    let addr = target.dense("a", 8);
    let area = Area {
        name: "a",
        addr,
        pages: 2048,
    };
    let mut ex = Executor::new(rails(), planner);
    ex.select(target.pid).expect("select");
    let planned = plans(&planner, target.pid, &[area]);
    assert_eq!(pmd_addrs(&planned).len(), 4);
    let pid = target.pid;
    target.kill_and_reap();

    // Another process gets the pid and the same dense memory at the same addresses.
    let mut impostor = Cloned::spawn(&collapse_bin(), Some(pid)).expect("the freed pid");
    assert_eq!(impostor.pid, pid);
    assert_eq!(
        impostor.dense("a", 8),
        addr,
        "the same layout without randomisation"
    );
    // Selecting the pid again keeps the handle on the process that was selected.
    ex.select(pid).expect("select again");
    let pass = ex.execute(&planned);
    assert_eq!(
        pass.outcomes.iter().map(|o| o.result).collect::<Vec<_>>(),
        [CollapseResult::Skipped(SkipReason::Exited); 4]
    );
    assert_huge_exactly("the impostor", pid, &[area], &[]);

    // Made a target on purpose, it is one.
    ex.forget(pid);
    ex.select(pid).expect("select the new process");
    let pass = ex.execute(&plans(&planner, pid, &[area]));
    assert!(
        pass.outcomes
            .iter()
            .all(|o| o.result == CollapseResult::Collapsed)
    );
    let all: Vec<u64> = area.regions().collect();
    assert_huge_exactly("the new target", pid, &[area], &all);
    drop(impostor);
}

#[test]
fn the_rate_limit_spaces_collapses_and_slow_passes_grow_the_interval() {
    skip_if!(needs_root_tests());
    let planner = planner();
    let mut w = Workload::spawn();
    let a = Area::map(&mut w, "a", 8, "plain");
    w.cmd("fill a 0 2048");
    let mut ex = Executor::new(
        GuardRails {
            // One second's burst is two collapses, then one every half second.
            max_rate: Some(4 << 20),
            // Every collapse is slower than this.
            max_latency: Duration::from_nanos(1),
            ..rails()
        },
        planner,
    );
    ex.select(w.pid).expect("select");
    let planned = plans(&planner, w.pid, &[a]);
    let t0 = Instant::now();
    let pass = ex.execute(&planned);
    let took = t0.elapsed();
    assert!(
        pass.outcomes
            .iter()
            .all(|o| o.result == CollapseResult::Collapsed),
        "{:?}",
        pass.outcomes
    );
    assert!(
        took >= Duration::from_millis(950),
        "4 collapses at 4 MiB/s took only {took:?}"
    );
    assert_eq!(pass.next_interval, Duration::from_secs(2));
    assert_eq!(ex.interval(), Duration::from_secs(2));
}

/// Side measurement, not a check: wall and CPU time (utime + stime of this process, which
/// includes the kernel time MADV_COLLAPSE is charged) to collapse 1 GiB of dense memory with
/// `Executor::execute` (jobs 1) and with a plain loop of process_madvise per PMD. Run with
/// `COLLAPSE_ROOT_TESTS=1 cargo test -p collapse-tests --test executor -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it by hand"]
fn measure_executor_against_a_plain_loop() {
    skip_if!(needs_root_tests());
    const MIB: u64 = 1024;
    let planner = planner();
    let cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let u = unsafe {
            let mut u = std::mem::zeroed::<libc::rusage>();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0, "getrusage");
            u
        };
        let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
        t(u.ru_utime) + t(u.ru_stime)
    };
    let fresh = |name: &'static str| {
        let mut w = Workload::spawn();
        let a = Area::map(&mut w, name, MIB, "plain");
        w.cmd(&format!("populate {name} 0 {}", a.pages));
        (w, a)
    };
    // The executor: re-check, collapse, confirm per PMD.
    let executor = |round: usize| {
        let (w, a) = fresh("g");
        let planned = plans(&planner, w.pid, &[a]);
        assert_eq!(pmd_addrs(&planned).len(), 512);
        let mut ex = Executor::new(rails(), planner);
        ex.select(w.pid).expect("select");
        let (t0, c0) = (Instant::now(), cpu());
        let pass = ex.execute(&planned);
        let (wall, used) = (t0.elapsed(), cpu() - c0);
        let collapsed = pass
            .outcomes
            .iter()
            .filter(|o| o.result == CollapseResult::Collapsed)
            .count();
        let in_calls: Duration = pass.outcomes.iter().map(|o| o.latency).sum();
        let lat = ex.stats().latency();
        eprintln!(
            "round {round} executor:   {collapsed}/512 collapsed, wall {:.3} s, cpu {:.3} s, \
             in process_madvise {:.3} s (the rest {:.0} us per PMD), p50 {:?} p99 {:?} max {:?}",
            wall.as_secs_f64(),
            used.as_secs_f64(),
            in_calls.as_secs_f64(),
            (wall - in_calls).as_secs_f64() * 1e6 / 512.0,
            lat.p50().unwrap_or_default(),
            lat.p99().unwrap_or_default(),
            lat.max()
        );
    };
    // The plain loop: one process_madvise per PMD, nothing else.
    let plain = |round: usize| {
        let (w, a) = fresh("g");
        let fd = Pidfd::open(w.pid).expect("pidfd");
        let (t0, c0) = (Instant::now(), cpu());
        let ok = a
            .regions()
            .filter(|&r| fd.collapse(r, PMD_SIZE).is_ok())
            .count();
        let (wall, used) = (t0.elapsed(), cpu() - c0);
        let huge = a.regions().filter(|&r| is_huge(w.pid, r)).count();
        eprintln!(
            "round {round} plain loop: {ok}/512 returned 0 ({huge} PMD-mapped), wall {:.3} s, \
             cpu {:.3} s",
            wall.as_secs_f64(),
            used.as_secs_f64()
        );
    };
    // Interleaved, each arm first every other round: how fast a THP can be allocated depends
    // on what the previous arm left fragmented.
    for round in 0..8 {
        if round % 2 == 0 {
            executor(round);
            plain(round);
        } else {
            plain(round);
            executor(round);
        }
    }
}
