//! Ground truth about a process's anonymous memory, PTE by PTE: `/proc/<pid>/pagemap` joined
//! with `/proc/kpageflags` (Documentation/admin-guide/mm/pagemap.rst; producers in
//! fs/proc/task_mmu.c `pagemap_read` and fs/proc/page.c `stable_page_flags`), plus the
//! `PAGEMAP_SCAN` ioctl (Linux 6.7+, same doc) to skip unpopulated address space and to see
//! which PMDs map a THP.
//!
//! Everything here needs root: without CAP_SYS_ADMIN pagemap hides PFNs and kpageflags is
//! unreadable.

use std::{
    collections::HashMap,
    fs::File,
    io,
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use collapse_common::{
    OccupancyBitmap,
    consts::{PAGE_SHIFT, PAGE_SIZE, PMD_MASK, PMD_ORDER, PMD_SIZE, PTES_PER_PMD},
    policy::RegionState,
};
use procfs::{
    PhysicalPageFlags, ProcError,
    process::{MMPermissions, MMapPath, MemoryPageFlags, Process},
};

use super::AccessDenied;

#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error("no process with pid {pid}")]
    NoProcess { pid: i32 },
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(
        "/proc/{pid}/pagemap hides page frame numbers (they read as 0): joining it with \
         /proc/kpageflags needs CAP_SYS_ADMIN; run collapse as root"
    )]
    PfnHidden { pid: i32 },
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("PAGEMAP_SCAN on /proc/{pid}/pagemap: {source}")]
    Scan { pid: i32, source: nix::errno::Errno },
}

type Result<T> = std::result::Result<T, PagemapError>;

/// pagemap bit 58: the PTE is a guard-region marker (MADV_GUARD_INSTALL, Linux 6.14+); it is
/// reported with bit 62 set but holds no data.
const PM_GUARD_REGION: u64 = 1 << 58;
/// Bits 0-54 of a present entry: the PFN.
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// What pagemap says about the 512 PTEs of one PMD-aligned region of anonymous memory.
///
/// PTEs outside anonymous private VMAs are 0 in every bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionTruth {
    /// PMD-aligned start address.
    pub addr: u64,
    /// Maps a page (pagemap bit 63) that is not the shared zero page or the huge zero page.
    pub present: OccupancyBitmap,
    /// Holds a swap (or migration) entry (bit 62, not a guard marker).
    pub swap: OccupancyBitmap,
    /// Present and not exclusively mapped (bit 56 clear): shared with another process, e.g.
    /// copy-on-write after fork, or KSM.
    pub shared: OccupancyBitmap,
    /// Maps the zero page or the huge zero page (kpageflags ZERO_PAGE): read but never written.
    pub zero: OccupancyBitmap,
    /// Which PTEs lie inside anonymous private VMAs.
    pub vma_mask: OccupancyBitmap,
    /// The region is mapped by one PMD entry to a THP (not the huge zero page).
    pub pmd_mapped: bool,
}

impl RegionTruth {
    pub const fn empty(addr: u64) -> Self {
        Self {
            addr,
            present: OccupancyBitmap::EMPTY,
            swap: OccupancyBitmap::EMPTY,
            shared: OccupancyBitmap::EMPTY,
            zero: OccupancyBitmap::EMPTY,
            vma_mask: OccupancyBitmap::EMPTY,
            pmd_mapped: false,
        }
    }

    /// The occupancy the policy engine works on.
    pub fn state(&self) -> RegionState {
        RegionState {
            present: self.present,
            swap: self.swap,
            shared: self.shared,
        }
    }

    /// Whether any PTE is mapped (including to the zero page) or swapped.
    pub fn is_populated(&self) -> bool {
        !(self.present.is_empty() && self.swap.is_empty() && self.zero.is_empty())
    }
}

