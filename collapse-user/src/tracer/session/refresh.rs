//! The tick's reading, bounded: which traced processes to re-read from pagemap and smaps this
//! tick, and the regions of every traced process from the bitmaps (read every tick, in a few
//! batched calls) and the pagemap truth of each process's last read.
//!
//! A process is re-read when it changed: its bitmaps differ from the last tick's, its
//! `/proc/PID/stat` fault counters, size or RSS moved (swap-in, swap-out, a page filled from
//! another process, an mmap), or an event said so (a fork shares its pages). At most
//! [`TICK_BUDGET`] regions are re-read per tick, changed processes first and the longest
//! unread first; the others are re-read round-robin, at most a quarter of the budget per
//! tick and none more often than every [`ROUND_ROBIN_TICKS`] ticks, which catches what no
//! counter shows (a THP split, a sibling's exit unsharing pages). A process not re-read keeps
//! its last truth (VMAs, swap, shared, PMD mappings) over its current bits.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use collapse_common::{OccupancyBitmap, policy::RegionState};
use procfs::process::Process;

use super::{Result, Session, TracedRegion};
use crate::kernel::{
    pagemap::{PagemapReader, RegionTruth},
    procs::{self, MemoryCoverage},
};

/// Regions re-read per tick at most (1 GiB of populated address space); one changed process
/// is re-read each tick whatever its size.
pub(crate) const TICK_BUDGET: u64 = 512;

/// An unchanged process is re-read at most this often.
pub(crate) const ROUND_ROBIN_TICKS: u64 = 20;

/// What `/proc/PID/stat` says moved since the last read (fs/proc/array.c `do_task_stat`):
/// faults of any thread (read faults, swap-ins, userfaultfd), the address-space size, the RSS
/// (a page populated or freed without a fault of the process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    minflt: u64,
    majflt: u64,
    vsize: u64,
    rss: u64,
}

impl Signature {
    fn read(tgid: u32) -> Option<Self> {
        let stat = Process::new(tgid as i32).ok()?.stat().ok()?;
        Some(Self {
            minflt: stat.minflt,
            majflt: stat.majflt,
            vsize: stat.vsize,
            rss: stat.rss,
        })
    }
}

/// A traced process as of its last read.
#[derive(Debug, Default)]
pub(super) struct ProcessView {
    /// The counters before that read.
    sig: Option<Signature>,
    /// Its bitmaps at the last tick.
    bits: BTreeMap<u64, OccupancyBitmap>,
    /// pagemap at the last read: every populated region.
    truths: Vec<RegionTruth>,
    coverage: Option<MemoryCoverage>,
    /// The tick of the last read.
    read_at: u64,
    /// Changed since the last read (seen at a tick that could not afford to re-read it, or
    /// said by an event).
    changed: bool,
}

/// Every traced process's view, and the tick count.
#[derive(Debug, Default)]
pub(super) struct Views {
    by_tgid: HashMap<u32, ProcessView>,
    tick: u64,
}

impl Views {
    /// Re-read `tgid` at the next tick (something changed that its counters may not show).
    pub(super) fn mark(&mut self, tgid: u32) {
        if let Some(v) = self.by_tgid.get_mut(&tgid) {
            v.changed = true;
        }
    }

    pub(super) fn forget(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }

    /// The THP coverage of `tgid` at its last read.
    pub(super) fn coverage(&self, tgid: u32) -> Option<MemoryCoverage> {
        self.by_tgid.get(&tgid).and_then(|v| v.coverage)
    }
}

/// One process as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub tgid: u32,
    /// Never read: read now, whatever the budget (it was just seeded, at the same cost).
    pub new: bool,
    pub changed: bool,
    /// Regions a read costs.
    pub cost: u64,
    pub read_at: u64,
}

