//! A tracing session: the loaded programs, the processes being traced, and the userspace half
//! of keeping the bitmaps exact (seeding from pagemap, finishing what the programs hand over
//! through the ring buffer).

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
    time::Instant,
};

use collapse_common::{
    OccupancyBitmap,
    consts::PMD_SIZE,
    event::{Event, EventKind},
    maps::{Correction, DropReason, KhugepagedEvent, RegionKey},
    policy::RegionState,
};

use super::{
    bpf::{Bpf, Capacity, Selection},
    error::TracerError,
    target::{CommandChild, Target},
};
use crate::{
    kernel::{
        pagemap, procs,
        thp::{SizeEnabled, ThpEnabled, ThpSettings},
    },
    snapshot::SnapshotRegion,
};

type Result<T, E = TracerError> = std::result::Result<T, E>;

/// Whether faults can map large folios, from the THP settings: at least one size `always`;
/// only in MADV_HUGEPAGE memory (`madvise`); or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LargeFolios {
    Never,
    Advised,
    Always,
}

impl LargeFolios {
    /// From sysfs; unreadable settings count as `Always`, the safe side.
    pub fn from_kernel() -> Self {
        let Ok(thp) = ThpSettings::read() else {
            return Self::Always;
        };
        let global = match thp.enabled {
            ThpEnabled::Always => Self::Always,
            ThpEnabled::Madvise => Self::Advised,
            ThpEnabled::Never => Self::Never,
        };
        // Without per-size directories (before 6.8) only the PMD size exists, following the
        // global setting.
        if thp.sizes.is_empty() {
            return global;
        }
        let mut mode = Self::Never;
        for size in &thp.sizes {
            let this = match size.enabled {
                SizeEnabled::Always => Self::Always,
                SizeEnabled::Madvise => Self::Advised,
                SizeEnabled::Inherit => global,
                SizeEnabled::Never => Self::Never,
            };
            mode = match (mode, this) {
                (Self::Always, _) | (_, Self::Always) => Self::Always,
                (Self::Advised, _) | (_, Self::Advised) => Self::Advised,
                _ => Self::Never,
            };
        }
        mode
    }
}

/// `enum scan_result` SCAN_SUCCEED (`mm/khugepaged.c`): a collapse that worked.
pub const SCAN_SUCCEED: i32 = 1;

/// A traced process as userspace knows it.
#[derive(Clone, Debug)]
pub struct TracedProcess {
    pub tgid: u32,
    pub comm: String,
    /// Re-read the whole process from pagemap at the next tick.
    pub resync_whole: bool,
    /// Ranges of it to re-read at the next tick.
    pub resync_ranges: Vec<Range<u64>>,
}

/// One region of a traced process as the view and the snapshot see it.
#[derive(Clone, Copy, Debug)]
pub struct TracedRegion {
    pub addr: u64,
    pub state: RegionState,
    /// A PMD maps it (a THP): nothing left to collapse.
    pub pmd_mapped: bool,
}

/// What the session saw happen, for `--events` and the JSON stream.
#[derive(Clone, Debug)]
pub enum Observed {
    LargeFolio {
        tgid: u32,
        addr: u64,
        order: u16,
    },
    Khugepaged {
        tgid: u32,
        which: KhugepagedEvent,
        status: String,
        event: Event,
    },
    Started {
        tgid: u32,
        comm: String,
        how: &'static str,
    },
    Ended {
        tgid: u32,
        comm: String,
        how: &'static str,
    },
    /// The large-folio hook was attached (`how`), because of `why`.
    LargeFolioHook {
        how: &'static str,
        why: &'static str,
    },
    /// A traced process marked `[addr, addr + len)` MADV_HUGEPAGE (the demo plans over the
    /// memory as it was then, before khugepaged changes it).
    HugepageAdvice {
        tgid: u32,
        addr: u64,
        len: u64,
    },
}