/// Folio order of each PTE of a region as `folio_orders` reports it: -1 for a PTE that maps
/// nothing (or the zero page), 0 for a base page, k for a page of a 2^k-page large folio.
pub type FolioOrders = [i8; PTES_PER_PMD];

/// The anonymous private VMAs of `pid`, ascending: mappings with no file (`MAP_PRIVATE |
/// MAP_ANONYMOUS`, the heap, stacks, `[anon:<name>]`). Shared anonymous mappings are shmem
/// (they show as `/dev/zero (deleted)` or `[anon_shmem:<name>]`) and are left out, as are
/// file mappings (even their private copy-on-write pages), `[vdso]`, `[vvar]`, `[vsyscall]`.
pub fn anon_vmas(pid: i32) -> Result<Vec<Range<u64>>> {
    let maps_path = || PathBuf::from(format!("/proc/{pid}/maps"));
    let process = Process::new(pid).map_err(|e| proc_error(pid, maps_path(), e))?;
    let maps = process
        .maps()
        .map_err(|e| proc_error(pid, maps_path(), e))?;
    let mut vmas: Vec<Range<u64>> = maps
        .iter()
        .filter(|m| {
            let anonymous = match &m.pathname {
                MMapPath::Anonymous | MMapPath::Heap | MMapPath::Stack | MMapPath::TStack(_) => {
                    true
                }
                MMapPath::Other(name) => name.starts_with("anon:"),
                _ => false,
            };
            anonymous && m.inode == 0 && m.perms.contains(MMPermissions::PRIVATE)
        })
        .map(|m| m.address.0..m.address.1)
        .collect();
    vmas.sort_by_key(|r| r.start);
    Ok(vmas)
}

/// Every populated region (some PTE present, zero-page mapped or swapped) of the anonymous
/// VMAs of `pid`, ascending by address. Untouched address space yields nothing, so a process
/// that reserves terabytes costs only what it populated.
pub fn read_regions(pid: i32) -> Result<Vec<RegionTruth>> {
    PagemapReader::open(pid)?.read_regions()
}

/// The truth of the region containing `addr` (all zero if no anonymous VMA overlaps it).
pub fn read_region(pid: i32, addr: u64) -> Result<RegionTruth> {
    PagemapReader::open(pid)?.read_region(addr)
}

/// Every region overlapping `range` that overlaps an anonymous VMA, populated or not, each read
/// whole: what a tracer needs to resynchronise its bitmaps for a range.
pub fn read_range(pid: i32, range: Range<u64>) -> Result<Vec<RegionTruth>> {
    PagemapReader::open(pid)?.read_range(range)
}

/// The folio order behind each PTE of the region containing `addr` (see [`FolioOrders`]).
pub fn folio_orders(pid: i32, addr: u64) -> Result<FolioOrders> {
    PagemapReader::open(pid)?.folio_orders(addr)
}

/// Whether `PAGEMAP_SCAN` is used here: the kernel has it (6.7+; probed on our own pagemap)
/// and `COLLAPSE_FALLBACKS` does not force its fallback.
pub fn scan_works() -> bool {
    PagemapReader::open(std::process::id() as i32)
        .and_then(|mut r| r.scan(0..PAGE_SIZE, 0, 0))
        .is_ok_and(|runs| runs.is_some())
}

/// Open pagemap and kpageflags files of one process, for repeated reads.
pub struct PagemapReader {
    pid: i32,
    pagemap: File,
    pagemap_path: PathBuf,
    kpageflags: File,
    /// `PAGEMAP_SCAN` works here; cleared on kernels without it (before 6.7).
    use_scan: bool,
}

const KPAGEFLAGS: &str = "/proc/kpageflags";

