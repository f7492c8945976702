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
        features::{Fallback, Feature},
        pagemap, procs,
        thp::{SizeEnabled, ThpEnabled, ThpSettings},
    },
    snapshot::SnapshotRegion,
};

mod refresh;

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

/// A traced process as userspace knows it: (tgid, start time) names it, and its generation is
/// what the programs key its regions and khugepaged counts with, so a process that gets the
/// pid after it sees none of its data.
#[derive(Clone, Debug)]
pub struct TracedProcess {
    pub tgid: u32,
    /// `GENERATIONS[tgid]` while it lives (see `RegionKey`).
    pub generation: u32,
    /// `/proc/PID/stat` starttime, clock ticks after boot.
    pub start_time: u64,
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
    /// Processes that ended and whose regions are still in the map, by tgid: their generation.
    dead: BTreeMap<u32, u32>,
    /// What the THP settings allow, as of the last tick.
    large_folios: LargeFolios,
    /// Why the large-folio hook was attached, not yet reported.
    hook_news: Vec<&'static str>,
    /// Ring-buffer records lost so far: when it grows, what they would have said is unknown,
    /// so every process is re-read from pagemap.
    ring_lost: u64,
    /// Processes were added (or exec'd) since the task iterator last ran.
    mms_to_learn: bool,
    /// Every traced process's regions as of the last [`Session::refresh`].
    current: BTreeMap<u32, Vec<TracedRegion>>,
    /// The last regions of processes that ended while traced: a command traced to its end
    /// still has a snapshot. At most [`ENDED_REGIONS_MAX`] regions, the oldest ended go first.
    ended_regions: BTreeMap<u32, Vec<TracedRegion>>,
    /// The order processes ended in (tgids of `ended_regions`, oldest first).
    ended_order: std::collections::VecDeque<u32>,
    /// Regions held in `ended_regions`.
    ended_count: usize,
    /// Ticks so far (stale state is swept every [`SWEEP_EVERY`] ticks even without news).
    ticks: u64,
    /// The `--cgroup` directory was found removed (counted once).
    cgroup_gone: bool,
    /// What each traced process looked like at its last read from pagemap (the tick re-reads
    /// only what changed).
    views: refresh::Views,
}

/// Most regions of ended processes kept for the snapshot: with `--all` on a busy host,
/// thousands of processes end every minute.
const ENDED_REGIONS_MAX: usize = 65_536;