/// Which processes to re-read at tick `tick` within `budget` regions: every new one; changed
/// ones, longest unread first, within three quarters of the budget (at least one); then
/// unchanged ones unread for [`ROUND_ROBIN_TICKS`], longest first, within what is left, at
/// most a quarter of the budget (at least one when any is due).
pub(crate) fn pick(cands: &[Candidate], budget: u64, tick: u64) -> BTreeSet<u32> {
    let mut picked: BTreeSet<u32> = cands.iter().filter(|c| c.new).map(|c| c.tgid).collect();
    let mut spent = 0;
    let mut changed: Vec<&Candidate> = cands.iter().filter(|c| !c.new && c.changed).collect();
    changed.sort_by_key(|c| (c.read_at, c.tgid));
    for (i, c) in changed.iter().enumerate() {
        if i > 0 && spent + c.cost > budget * 3 / 4 {
            break;
        }
        spent += c.cost;
        picked.insert(c.tgid);
    }
    let mut due: Vec<&Candidate> = cands
        .iter()
        .filter(|c| !c.new && !c.changed && tick.saturating_sub(c.read_at) >= ROUND_ROBIN_TICKS)
        .collect();
    due.sort_by_key(|c| (c.read_at, c.tgid));
    let share = (budget / 4).min(budget.saturating_sub(spent));
    let mut rr = 0;
    for (i, c) in due.iter().enumerate() {
        if i > 0 && rr + c.cost > share {
            break;
        }
        rr += c.cost;
        picked.insert(c.tgid);
    }
    picked
}