impl PagemapReader {
    pub fn open(pid: i32) -> Result<Self> {
        let pagemap_path = PathBuf::from(format!("/proc/{pid}/pagemap"));
        let pagemap = File::open(&pagemap_path).map_err(|e| open_error(pid, &pagemap_path, e))?;
        let kpageflags =
            File::open(KPAGEFLAGS).map_err(|e| open_error(pid, Path::new(KPAGEFLAGS), e))?;
        Ok(Self {
            pid,
            pagemap,
            pagemap_path,
            kpageflags,
            // Probed at the first scan (ENOTTY before 6.7); COLLAPSE_FALLBACKS=pagemap_scan
            // forces the fallback here.
            use_scan: !super::features::Feature::PagemapScan.forced_off(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Do without `PAGEMAP_SCAN`, as on kernels before 6.7: read every PTE of every anonymous
    /// VMA, and tell PMD mappings by their folio (512 PTEs over one order-9 THP).
    pub fn without_pagemap_scan(mut self) -> Self {
        self.use_scan = false;
        self
    }

    /// Whether `PAGEMAP_SCAN` is (still) in use.
    pub fn uses_pagemap_scan(&self) -> bool {
        self.use_scan
    }

    /// See [`read_regions`].
    pub fn read_regions(&mut self) -> Result<Vec<RegionTruth>> {
        let vmas = merge(anon_vmas(self.pid)?);
        let mut regions = Vec::new();
        for vma in &vmas {
            let populated = match self.scan(vma.clone(), PAGE_IS_PRESENT | PAGE_IS_SWAPPED, 0)? {
                Some(ranges) => ranges,
                None => vec![(vma.clone(), 0)],
            };
            for (range, _) in populated {
                push_regions(&mut regions, range);
            }
        }
        let truths = self.read_truths(&vmas, &regions)?;
        Ok(truths
            .into_iter()
            .filter(RegionTruth::is_populated)
            .collect())
    }

    /// See [`read_range`].
    pub fn read_range(&mut self, range: Range<u64>) -> Result<Vec<RegionTruth>> {
        let vmas = merge(anon_vmas(self.pid)?);
        let mut regions = Vec::new();
        for vma in &vmas {
            let start = vma.start.max(range.start);
            let end = vma.end.min(range.end);
            if start < end {
                push_regions(&mut regions, start..end);
            }
        }
        self.read_truths(&vmas, &regions)
    }

    /// See [`read_region`].
    pub fn read_region(&mut self, addr: u64) -> Result<RegionTruth> {
        let vmas = self.anon_vmas()?;
        self.read_region_within(&vmas, addr)
    }

    /// The process's anonymous VMAs now, merged where they touch: read them once, then
    /// [`PagemapReader::read_region_within`] many regions.
    pub fn anon_vmas(&self) -> Result<Vec<Range<u64>>> {
        Ok(merge(anon_vmas(self.pid)?))
    }

    /// [`PagemapReader::read_region`] with the VMAs as `vmas` (from [`PagemapReader::anon_vmas`])
    /// said they were: a range unmapped since reads as not populated.
    pub fn read_region_within(&mut self, vmas: &[Range<u64>], addr: u64) -> Result<RegionTruth> {
        let addr = addr & PMD_MASK;
        Ok(self
            .read_truths(vmas, &[addr])?
            .pop()
            .unwrap_or(RegionTruth::empty(addr)))
    }

    /// See [`folio_orders`]. The order comes from the head/tail run of the folio in physical
    /// memory (kpageflags COMPOUND_HEAD / COMPOUND_TAIL), as tools/mm/thpmaps does; anonymous
    /// folios are at most PMD order, larger compound pages are reported as order 9.
    pub fn folio_orders(&mut self, addr: u64) -> Result<FolioOrders> {
        let vmas = merge(anon_vmas(self.pid)?);
        let addr = addr & PMD_MASK;
        let vma_mask = vma_mask(&vmas, addr);
        let mut entries = vec![[0u64; PTES_PER_PMD]];
        for span in spans(&vmas, &[addr]) {
            self.read_span(span, &[addr], &mut entries)?;
        }
        let entries = &entries[0];
        let mut orders = [-1i8; PTES_PER_PMD];
        let mut pfns = Vec::new();
        for (i, &e) in entries.iter().enumerate() {
            if vma_mask.get(i) && e & PRESENT != 0 {
                pfns.push(self.pfn(e)?);
            }
        }
        let flags = self.kpageflags_of(pfns)?;
        // Flags of 512-aligned physical blocks, to walk head/tail runs.
        let mut blocks: HashMap<u64, Vec<PhysicalPageFlags>> = HashMap::new();
        for (i, &e) in entries.iter().enumerate() {
            if !vma_mask.get(i) || e & PRESENT == 0 {
                continue;
            }
            let pfn = e & PM_PFN_MASK;
            let f = flags[&pfn];
            if f.contains(PhysicalPageFlags::ZERO_PAGE) {
                continue;
            }
            if !f.intersects(PhysicalPageFlags::COMPOUND_HEAD | PhysicalPageFlags::COMPOUND_TAIL) {
                orders[i] = 0;
                continue;
            }
            let base = pfn & !(PTES_PER_PMD as u64 - 1);
            let block = match blocks.get(&base) {
                Some(b) => b,
                None => {
                    let b = self.read_kpageflags(base, PTES_PER_PMD)?;
                    blocks.entry(base).or_insert(b)
                }
            };
            orders[i] = compound_order(block, (pfn - base) as usize);
        }
        Ok(orders)
    }

    /// Reads the regions `regions` (ascending, PMD-aligned) given the merged anonymous VMAs.
    fn read_truths(&mut self, vmas: &[Range<u64>], regions: &[u64]) -> Result<Vec<RegionTruth>> {
        let mut entries = vec![[0u64; PTES_PER_PMD]; regions.len()];
        let mut huge = vec![false; regions.len()];
        let mut scanned = false;
        for span in spans(vmas, regions) {
            self.read_span(span.clone(), regions, &mut entries)?;
            // Which PMDs map a huge page: PAGE_IS_HUGE is set for PMD leaves only
            // (fs/proc/task_mmu.c pagemap_thp_category), never for PTE-mapped folios.
            if let Some(ranges) = self.scan(span, 0, PAGE_IS_HUGE)? {
                scanned = true;
                for (range, categories) in ranges {
                    if categories & PAGE_IS_PRESENT == 0 {
                        continue;
                    }
                    let mut r = range.start & PMD_MASK;
                    while r < range.end {
                        if range.start <= r
                            && r + PMD_SIZE <= range.end
                            && let Ok(i) = regions.binary_search(&r)
                        {
                            huge[i] = true;
                        }
                        r += PMD_SIZE;
                    }
                }
            }
        }

        // The zero page is never "exclusively mapped" (vm_normal_page() is NULL for it, so
        // pte_to_pagemap_entry() cannot set PM_MMAP_EXCLUSIVE): only present entries without
        // bit 56 need a kpageflags look-up. Without PAGEMAP_SCAN, the head of a candidate
        // PMD mapping needs one too.
        let mut pfns = Vec::new();
        for (region, entries) in regions.iter().zip(&entries) {
            let mask = vma_mask(vmas, *region);
            for (i, &e) in entries.iter().enumerate() {
                if mask.get(i) && e & PRESENT != 0 && e & EXCLUSIVE == 0 {
                    pfns.push(self.pfn(e)?);
                }
            }
            if !scanned && let Some(head) = pmd_candidate(entries) {
                pfns.push(head);
            }
        }
        let flags = self.kpageflags_of(pfns)?;

        let mut truths = Vec::with_capacity(regions.len());
        for ((&addr, entries), huge) in regions.iter().zip(&entries).zip(huge) {
            let mut t = RegionTruth::empty(addr);
            t.vma_mask = vma_mask(vmas, addr);
            for (i, &e) in entries.iter().enumerate() {
                if !t.vma_mask.get(i) {
                    continue;
                }
                if e & PRESENT != 0 {
                    if e & EXCLUSIVE != 0 {
                        t.present.set(i);
                    } else if flags[&(e & PM_PFN_MASK)].contains(PhysicalPageFlags::ZERO_PAGE) {
                        t.zero.set(i);
                    } else {
                        t.present.set(i);
                        t.shared.set(i);
                    }
                } else if e & SWAP != 0 && e & PM_GUARD_REGION == 0 {
                    t.swap.set(i);
                }
            }
            t.pmd_mapped = t.present == OccupancyBitmap::FULL
                && if scanned {
                    huge
                } else {
                    pmd_candidate(entries).is_some_and(|head| {
                        let f = flags[&head];
                        f.contains(PhysicalPageFlags::THP | PhysicalPageFlags::COMPOUND_HEAD)
                            && !f.contains(PhysicalPageFlags::ZERO_PAGE)
                    })
                };
            truths.push(t);
        }
        Ok(truths)
    }

    /// One pread of the pagemap entries of `span`, distributed over the regions it covers.
    fn read_span(
        &self,
        span: Range<u64>,
        regions: &[u64],
        entries: &mut [[u64; PTES_PER_PMD]],
    ) -> Result<()> {
        let n = ((span.end - span.start) / PAGE_SIZE) as usize;
        let mut buf = vec![0u8; n * 8];
        let offset = (span.start >> PAGE_SHIFT) * 8;
        self.pagemap
            .read_exact_at(&mut buf, offset)
            .map_err(|e| self.pagemap_read_error(e))?;
        for (k, chunk) in buf.chunks_exact(8).enumerate() {
            let addr = span.start + k as u64 * PAGE_SIZE;
            if let Ok(r) = regions.binary_search(&(addr & PMD_MASK)) {
                let i = ((addr & !PMD_MASK) / PAGE_SIZE) as usize;
                entries[r][i] = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
            }
        }
        Ok(())
    }

    /// The PFN of a present entry; an error if pagemap hides PFNs from us.
    fn pfn(&self, entry: u64) -> Result<u64> {
        match MemoryPageFlags::from_bits_retain(entry)
            .get_page_frame_number()
            .0
        {
            // PFN 0 is never a user page on x86 (the first page of RAM is reserved); pagemap
            // reports 0 for every PFN when the reader lacks CAP_SYS_ADMIN.
            0 => Err(PagemapError::PfnHidden { pid: self.pid }),
            pfn => Ok(pfn),
        }
    }

    /// kpageflags of each PFN, one pread per run of consecutive PFNs.
    fn kpageflags_of(&self, mut pfns: Vec<u64>) -> Result<HashMap<u64, PhysicalPageFlags>> {
        pfns.sort_unstable();
        pfns.dedup();
        let mut out = HashMap::with_capacity(pfns.len());
        let mut i = 0;
        while i < pfns.len() {
            let mut j = i + 1;
            while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 && j - i < 4096 {
                j += 1;
            }
            let flags = self.read_kpageflags(pfns[i], j - i)?;
            out.extend(pfns[i..j].iter().copied().zip(flags));
            i = j;
        }
        Ok(out)
    }

    fn read_kpageflags(&self, first_pfn: u64, count: usize) -> Result<Vec<PhysicalPageFlags>> {
        let mut buf = vec![0u8; count * 8];
        // Past the end of RAM (a block beyond max_pfn) the read is short; what is missing has
        // no flags.
        let mut done = 0;
        while done < buf.len() {
            match self
                .kpageflags
                .read_at(&mut buf[done..], first_pfn * 8 + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(open_error(self.pid, Path::new(KPAGEFLAGS), e)),
            }
        }
        Ok(buf
            .chunks_exact(8)
            .map(|c| {
                PhysicalPageFlags::from_bits_truncate(u64::from_ne_bytes(
                    c.try_into().expect("8 bytes"),
                ))
            })
            .collect())
    }

    fn pagemap_read_error(&self, e: io::Error) -> PagemapError {
        // pagemap_read() returns 0 once the mm this file was opened on has no users: the
        // process exited (a zombie, not yet reaped, still has its /proc entry: a traced
        // command ending while it is read) or exec'd. Nothing of that mm is left to read.
        if e.kind() == io::ErrorKind::UnexpectedEof || e.raw_os_error() == Some(libc::ESRCH) {
            return PagemapError::NoProcess { pid: self.pid };
        }
        open_error(self.pid, &self.pagemap_path, e)
    }

    /// `PAGEMAP_SCAN` over `range`: the runs whose categories intersect `anyof` (if non-zero)
    /// and include all of `required`, with their PRESENT / SWAPPED / HUGE categories. `None` if
    /// the kernel has no `PAGEMAP_SCAN` (it then stays off for this reader).
    fn scan(
        &mut self,
        range: Range<u64>,
        anyof: u64,
        required: u64,
    ) -> Result<Option<Vec<ScanRun>>> {
        if !self.use_scan {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut vec = vec![PageRegion::default(); 512];
        let mut start = range.start;
        while start < range.end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: 0,
                start,
                end: range.end,
                walk_end: 0,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: required,
                category_anyof_mask: anyof,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_HUGE,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `vec_len` writable
            // page_region entries that outlive the call.
            let n = match unsafe { ioctl_pagemap_scan(self.pagemap.as_raw_fd(), &mut arg) } {
                Ok(n) => n as usize,
                Err(nix::errno::Errno::ENOTTY) if out.is_empty() && start == range.start => {
                    self.use_scan = false;
                    return Ok(None);
                }
                Err(nix::errno::Errno::ESRCH) => {
                    return Err(PagemapError::NoProcess { pid: self.pid });
                }
                Err(source) => {
                    return Err(PagemapError::Scan {
                        pid: self.pid,
                        source,
                    });
                }
            };
            out.extend(vec[..n].iter().map(|r| (r.start..r.end, r.categories)));
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
        }
        Ok(Some(out))
    }
}

/// A run of pages `PAGEMAP_SCAN` reported, with its `PAGE_IS_*` categories.
type ScanRun = (Range<u64>, u64);

const PRESENT: u64 = MemoryPageFlags::PRESENT.bits();
const SWAP: u64 = 1 << 62;
const EXCLUSIVE: u64 = MemoryPageFlags::MMAP_EXCLUSIVE.bits();

// PAGEMAP_SCAN (include/uapi/linux/fs.h).
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_HUGE: u64 = 1 << 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

nix::ioctl_readwrite!(ioctl_pagemap_scan, b'f', 16, PmScanArg);

/// The PFN of the first PTE if the 512 entries map 512 consecutive PFNs starting at a
/// 512-aligned one: the only way a PMD can map them.
fn pmd_candidate(entries: &[u64; PTES_PER_PMD]) -> Option<u64> {
    let first = entries[0] & PM_PFN_MASK;
    let aligned = first != 0 && first.is_multiple_of(PTES_PER_PMD as u64);
    (aligned
        && entries
            .iter()
            .enumerate()
            .all(|(i, &e)| e & PRESENT != 0 && e & PM_PFN_MASK == first + i as u64))
    .then_some(first)
}

/// Order of the compound page holding `block[idx]` (a tail or head), from its head/tail run
/// within the 512-aligned block.
fn compound_order(block: &[PhysicalPageFlags], idx: usize) -> i8 {
    let is_head = |f: &PhysicalPageFlags| f.contains(PhysicalPageFlags::COMPOUND_HEAD);
    let is_tail = |f: &PhysicalPageFlags| f.contains(PhysicalPageFlags::COMPOUND_TAIL);
    let Some(head) = (0..=idx)
        .rev()
        .find(|&j| is_head(&block[j]) || !is_tail(&block[j]))
    else {
        return PMD_ORDER as i8;
    };
    if !is_head(&block[head]) {
        // The head lies before this block: larger than PMD order.
        return PMD_ORDER as i8;
    }
    let len = 1 + block[head + 1..].iter().take_while(|f| is_tail(f)).count();
    len.ilog2() as i8
}

/// Sorted, overlapping or touching ranges merged.
fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Appends the PMD regions `range` overlaps to the ascending list `regions`, without repeats.
fn push_regions(regions: &mut Vec<u64>, range: Range<u64>) {
    if range.start >= range.end {
        return;
    }
    let mut r = range.start & PMD_MASK;
    while r < range.end {
        if regions.last().is_none_or(|&last| last < r) {
            regions.push(r);
        }
        r += PMD_SIZE;
    }
}

/// Which PTEs of the region at `addr` lie in `vmas` (merged, ascending).
fn vma_mask(vmas: &[Range<u64>], addr: u64) -> OccupancyBitmap {
    let end = addr + PMD_SIZE;
    let mut mask = OccupancyBitmap::EMPTY;
    let first = vmas.partition_point(|v| v.end <= addr);
    for v in vmas[first..].iter().take_while(|v| v.start < end) {
        let s = v.start.max(addr);
        let e = v.end.min(end);
        mask.set_range(
            ((s - addr) / PAGE_SIZE) as usize,
            ((e - addr) / PAGE_SIZE) as usize,
        );
    }
    mask
}

/// At most this many PTEs per pread (a 256 KiB buffer).
const MAX_SPAN_PTES: u64 = 64 * PTES_PER_PMD as u64;

/// The address ranges to read for `regions`: their parts inside `vmas`, with ranges that touch
/// merged (so a dense mapping is read in few preads) and split at [`MAX_SPAN_PTES`].
fn spans(vmas: &[Range<u64>], regions: &[u64]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &addr in regions {
        let end = addr + PMD_SIZE;
        let first = vmas.partition_point(|v| v.end <= addr);
        for v in vmas[first..].iter().take_while(|v| v.start < end) {
            let s = v.start.max(addr);
            let e = v.end.min(end);
            match out.last_mut() {
                Some(last) if last.end == s && (e - last.start) / PAGE_SIZE <= MAX_SPAN_PTES => {
                    last.end = e
                }
                _ => out.push(s..e),
            }
        }
    }
    out
}

fn proc_error(pid: i32, path: PathBuf, e: ProcError) -> PagemapError {
    match e {
        ProcError::NotFound(_) => PagemapError::NoProcess { pid },
        ProcError::PermissionDenied(p) => AccessDenied::of(p.unwrap_or(path)).into(),
        ProcError::Io(source, p) => PagemapError::Io {
            path: p.unwrap_or(path),
            source,
        },
        other => PagemapError::Io {
            path,
            source: io::Error::other(other.to_string()),
        },
    }
}

fn open_error(pid: i32, path: &Path, e: io::Error) -> PagemapError {
    match e.kind() {
        io::ErrorKind::NotFound if path.starts_with("/proc") && path != Path::new(KPAGEFLAGS) => {
            PagemapError::NoProcess { pid }
        }
        io::ErrorKind::PermissionDenied => AccessDenied::of(path.to_path_buf()).into(),
        _ if e.raw_os_error() == Some(libc::ESRCH) => PagemapError::NoProcess { pid },
        _ => PagemapError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = PMD_SIZE;
    const P: u64 = PAGE_SIZE;

    #[test]
    fn regions_and_masks() {
        let mut regions = Vec::new();
        push_regions(&mut regions, 3 * M + 5 * P..5 * M + P);
        push_regions(&mut regions, 5 * M + 2 * P..5 * M + 3 * P);
        push_regions(&mut regions, 7 * M..8 * M);
        assert_eq!(regions, [3 * M, 4 * M, 5 * M, 7 * M]);

        let vmas = merge(vec![
            3 * M + 5 * P..4 * M + P,
            4 * M + P..4 * M + 9 * P,
            4 * M + 20 * P..5 * M,
        ]);
        assert_eq!(vmas, [3 * M + 5 * P..4 * M + 9 * P, 4 * M + 20 * P..5 * M]);
        assert_eq!(vma_mask(&vmas, 3 * M), OccupancyBitmap::from_range(5, 512));
        let mut m = OccupancyBitmap::from_range(0, 9);
        m.set_range(20, 512);
        assert_eq!(vma_mask(&vmas, 4 * M), m);
        assert_eq!(vma_mask(&vmas, 5 * M), OccupancyBitmap::EMPTY);

        assert_eq!(
            spans(&vmas, &[3 * M, 4 * M]),
            [3 * M + 5 * P..4 * M + 9 * P, 4 * M + 20 * P..5 * M]
        );
        assert_eq!(
            spans(&vmas, &[4 * M]),
            [4 * M..4 * M + 9 * P, 4 * M + 20 * P..5 * M]
        );
        // A long VMA is read in bounded pieces.
        let big = [Range {
            start: 0,
            end: 200 * M,
        }];
        let regions: Vec<u64> = (0..200).map(|i| i * M).collect();
        let s = spans(&big, &regions);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], 0..64 * M);
        assert_eq!(s[3], 192 * M..200 * M);
    }

    /// A process that ends while its pagemap is read (its VMAs listed, its mm gone before the
    /// entries are) is gone, not an I/O error: a zombie keeps its /proc entry until reaped, and
    /// a traced command is one until `collapse trace` reaps it. Needs root (kpageflags).
    #[test]
    fn a_process_ending_under_the_reader_is_gone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: reading /proc/kpageflags needs root");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let mut reader = PagemapReader::open(pid)
            .expect("open its pagemap")
            .without_pagemap_scan();
        let vmas = reader.anon_vmas().expect("its VMAs");
        assert!(!vmas.is_empty(), "sleep has anonymous memory (its stack)");
        child.kill().expect("kill sleep");
        // A zombie: dead, its mm gone, not reaped.
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            Process::new(pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.state == 'Z')
        });
        assert!(zombie, "pid {pid} did not become a zombie");
        let read = reader.read_region_within(&vmas, vmas[0].start);
        let _ = child.wait();
        assert!(
            matches!(read, Err(PagemapError::NoProcess { pid: p }) if p == pid),
            "{read:?}"
        );
    }

