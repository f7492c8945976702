//! The programs' exactness under races, failed syscalls and sleeping faults (issue 9, items 1,
//! 2 and 4). Each test looks at the region map itself, in this process, through `Session`:
//! where it says "before any resync", nothing has re-read pagemap yet, so what the map holds is
//! what the programs wrote.

mod common;

use std::{collections::BTreeMap, io::Write as _};

use collapse::{
    kernel::features::Feature,
    tracer::{Capacity, Session, Target, TargetSpec},
};
use collapse_common::{OccupancyBitmap, consts::PMD_SIZE, maps::RegionKey};
use common::{
    skip::{needs_root_tests, skip_if, thp_not_madvise},
    *,
};

/// A tracing session in this process on `pid` alone, with small maps.
fn session_for(pid: i32) -> Session {
    Session::start(
        Target::resolve(&TargetSpec::Pids(vec![pid])).expect("target"),
        Capacity {
            max_regions: 4096,
            ringbuf_bytes: 1 << 16,
            max_processes: 64,
        },
    )
    .expect("start session")
}

/// The region map's bitmaps of `pid`'s live process (pending bits included), by region
/// address.
fn map_of(session: &Session, pid: i32) -> Regions {
    common::inproc::map_regions(session, pid)
}

/// A madvise(DONTNEED) over a range with a hole zaps what is mapped and returns ENOMEM: the
/// zapped pages leave the map at the syscall's exit, before any resync.
#[test]
fn a_madvise_over_a_hole_still_clears_what_it_zapped() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let session = session_for(w.pid);
    let a = w.map("a", 8, false);
    w.cmd("touch a 0 2048");
    w.cmd("unmap a 700 900");
    let reply = w.cmd("madvise-any a 100 1800");
    assert_eq!(reply, "errno ENOMEM", "madvise over the hole");
    let map = within(&map_of(&session, w.pid), a, 8 << 20);
    let mut want = Regions::new();
    for (r, bits) in [
        (0u64, OccupancyBitmap::from_range(0, 100)),
        (3, OccupancyBitmap::from_range(1800 - 1536, 512)),
    ] {
        want.insert(a + r * PMD_SIZE, bits);
    }
    assert_same("the map after DONTNEED over a hole", &map, &want);
    assert_same(
        "pagemap after DONTNEED over a hole",
        &within(&truth(w.pid), a, 8 << 20),
        &want,
    );
}

/// One thread purges a range with DONTNEED in a loop while another writes every page of it:
/// once both are done and the programs' records handled, the map equals pagemap (a clear at
/// a DONTNEED's exit would otherwise wipe pages the other thread faulted in again).
#[test]
fn a_purging_thread_beside_a_faulting_one_leaves_the_map_exact() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let mut session = session_for(w.pid);
    let a = w.map("a", 8, false);
    for round in 0..5 {
        w.cmd("race a 0 2048 200");
        session.poll().expect("poll");
        assert_same(
            &format!("round {round}: map against pagemap"),
            &within(&map_of(&session, w.pid), a, 8 << 20),
            &within(&truth(w.pid), a, 8 << 20),
        );
    }
}

/// Resyncs while a thread faults pages in, region by region interleaved (every fault moves
/// its CPU's pending bits into the map): before each resync the test marks pages the process
/// never touched, so every resync corrects every region. A fault's bit is set at its entry,
/// before its PTE, so every page pagemap shows after a resync must be in the map then: a
/// resync that wrote back what it read would drop the pages faulted in meanwhile.
#[test]
fn resyncs_racing_a_faulting_thread_lose_no_bit() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let mut session = session_for(w.pid);
    // 256 regions; the thread writes pages 0..480 of each, 480..512 are never touched.
    let a = w.map("a", 512, false);
    let regions: Vec<u64> = (0..256).map(|r| a + r * PMD_SIZE).collect();
    let stale = OccupancyBitmap::from_range(480, 512);
    let all = 256 * 480;
    // Paced (a pause between columns) so that it runs through several resyncs.
    w.cmd("stride a 256 480 300");
    let mut resyncs = 0u32;
    let mut lost = Vec::new();
    let generation = session
        .bpf()
        .generation(w.pid as u32)
        .expect("read the pid's generation");
    loop {
        let corrections: Vec<_> = regions
            .iter()
            .map(|&r| collapse_common::maps::Correction {
                key: RegionKey::of(w.pid as u32, generation, r),
                clear: OccupancyBitmap::EMPTY,
                set: stale,
            })
            .collect();
        session
            .bpf_mut()
            .correct(&corrections)
            .expect("mark stale pages");
        session.resync_now().expect("resync");
        resyncs += 1;
        // pagemap first, then the map: a page present in the first has its bit in the second.
        let present = within(&truth(w.pid), a, 512 << 20);
        let map = map_of(&session, w.pid);
        for (r, bits) in &present {
            let missing = bits.difference(&map.get(r).copied().unwrap_or_default());
            if !missing.is_empty() {
                lost.push(format!(
                    "resync {resyncs}: region {r:#x} lost {} bits",
                    missing.count()
                ));
            }
        }
        let seen: u32 = present.values().map(OccupancyBitmap::count).sum();
        if seen >= all || resyncs > 2000 {
            break;
        }
    }
    w.cmd("join a 0 0");
    eprintln!("{resyncs} resyncs raced the thread");
    assert!(resyncs >= 2, "the thread finished before a second resync");
    assert!(lost.is_empty(), "{}", lost.join("\n"));
    let want: Regions = regions
        .iter()
        .map(|&r| (r, OccupancyBitmap::from_range(0, 480)))
        .collect();
    assert_same(
        "pagemap after the thread",
        &within(&truth(w.pid), a, 512 << 20),
        &want,
    );
}

