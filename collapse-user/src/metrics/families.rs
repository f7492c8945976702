//! Every metric family, registered once with its HELP text and base unit (bytes, seconds).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProcessLabels {
    pub pid: String,
    pub comm: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProcessSizeLabels {
    pub pid: String,
    pub comm: String,
    pub cgroup: String,
    /// The folio size, `16K` .. `2M`.
    pub size: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CgroupLabels {
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub result: String,
    /// Empty for `collapsed` and `already_huge`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SizeLabels {
    pub size: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub reason: String,
}

type Bytes = Family<ProcessLabels, Gauge>;
type Ratio = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The families, as the feed sets them.
pub(super) struct Families {
    pub process_anon: Bytes,
    pub process_anon_thp: Bytes,
    pub process_pmd_mapped: Bytes,
    pub process_folio: Family<ProcessSizeLabels, Gauge>,
    pub process_populated: Bytes,
    pub process_collapsible: Bytes,
    pub process_coverage: Family<ProcessLabels, Ratio>,
    pub cgroup_anon: Family<CgroupLabels, Gauge>,
    pub cgroup_anon_thp: Family<CgroupLabels, Gauge>,
    pub cgroup_populated: Family<CgroupLabels, Gauge>,
    pub cgroup_processes: Family<CgroupLabels, Gauge>,
    pub cgroup_coverage: Family<CgroupLabels, Ratio>,
    pub collapses: Family<ResultLabels, Counter>,
    pub collapsed_bytes: Counter,
    pub latency: Histogram,
    pub advice: Family<SizeLabels, Counter>,
    pub passes: Counter,
    pub psi_paused_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub psi_paused: Gauge,
    pub psi_some_avg10: Ratio,
    pub rate_limit: Gauge,
    pub rate_deferred: Gauge,
    pub interval: Ratio,
    pub drops: Family<ReasonLabels, Counter>,
    pub map_entries: Gauge,
    pub map_capacity: Gauge,
    pub map_fill: Ratio,
    pub events: Counter,
    pub events_per_second: Ratio,
    pub processes: Gauge,
}

impl Families {
    /// Registers every family under the `collapse_` prefix. `executor`: `collapse run`'s
    /// families too (`collapse trace` has no executor).
    pub(super) fn register(registry: &mut Registry, executor: bool) -> Self {
        let f = Self {
            process_anon: Family::default(),
            process_anon_thp: Family::default(),
            process_pmd_mapped: Family::default(),
            process_folio: Family::default(),
            process_populated: Family::default(),
            process_collapsible: Family::default(),
            process_coverage: Family::default(),
            cgroup_anon: Family::default(),
            cgroup_anon_thp: Family::default(),
            cgroup_populated: Family::default(),
            cgroup_processes: Family::default(),
            cgroup_coverage: Family::default(),
            collapses: Family::default(),
            collapsed_bytes: Counter::default(),
            // 100 us to about 3.3 s: a PMD collapse takes about 1 ms here, a slow one tens.
            latency: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            advice: Family::default(),
            passes: Counter::default(),
            psi_paused_seconds: Counter::default(),
            psi_paused: Gauge::default(),
            psi_some_avg10: Ratio::default(),
            rate_limit: Gauge::default(),
            rate_deferred: Gauge::default(),
            interval: Ratio::default(),
            drops: Family::default(),
            map_entries: Gauge::default(),
            map_capacity: Gauge::default(),
            map_fill: Ratio::default(),
            events: Counter::default(),
            events_per_second: Ratio::default(),
            processes: Gauge::default(),
        };
        let r = registry;
        let bytes = Unit::Bytes;
        r.register_with_unit(
            "process_anon",
            "Anonymous resident memory of a traced process (RssAnon of /proc/PID/status)",
            bytes.clone(),
            f.process_anon.clone(),
        );
        r.register_with_unit(
            "process_anon_thp",
            "Anonymous memory of a traced process mapped by PMD-sized THPs (AnonHugePages of /proc/PID/smaps_rollup)",
            bytes.clone(),
            f.process_anon_thp.clone(),
        );
        r.register_with_unit(
            "process_pmd_mapped",
            "Traced regions of a process that one PMD maps (pagemap and kpageflags)",
            bytes.clone(),
            f.process_pmd_mapped.clone(),
        );
        r.register_with_unit(
            "process_pte_mapped_folio",
            "Populated memory of a process in PTE-mapped large folios, by folio size (pagemap and kpageflags; read after a scrape asked for it)",
            bytes.clone(),
            f.process_folio.clone(),
        );
        r.register_with_unit(
            "process_populated",
            "Pages a process has populated in its traced regions, from the occupancy bitmaps",
            bytes.clone(),
            f.process_populated.clone(),
        );
        r.register_with_unit(
            "process_collapsible",
            "Memory the chosen policy would still collapse in a process (collapse trace: the kernel's PMD rule)",
            bytes.clone(),
            f.process_collapsible.clone(),
        );
        r.register_with_unit(
            "process_thp_coverage",
            "Share of a process's anonymous memory mapped by PMD-sized THPs (anon_thp / anon)",
            Unit::Other("ratio".into()),
            f.process_coverage.clone(),
        );
        r.register_with_unit(
            "cgroup_anon",
            "Anonymous memory of a memory cgroup holding traced processes (memory.stat anon, or v1 total_rss)",
            bytes.clone(),
            f.cgroup_anon.clone(),
        );
        r.register_with_unit(
            "cgroup_anon_thp",
            "Anonymous THP memory of a memory cgroup holding traced processes (memory.stat anon_thp, or v1 total_rss_huge)",
            bytes.clone(),
            f.cgroup_anon_thp.clone(),
        );
        r.register_with_unit(
            "cgroup_populated",
            "Populated memory of the traced processes of a cgroup, from the occupancy bitmaps",
            bytes.clone(),
            f.cgroup_populated.clone(),
        );
        r.register(
            "cgroup_processes",
            "Traced processes in a memory cgroup",
            f.cgroup_processes.clone(),
        );
        r.register_with_unit(
            "cgroup_thp_coverage",
            "Share of a cgroup's anonymous memory that is THP (anon_thp / anon)",
            Unit::Other("ratio".into()),
            f.cgroup_coverage.clone(),
        );
        r.register(
            "tracer_drops",
            "Records the eBPF programs lost, by reason",
            f.drops.clone(),
        );
        r.register(
            "tracer_region_map_entries",
            "Regions in the eBPF region map",
            f.map_entries.clone(),
        );
        r.register(
            "tracer_region_map_capacity",
            "Capacity of the eBPF region map (--max-regions)",
            f.map_capacity.clone(),
        );
        r.register_with_unit(
            "tracer_region_map_fill",
            "Share of the eBPF region map in use",
            Unit::Other("ratio".into()),
            f.map_fill.clone(),
        );
        r.register(
            "tracer_events",
            "Tracer records handled (large folios, khugepaged events, processes starting and ending)",
            f.events.clone(),
        );
        r.register(
            "tracer_events_per_second",
            "Tracer records handled per second over the last interval",
            f.events_per_second.clone(),
        );
        r.register(
            "tracer_processes",
            "Processes traced now",
            f.processes.clone(),
        );
        if executor {
            r.register(
                "collapses",
                "Collapse outcomes by result and reason (each region's state change once, as run --json reports them)",
                f.collapses.clone(),
            );
            r.register_with_unit(
                "collapsed",
                "Memory collapsed into PMD-mapped THPs",
                bytes.clone(),
                f.collapsed_bytes.clone(),
            );
            r.register_with_unit(
                "collapse_latency",
                "Time of each process_madvise(MADV_COLLAPSE) attempt, retry included",
                Unit::Seconds,
                f.latency.clone(),
            );
            r.register(
                "advice",
                "Decisions below PMD size reported as advice, by size",
                f.advice.clone(),
            );
            r.register("passes", "Passes of the executor", f.passes.clone());
            r.register_with_unit(
                "psi_paused",
                "Time collapsing was paused by memory pressure (PSI some avg10 above --psi-limit)",
                Unit::Seconds,
                f.psi_paused_seconds.clone(),
            );
            r.register(
                "psi_paused_now",
                "1 while collapsing is paused by memory pressure",
                f.psi_paused.clone(),
            );
            r.register(
                "psi_memory_some_avg10",
                "Memory PSI some avg10 at the last pass, in percent",
                f.psi_some_avg10.clone(),
            );
            r.register_with_unit(
                "rate_limit",
                "The --max-rate token bucket's rate (0: no limit)",
                Unit::Other("bytes_per_second".into()),
                f.rate_limit.clone(),
            );
            r.register(
                "rate_deferred_pmds",
                "PMD decisions the rate limit held back to later passes in the last pass",
                f.rate_deferred.clone(),
            );
            r.register_with_unit(
                "pass_interval",
                "Time between passes now (doubles while collapses are slow)",
                Unit::Seconds,
                f.interval.clone(),
            );
        }
        f
    }
}