/// The regions the view and the snapshot show for one process: its bits masked to the
/// anonymous VMAs pagemap showed, swapped PTEs subtracted; swap, shared and PMD mapping from
/// pagemap.
fn traced_regions(
    truths: &[RegionTruth],
    bits: &BTreeMap<u64, OccupancyBitmap>,
) -> Vec<TracedRegion> {
    truths
        .iter()
        .filter_map(|t| {
            // A swapped-out PTE is not present, whatever its last fault said.
            let present = bits
                .get(&t.addr)?
                .intersection(&t.vma_mask)
                .difference(&t.swap);
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
        .collect()
}

impl Session {
    /// Re-reads what changed of the traced processes (everything when `everything`), within the
    /// tick's budget, into [`Session::current`].
    pub(super) fn refresh_views(&mut self, everything: bool) -> Result<()> {
        self.views.tick += 1;
        let tick = self.views.tick;
        let mut bits = self.regions_by_tgid()?;
        let mut sigs = HashMap::new();
        let mut cands = Vec::with_capacity(self.procs.len());
        for &tgid in self.procs.keys() {
            let sig = Signature::read(tgid);
            let b = bits.get(&tgid);
            let cand = match self.views.by_tgid.get_mut(&tgid) {
                None => Candidate {
                    tgid,
                    new: true,
                    changed: true,
                    cost: b.map_or(1, |b| b.len() as u64),
                    read_at: 0,
                },
                Some(v) => {
                    let empty = BTreeMap::new();
                    v.changed |= v.sig != sig || &v.bits != b.unwrap_or(&empty);
                    Candidate {
                        tgid,
                        new: false,
                        changed: v.changed,
                        cost: (v.truths.len().max(b.map_or(0, BTreeMap::len)) as u64).max(1),
                        read_at: v.read_at,
                    }
                }
            };
            sigs.insert(tgid, sig);
            cands.push(cand);
        }
        let picked: BTreeSet<u32> = if everything {
            cands.iter().map(|c| c.tgid).collect()
        } else {
            pick(&cands, TICK_BUDGET, tick)
        };
        let mut current = BTreeMap::new();
        let tgids: Vec<u32> = self.procs.keys().copied().collect();
        for tgid in tgids {
            let mut b = bits.remove(&tgid).unwrap_or_default();
            if picked.contains(&tgid) {
                // A process may exit at any point here: skip it rather than fail.
                let (truths, coverage) = match self.read_process(tgid, &mut b) {
                    Ok(read) => read,
                    // Unreadable but alive (pid 1 under a security module): tried again
                    // round-robin, not as a new process every tick.
                    Err(_) if procs::exists(tgid as i32) => (Vec::new(), None),
                    Err(_) => {
                        self.views.forget(tgid);
                        continue;
                    }
                };
                let v = self.views.by_tgid.entry(tgid).or_default();
                v.sig = sigs.get(&tgid).copied().flatten();
                v.truths = truths;
                v.coverage = coverage;
                v.read_at = tick;
                v.changed = false;
            }
            let Some(v) = self.views.by_tgid.get_mut(&tgid) else {
                continue;
            };
            current.insert(tgid, traced_regions(&v.truths, &b));
            v.bits = b;
        }
        self.current = current;
        Ok(())
    }

    /// Reads `tgid`'s pagemap and THP coverage. Pages pagemap shows present that its bitmaps
    /// lack (swapped in by a read fault, filled by UFFDIO_COPY or from another process, a
    /// region collapsed from outside: no write fault of its own) get their bits, in the map
    /// and in `bits`.
    fn read_process(
        &mut self,
        tgid: u32,
        bits: &mut BTreeMap<u64, OccupancyBitmap>,
    ) -> Result<(Vec<RegionTruth>, Option<MemoryCoverage>)> {
        let mut reader = PagemapReader::open(tgid as i32)?;
        let truths = reader.read_regions()?;
        let mut missing = Vec::new();
        for t in &truths {
            let have = bits.get(&t.addr).copied().unwrap_or_default();
            let lacks = wanted(t).difference(&have);
            if !lacks.is_empty() {
                missing.push((t.addr, lacks));
            }
        }
        if !missing.is_empty() {
            // Read again just before writing: a page unmapped since the read above would
            // otherwise come back as a stale bit (the programs clear ranges they hold no bits
            // of without a trace).
            let vmas = reader.anon_vmas()?;
            for (addr, lacks) in missing {
                let again = reader.read_region_within(&vmas, addr)?;
                let add = lacks.intersection(&wanted(&again));
                if add.is_empty() {
                    continue;
                }
                // A full map is counted by the programs' drops; the bits come back at the
                // next read.
                if let Ok(true) = self.add_bits(tgid, addr, &add) {
                    let entry = bits.entry(addr).or_default();
                    *entry = entry.union(&add);
                }
            }
        }
        let coverage = procs::memory_coverage(tgid as i32).ok();
        Ok((truths, coverage))
    }
}

/// The bits pagemap says a region must have: its present pages (not the zero page, inside
/// anonymous VMAs), all 512 when a PMD maps it.
fn wanted(t: &RegionTruth) -> OccupancyBitmap {
    if t.pmd_mapped { t.vma_mask } else { t.present }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cand(tgid: u32, changed: bool, cost: u64, read_at: u64) -> Candidate {
        Candidate {
            tgid,
            new: false,
            changed,
            cost,
            read_at,
        }
    }

    #[test]
    fn changed_first_then_round_robin() {
        let cands = [
            cand(1, true, 100, 5),
            cand(2, true, 300, 3),
            cand(3, false, 10, 1),
            cand(4, false, 10, 30),
            Candidate {
                new: true,
                ..cand(5, true, 10_000, 0)
            },
        ];
        // Budget 512: changed ones within 384, longest unread first: 2 (300), and 1 would
        // make 400.
        let p = pick(&cands, 512, 40);
        assert!(p.contains(&5), "new processes are always read");
        assert!(p.contains(&2), "the longest-unread changed one first");
        assert!(!p.contains(&1), "over three quarters of the budget");
        assert!(p.contains(&3), "due for its round-robin read");
        assert!(!p.contains(&4), "read 10 ticks ago: not due");
        // One changed process is read whatever its cost.
        let p = pick(&[cand(1, true, 5000, 0)], 512, 1);
        assert!(p.contains(&1));
        // Nothing changed, nothing due: nothing read.
        assert!(pick(&[cand(1, false, 1, 39)], 512, 40).is_empty());
    }

    proptest! {
        /// Within budget (beyond the first of each kind and new ones), and every process is
        /// read within a bounded number of ticks whatever keeps changing.
        #[test]
        fn bounded_and_fair(costs in prop::collection::vec(1u64..200, 1..60), busy in any::<u64>()) {
            let n = costs.len();
            let mut read_at = vec![0u64; n];
            let mut last_read = vec![0u64; n];
            for tick in 1..400u64 {
                let cands: Vec<Candidate> = (0..n)
                    .map(|i| cand(i as u32, (busy >> (i % 64)) & 1 == 1, costs[i], read_at[i]))
                    .collect();
                let p = pick(&cands, 512, tick);
                let changed: Vec<u64> = cands.iter().filter(|c| c.changed && p.contains(&c.tgid)).map(|c| c.cost).collect();
                let rr: Vec<u64> = cands.iter().filter(|c| !c.changed && p.contains(&c.tgid)).map(|c| c.cost).collect();
                prop_assert!(changed.len() <= 1 || changed.iter().sum::<u64>() <= 384);
                prop_assert!(rr.len() <= 1 || rr.iter().sum::<u64>() <= 128);
                for &t in &p {
                    read_at[t as usize] = tick;
                    last_read[t as usize] = tick;
                }
            }
            // Costs below 200 and 60 processes: every one read within the last 200 ticks.
            for (i, &t) in last_read.iter().enumerate() {
                prop_assert!(t >= 200, "process {i} last read at tick {t}");
            }
        }
    }
}