/// An unmap of more regions than a program can visit in a bounded loop is finished in the
/// kernel at the syscall's exit, PMD by PMD (`bpf_loop`) or, wider than the map can hold, by
/// walking the map: nothing is left for userspace, and the map is right before any resync.
#[test]
fn a_wide_unmap_is_finished_in_the_kernel() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let session = session_for(w.pid);
    // 300 regions (more than the old 256-region limit), and 10 GiB: 5120 regions, more than
    // the 4096 the session's map holds, so the map is walked instead.
    let big = w.map("big", 600, false);
    w.cmd("touch big 0 153600");
    let huge = w.map("huge", 10 << 10, false);
    let huge_pages = (10u64 << 30) / 4096;
    for page in [0, 512 * 1000, 512 * 3000, huge_pages - 1] {
        w.cmd(&format!("touch huge {page} {}", page + 1));
    }
    let keep = w.map("keep", 4, false);
    w.cmd("touch keep 0 1024");
    let before = map_of(&session, w.pid);
    assert_eq!(within(&before, big, 600 << 20).len(), 300);
    assert_eq!(within(&before, huge, 10 << 30).len(), 4);
    w.cmd("unmap big 0 153600");
    w.cmd(&format!("unmap huge 0 {huge_pages}"));
    let after = map_of(&session, w.pid);
    assert!(
        within(&after, big, 600 << 20).is_empty(),
        "600 MiB unmapped, {} regions left in the map",
        within(&after, big, 600 << 20).len()
    );
    assert!(
        within(&after, huge, 10 << 30).is_empty(),
        "10 GiB unmapped, regions left in the map: {:x?}",
        within(&after, huge, 10 << 30).keys().collect::<Vec<_>>()
    );
    assert_eq!(
        within(&after, keep, 4 << 20),
        within(&before, keep, 4 << 20),
        "a mapping beside them lost bits"
    );
}

/// A file of `mib` MiB under the target dir, out of the page cache.
fn cold_file(test: &str, mib: usize) -> std::path::PathBuf {
    let path = temp_dir(test).join("cold");
    let mut f = std::fs::File::create(&path).expect("create file");
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk).expect("write file");
    }
    f.sync_all().expect("fsync");
    use std::os::fd::AsRawFd as _;
    // SAFETY: advice on our own open file.
    let ret = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(ret, 0, "posix_fadvise(DONTNEED)");
    path
}