pub struct Session {
    bpf: Bpf,
    target: Target,
    procs: BTreeMap<u32, TracedProcess>,
    child: Option<CommandChild>,
    started: Instant,
    /// Processes whose pagemap could not be read (warned once).
    unseeded: BTreeSet<u32>,
    /// Processes that ended and whose regions are still in the map.
    dead: BTreeSet<u32>,
    /// What the THP settings allow, as of the last tick.
    large_folios: LargeFolios,
    /// Why the large-folio hook was attached, not yet reported.
    hook_news: Vec<&'static str>,
    /// Ring-buffer records lost so far: when it grows, what they would have said is unknown,
    /// so every process is re-read from pagemap.
    ring_lost: u64,
    /// Every traced process's regions as of the last [`Session::refresh`].
    current: BTreeMap<u32, Vec<TracedRegion>>,
    /// The last regions of processes that ended while traced: a command traced to its end
    /// still has a snapshot.
    ended_regions: BTreeMap<u32, Vec<TracedRegion>>,
}

/// Every record waiting in the ring buffer.
pub(crate) fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            // SAFETY: the programs write whole `Event`s; the slice is at least that long.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
        }
    }
    out
}

/// Bits set by the programs while pagemap was being read are kept; bits the programs cleared
/// in that window are dropped; everything else comes from pagemap.
fn merge(
    truth: &OccupancyBitmap,
    before: &OccupancyBitmap,
    after: &OccupancyBitmap,
) -> OccupancyBitmap {
    let cleared = before.difference(after);
    let set = after.difference(before);
    truth.difference(&cleared).union(&set)
}

fn range_mask(key_addr: u64, range: &Range<u64>) -> OccupancyBitmap {
    let end = key_addr + PMD_SIZE;
    if range.end <= key_addr || range.start >= end {
        return OccupancyBitmap::EMPTY;
    }
    let lo = (range.start.max(key_addr) - key_addr) >> 12;
    let hi = (range.end.min(end) - key_addr).div_ceil(4096);
    OccupancyBitmap::from_range(lo as usize, hi as usize)
}

impl Session {
    /// The loaded programs and their maps.
    pub fn bpf(&self) -> &Bpf {
        &self.bpf
    }

    /// The loaded programs, to correct their maps ([`Bpf::correct`]).
    pub fn bpf_mut(&mut self) -> &mut Bpf {
        &mut self.bpf
    }

    /// The processes traced now.
    pub fn processes(&self) -> impl Iterator<Item = &TracedProcess> {
        self.procs.values()
    }

    /// The thread-group ids traced now, ascending.
    pub fn tgids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    /// Whether `tgid` is traced now.
    pub fn traces(&self, tgid: u32) -> bool {
        self.procs.contains_key(&tgid)
    }

    /// Time since the session started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every traced process's regions as of the last [`Session::refresh`] (the tick's view).
    pub fn current(&self) -> &BTreeMap<u32, Vec<TracedRegion>> {
        &self.current
    }

    /// The pid of the command the session spawned (`-- CMD`), if any.
    pub fn child_pid(&self) -> Option<u32> {
        self.child.as_ref().map(CommandChild::pid)
    }

    /// The ring buffer, for an event loop to poll; give it back when done.
    pub(super) fn take_events(&mut self) -> Result<aya::maps::RingBuf<aya::maps::MapData>> {
        Ok(self.bpf.take_events()?)
    }

    pub(super) fn give_back_events(&mut self, ring: aya::maps::RingBuf<aya::maps::MapData>) {
        self.bpf.give_back_events(ring);
    }

