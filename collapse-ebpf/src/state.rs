//! Maps, configuration and the small operations every program shares.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use collapse_common::{
    OccupancyBitmap,
    consts::{BITMAP_WORDS, PAGE_SHIFT, PMD_MASK, PMD_SIZE, PTES_PER_PMD},
    event::{Event, EventKind},
    maps::{
        Config, DropReason, FaultInFlight, KhugepagedKey, MAX_PENDING_CPUS, PendingIsolate,
        PendingRegion, PendingSyscall, RegionKey,
    },
};

/// Offsets and switches, written by userspace before load (`.rodata`, frozen: the verifier
/// sees the values as constants).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::ZERO;

/// Reads one `CONFIG` field. `read_volatile` stops the compiler from folding the placeholder.
macro_rules! conf {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const crate::state::CONFIG.$field) }
    };
}
pub(crate) use conf;

// Default capacities; userspace resizes them before load (`--max-regions` etc.).
#[map]
pub static REGIONS: HashMap<RegionKey, OccupancyBitmap> = HashMap::with_max_entries(262_144, 0);
#[map]
pub static TRACKED: Array<u64> = Array::with_max_entries(65_536, 0);
#[map]
pub static MM_KNOWN: Array<u64> = Array::with_max_entries(65_536, 0);
/// Sized to pid_max by userspace; pids above it keep generation 0.
#[map]
pub static GENERATIONS: Array<u32> = Array::with_max_entries(4_194_304, 0);
#[map]
pub static MM_OWNERS: HashMap<u64, u32> = HashMap::with_max_entries(16_384, 0);
#[map]
pub static TGID_MM: HashMap<u32, u64> = HashMap::with_max_entries(16_384, 0);
#[map]
pub static KHUGEPAGED_COUNTS: HashMap<KhugepagedKey, u64> = HashMap::with_max_entries(16_384, 0);
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
pub static FAULT_IN_FLIGHT: PerCpuArray<FaultInFlight> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static PENDING_REGION: PerCpuArray<PendingRegion> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static PENDING_ISOLATE: HashMap<u32, PendingIsolate> = HashMap::with_max_entries(64, 0);
#[map]
pub static PENDING_SYSCALL: HashMap<u64, PendingSyscall> = HashMap::with_max_entries(4096, 0);

/// `BPF_NOEXIST`: insert only.
pub const NOEXIST: u64 = 1;