/// A write fault, then at once a read(2) of a cold file whose readahead allocates large
/// page-cache folios in the same thread: those are not the fault's, and no bit is set for
/// them (the map, before any resync, holds the one written page).
#[test]
fn readahead_after_a_fault_sets_no_bits() {
    skip_if!(needs_root_tests());
    if Feature::InUserFault.forced_off() {
        skip::report(
            "readahead_after_a_fault_sets_no_bits",
            &"in_user_fault is forced off",
        );
        return;
    }
    let mut w = Workload::spawn();
    // The hook runs whatever the THP settings (as with THP `always`).
    // SAFETY: the tests of this file run one at a time (--test-threads=1).
    unsafe { std::env::set_var("COLLAPSE_LARGE_FOLIO_HOOK", "1") };
    let session = session_for(w.pid);
    unsafe { std::env::remove_var("COLLAPSE_LARGE_FOLIO_HOOK") };
    assert!(session.bpf().large_folio_hook().is_some(), "hook attached");
    // What this test is about is the in_user_fault check itself: without the bit (6.11+
    // built without CONFIG_MEMCG_V1) readahead bits are only undone by pagemap's confirmation.
    if let Some(f) = session
        .bpf()
        .fallbacks()
        .iter()
        .find(|f| f.feature == Feature::InUserFault)
    {
        skip::report(
            "readahead_after_a_fault_sets_no_bits",
            &format_args!("no task_struct::in_user_fault here: {}", f.why),
        );
        return;
    }
    let a = w.map("a", 4, false);
    let file = cold_file("readahead_after_a_fault_sets_no_bits", 64);
    for round in 0..8 {
        let page = 37 + round;
        w.cmd(&format!("touch-read a {page} {}", file.display()));
        let map = within(&map_of(&session, w.pid), a, 4 << 20);
        let mut want = Regions::new();
        want.insert(a, OccupancyBitmap::from_range(37, page as usize + 1));
        assert_same(
            &format!("round {round}: the map after a fault and a readahead"),
            &map,
            &want,
        );
        // Cold again for the next round.
        let f = std::fs::File::open(&file).expect("open");
        use std::os::fd::AsRawFd as _;
        // SAFETY: advice on our own open file.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// A THP faulted into MADV_HUGEPAGE memory has its 512 bits in the map before any resync,
/// after the fault path kept it per thread.
fn thp_fault_sets_every_bit(test: &str) {
    let mut w = Workload::spawn();
    let a = w.map("a", 8, true);
    let mut session = session_for(w.pid);
    assert!(session.bpf().large_folio_hook().is_some(), "hook attached");
    w.cmd("touch a 0 1");
    w.cmd("touch a 512 513");
    let huge: Vec<u64> = (0..2)
        .map(|r| a + r * PMD_SIZE)
        .filter(|&r| pmd_mapped(w.pid, r))
        .collect();
    if huge.is_empty() {
        skip::report(test, &"no THP at fault time (fragmented memory?)");
        return;
    }
    let map = map_of(&session, w.pid);
    for r in &huge {
        assert_eq!(
            map.get(r).copied().unwrap_or_default().count(),
            512,
            "{test}: THP at {r:#x} before any resync: {:?}",
            map.get(r).map(OccupancyBitmap::count)
        );
    }
    session.poll().expect("poll");
    assert_same(
        &format!("{test}: after the records"),
        &within(&map_of(&session, w.pid), a, 8 << 20),
        &within(&truth(w.pid), a, 8 << 20),
    );
}

#[test]
fn a_thp_fault_sets_every_bit() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    thp_fault_sets_every_bit("a_thp_fault_sets_every_bit");
}

/// The `in_user_fault` fallback (kernels without CONFIG_MEMCG_V1): the in-flight record is
/// trusted until its first large folio; THP faults still set all their bits, and a readahead
/// that takes a stale record for a fault is corrected from pagemap by the record it sends.
#[test]
fn forced_in_user_fault_fallback_still_gives_right_results() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    // SAFETY: the tests of this file run one at a time (--test-threads=1).
    unsafe { std::env::set_var("COLLAPSE_FALLBACKS", "in_user_fault") };
    let probe = Workload::spawn();
    let session = session_for(probe.pid);
    let fallbacks: Vec<_> = session.bpf().fallbacks().to_vec();
    drop(session);
    drop(probe);
    thp_fault_sets_every_bit("forced_in_user_fault_fallback_still_gives_right_results");
    let mut w = Workload::spawn();
    unsafe { std::env::set_var("COLLAPSE_LARGE_FOLIO_HOOK", "1") };
    let mut session = session_for(w.pid);
    unsafe {
        std::env::remove_var("COLLAPSE_LARGE_FOLIO_HOOK");
        std::env::remove_var("COLLAPSE_FALLBACKS");
    }
    assert!(
        fallbacks.iter().any(|f| f.feature == Feature::InUserFault),
        "in_user_fault not reported as a fallback: {fallbacks:?}"
    );
    let a = w.map("a", 4, false);
    let file = cold_file(
        "forced_in_user_fault_fallback_still_gives_right_results",
        64,
    );
    w.cmd(&format!("touch-read a 37 {}", file.display()));
    session.poll().expect("poll");
    let mut want = BTreeMap::new();
    want.insert(a, OccupancyBitmap::from_range(37, 38));
    assert_same(
        "after a fault, a readahead and the records",
        &within(&map_of(&session, w.pid), a, 4 << 20),
        &want,
    );
}