    /// Loads the programs for `target`, starts tracing its processes and seeds them.
    pub fn start(mut target: Target, cap: Capacity) -> Result<Self> {
        let sel = Selection {
            all: target.all,
            follow_children: target.follow_children(),
            comm: target.comm.clone(),
            cgroup_id: target.cgroup_id,
        };
        let bpf = Bpf::load(&sel, cap)?;
        let mut session = Self {
            bpf,
            procs: BTreeMap::new(),
            child: None,
            started: Instant::now(),
            target: Target::default(),
            unseeded: BTreeSet::new(),
            dead: BTreeSet::new(),
            large_folios: LargeFolios::from_kernel(),
            hook_news: Vec::new(),
            ring_lost: 0,
            current: BTreeMap::new(),
            ended_regions: BTreeMap::new(),
        };
        // Tracking starts before seeding, so no page populated in between is missed.
        for tgid in target.initial_tgids()? {
            session.add(tgid)?;
        }
        if let Some(spawned) = target.spawn.take() {
            session.add(spawned.tgid)?;
            session.child = Some(spawned.release()?);
        }
        session.target = target;
        session.resync_pending()?;
        Ok(session)
    }

    /// Starts tracing `tgid` and schedules its seeding from pagemap.
    fn add(&mut self, tgid: u32) -> Result<()> {
        // The programs set the bit of a followed child themselves; writing a whole word back
        // only when needed keeps this read-modify-write from racing their atomic updates.
        if !self.target.all && !self.bpf.is_tracked(tgid)? {
            self.bpf.set_tracked(tgid, true)?;
        }
        // Before its seeding: whatever it faults from here on is seen by the hook.
        self.consider_large_folio_hook(&[tgid])?;
        // khugepaged may have scanned it before: let its mm be reported again.
        self.bpf.forget_unknown_mms()?;
        let comm = procs::comm(tgid as i32).unwrap_or_else(|_| "?".into());
        self.procs.insert(
            tgid,
            TracedProcess {
                tgid,
                comm,
                resync_whole: true,
                resync_ranges: Vec::new(),
            },
        );
        Ok(())
    }

    /// Attaches the large-folio hook when the settings allow large folios at fault time for
    /// one of `tgids` (`Always`, or `Advised` and it has MADV_HUGEPAGE memory). Returns whether it
    /// was attached now.
    fn consider_large_folio_hook(&mut self, tgids: &[u32]) -> Result<bool> {
        if self.bpf.large_folio_hook().is_some() {
            return Ok(false);
        }
        // COLLAPSE_LARGE_FOLIO_HOOK=1 attaches it whatever the settings (`bench tracer` measures
        // its cost that way).
        let forced = std::env::var_os("COLLAPSE_LARGE_FOLIO_HOOK").is_some_and(|v| v == "1");
        let needed = forced
            || match self.large_folios {
                LargeFolios::Never => false,
                LargeFolios::Always => true,
                LargeFolios::Advised => tgids
                    .iter()
                    .any(|&t| procs::has_hugepage_advice(t as i32).unwrap_or(false)),
            };
        if !needed {
            return Ok(false);
        }
        let attached = self.bpf.attach_large_folio_hook()?;
        if attached {
            self.hook_news.push(match self.large_folios {
                LargeFolios::Always => "a THP size is enabled `always`",
                _ => "a traced process has MADV_HUGEPAGE memory",
            });
        }
        Ok(attached)
    }

    /// Reports of the large-folio hook being attached since the last call.
    pub(super) fn take_hook_news(&mut self) -> Vec<Observed> {
        let how = self.bpf.large_folio_hook().unwrap_or("?");
        self.hook_news
            .drain(..)
            .map(|why| Observed::LargeFolioHook { how, why })
            .collect()
    }

    fn end(&mut self, tgid: u32) -> Result<Option<String>> {
        // Its regions go at the next sweep: one walk of the map per tick, not one per exit.
        self.dead.insert(tgid);
        // The program clears the bit at exit and at a comm change already.
        if !self.target.all && self.bpf.is_tracked(tgid).unwrap_or(false) {
            let _ = self.bpf.set_tracked(tgid, false);
        }
        if let Some(regions) = self.current.remove(&tgid) {
            self.ended_regions.insert(tgid, regions);
        }
        let comm = self.procs.remove(&tgid).map(|p| p.comm);
        Ok(comm)
    }