    #[test]
    fn compound_orders() {
        let none = PhysicalPageFlags::empty();
        let head = PhysicalPageFlags::COMPOUND_HEAD | PhysicalPageFlags::THP;
        let tail = PhysicalPageFlags::COMPOUND_TAIL | PhysicalPageFlags::THP;
        let mut block = vec![none; 512];
        // An order-4 folio at 16, an order-2 at 32, a tail run at 0 whose head is elsewhere.
        block[16] = head;
        block[17..32].fill(tail);
        block[32] = head;
        block[33..36].fill(tail);
        block[0..4].fill(tail);
        assert_eq!(compound_order(&block, 16), 4);
        assert_eq!(compound_order(&block, 31), 4);
        assert_eq!(compound_order(&block, 35), 2);
        assert_eq!(compound_order(&block, 2), PMD_ORDER as i8);
        block.fill(tail);
        block[0] = head;
        assert_eq!(compound_order(&block, 511), 9);
    }

    #[test]
    fn pmd_candidates() {
        let mut e = [0u64; 512];
        for (i, x) in e.iter_mut().enumerate() {
            *x = PRESENT | EXCLUSIVE | (1024 + i as u64);
        }
        assert_eq!(pmd_candidate(&e), Some(1024));
        e[7] = PRESENT | 5;
        assert_eq!(pmd_candidate(&e), None);
        for (i, x) in e.iter_mut().enumerate() {
            *x = PRESENT | (1025 + i as u64);
        }
        assert_eq!(pmd_candidate(&e), None, "not 512-aligned");
    }
}