/// Reads a tracepoint field at an offset from `CONFIG`. The verifier forbids context loads
/// at offsets that are not in the instruction itself, so this goes through the helper.
#[inline(always)]
pub fn field<T: Copy + Default>(ctx: &TracePointContext, offset: u32) -> T {
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

/// The first `8 * N` bytes of a record in one helper call, for programs that need several
/// fields (the fault path, `mm_page_alloc`).
#[inline(always)]
pub fn record<const N: usize>(ctx: &TracePointContext) -> Option<[u64; N]> {
    // SAFETY: reading the record's own bytes; userspace checked every offset used is inside.
    unsafe { ctx.read_at::<[u64; N]>(0) }.ok()
}

/// The u64 at byte `offset` (8-aligned) of a record read with [`record`].
#[inline(always)]
pub fn u64_at<const N: usize>(rec: &[u64; N], offset: u32) -> u64 {
    rec.get((offset >> 3) as usize).copied().unwrap_or(0)
}

/// The u32 at byte `offset` (4-aligned) of a record read with [`record`] (little endian).
#[inline(always)]
pub fn u32_at<const N: usize>(rec: &[u64; N], offset: u32) -> u32 {
    (u64_at(rec, offset) >> ((offset & 4) * 8)) as u32
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(p) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other CPU writes it.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn bit_test(map: &Array<u64>, id: u32) -> bool {
    match map.get(id >> 6) {
        Some(w) => *w >> (id & 63) & 1 == 1,
        None => false,
    }
}

#[inline(always)]
pub fn bit_set(map: &Array<u64>, id: u32) {
    if let Some(p) = map.get_ptr_mut(id >> 6) {
        atomic_or(p, 1 << (id & 63));
    }
}

#[inline(always)]
pub fn bit_clear(map: &Array<u64>, id: u32) {
    if let Some(p) = map.get_ptr_mut(id >> 6) {
        atomic_and(p, !(1u64 << (id & 63)));
    }
}

/// Whether faults of `tgid` are recorded: one inlined array load for untracked processes.
#[inline(always)]
pub fn is_tracked(tgid: u32) -> bool {
    (conf!(all) != 0 && tgid != conf!(self_tgid)) || bit_test(&TRACKED, tgid)
}

#[inline(always)]
pub fn atomic_or(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value; BPF_ATOMIC_OR is what this compiles to.
    unsafe {
        core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, v)
    };
}

#[inline(always)]
pub fn atomic_and(p: *mut u64, v: u64) {
    // SAFETY: as `atomic_or`.
    unsafe {
        core::intrinsics::atomic_and::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: as `atomic_or`.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// PTE index of `addr` within its PMD region.
#[inline(always)]
pub fn pte_index(addr: u64) -> u32 {
    ((addr >> PAGE_SHIFT) as u32) & (PTES_PER_PMD as u32 - 1)
}

/// `d` clamped to `0..=64`, without a branch: the verifier walks straight-line code once,
/// where branches on unknown values multiply its states.
#[inline(always)]
fn clamp64(d: i64) -> u64 {
    let d = d & !(d >> 63);
    let over = d - 64;
    (64 + (over & (over >> 63))) as u64
}

/// The low `n` bits set, `n` in `0..=64`, without a branch.
#[inline(always)]
fn ones(n: u64) -> u64 {
    ((1u64 << (n & 63)) - 1) | (n >> 6).wrapping_neg()
}

/// Mask of PTE bits `[lo, hi)` (0..=512) that fall in word `w`.
#[inline(always)]
fn range_word_mask(lo: u32, hi: u32, w: u32) -> u64 {
    let base = i64::from(w) * 64;
    ones(clamp64(i64::from(hi) - base)) & !ones(clamp64(i64::from(lo) - base))
}

/// The generation of `tgid` (see `RegionKey`): an inlined array load.
#[inline(always)]
pub fn generation(tgid: u32) -> u32 {
    GENERATIONS.get(tgid).copied().unwrap_or(0)
}

/// The region key of `addr` for the live process `tgid`.
#[inline(always)]
pub fn region_key(tgid: u32, addr: u64) -> RegionKey {
    RegionKey::of(tgid, generation(tgid), addr)
}

/// A thread group ended: the next process given its pid is a new generation. Every process
/// passes here, traced or not, so a pid's generation is constant for as long as the process
/// that holds it lives.
#[inline(always)]
pub fn end_generation(tgid: u32) {
    if let Some(p) = GENERATIONS.get_ptr_mut(tgid) {
        // SAFETY: only the exit of the one group holding this pid writes its slot.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

/// Sets PTE bits `[lo, hi)` of region `key`, creating the region if needed.
#[inline(always)]
pub fn set_bits(key: &RegionKey, lo: u32, hi: u32) {
    if let Some(v) = REGIONS.get_ptr_mut(key) {
        or_range(v, lo, hi);
        return;
    }
    let mut fresh = OccupancyBitmap::EMPTY;
    let mut w = 0;
    while w < BITMAP_WORDS as u32 {
        fresh.words[w as usize] = range_word_mask(lo, hi, w);
        w += 1;
    }
    if REGIONS.insert(key, fresh, NOEXIST).is_ok() {
        return;
    }
    // Lost the race to another CPU, or the map is full.
    match REGIONS.get_ptr_mut(key) {
        Some(v) => or_range(v, lo, hi),
        None => count_drop(DropReason::RegionMapFull),
    }
}

/// Records one PTE bit: the common fault case. Into this CPU's pending region when the fault
/// is in the same region as the last one here (no hash lookup), else the pending bits go to
/// the region map and the slot moves to the new region.
#[inline(always)]
pub fn record_bit(tgid: u32, addr: u64) {
    let key = region_key(tgid, addr);
    let pte = pte_index(addr);
    let slot = match PENDING_REGION.get_ptr_mut(0) {
        Some(slot) if conf!(nr_cpus) != 0 => slot,
        _ => {
            set_bits(&key, pte, pte + 1);
            return;
        }
    };
    // SAFETY: this CPU's slot. Other CPUs only clear bits in it, atomically.
    let p = unsafe { &mut *slot };
    let word = (pte >> 6) as usize & (BITMAP_WORDS - 1);
    if p.tgid == tgid && p.generation == key.generation && p.addr == key.addr {
        atomic_or(&raw mut p.bits.words[word], 1 << (pte & 63));
        return;
    }
    flush_pending(p);
    p.bits = OccupancyBitmap::EMPTY;
    p.tgid = tgid;
    p.generation = key.generation;
    p.addr = key.addr;
    atomic_or(&raw mut p.bits.words[word], 1 << (pte & 63));
}

/// Moves a slot's bits into the region map.
#[inline(always)]
fn flush_pending(p: &mut PendingRegion) {
    if p.tgid == 0 || p.bits.is_empty() {
        return;
    }
    let key = RegionKey::of(p.tgid, p.generation, p.addr);
    if let Some(v) = REGIONS.get_ptr_mut(key) {
        let mut w = 0;
        while w < BITMAP_WORDS {
            let m = p.bits.words[w];
            if m != 0 {
                // SAFETY: w < 8 words of the map value.
                atomic_or(unsafe { (v as *mut u64).add(w) }, m);
            }
            w += 1;
        }
        return;
    }
    if REGIONS.insert(key, p.bits, NOEXIST).is_ok() {
        return;
    }
    match REGIONS.get_ptr_mut(key) {
        Some(v) => {
            let mut w = 0;
            while w < BITMAP_WORDS {
                // SAFETY: w < 8.
                atomic_or(unsafe { (v as *mut u64).add(w) }, p.bits.words[w]);
                w += 1;
            }
        }
        None => count_drop(DropReason::RegionMapFull),
    }
}

/// Most CPUs whose pending slots a clear visits (the verifier walks every iteration); with
/// more, userspace sets `nr_cpus` 0 and faults go to the region map directly.
const MAX_CPUS: u32 = MAX_PENDING_CPUS;

/// This CPU's pending slot of `cpu`, or `None` past the last possible CPU.
#[inline(always)]
fn pending_slot(cpu: u32) -> Option<&'static mut PendingRegion> {
    let map = &raw const PENDING_REGION as *mut core::ffi::c_void;
    let zero = 0u32;
    // SAFETY: the helper returns the map's slot of `cpu`, or null.
    let q = unsafe {
        aya_ebpf::helpers::generated::bpf_map_lookup_percpu_elem(map, (&raw const zero).cast(), cpu)
    } as *mut PendingRegion;
    // SAFETY: a valid slot of the map, which lives as long as the program.
    unsafe { q.as_mut() }
}

#[inline(always)]
fn and_not(words: *mut u64, mask: &OccupancyBitmap) {
    let mut w = 0;
    while w < BITMAP_WORDS {
        // SAFETY: w < 8 words of a bitmap.
        atomic_and(unsafe { words.add(w) }, !mask.words[w]);
        w += 1;
    }
}

/// Clears, in every CPU's pending slot of `tgid`: `first_mask` in region `first`, `last_mask`
/// in region `last`, everything in the regions between. The masks are computed once by the
/// caller, so the loop over CPUs has no per-word branching for the verifier to walk.
#[inline(always)]
fn clear_pending(
    tgid: u32,
    generation: u32,
    first: u64,
    first_mask: &OccupancyBitmap,
    last: u64,
    last_mask: &OccupancyBitmap,
) {
    let nr_cpus = conf!(nr_cpus);
    let mut cpu = 0;
    while cpu < MAX_CPUS && cpu < nr_cpus {
        let Some(q) = pending_slot(cpu) else { break };
        if q.tgid == tgid && q.generation == generation {
            let words = &raw mut q.bits.words as *mut u64;
            if q.addr == first {
                and_not(words, first_mask);
            } else if q.addr == last {
                and_not(words, last_mask);
            } else if q.addr > first && q.addr < last {
                and_not(words, &OccupancyBitmap::FULL);
            }
        }
        cpu += 1;
    }
}

/// Forgets everything pending for `tgid` (exit, exec).
#[inline(always)]
pub fn clear_pending_all(tgid: u32) {
    let nr_cpus = conf!(nr_cpus);
    let mut cpu = 0;
    while cpu < MAX_CPUS && cpu < nr_cpus {
        let Some(q) = pending_slot(cpu) else { break };
        if q.tgid == tgid {
            and_not(&raw mut q.bits.words as *mut u64, &OccupancyBitmap::FULL);
        }
        cpu += 1;
    }
}

#[inline(always)]
fn or_range(v: *mut OccupancyBitmap, lo: u32, hi: u32) {
    let mut w = 0;
    while w < BITMAP_WORDS as u32 {
        let m = range_word_mask(lo, hi, w);
        if m != 0 {
            // SAFETY: w < 8 words of the 64-byte map value.
            atomic_or(unsafe { (v as *mut u64).add(w as usize) }, m);
        }
        w += 1;
    }
}

/// Whole regions one program deletes when clearing a range; the rest of a larger range is
/// finished by userspace (`EventKind::ClearRange`).
const MAX_CLEAR_REGIONS: u32 = 256;

/// The PTE bits of region `region` that `[start, end)` covers (a partial last page counts).
#[inline(always)]
fn covered(region: u64, start: u64, end: u64) -> OccupancyBitmap {
    let lo = if start > region { pte_index(start) } else { 0 };
    let hi = if end >= region + PMD_SIZE {
        PTES_PER_PMD as u32
    } else {
        ((end - region + 0xfff) >> PAGE_SHIFT) as u32
    };
    let mut m = OccupancyBitmap::EMPTY;
    let mut w = 0;
    while w < BITMAP_WORDS as u32 {
        m.words[w as usize] = range_word_mask(lo, hi, w);
        w += 1;
    }
    m
}

/// Clears `mask` in `tgid`'s region `region`; the region is deleted when the mask covers it.
#[inline(always)]
fn clear_region(tgid: u32, generation: u32, region: u64, mask: &OccupancyBitmap) {
    let key = RegionKey::of(tgid, generation, region);
    // Word by word, not `==`: a byte-wise compare is a 64-step loop for the verifier.
    let mut full = u64::MAX;
    let mut w = 0;
    while w < BITMAP_WORDS {
        full &= mask.words[w];
        w += 1;
    }
    if full == u64::MAX {
        let _ = REGIONS.remove(key);
    } else if let Some(v) = REGIONS.get_ptr_mut(key) {
        and_not(v as *mut u64, mask);
    }
}

/// Clears the bits of `[start, end)` of `tgid`'s regions: the partial first and last regions
/// by mask, the whole ones between by deleting them.
#[inline(always)]
pub fn clear_range(tgid: u32, start: u64, end: u64) {
    let start = start & !0xfff;
    if start >= end {
        return;
    }
    let first = start & PMD_MASK;
    let last = (end - 1) & PMD_MASK;
    let first_mask = covered(first, start, end);
    let last_mask = if last == first {
        OccupancyBitmap::EMPTY
    } else {
        covered(last, start, end)
    };
    // Called in the process's own context: its generation is the live one.
    let generation = generation(tgid);
    clear_pending(tgid, generation, first, &first_mask, last, &last_mask);
    clear_region(tgid, generation, first, &first_mask);
    if last == first {
        return;
    }
    clear_region(tgid, generation, last, &last_mask);
    let mut addr = first + PMD_SIZE;
    let mut i = 0;
    while i < MAX_CLEAR_REGIONS && addr < last {
        let _ = REGIONS.remove(RegionKey::of(tgid, generation, addr));
        addr += PMD_SIZE;
        i += 1;
    }
    if addr < last {
        count_drop(DropReason::ClearDeferred);
        emit_range(EventKind::ClearRange, tgid, addr, last - addr);
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output::<Event>(event, 0).is_err() {
        count_drop(DropReason::RingBufFull);
    }
}

#[inline(always)]
pub fn emit_range(kind: EventKind, tgid: u32, addr: u64, len: u64) {
    let pid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    emit(&Event {
        ts_ns: now(),
        addr,
        len,
        kind: kind as u32,
        tgid,
        pid,
        ..Event::default()
    });
}

/// Remembers `current->mm` → `tgid` once per process, so khugepaged events (which carry only
/// the `mm`) can be attributed. Called in the process's own context: at exec, and on the
/// `task_iter` fallback's context switches.
#[inline(always)]
pub fn learn_mm(tgid: u32) {
    if mm_known(tgid) {
        return;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if let Some(mm) = task_mm(task) {
        learn_mm_of(tgid, mm);
    }
}

/// Whether `tgid`'s `mm` is in `MM_OWNERS` already.
#[inline(always)]
pub fn mm_known(tgid: u32) -> bool {
    bit_test(&MM_KNOWN, tgid)
}

/// `task->mm`, or `None` for a kernel thread or a task past `exit_mm`.
#[inline(always)]
pub fn task_mm(task: *const u8) -> Option<u64> {
    let offset = conf!(task_mm) as usize;
    // SAFETY: reading a kernel pointer field with the checked helper.
    let mm: u64 = unsafe { bpf_probe_read_kernel(task.add(offset) as *const u64) }.ok()?;
    (mm != 0).then_some(mm)
}

/// Records `mm` as `tgid`'s.
#[inline(always)]
pub fn learn_mm_of(tgid: u32, mm: u64) {
    // TGID_MM first, so a failure leaves nothing behind in MM_OWNERS. An mm that already has
    // an owner keeps it: a vfork child (CLONE_VM) runs on its parent's mm until it execs.
    if TGID_MM.insert(tgid, mm, 0).is_err() {
        count_drop(DropReason::MmMapFull);
        return;
    }
    if MM_OWNERS.insert(mm, tgid, NOEXIST).is_err() && mm_owner(mm).is_none() {
        count_drop(DropReason::MmMapFull);
        return;
    }
    bit_set(&MM_KNOWN, tgid);
}

/// Forgets `tgid`'s `mm` (exit, exec): the address may be reused by another process.
#[inline(always)]
pub fn forget_mm(tgid: u32) {
    // SAFETY: copied out of the map value.
    if let Some(mm) = unsafe { TGID_MM.get(tgid) }.copied()
        && mm_owner(mm) == Some(tgid)
    {
        let _ = MM_OWNERS.remove(mm);
    }
    let _ = TGID_MM.remove(tgid);
    bit_clear(&MM_KNOWN, tgid);
}

/// The tgid a khugepaged event's `mm` belongs to, if it is traced.
#[inline(always)]
pub fn mm_owner(mm: u64) -> Option<u32> {
    unsafe { MM_OWNERS.get(mm) }.copied()
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// Counts a khugepaged event for `tgid`.
#[inline(always)]
pub fn count_khugepaged(key: &KhugepagedKey) {
    if let Some(p) = KHUGEPAGED_COUNTS.get_ptr_mut(key) {
        atomic_add(p, 1);
        return;
    }
    if KHUGEPAGED_COUNTS.insert(key, 1, NOEXIST).is_err() {
        match KHUGEPAGED_COUNTS.get_ptr_mut(key) {
            Some(p) => atomic_add(p, 1),
            None => count_drop(DropReason::CountMapFull),
        }
    }
}
