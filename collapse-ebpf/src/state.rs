//! Maps, configuration and the small operations every program shares.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_for_each_map_elem, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use collapse_common::{
    OccupancyBitmap,
    consts::{BITMAP_WORDS, PAGE_SHIFT, PMD_MASK, PMD_SIZE, PTES_PER_PMD},
    event::{Event, EventKind},
    maps::{
        Config, Correction, DropReason, KhugepagedKey, MAX_CORRECTIONS, MAX_PENDING_CPUS,
        PendingIsolate, PendingRegion, PendingSyscall, RegionKey, Switch,
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
/// Per thread id (resized to pid_max by userspace), see `collapse_common::maps::fault_in_flight`.
#[map]
pub static FAULT_IN_FLIGHT: Array<u64> = Array::with_max_entries(65_536, 0);
#[map]
pub static SWITCHES: Array<u64> = Array::with_max_entries(Switch::COUNT, 0);
#[map]
pub static CORRECTIONS: Array<Correction> = Array::with_max_entries(MAX_CORRECTIONS, 0);
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
    // The sign masks go through `black_box`: LLVM would fold `d & !(d >> 63)` into a max,
    // which BPF (no conditional move) lowers to a branch, and old verifiers (6.1) then walk
    // every combination of the branches of a 16-mask unmap.
    let d = d & !core::hint::black_box(d >> 63);
    let over = d - 64;
    (64 + (over & core::hint::black_box(over >> 63))) as u64
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

/// Sets PTE bit `pte` of region `key`, creating the region if needed: [`set_bits`] for one
/// bit, without its per-word loop (straight-line code is what old verifiers walk cheaply).
#[inline(always)]
fn set_bit(key: &RegionKey, pte: u32) {
    let word = (pte >> 6) as usize & (BITMAP_WORDS - 1);
    let bit = 1u64 << (pte & 63);
    if let Some(v) = REGIONS.get_ptr_mut(key) {
        // SAFETY: word < 8 words of the map value.
        atomic_or(unsafe { (v as *mut u64).add(word) }, bit);
        return;
    }
    let mut fresh = OccupancyBitmap::EMPTY;
    fresh.words[word] = bit;
    if REGIONS.insert(key, fresh, NOEXIST).is_ok() {
        return;
    }
    match REGIONS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(v) => atomic_or(unsafe { (v as *mut u64).add(word) }, bit),
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
            set_bit(&key, pte);
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
    // OR-reduced rather than `is_empty` (an early-exit loop): without branches per word the
    // 6.1 verifier walks this once, instead of once per combination of empty words.
    let mut any = 0;
    let mut w = 0;
    while w < BITMAP_WORDS {
        any |= p.bits.words[w];
        w += 1;
    }
    if p.tgid == 0 || any == 0 {
        return;
    }
    let key = RegionKey::of(p.tgid, p.generation, p.addr);
    if let Some(v) = REGIONS.get_ptr_mut(key) {
        let mut w = 0;
        while w < BITMAP_WORDS {
            // Unconditionally (an OR of 0 is harmless): no branch per word for the verifier.
            // SAFETY: w < 8 words of the map value.
            atomic_or(unsafe { (v as *mut u64).add(w) }, p.bits.words[w]);
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

/// What to clear in every CPU's pending slot of `tgid`: `first_mask` in region `first`,
/// `last_mask` in region `last`, everything in the regions between. The masks are computed
/// once by the caller, so the walk over CPUs has no per-word branching for the verifier.
#[repr(C)]
pub struct PendingClear {
    pub tgid: u32,
    /// The generation whose slots are cleared (a slot of the pid's earlier process is not
    /// touched), unless `any_generation` is non-zero (exit: every slot of the pid).
    pub generation: u32,
    pub any_generation: u32,
    pub first: u64,
    pub last: u64,
    pub first_mask: OccupancyBitmap,
    pub last_mask: OccupancyBitmap,
}

/// Applies `pc` to every CPU's pending slot: one `bpf_loop` callback, verified once, instead
/// of a loop over up to 64 CPUs unrolled into every program that clears.
#[inline(always)]
pub fn clear_pending(pc: &mut PendingClear) {
    let nr_cpus = conf!(nr_cpus).min(MAX_CPUS);
    if nr_cpus == 0 {
        return;
    }
    // SAFETY: the callback only reads `pc`, which outlives the call.
    unsafe {
        bpf_loop(
            nr_cpus,
            clear_pending_on as *mut c_void,
            (pc as *mut PendingClear).cast(),
            0,
        )
    };
}

#[inline(never)]
extern "C" fn clear_pending_on(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `PendingClear`.
    let Some(pc) = (unsafe { ctx.cast::<PendingClear>().as_ref() }) else {
        return 1;
    };
    let Some(q) = pending_slot(cpu as u32) else {
        return 1;
    };
    if q.tgid == pc.tgid && (pc.any_generation != 0 || q.generation == pc.generation) {
        let words = &raw mut q.bits.words as *mut u64;
        if q.addr == pc.first {
            and_not(words, &pc.first_mask);
        } else if q.addr == pc.last {
            and_not(words, &pc.last_mask);
        } else if q.addr > pc.first && q.addr < pc.last {
            and_not(words, &OccupancyBitmap::FULL);
        }
    }
    0
}

/// Moves every CPU's pending bits of `tgid` into the region map (at exit: the map then holds
/// the process's last state, which userspace keeps for the snapshot before it sweeps the
/// regions). Each slot is copied first and the copy flushed, so this CPU never writes another
/// CPU's slot; a slot another process takes over meanwhile is flushed to its own key or left.
#[inline(always)]
pub fn flush_pending_all(tgid: u32) {
    let nr_cpus = conf!(nr_cpus).min(MAX_CPUS);
    if nr_cpus == 0 {
        return;
    }
    let mut t = tgid;
    // SAFETY: the callback only reads `t`, which outlives the call.
    unsafe {
        bpf_loop(
            nr_cpus,
            flush_pending_on as *mut c_void,
            (&raw mut t).cast(),
            0,
        )
    };
}

#[inline(never)]
extern "C" fn flush_pending_on(cpu: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's tgid.
    let Some(&tgid) = (unsafe { ctx.cast::<u32>().as_ref() }) else {
        return 1;
    };
    let Some(q) = pending_slot(cpu as u32) else {
        return 1;
    };
    let mut copy = *q;
    if copy.tgid == tgid {
        flush_pending(&mut copy);
    }
    0
}

/// Forgets everything pending for `tgid` (exit, exec).
#[inline(always)]
pub fn clear_pending_all(tgid: u32) {
    clear_pending(&mut PendingClear {
        tgid,
        generation: 0,
        any_generation: 1,
        first: 0,
        last: u64::MAX,
        first_mask: OccupancyBitmap::FULL,
        last_mask: OccupancyBitmap::FULL,
    });
}

#[inline(always)]
fn or_range(v: *mut OccupancyBitmap, lo: u32, hi: u32) {
    let mut w = 0;
    while w < BITMAP_WORDS as u32 {
        // Unconditionally, as in `flush_pending`.
        // SAFETY: w < 8 words of the 64-byte map value.
        atomic_or(
            unsafe { (v as *mut u64).add(w as usize) },
            range_word_mask(lo, hi, w),
        );
        w += 1;
    }
}

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
    // Called in the process's own context: its generation is the live one.
    let generation = generation(tgid);
    let mut pc = PendingClear {
        tgid,
        generation,
        any_generation: 0,
        first,
        last,
        first_mask: covered(first, start, end),
        last_mask: if last == first {
            OccupancyBitmap::EMPTY
        } else {
            covered(last, start, end)
        },
    };
    clear_pending(&mut pc);
    clear_region(tgid, generation, first, &pc.first_mask);
    if last == first {
        return;
    }
    clear_region(tgid, generation, last, &pc.last_mask);
    let inner = first + PMD_SIZE;
    if inner >= last {
        return;
    }
    let mut span = Span {
        tgid,
        generation,
        start: inner,
        end: last,
    };
    let regions = (last - inner) / PMD_SIZE;
    let span_ptr = (&raw mut span).cast::<c_void>();
    let by_pmd = regions <= u64::from(conf!(max_regions)).min(MAX_LOOPS);
    // The whole regions between, in the kernel so that nothing re-faulted after this syscall
    // can be wiped later: PMD by PMD (`bpf_loop`, 5.17), or, when the range covers more PMDs
    // than the map can hold regions (a 128 TiB reservation unmapped), by walking the map
    // (`bpf_for_each_map_elem`, 5.13), whose cost the map's size bounds.
    // SAFETY: the callbacks only read `span`, which outlives the helper calls.
    unsafe {
        if by_pmd {
            bpf_loop(regions as u32, clear_nth as *mut c_void, span_ptr, 0);
        } else {
            bpf_for_each_map_elem(
                (&raw const REGIONS).cast_mut().cast(),
                clear_if_inside as *mut c_void,
                span_ptr,
                0,
            );
        }
    }
}

/// `BPF_MAX_LOOPS` (`kernel/bpf/bpf_iter.c`): the most iterations one `bpf_loop` call makes.
const MAX_LOOPS: u64 = 1 << 23;

/// Whole regions `[start, end)` of `tgid` to delete (the context of the callbacks below).
#[repr(C)]
struct Span {
    tgid: u32,
    generation: u32,
    start: u64,
    end: u64,
}

/// `bpf_loop` callback: deletes the `index`-th region of the span.
#[inline(never)]
extern "C" fn clear_nth(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Span`.
    let Some(span) = (unsafe { ctx.cast::<Span>().as_ref() }) else {
        return 1;
    };
    let _ = REGIONS.remove(RegionKey::of(
        span.tgid,
        span.generation,
        span.start + index * PMD_SIZE,
    ));
    0
}

/// `bpf_for_each_map_elem` callback: deletes the region if it is one of the span's.
#[inline(never)]
extern "C" fn clear_if_inside(
    _map: *mut c_void,
    key: *const RegionKey,
    _value: *mut c_void,
    ctx: *mut c_void,
) -> i64 {
    // SAFETY: the helper passes the element's key and the caller's `Span`.
    let (Some(key), Some(span)) = (unsafe { key.as_ref() }, unsafe {
        ctx.cast::<Span>().as_ref()
    }) else {
        return 1;
    };
    if key.tgid == span.tgid
        && key.generation == span.generation
        && key.addr >= span.start
        && key.addr < span.end
    {
        let key = *key;
        let _ = REGIONS.remove(key);
    }
    0
}

/// Applies one correction: `clear`, then `set`, atomically word by word, in the region map and
/// in every CPU's pending slot, so no bit a program sets outside `clear` meanwhile is lost.
/// Returns whether it could (a new region needs room in the map).
#[inline(always)]
pub fn apply_correction(c: &Correction) -> bool {
    let (tgid, generation, addr) = (c.key.tgid, c.key.generation, c.key.addr);
    // Pending slots first: a slot flushed between the two steps lands in the map, which is
    // cleared next.
    clear_pending(&mut PendingClear {
        tgid,
        generation,
        any_generation: 0,
        first: addr,
        last: addr,
        first_mask: c.clear,
        last_mask: c.clear,
    });
    let key = RegionKey::of(tgid, generation, addr);
    if let Some(v) = REGIONS.get_ptr_mut(key) {
        and_or(v.cast(), &c.clear, &c.set);
        return true;
    }
    if c.set.is_empty() {
        return true;
    }
    if REGIONS.insert(key, c.set, NOEXIST).is_ok() {
        return true;
    }
    // Inserted by a program meanwhile, or the map is full.
    match REGIONS.get_ptr_mut(key) {
        Some(v) => {
            and_or(v.cast(), &c.clear, &c.set);
            true
        }
        None => {
            count_drop(DropReason::RegionMapFull);
            false
        }
    }
}

#[inline(always)]
fn and_or(words: *mut u64, clear: &OccupancyBitmap, set: &OccupancyBitmap) {
    let mut w = 0;
    while w < BITMAP_WORDS {
        // SAFETY: w < 8 words of a bitmap.
        let p = unsafe { words.add(w) };
        if clear.words[w] != 0 {
            atomic_and(p, !clear.words[w]);
        }
        if set.words[w] != 0 {
            atomic_or(p, set.words[w]);
        }
        w += 1;
    }
}

/// The correction at `index` of `CORRECTIONS`, if inside it.
#[inline(always)]
pub fn correction(index: u32) -> Option<Correction> {
    CORRECTIONS.get(index).copied()
}

/// Whether the large-folio hook is attached (userspace flips the switch before attaching it).
#[inline(always)]
pub fn large_folio_hook_on() -> bool {
    SWITCHES
        .get(Switch::LargeFolioHook as u32)
        .is_some_and(|v| *v != 0)
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