/// A tick with no exit seen still sweeps the maps this often, for the processes whose exit
/// record was lost.
const SWEEP_EVERY: u64 = 16;

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

    /// The probed features whose fallback this session uses, and why: those decided at load,
    /// and batched map reads if the kernel refused them since.
    pub fn fallbacks(&self) -> Vec<Fallback> {
        let mut all = self.bpf.fallbacks().to_vec();
        if !self.bpf.reads_in_batches() && !all.iter().any(|f| f.feature == Feature::MapBatch) {
            all.push(Fallback {
                feature: Feature::MapBatch,
                why: "the kernel refused BPF_MAP_LOOKUP_BATCH".into(),
            });
        }
        all
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
            cgroup_level: target.cgroup_level,
        };
        let bpf = Bpf::load(&sel, cap)?;
        let mut session = Self {
            bpf,
            procs: BTreeMap::new(),
            child: None,
            started: Instant::now(),
            target: Target::default(),
            unseeded: BTreeSet::new(),
            dead: BTreeMap::new(),
            large_folios: LargeFolios::from_kernel(),
            hook_news: Vec::new(),
            ring_lost: 0,
            mms_to_learn: false,
            current: BTreeMap::new(),
            ended_regions: BTreeMap::new(),
            ended_order: std::collections::VecDeque::new(),
            ended_count: 0,
            ticks: 0,
            cgroup_gone: false,
            views: refresh::Views::default(),
        };
        // Tracking starts before seeding, so no page populated in between is missed. A
        // process that ends meanwhile is simply not traced (a named one ends the session).
        for tgid in target.initial_tgids()? {
            session.add(tgid)?;
        }
        if let Some(spawned) = target.spawn.take() {
            // Held before exec until released: traced from its first instruction.
            session.add(spawned.tgid)?;
            session.child = Some(spawned.release()?);
        }
        session.target = target;
        session.resync_pending()?;
        Ok(session)
    }

    /// Whether the process traced as `tgid` still holds that pid (not ended, not replaced by
    /// a process that reused the pid).
    fn still_there(p: &TracedProcess) -> bool {
        procs::start_time(p.tgid as i32).is_ok_and(|t| t == p.start_time)
            && procs::exists(p.tgid as i32)
    }

    /// The process with pid `tgid` now, named by its start time and generation; `None` if no
    /// process holds the pid (it ended while we looked).
    fn identify(&self, tgid: u32) -> Result<Option<(u64, u32)>> {
        let Ok(start_time) = procs::start_time(tgid as i32) else {
            return Ok(None);
        };
        // The generation changes only when the group holding the pid ends: the same start
        // time after reading it means it was this process's.
        let generation = self.bpf.generation(tgid)?;
        match procs::start_time(tgid as i32) {
            Ok(t) if t == start_time => Ok(Some((start_time, generation))),
            _ => Ok(None),
        }
    }

    /// Starts tracing `tgid` and schedules its seeding from pagemap. Returns whether it is
    /// traced now (a process that ended meanwhile is not). A process traced before under the
    /// same pid is ended first.
    fn add(&mut self, tgid: u32) -> Result<bool> {
        // The programs set the bit of a followed child themselves; writing a whole word back
        // only when needed keeps this read-modify-write from racing their atomic updates.
        if !self.target.all && !self.bpf.is_tracked(tgid)? {
            self.bpf.set_tracked(tgid, true)?;
        }
        let Some((start_time, generation)) = self.identify(tgid)? else {
            return Ok(false);
        };
        if let Some(old) = self.procs.get(&tgid) {
            if old.start_time == start_time && old.generation == generation {
                return Ok(true);
            }
            let old_generation = old.generation;
            self.end(tgid, Some(old_generation))?;
        }
        // Its pid's earlier process no longer shows in the snapshot: the pid is this one's.
        self.forget_ended(tgid);
        // Before its seeding: whatever it faults from here on is seen by the hook.
        self.consider_large_folio_hook(&[tgid])?;
        // Its mm is learned with the others added in this batch, before anything is re-read.
        self.mms_to_learn = true;
        let comm = procs::comm(tgid as i32).unwrap_or_else(|_| "?".into());
        self.procs.insert(
            tgid,
            TracedProcess {
                tgid,
                generation,
                start_time,
                comm,
                resync_whole: true,
                resync_ranges: Vec::new(),
            },
        );
        Ok(true)
    }

    fn forget_ended(&mut self, tgid: u32) {
        if let Some(r) = self.ended_regions.remove(&tgid) {
            self.ended_count -= r.len();
            self.ended_order.retain(|&t| t != tgid);
        }
    }

    /// Keeps `regions` of a process that ended for the snapshot, within the bound.
    fn keep_ended(&mut self, tgid: u32, regions: Vec<TracedRegion>) {
        self.forget_ended(tgid);
        self.ended_count += regions.len();
        self.ended_regions.insert(tgid, regions);
        self.ended_order.push_back(tgid);
        while self.ended_count > ENDED_REGIONS_MAX {
            let Some(oldest) = self.ended_order.pop_front() else {
                break;
            };
            if let Some(r) = self.ended_regions.remove(&oldest) {
                self.ended_count -= r.len();
            }
        }
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

    /// Stops tracing `tgid`, if it is traced as `generation` (`None`: whichever). A record of
    /// an earlier process with that pid ends nothing.
    fn end(&mut self, tgid: u32, generation: Option<u32>) -> Result<Option<String>> {
        let Some(p) = self.procs.get(&tgid) else {
            return Ok(None);
        };
        if generation.is_some_and(|g| g != p.generation) {
            return Ok(None);
        }
        // Its regions go at the next sweep: one walk of the map per tick, not one per exit.
        self.dead.insert(tgid, p.generation);
        // The program clears the bit at exit and at a comm change already.
        if !self.target.all && self.bpf.is_tracked(tgid).unwrap_or(false) {
            let _ = self.bpf.set_tracked(tgid, false);
        }
        self.views.forget(tgid);
        if let Some(regions) = self.current.remove(&tgid) {
            self.keep_ended(tgid, regions);
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
                let comm = self.end(tgid, Some(ev.len as u32))?;
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
                    // Its new mm: learned at its first fault, or here if it never faults.
                    self.mms_to_learn = true;
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
                    // The parent's pages are shared with the child now.
                    self.views.mark(tgid);
                    ev.addr as u32
                } else {
                    tgid
                };
                let known = self.procs.get(&child).is_some_and(Self::still_there);
                if known || !self.add(child)? {
                    None
                } else {
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
        // Processes gone (also those whose exit record was lost, and pids reused since) first,
        // so a reused pid joins below as the new process it is.
        let gone: Vec<u32> = self
            .procs
            .values()
            .filter(|p| !Self::still_there(p))
            .map(|p| p.tgid)
            .collect();
        for tgid in gone {
            if let Some(comm) = self.end(tgid, None)? {
                seen.push(Observed::Ended {
                    tgid,
                    comm,
                    how: "gone",
                });
            }
        }
        let members = match self.target.current_members() {
            Ok(members) => members,
            Err(super::error::TargetError::CgroupGone(_)) => {
                if !std::mem::replace(&mut self.cgroup_gone, true) {
                    self.bpf.count_drop(DropReason::CgroupGone);
                }
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        for tgid in members {
            if !self.procs.contains_key(&tgid) && self.add(tgid)? {
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
        let ring_lost = lost > self.ring_lost;
        if ring_lost {
            self.ring_lost = lost;
            for p in self.procs.values_mut() {
                p.resync_whole = true;
            }
        }
        self.ticks += 1;
        if ring_lost || !self.dead.is_empty() || self.ticks.is_multiple_of(SWEEP_EVERY) {
            self.sweep()?;
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
        // One pass of the task iterator for every process added since the last one (under
        // `--all`, thousands at start and every fork since).
        if std::mem::take(&mut self.mms_to_learn) {
            self.bpf.learn_mms()?;
        }
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
            self.views.mark(tgid);
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
                // pagemap says the mm is gone before /proc does (an exit in progress).
                if !procs::exists(tgid as i32)
                    || matches!(
                        err,
                        TracerError::Pagemap(pagemap::PagemapError::NoProcess { .. })
                    )
                {
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
        let generation = self.procs.get(&tgid).map_or(0, |p| p.generation);
        let mut corrections = Vec::new();
        for addr in addrs {
            let key = RegionKey::of(tgid, generation, addr);
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

    /// The region map (pending bits included) of the traced processes, grouped by process:
    /// one walk. Keys of another generation (an earlier process with the pid) are left out.
    fn regions_by_tgid(&self) -> Result<BTreeMap<u32, BTreeMap<u64, OccupancyBitmap>>> {
        let mut by_tgid: BTreeMap<u32, BTreeMap<u64, OccupancyBitmap>> = BTreeMap::new();
        for (key, bits) in self.bpf.regions()? {
            if self.is_live(key.tgid, key.generation) {
                by_tgid.entry(key.tgid).or_default().insert(key.addr, bits);
            }
        }
        Ok(by_tgid)
    }

    /// Whether (`tgid`, `generation`) is a process traced now.
    pub fn is_live(&self, tgid: u32, generation: u32) -> bool {
        self.procs
            .get(&tgid)
            .is_some_and(|p| p.generation == generation)
    }

    /// Deletes the regions and khugepaged counts of every process not traced now: those that
    /// ended, earlier processes of a reused pid, and those whose exit record was lost. A
    /// process traced later is seeded whole from pagemap, so nothing it needs goes.
    ///
    /// What the map held of a process that ended is its last state (the programs flush its
    /// pending bits at exit, and nothing clears bits at exit). The snapshot keeps it added to
    /// the view of its last tick: memory it touched after that tick is there too, and memory
    /// it freed on its way out (a program unmapping its buffers before it returns) stays as
    /// that tick saw it. A command shorter than one interval is thus in the snapshot at all.
    /// Only for processes kept already, or named by the target (`--pid`, the command and its
    /// children): under `--all`, thousands of short processes nobody asked for are not kept.
    fn sweep(&mut self) -> Result<()> {
        let dead = std::mem::take(&mut self.dead);
        let procs = &self.procs;
        let gone = self.bpf.prune(|tgid, generation| {
            procs.get(&tgid).is_some_and(|p| p.generation == generation)
        })?;
        let mut last: BTreeMap<u32, BTreeMap<u64, OccupancyBitmap>> = BTreeMap::new();
        for (key, bits) in gone {
            if dead.get(&key.tgid) == Some(&key.generation) {
                last.entry(key.tgid).or_default().insert(key.addr, bits);
            }
        }
        let named = self.target.ends_with_its_processes();
        for (tgid, bits) in last {
            let seen = self.ended_regions.get(&tgid);
            if seen.is_none() && !named {
                continue;
            }
            let regions = last_state(seen.map_or(&[], Vec::as_slice), &bits);
            self.keep_ended(tgid, regions);
        }
        Ok(())
    }

    /// Re-reads what changed of the traced processes' regions into [`Session::current`], within
    /// the tick's budget (see `refresh.rs`).
    pub fn refresh(&mut self) -> Result<()> {
        self.refresh_views(false)
    }

    /// ORs `mask` into `tgid`'s region at `addr`: bits userspace learned from pagemap that no
    /// fault of the process set. The one place such bits are written back: an OR applied in
    /// the kernel ([`Bpf::correct`]), so nothing the programs clear or set meanwhile is
    /// overwritten. Whether it was applied (not: the region map is full, counted as a drop).
    pub(crate) fn add_bits(
        &mut self,
        tgid: u32,
        addr: u64,
        mask: &OccupancyBitmap,
    ) -> Result<bool> {
        let generation = self.procs.get(&tgid).map_or(0, |p| p.generation);
        let dropped = self.bpf.correct(&[Correction {
            key: RegionKey::of(tgid, generation, addr),
            clear: OccupancyBitmap::EMPTY,
            set: *mask,
        }])?;
        Ok(dropped == 0)
    }

    /// The THP coverage of `tgid`'s anonymous memory as of its last read (read now if it has
    /// none).
    pub fn memory_coverage(&self, tgid: u32) -> Option<procs::MemoryCoverage> {
        self.views
            .coverage(tgid)
            .or_else(|| procs::memory_coverage(tgid as i32).ok())
    }

    /// The region snapshot (DESIGN.md) of every traced process, and of those that ended while
    /// traced as they were when they did (see [`Session::sweep`]).
    pub fn snapshot(&mut self) -> Result<Vec<SnapshotRegion>> {
        // The last state of what ended since the last tick (the command, often).
        if !self.dead.is_empty() {
            self.sweep()?;
        }
        // Every process read now, whatever the tick's budget: the snapshot is exact.
        self.refresh_views(true)?;
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

/// A process's regions for the snapshot once it ended: those of its last view, with the bits
/// the map held at its exit added (a region only the map has is new since that view).
fn last_state(seen: &[TracedRegion], bits: &BTreeMap<u64, OccupancyBitmap>) -> Vec<TracedRegion> {
    let mut all: BTreeMap<u64, TracedRegion> = seen.iter().map(|r| (r.addr, *r)).collect();
    for (&addr, bits) in bits {
        let r = all.entry(addr).or_insert(TracedRegion {
            addr,
            state: RegionState::default(),
            pmd_mapped: false,
        });
        // A page its last view saw swapped out is still not present.
        r.state.present = r.state.present.union(&bits.difference(&r.state.swap));
    }
    all.into_values()
        .filter(|r| !r.state.present.is_empty())
        .collect()
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop_child();
    }
}