    /// Applies one ring-buffer record; returns what a person may want to see.
    pub(super) fn handle(&mut self, ev: &Event) -> Result<Option<Observed>> {
        let Some(kind) = EventKind::from_u32(ev.kind) else {
            return Ok(None);
        };
        let tgid = ev.tgid;
        Ok(match kind {
            EventKind::LargeFolioFault => {
                // The programs set the folio's bits at once; pagemap confirms them (an
                // allocation of the task after its fault, outside it, would look the same).
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.resync_ranges
                        .push(ev.addr..ev.addr.saturating_add(ev.len));
                }
                Some(Observed::LargeFolio {
                    tgid,
                    addr: ev.addr,
                    order: ev.order,
                })
            }
            EventKind::Khugepaged => {
                let Some(which) = KhugepagedEvent::from_u16(ev.khugepaged) else {
                    return Ok(None);
                };
                // A collapse fills the holes of the PMD with zeroed pages: re-read the process
                // (the tracepoint says which mm, not which address).
                if which == KhugepagedEvent::Collapse
                    && ev.status == SCAN_SUCCEED
                    && let Some(p) = self.procs.get_mut(&tgid)
                {
                    p.resync_whole = true;
                }
                let status = self.bpf.status_names().describe(which, ev.status.into());
                Some(Observed::Khugepaged {
                    tgid,
                    which,
                    status,
                    event: *ev,
                })
            }
            EventKind::Exit => {
                let comm = self.end(tgid)?;
                comm.map(|comm| Observed::Ended {
                    tgid,
                    comm,
                    how: "exited",
                })
            }
            EventKind::Exec => {
                let comm = procs::comm(tgid as i32).unwrap_or_else(|_| "?".into());
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.comm = comm.clone();
                    p.resync_whole = true;
                    p.resync_ranges.clear();
                } else {
                    self.add(tgid)?;
                }
                Some(Observed::Started {
                    tgid,
                    comm,
                    how: "exec",
                })
            }
            EventKind::Fork | EventKind::Attach => {
                let child = if kind == EventKind::Fork {
                    ev.addr as u32
                } else {
                    tgid
                };
                if self.procs.contains_key(&child) {
                    None
                } else {
                    self.add(child)?;
                    let comm = self
                        .procs
                        .get(&child)
                        .map(|p| p.comm.clone())
                        .unwrap_or_default();
                    Some(Observed::Started {
                        tgid: child,
                        comm,
                        how: if kind == EventKind::Fork {
                            "fork"
                        } else {
                            "comm match"
                        },
                    })
                }
            }
            // Wide unmaps finish in the kernel now; a record from another build is re-read.
            EventKind::ClearRange | EventKind::Resync => {
                if let Some(p) = self.procs.get_mut(&tgid) {
                    p.resync_ranges
                        .push(ev.addr..ev.addr.saturating_add(ev.len));
                }
                None
            }
            EventKind::UnknownMm => {
                let (mm, pfn) = (ev.addr, ev.len);
                let candidates: Vec<u32> = self.procs.keys().copied().collect();
                for tgid in candidates {
                    if !self.bpf.knows_mm(tgid)?
                        && pagemap::maps_pfn(tgid as i32, pfn).unwrap_or(false)
                    {
                        self.bpf.adopt_mm(tgid, mm)?;
                        break;
                    }
                }
                None
            }
            EventKind::HugepageAdvice => {
                // Faults in the range between the madvise and now are read back from pagemap.
                if self.large_folios != LargeFolios::Never && self.bpf.attach_large_folio_hook()? {
                    if let Some(p) = self.procs.get_mut(&tgid) {
                        p.resync_ranges
                            .push(ev.addr..ev.addr.saturating_add(ev.len));
                    }
                    self.hook_news.push("MADV_HUGEPAGE in a traced process");
                }
                Some(Observed::HugepageAdvice {
                    tgid,
                    addr: ev.addr,
                    len: ev.len,
                })
            }
        })
    }

    /// Picks up processes that joined the target since the last call (a process renamed to the
    /// comm, moved into the cgroup) and forgets pids that vanished without an exit event.
    pub fn rescan(&mut self) -> Result<Vec<Observed>> {
        let mut seen = Vec::new();
        // The settings may have changed under us: a newly attached hook means what was faulted
        // before it is read back from pagemap.
        let mode = LargeFolios::from_kernel();
        if mode != self.large_folios {
            self.large_folios = mode;
            let tgids: Vec<u32> = self.procs.keys().copied().collect();
            if self.consider_large_folio_hook(&tgids)? {
                for p in self.procs.values_mut() {
                    p.resync_whole = true;
                }
            }
        }
        for tgid in self.target.current_members()? {
            if !self.procs.contains_key(&tgid) {
                self.add(tgid)?;
                let comm = self.procs[&tgid].comm.clone();
                seen.push(Observed::Started {
                    tgid,
                    comm,
                    how: "joined",
                });
            }
        }
        let lost = self
            .bpf
            .drops()?
            .into_iter()
            .find(|(r, _)| *r == DropReason::RingBufFull)
            .map_or(0, |(_, n)| n);
        if lost > self.ring_lost {
            self.ring_lost = lost;
            for p in self.procs.values_mut() {
                p.resync_whole = true;
            }
        }
        self.sweep_dead()?;
        let gone: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|&t| !procs::exists(t as i32))
            .collect();
        for tgid in gone {
            if let Some(comm) = self.end(tgid)? {
                seen.push(Observed::Ended {
                    tgid,
                    comm,
                    how: "gone",
                });
            }
        }
        self.resync_pending()?;
        Ok(seen)
    }

    /// Re-reads every traced process from pagemap now, as a lost ring-buffer record would.
    pub fn resync_now(&mut self) -> Result<()> {
        for p in self.procs.values_mut() {
            p.resync_whole = true;
        }
        self.resync_pending()
    }

    /// Re-reads from pagemap what the events said may have changed without a fault.
    pub(super) fn resync_pending(&mut self) -> Result<()> {
        let todo: Vec<(u32, bool, Vec<Range<u64>>)> = self
            .procs
            .values_mut()
            .filter(|p| p.resync_whole || !p.resync_ranges.is_empty())
            .map(|p| {
                (
                    p.tgid,
                    std::mem::take(&mut p.resync_whole),
                    std::mem::take(&mut p.resync_ranges),
                )
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        // One walk of the map for all of them.
        let mut before = self.regions_by_tgid()?;
        for (tgid, whole, ranges) in todo {
            let before = before.remove(&tgid).unwrap_or_default();
            // Many ranges (a large folio on every fault with an mTHP size `always`): one read of
            // the whole process is cheaper than one per range.
            let whole = whole || ranges.len() > 64;
            let result = if whole {
                self.resync(tgid, None, &before)
            } else {
                ranges
                    .iter()
                    .try_for_each(|r| self.resync(tgid, Some(r), &before))
            };
            if let Err(err) = result {
                // The process may have exited meanwhile; its exit event will clean up. A
                // process named on the command line must be readable; one picked up by
                // --all / --comm / --cgroup that is not (pid 1 under a security module, another
                // user namespace) is traced from events alone, with a warning.
                if !procs::exists(tgid as i32) {
                    continue;
                }
                let err = TracerError::Seed {
                    pid: tgid,
                    source: Box::new(err),
                };
                if self.target.pids.contains(&tgid)
                    || self.child.as_ref().is_some_and(|c| c.pid() == tgid)
                {
                    return Err(err);
                }
                if self.unseeded.insert(tgid) {
                    eprintln!(
                        "collapse: warning: {}; its bitmaps start from events only",
                        crate::render::error_chain(&err)
                    );
                }
            }
        }
        Ok(())
    }

    /// Makes `tgid`'s bitmaps (within `range`, or all of them) equal to pagemap's present bits,
    /// keeping what the programs changed while pagemap was being read.
    fn resync(
        &mut self,
        tgid: u32,
        range: Option<&Range<u64>>,
        all_before: &BTreeMap<u64, OccupancyBitmap>,
    ) -> Result<()> {
        let in_range = |addr: u64| range.is_none_or(|r| addr < r.end && addr + PMD_SIZE > r.start);
        let before: BTreeMap<u64, OccupancyBitmap> = all_before
            .iter()
            .filter(|(addr, _)| in_range(**addr))
            .map(|(a, b)| (*a, *b))
            .collect();
        let truth: BTreeMap<u64, OccupancyBitmap> = match range {
            None => pagemap::read_regions(tgid as i32)?,
            Some(r) => pagemap::read_range(tgid as i32, r.clone())?,
        }
        .into_iter()
        .map(|t| (t.addr, t.present))
        .collect();
        let addrs: BTreeSet<u64> = before.keys().chain(truth.keys()).copied().collect();
        let mut corrections = Vec::new();
        for addr in addrs {
            let key = RegionKey::new(tgid, addr);
            let after = self.bpf.region(&key)?.unwrap_or_default();
            let b = before.get(&addr).copied().unwrap_or_default();
            let t = truth.get(&addr).copied().unwrap_or_default();
            let merged = merge(&t, &b, &after);
            let new = match range {
                None => merged,
                Some(r) => {
                    let mask = range_mask(addr, r);
                    after.difference(&mask).union(&merged.intersection(&mask))
                }
            };
            // As masks against what was read last: a bit a program sets from here on is kept
            // unless pagemap denied it and the map already had it.
            if new != after {
                corrections.push(Correction {
                    key,
                    clear: after.difference(&new),
                    set: new.difference(&after),
                });
            }
        }
        // A fault's bit is set at its entry, before its PTE is: a fault in flight while pagemap
        // was read looks like a stale bit. Look again at what is about to be cleared.
        let clearing: Vec<u64> = corrections
            .iter()
            .filter(|c| !c.clear.is_empty())
            .map(|c| c.key.addr)
            .collect();
        if !clearing.is_empty() {
            // One read of what was read, or one per region when only a few are cleared.
            let again: BTreeMap<u64, OccupancyBitmap> = if clearing.len() > 8 {
                match range {
                    None => pagemap::read_regions(tgid as i32)?,
                    Some(r) => pagemap::read_range(tgid as i32, r.clone())?,
                }
            } else {
                let mut v = Vec::new();
                for &addr in &clearing {
                    v.extend(pagemap::read_range(tgid as i32, addr..addr + PMD_SIZE)?);
                }
                v
            }
            .into_iter()
            .map(|t| (t.addr, t.present))
            .collect();
            for c in &mut corrections {
                if let Some(present) = again.get(&c.key.addr) {
                    c.clear = c.clear.difference(present);
                }
            }
        }
        self.bpf.correct(&corrections)?;
        Ok(())
    }

    /// Every traced process's regions as they are now: present bits from the programs, masked
    /// to anonymous VMAs; swap, shared and whether a PMD maps it from pagemap. By tgid. A
    /// region a PMD maps has all its bits set in the map too (a THP whose folio the hook did
    /// not see, a collapse not yet re-read).
    fn traced_regions(&mut self) -> Result<BTreeMap<u32, Vec<TracedRegion>>> {
        let mut by_tgid = self.regions_by_tgid()?;
        by_tgid.retain(|tgid, _| self.procs.contains_key(tgid));
        let mut out = BTreeMap::new();
        let mut corrections = Vec::new();
        for (tgid, regions) in by_tgid {
            // A process may exit at any point here: skip it rather than fail.
            let Ok(truths) = pagemap::read_regions(tgid as i32) else {
                continue;
            };
            for t in truths.iter().filter(|t| t.pmd_mapped) {
                let bits = regions.get(&t.addr).copied().unwrap_or_default();
                if bits != OccupancyBitmap::FULL {
                    corrections.push(Correction {
                        key: RegionKey::new(tgid, t.addr),
                        clear: OccupancyBitmap::EMPTY,
                        set: OccupancyBitmap::FULL.difference(&bits),
                    });
                }
            }
            let traced: Vec<TracedRegion> = truths
                .into_iter()
                .filter_map(|t| {
                    let bits = if t.pmd_mapped {
                        OccupancyBitmap::FULL
                    } else {
                        *regions.get(&t.addr)?
                    };
                    // A swapped-out PTE is not present, whatever its last fault said.
                    let present = bits.intersection(&t.vma_mask).difference(&t.swap);
                    (!present.is_empty()).then_some(TracedRegion {
                        addr: t.addr,
                        state: RegionState {
                            present,
                            swap: t.swap,
                            shared: t.shared,
                        },
                        pmd_mapped: t.pmd_mapped,
                    })
                })
                .collect();
            out.insert(tgid, traced);
        }
        self.bpf.correct(&corrections)?;
        Ok(out)
    }

    /// Handles what the programs have reported so far, without an event loop (one-shot use,
    /// tests): the same as `collapse trace` does as records arrive.
    pub fn poll(&mut self) -> Result<Vec<Observed>> {
        let mut ring = self.bpf.take_events()?;
        let events = drain(&mut ring);
        self.bpf.give_back_events(ring);
        let mut seen = Vec::new();
        for ev in &events {
            seen.extend(self.handle(ev)?);
            seen.extend(self.take_hook_news());
        }
        self.resync_pending()?;
        Ok(seen)
    }

    /// The region map (pending bits included), grouped by process: one walk.
    fn regions_by_tgid(&self) -> Result<BTreeMap<u32, BTreeMap<u64, OccupancyBitmap>>> {
        let mut by_tgid: BTreeMap<u32, BTreeMap<u64, OccupancyBitmap>> = BTreeMap::new();
        for (key, bits) in self.bpf.regions()? {
            by_tgid.entry(key.tgid).or_default().insert(key.addr, bits);
        }
        Ok(by_tgid)
    }

    /// Deletes the regions of processes that ended (and were not traced again since).
    fn sweep_dead(&mut self) -> Result<()> {
        let dead: BTreeSet<u32> = std::mem::take(&mut self.dead)
            .into_iter()
            .filter(|t| !self.procs.contains_key(t))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let keys: Vec<RegionKey> = self
            .bpf
            .region_keys()?
            .into_iter()
            .filter(|k| dead.contains(&k.tgid))
            .collect();
        self.bpf.remove_regions(&keys)?;
        Ok(())
    }

    /// Re-reads every traced process's regions into [`Session::current`].
    pub fn refresh(&mut self) -> Result<()> {
        self.current = self.traced_regions()?;
        Ok(())
    }

    /// The region snapshot (DESIGN.md) of every traced process, and of those that ended while
    /// traced as they were at the last refresh before they did.
    pub fn snapshot(&mut self) -> Result<Vec<SnapshotRegion>> {
        self.refresh()?;
        let mut all = self.current.clone();
        all.extend(self.ended_regions.iter().map(|(t, r)| (*t, r.clone())));
        Ok(all
            .into_iter()
            .flat_map(|(tgid, regions)| {
                regions.into_iter().map(move |r| SnapshotRegion {
                    pid: tgid as i32,
                    addr: r.addr,
                    state: r.state,
                })
            })
            .collect())
    }

    /// Whether every process the target named has ended (for `--pid` and `-- CMD`).
    pub fn targets_gone(&mut self) -> bool {
        if let Some(child) = &mut self.child
            && child.try_wait().is_some()
        {
            return true;
        }
        self.target.ends_with_its_processes() && self.procs.is_empty()
    }

    /// Stops the command we spawned, if it still runs.
    pub fn stop_child(&mut self) {
        if let Some(child) = &mut self.child {
            child.stop();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_child();
    }
}
