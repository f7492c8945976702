//! What the metrics read from a tracing session at each tick: every traced process's
//! coverage and its memory cgroup's, and the tracer's health; and [`WithMetrics`], the tick
//! handler that feeds them beside `collapse trace`'s printer.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use collapse_common::consts::PMD_SIZE;

use super::{CgroupSeries, Metrics, ProcessSeries, TracerHealth};
use crate::{
    kernel::{memcg, pagemap::PagemapReader, procs},
    tracer::{Observed, Session, TickHandler, TracerError, sample},
};

const PAGE_SIZE: u64 = 4096;

/// Feeds one [`Metrics`] from a session.
#[derive(Debug)]
pub struct Feed {
    metrics: Metrics,
    /// `--max-regions`: the region map's capacity.
    region_capacity: u64,
    last_tick: Instant,
}

impl Feed {
    pub fn new(metrics: Metrics, region_capacity: u32) -> Self {
        Self {
            metrics,
            region_capacity: u64::from(region_capacity),
            last_tick: Instant::now(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One record the tracer handled.
    pub fn observed(&self) {
        self.metrics.count_event();
    }

    /// Every series of the session now; `collapsible` is what the policy would still
    /// collapse, per tgid, in bytes.
    pub fn tick(
        &mut self,
        session: &Session,
        collapsible: &HashMap<u32, u64>,
    ) -> Result<(), TracerError> {
        let read_folios = self.metrics.take_scraped();
        let mut processes = Vec::new();
        let mut groups: BTreeSet<memcg::MemoryCgroup> = BTreeSet::new();
        for p in session.processes() {
            let pid = p.tgid as i32;
            let regions = session
                .current()
                .get(&p.tgid)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let memory = procs::memory_coverage(pid).unwrap_or_default();
            // A process between exit and its exit event has no cgroup file left: no group.
            let group = memcg::of_process(pid).ok();
            let folio_bytes = read_folios.then(|| folio_bytes(pid, regions));
            processes.push(ProcessSeries {
                pid,
                comm: p.comm.clone(),
                cgroup: group.as_ref().map(|g| g.path.clone()).unwrap_or_default(),
                anon_bytes: memory.anon_rss_kb * 1024,
                anon_thp_bytes: memory.anon_huge_kb * 1024,
                pmd_mapped_bytes: regions.iter().filter(|r| r.pmd_mapped).count() as u64 * PMD_SIZE,
                folio_bytes,
                populated_bytes: regions
                    .iter()
                    .map(|r| u64::from(r.state.present.count()))
                    .sum::<u64>()
                    * PAGE_SIZE,
                collapsible_bytes: collapsible.get(&p.tgid).copied().unwrap_or(0),
            });
            groups.extend(group);
        }
        let cgroups: Vec<CgroupSeries> = groups
            .into_iter()
            .filter_map(|g| {
                let m = g.memory().ok()?;
                Some(CgroupSeries {
                    path: g.path,
                    anon_bytes: m.anon_bytes,
                    anon_thp_bytes: m.anon_thp_bytes,
                })
            })
            .collect();
        self.metrics.set_processes(&processes, &cgroups);
        let health = TracerHealth {
            drops: session
                .bpf()
                .drops()?
                .into_iter()
                .map(|(r, n)| (r.name(), n))
                .collect(),
            region_entries: session.bpf().region_keys()?.len() as u64,
            region_capacity: self.region_capacity,
            processes: processes.len() as u64,
        };
        let now = Instant::now();
        self.metrics
            .set_tracer(&health, now.duration_since(self.last_tick));
        self.last_tick = now;
        Ok(())
    }
}

/// Populated memory of `regions` of `pid` in PTE-mapped large folios, by folio order
/// (pagemap and kpageflags: the head/tail run behind each PTE). PMD-mapped regions are
/// counted apart; a region that went away meanwhile counts nothing.
fn folio_bytes(pid: i32, regions: &[crate::tracer::TracedRegion]) -> BTreeMap<u8, u64> {
    let mut out = BTreeMap::new();
    let Ok(mut reader) = PagemapReader::open(pid) else {
        return out;
    };
    for r in regions
        .iter()
        .filter(|r| !r.pmd_mapped && !r.state.present.is_empty())
    {
        let Ok(orders) = reader.folio_orders(r.addr) else {
            continue;
        };
        // One order-9 folio behind all 512 PTEs: PMD-mapped since the tick's regions were read
        // (a collapse in this pass), counted in the PMD-mapped bytes instead.
        if orders.iter().all(|&o| o == 9) {
            continue;
        }
        for &o in &orders {
            if let Ok(order @ 1..) = u8::try_from(o) {
                *out.entry(order).or_default() += PAGE_SIZE;
            }
        }
    }
    out
}

/// `collapse trace --metrics`: the printer `H`, and the metrics fed at each of its ticks
/// (what the policy would still collapse: the kernel's PMD rule, as the live view says).
pub struct WithMetrics<H> {
    pub inner: H,
    pub feed: Feed,
}

impl<H: TickHandler<Error = TracerError>> TickHandler for WithMetrics<H> {
    type Error = TracerError;

    fn attached(&mut self, session: &Session) -> Result<(), TracerError> {
        self.inner.attached(session)
    }

    fn observed(&mut self, session: &mut Session, what: &Observed) -> Result<(), TracerError> {
        self.feed.observed();
        self.inner.observed(session, what)
    }

    fn tick(&mut self, session: &mut Session, last: bool) -> Result<(), TracerError> {
        self.inner.tick(session, last)?;
        let collapsible = sample(session)?
            .processes
            .iter()
            .map(|p| (p.tgid, u64::from(p.pmd_collapsible) * PMD_SIZE))
            .collect();
        self.feed.tick(session, &collapsible)
    }

    fn next_interval(&self) -> Option<Duration> {
        self.inner.next_interval()
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.inner.poll_interval()
    }

    fn tick_now(&mut self, session: &Session) -> Result<bool, TracerError> {
        self.inner.tick_now(session)
    }
}
