//! pagemap ground truth against memory this test maps and touches itself, page by page.
//!
//! Runs as root (pagemap hides PFNs and kpageflags is unreadable otherwise). The tests in this
//! file run one at a time: each maps, unmaps or forks (a forked child shares every page of
//! ours copy-on-write until it execs), which would show in the others' pagemap reads.

use std::sync::{Mutex, MutexGuard};

mod common;

use collapse::kernel::pagemap::{self, PagemapError, PagemapReader, RegionTruth};
use collapse_common::{
    OccupancyBitmap,
    consts::{PAGE_SIZE, PMD_SIZE},
};
use common::{
    as_nobody, run_test_in_child,
    skip::{needs_root, skip, skip_if},
};

const P: u64 = PAGE_SIZE;
const M: u64 = PMD_SIZE;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Anonymous private memory this test owns; what is still mapped is unmapped on drop.
struct Mapping {
    base: u64,
    live: Vec<std::ops::Range<u64>>,
}

impl Mapping {
    /// `len` bytes starting `offset` bytes past a 2 MiB boundary. The slack of the reservation
    /// around it stays mapped as inaccessible shared memory, which is not anonymous private
    /// memory, so neither it nor anything mapped later can be mistaken for part of ours.
    fn new(len: u64, offset: u64) -> Self {
        // Enough to align, and for the slack to cover the rest of the first and last region.
        let reserve = len + offset + 4 * M;
        // SAFETY: a fresh mapping; nothing aliases it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve as usize,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            raw,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let raw = raw as u64;
        let base = raw.next_multiple_of(M) + offset;
        // SAFETY: replaces part of the reservation we just made.
        let fixed = unsafe {
            libc::mmap(
                base as *mut _,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(
            fixed as u64,
            base,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Self {
            base,
            live: vec![std::ops::Range {
                start: raw,
                end: raw + reserve,
            }],
        }
    }

    fn start(&self) -> u64 {
        self.base
    }

    fn madvise(&self, range: std::ops::Range<u64>, advice: i32) {
        // SAFETY: the range is inside this mapping.
        let rc = unsafe {
            libc::madvise(
                range.start as *mut _,
                (range.end - range.start) as usize,
                advice,
            )
        };
        assert_eq!(
            rc,
            0,
            "madvise({advice}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn unmap(&mut self, range: std::ops::Range<u64>) {
        if range.start >= range.end {
            return;
        }
        // SAFETY: only pages of this mapping, which nothing else references.
        let rc = unsafe { libc::munmap(range.start as *mut _, (range.end - range.start) as usize) };
        assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
        let mut live = Vec::new();
        for r in self.live.drain(..) {
            if r.start < range.start {
                live.push(r.start..r.end.min(range.start));
            }
            if r.end > range.end {
                live.push(r.start.max(range.end)..r.end);
            }
        }
        self.live = live;
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        for r in std::mem::take(&mut self.live) {
            // SAFETY: still mapped by us.
            unsafe { libc::munmap(r.start as *mut _, (r.end - r.start) as usize) };
        }
    }
}

fn write(addr: u64) {
    // SAFETY: callers pass addresses inside a live read-write Mapping.
    unsafe { std::ptr::write_volatile(addr as *mut u8, 0x5a) };
}

fn read(addr: u64) -> u8 {
    // SAFETY: as for `write`.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

fn bits(runs: &[(usize, usize)]) -> OccupancyBitmap {
    let mut b = OccupancyBitmap::EMPTY;
    for &(s, e) in runs {
        b.set_range(s, e);
    }
    b
}

fn region(
    addr: u64,
    present: OccupancyBitmap,
    zero: OccupancyBitmap,
    vma_mask: OccupancyBitmap,
) -> RegionTruth {
    RegionTruth {
        present,
        zero,
        vma_mask,
        ..RegionTruth::empty(addr)
    }
}

fn me() -> i32 {
    std::process::id() as i32
}

/// The truths `read_regions` reports for addresses in `lo..hi`.
fn regions_in(pid: i32, lo: u64, hi: u64) -> Vec<RegionTruth> {
    pagemap::read_regions(pid)
        .unwrap()
        .into_iter()
        .filter(|t| t.addr >= lo && t.addr < hi)
        .collect()
}

fn show(truths: &[RegionTruth]) -> String {
    truths
        .iter()
        .map(|t| {
            format!(
                "{:#x}: present {:?} zero {:?} swap {:?} shared {:?} vma {:?} pmd {}\n",
                t.addr,
                t.present.runs().collect::<Vec<_>>(),
                t.zero.runs().collect::<Vec<_>>(),
                t.swap.runs().collect::<Vec<_>>(),
                t.shared.runs().collect::<Vec<_>>(),
                t.vma_mask.runs().collect::<Vec<_>>(),
                t.pmd_mapped
            )
        })
        .collect()
}

fn assert_truths(got: &[RegionTruth], want: &[RegionTruth]) {
    assert!(
        got == want,
        "pagemap says\n{}expected\n{}",
        show(got),
        show(want)
    );
}

/// 8 MiB (4 regions' worth) starting 16 pages into a PMD region (so the first and last regions are partly
/// covered), touched in a chosen pattern, then partly dropped and unmapped.
#[test]
fn exact_bitmaps_of_touched_memory() {
    skip_if!(needs_root());
    let _serial = serial();
    let mut map = Mapping::new(4 * M, 16 * P);
    let base = map.start();
    map.madvise(base..base + 4 * M, libc::MADV_NOHUGEPAGE);
    let r: Vec<u64> = (0..5).map(|i| (base & !(M - 1)) + i * M).collect();
    let page = |reg: usize, i: u64| r[reg] + i * P;

    // R0: sparse writes; R1: every page; R2: a run at an odd offset; R3: reads (zero page) and
    // one write; R4: the last page of the mapping, and a read.
    for i in [16, 17, 100, 511] {
        write(page(0, i));
    }
    for i in 0..512 {
        write(page(1, i));
    }
    for i in 37..82 {
        write(page(2, i));
    }
    for i in 5..10 {
        read(page(3, i));
    }
    write(page(3, 200));
    write(page(4, 15));
    read(page(4, 0));

    let vma0 = bits(&[(16, 512)]);
    let vma4 = bits(&[(0, 16)]);
    let none = OccupancyBitmap::EMPTY;
    let full = OccupancyBitmap::FULL;
    let mut want = vec![
        region(r[0], bits(&[(16, 18), (100, 101), (511, 512)]), none, vma0),
        region(r[1], full, none, full),
        region(r[2], bits(&[(37, 82)]), none, full),
        region(r[3], bits(&[(200, 201)]), bits(&[(5, 10)]), full),
        region(r[4], bits(&[(15, 16)]), bits(&[(0, 1)]), vma4),
    ];
    assert_truths(&regions_in(me(), r[0], r[4] + M), &want);
    // The same through the other entry points.
    assert_truths(
        &pagemap::read_range(me(), base..base + 4 * M).unwrap(),
        &want,
    );
    assert_truths(
        &pagemap::read_range(me(), page(2, 300)..page(2, 301)).unwrap(),
        &want[2..3],
    );
    assert_truths(
        &[pagemap::read_region(me(), page(3, 77)).unwrap()],
        &want[3..4],
    );
    // Without PAGEMAP_SCAN (kernels before 6.7) the answer is the same.
    let mut old = PagemapReader::open(me()).unwrap().without_pagemap_scan();
    let got: Vec<_> = old
        .read_regions()
        .unwrap()
        .into_iter()
        .filter(|t| t.addr >= r[0] && t.addr <= r[4])
        .collect();
    assert_truths(&got, &want);
    assert!(!old.uses_pagemap_scan());
    // Base pages only (MADV_NOHUGEPAGE also rules out mTHP).
    let orders = pagemap::folio_orders(me(), r[2]).unwrap();
    for (i, &o) in orders.iter().enumerate() {
        assert_eq!(o, if (37..82).contains(&i) { 0 } else { -1 }, "PTE {i}");
    }
    let anon = pagemap::anon_vmas(me()).unwrap();
    assert!(anon.contains(&(base..base + 4 * M)), "{anon:x?}");

    // Drop half of R1 and part of the run in R2, punch a hole at R0's page 100, unmap R4's
    // part, drop R3 entirely.
    map.madvise(page(1, 256)..page(1, 512), libc::MADV_DONTNEED);
    map.madvise(page(2, 40)..page(2, 50), libc::MADV_DONTNEED);
    map.unmap(page(0, 100)..page(0, 101));
    map.unmap(r[4]..page(4, 16));
    map.madvise(r[3]..r[3] + M, libc::MADV_DONTNEED);
    want[0].present.clear(100);
    want[0].vma_mask.clear(100);
    want[1].present = bits(&[(0, 256)]);
    want[2].present = bits(&[(37, 40), (50, 82)]);
    want[3].present = none;
    want[3].zero = none;
    // R3 is no longer populated and R4 has no VMA left.
    let populated = [want[0], want[1], want[2]];
    assert_truths(&regions_in(me(), r[0], r[4] + M), &populated);
    // read_range reports every region with VMA coverage, populated or not.
    assert_truths(
        &pagemap::read_range(me(), r[0]..r[4] + M).unwrap(),
        &want[..4],
    );
    assert_truths(
        &[pagemap::read_region(me(), r[4]).unwrap()],
        &[RegionTruth::empty(r[4])],
    );
    let anon = pagemap::anon_vmas(me()).unwrap();
    assert!(anon.contains(&(base..page(0, 100))), "{anon:x?}");
    assert!(anon.contains(&(page(0, 101)..r[4])), "{anon:x?}");

    // After fork every written page is copy-on-write shared with the child, in both; the zero
    // page stays zero.
    write(page(3, 1));
    read(page(3, 2));
    want[3].present = bits(&[(1, 2)]);
    want[3].zero = bits(&[(2, 3)]);
    // SAFETY: the child only calls async-signal-safe functions until it is killed.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        loop {
            // SAFETY: async-signal-safe.
            unsafe { libc::pause() };
        }
    }
    let shared_want: Vec<RegionTruth> = want[..4]
        .iter()
        .map(|t| RegionTruth {
            shared: t.present,
            ..*t
        })
        .collect();
    let in_parent = regions_in(me(), r[0], r[4] + M);
    let in_child = regions_in(child, r[0], r[4] + M);
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    assert_truths(&in_parent, &shared_want);
    assert_truths(&in_child, &shared_want);
    // Exclusive again once the child is gone.
    assert_truths(&regions_in(me(), r[0], r[4] + M), &want[..4]);
    drop(map);
    assert!(regions_in(me(), r[0], r[4] + M).is_empty());
}

fn thp_enabled() -> bool {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    !enabled.is_empty() && !enabled.contains("[never]")
}

fn vmstat(name: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A THP faulted in by one write to a MADV_HUGEPAGE region is PMD-mapped, all 512 PTEs
/// present and of order 9; the huge zero page is zero, not present.
#[test]
fn thp_is_pmd_mapped_order_9() {
    skip_if!(needs_root());
    if !thp_enabled() {
        skip!("transparent_hugepage/enabled is never");
    }
    let _serial = serial();
    let mut map = Mapping::new(2 * M, 0);
    let a = map.start();
    map.madvise(a..a + 2 * M, libc::MADV_HUGEPAGE);
    let fallbacks = vmstat("thp_fault_fallback");
    write(a + 1234);
    let t = pagemap::read_region(me(), a).unwrap();
    if !t.pmd_mapped && vmstat("thp_fault_fallback") > fallbacks {
        skip!("the kernel could not allocate a huge page (thp_fault_fallback grew)");
    }
    let full = OccupancyBitmap::FULL;
    assert_truths(
        &[t],
        &[RegionTruth {
            pmd_mapped: true,
            ..region(a, full, OccupancyBitmap::EMPTY, full)
        }],
    );
    assert_eq!(pagemap::folio_orders(me(), a).unwrap(), [9i8; 512]);
    let mut old = PagemapReader::open(me()).unwrap().without_pagemap_scan();
    assert_truths(&[old.read_region(a).unwrap()], &[t]);

    // Dropping one page splits the PMD mapping: 511 PTEs remain, no longer PMD-mapped.
    map.madvise(a + 7 * P..a + 8 * P, libc::MADV_DONTNEED);
    let mut present = full;
    present.clear(7);
    let t = pagemap::read_region(me(), a).unwrap();
    assert_truths(&[t], &[region(a, present, OccupancyBitmap::EMPTY, full)]);
    assert_truths(&[old.read_region(a).unwrap()], &[t]);

    // The huge zero page: a read of an untouched MADV_HUGEPAGE region.
    let use_zero = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/use_zero_page")
        .unwrap_or_default();
    if use_zero.trim() == "1" {
        read(a + M + 99);
        let t = pagemap::read_region(me(), a + M).unwrap();
        if t.zero == full {
            assert_truths(&[t], &[region(a + M, OccupancyBitmap::EMPTY, full, full)]);
            assert_truths(&[old.read_region(a + M).unwrap()], &[t]);
            assert_eq!(pagemap::folio_orders(me(), a + M).unwrap(), [-1i8; 512]);
        } else {
            // No huge zero page (allocation failed): then the 4 KiB zero page.
            eprintln!("note: no huge zero page; checked the 4 KiB zero page instead");
            assert_truths(
                &[t],
                &[region(a + M, OccupancyBitmap::EMPTY, bits(&[(0, 1)]), full)],
            );
        }
    }
    map.unmap(a..a + 2 * M);
}

/// Puts a sysfs value back when dropped.
struct Restore(&'static str, String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

/// A 64 KiB mTHP shows as 16 PTEs of order 4.
#[test]
fn mthp_folio_orders() {
    skip_if!(needs_root());
    const SIZE_64K: &str = "/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled";
    let Ok(previous) = std::fs::read_to_string(SIZE_64K) else {
        skip!("no {SIZE_64K} (kernel without mTHP)");
    };
    if !thp_enabled() {
        skip!("transparent_hugepage/enabled is never");
    }
    let previous = previous
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap()
        .to_owned();
    let _serial = serial();
    // 1 MiB cannot hold a PMD mapping; with 64K on "madvise" its faults allocate 64 KiB folios.
    let map = Mapping::new(M / 2, 16 * P);
    let a = map.start();
    map.madvise(a..a + M / 2, libc::MADV_HUGEPAGE);
    let fallbacks = vmstat("thp_fault_fallback") + vmstat("mthp_fault_fallback");
    {
        // Only for the fault: restored right after, so other processes barely see it.
        let _restore = Restore(SIZE_64K, previous);
        std::fs::write(SIZE_64K, "madvise").unwrap();
        write(a + 5 * P + 17);
    }
    let t = pagemap::read_region(me(), a).unwrap();
    let orders = pagemap::folio_orders(me(), a).unwrap();
    if t.present.count() == 1 {
        skip!("the kernel fell back to a base page (no free 64 KiB block?)");
    }
    // Region offset of the mapping is 16 pages; the folio is 64 KiB-aligned: pages 16..32.
    let folio = bits(&[(16, 32)]);
    assert_truths(
        &[t],
        &[region(
            a & !(M - 1),
            folio,
            OccupancyBitmap::EMPTY,
            bits(&[(16, 16 + 256)]),
        )],
    );
    for (i, &o) in orders.iter().enumerate() {
        assert_eq!(
            o,
            if folio.get(i) { 4 } else { -1 },
            "PTE {i} (fallbacks before: {fallbacks})"
        );
    }
}

#[test]
fn errors_name_pid_and_file() {
    let nobody = 4_194_305;
    let err = pagemap::read_regions(nobody).unwrap_err();
    assert!(
        matches!(err, PagemapError::NoProcess { pid } if pid == nobody),
        "{err}"
    );
    assert_eq!(err.to_string(), format!("no process with pid {nobody}"));
    assert!(matches!(
        pagemap::anon_vmas(nobody),
        Err(PagemapError::NoProcess { .. })
    ));
    assert!(matches!(
        pagemap::read_region(nobody, 0),
        Err(PagemapError::NoProcess { .. })
    ));
}

const UNPRIVILEGED_CHILD: &str = "COLLAPSE_TEST_PAGEMAP_UNPRIVILEGED_CHILD";

/// As an unprivileged user: another process's pagemap, and kpageflags, need root.
#[test]
fn unprivileged_reads_say_root_is_needed() {
    skip_if!(needs_root());
    // Until it execs, the forked child shares all our memory copy-on-write.
    let _serial = serial();
    run_test_in_child("unprivileged_child", UNPRIVILEGED_CHILD, as_nobody);
}

#[test]
fn unprivileged_child() {
    if std::env::var_os(UNPRIVILEGED_CHILD).is_none() {
        return; // Only meaningful inside `unprivileged_reads_say_root_is_needed`.
    }
    assert!(!nix::unistd::geteuid().is_root());
    let err = pagemap::read_regions(1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "reading /proc/1/pagemap needs root: run collapse as root"
    );
    let err = pagemap::read_regions(me()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "reading /proc/kpageflags needs root: run collapse as root"
    );
    // Our own maps are readable without privileges.
    assert!(!pagemap::anon_vmas(me()).unwrap().is_empty());
}
