//! The Prometheus endpoint of `collapse run --metrics` and `collapse trace --metrics`: the
//! families (`families`), the values the pipeline and the tracer feed them (the types below),
//! and the HTTP endpoint on the command's tokio runtime (`http`).
//!
//! The exposition format is prometheus-client's (OpenMetrics text, served to scrapers that
//! ask for it, as Prometheus does); other clients get the Prometheus text format 0.0.4 made
//! from it (`http::to_prometheus_text`). Per-process and per-cgroup series are set anew on
//! every update, so a process that ends leaves the metrics at the next one: the label sets
//! stay bounded by the processes traced now.

mod families;
mod feed;
mod http;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::registry::Registry;

use self::families::{
    CgroupLabels, Families, ProcessLabels, ProcessSizeLabels, ReasonLabels, ResultLabels,
    SizeLabels,
};
pub use self::{
    feed::{Feed, WithMetrics},
    http::{Endpoint, MetricsError, serve},
};
use crate::render::size_name;

/// One traced process, as the metrics show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSeries {
    pub pid: i32,
    pub comm: String,
    /// Its memory cgroup's path (`/kubepods.slice/...`), empty when unknown.
    pub cgroup: String,
    pub anon_bytes: u64,
    pub anon_thp_bytes: u64,
    pub pmd_mapped_bytes: u64,
    /// PTE-mapped large folios by order (1..=9), when they were read this time.
    pub folio_bytes: Option<BTreeMap<u8, u64>>,
    pub populated_bytes: u64,
    pub collapsible_bytes: u64,
}

/// One memory cgroup holding traced processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupSeries {
    pub path: String,
    pub anon_bytes: u64,
    pub anon_thp_bytes: u64,
}

/// The tracer's health at one tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracerHealth {
    /// Totals so far, by reason name.
    pub drops: Vec<(&'static str, u64)>,
    pub region_entries: u64,
    pub region_capacity: u64,
    pub processes: u64,
}

/// One executor pass, as the metrics count it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassSeries {
    /// The pass was paused by PSI, for this long (since the pass before).
    pub paused_for: Option<Duration>,
    pub psi_avg10: Option<f64>,
    pub interval: Duration,
    /// `--max-rate` in bytes per second.
    pub rate_limit: Option<u64>,
    pub rate_deferred_pmds: u64,
}

struct Inner {
    registry: Registry,
    families: Families,
    /// Set by a scrape, taken by the feed: the costly per-size read happens only for scrapers.
    scraped: AtomicBool,
    /// Tracer records handled since the last tick, and the totals behind the drop counters.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    events_since_tick: u64,
    drops: HashMap<&'static str, u64>,
    /// The last folio sizes read, kept between reads (they are read after a scrape only).
    folio: HashMap<i32, BTreeMap<u8, u64>>,
}

/// The metrics of one command, shared by the feed and the endpoint.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// The families of `collapse run` (`executor`) or of `collapse trace`.
    pub fn new(executor: bool) -> Self {
        let mut registry = Registry::with_prefix("collapse");
        let families = Families::register(&mut registry, executor);
        Self(Arc::new(Inner {
            registry,
            families,
            scraped: AtomicBool::new(true),
            counts: Mutex::new(Counts::default()),
        }))
    }

    /// Whether a scrape came since the last call: the feed reads per-size folio bytes (a
    /// pagemap and kpageflags walk of every region) only then.
    pub fn take_scraped(&self) -> bool {
        self.0.scraped.swap(false, Ordering::Relaxed)
    }

    /// The processes traced now and their cgroups: every series of a process or cgroup not
    /// among them is gone from now on.
    pub fn set_processes(&self, processes: &[ProcessSeries], cgroups: &[CgroupSeries]) {
        let f = &self.0.families;
        f.process_anon.clear();
        f.process_anon_thp.clear();
        f.process_pmd_mapped.clear();
        f.process_folio.clear();
        f.process_populated.clear();
        f.process_collapsible.clear();
        f.process_coverage.clear();
        f.cgroup_anon.clear();
        f.cgroup_anon_thp.clear();
        f.cgroup_populated.clear();
        f.cgroup_processes.clear();
        f.cgroup_coverage.clear();
        let mut counts = lock(&self.0.counts);
        counts
            .folio
            .retain(|pid, _| processes.iter().any(|p| p.pid == *pid));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for p in processes {
            let l = ProcessLabels {
                pid: p.pid.to_string(),
                comm: p.comm.clone(),
                cgroup: p.cgroup.clone(),
            };
            f.process_anon.get_or_create(&l).set(gauge(p.anon_bytes));
            f.process_anon_thp
                .get_or_create(&l)
                .set(gauge(p.anon_thp_bytes));
            f.process_pmd_mapped
                .get_or_create(&l)
                .set(gauge(p.pmd_mapped_bytes));
            f.process_populated
                .get_or_create(&l)
                .set(gauge(p.populated_bytes));
            f.process_collapsible
                .get_or_create(&l)
                .set(gauge(p.collapsible_bytes));
            f.process_coverage
                .get_or_create(&l)
                .set(ratio(p.anon_thp_bytes, p.anon_bytes));
            if let Some(sizes) = &p.folio_bytes {
                counts.folio.insert(p.pid, sizes.clone());
            }
            for (&order, &bytes) in counts.folio.get(&p.pid).into_iter().flatten() {
                let l = ProcessSizeLabels {
                    pid: l.pid.clone(),
                    comm: l.comm.clone(),
                    cgroup: l.cgroup.clone(),
                    size: size_name(order),
                };
                f.process_folio.get_or_create(&l).set(gauge(bytes));
            }
        }
        for c in cgroups {
            let l = CgroupLabels {
                cgroup: c.path.clone(),
            };
            let members = processes.iter().filter(|p| p.cgroup == c.path);
            f.cgroup_anon.get_or_create(&l).set(gauge(c.anon_bytes));
            f.cgroup_anon_thp
                .get_or_create(&l)
                .set(gauge(c.anon_thp_bytes));
            f.cgroup_populated
                .get_or_create(&l)
                .set(gauge(members.clone().map(|p| p.populated_bytes).sum()));
            f.cgroup_processes
                .get_or_create(&l)
                .set(gauge(members.count() as u64));
            f.cgroup_coverage
                .get_or_create(&l)
                .set(ratio(c.anon_thp_bytes, c.anon_bytes));
        }
    }

    /// One tracer record handled.
    pub fn count_event(&self) {
        self.0.families.events.inc();
        lock(&self.0.counts).events_since_tick += 1;
    }

    /// The tracer's state at a tick, `since` the previous one.
    pub fn set_tracer(&self, health: &TracerHealth, since: Duration) {
        let f = &self.0.families;
        let mut counts = lock(&self.0.counts);
        for &(reason, total) in &health.drops {
            let before = counts.drops.insert(reason, total).unwrap_or(0);
            f.drops
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc_by(total.saturating_sub(before));
        }
        let events = std::mem::take(&mut counts.events_since_tick);
        if !since.is_zero() {
            f.events_per_second.set(events as f64 / since.as_secs_f64());
        }
        f.map_entries
            .set(i64::try_from(health.region_entries).unwrap_or(i64::MAX));
        f.map_capacity
            .set(i64::try_from(health.region_capacity).unwrap_or(i64::MAX));
        f.map_fill
            .set(ratio(health.region_entries, health.region_capacity));
        f.processes
            .set(i64::try_from(health.processes).unwrap_or(i64::MAX));
    }

    /// One reported collapse outcome (`reason` empty when there is none); `collapsed_bytes`
    /// when it made memory huge.
    pub fn record_outcome(
        &self,
        result: &str,
        reason: Option<&str>,
        latency: Duration,
        collapsed_bytes: u64,
    ) {
        let f = &self.0.families;
        f.collapses
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
                reason: reason.unwrap_or_default().to_owned(),
            })
            .inc();
        f.collapsed_bytes.inc_by(collapsed_bytes);
        if !latency.is_zero() {
            f.latency.observe(latency.as_secs_f64());
        }
    }

    /// One new advice record of `order`.
    pub fn record_advice(&self, order: u8) {
        self.0
            .families
            .advice
            .get_or_create(&SizeLabels {
                size: size_name(order),
            })
            .inc();
    }

    /// One executor pass.
    pub fn record_pass(&self, pass: &PassSeries) {
        let f = &self.0.families;
        f.passes.inc();
        f.psi_paused.set(i64::from(pass.paused_for.is_some()));
        if let Some(d) = pass.paused_for {
            f.psi_paused_seconds.inc_by(d.as_secs_f64());
        }
        if let Some(avg) = pass.psi_avg10 {
            f.psi_some_avg10.set(avg);
        }
        f.interval.set(pass.interval.as_secs_f64());
        f.rate_limit.set(
            pass.rate_limit
                .map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX)),
        );
        f.rate_deferred
            .set(i64::try_from(pass.rate_deferred_pmds).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text of every family now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }

    fn mark_scraped(&self) {
        self.0.scraped.store(true, Ordering::Relaxed);
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, cgroup: &str) -> ProcessSeries {
        ProcessSeries {
            pid,
            comm: "w".into(),
            cgroup: cgroup.into(),
            anon_bytes: 8 << 20,
            anon_thp_bytes: 2 << 20,
            pmd_mapped_bytes: 2 << 20,
            folio_bytes: Some(BTreeMap::from([(4, 65536)])),
            populated_bytes: 6 << 20,
            collapsible_bytes: 4 << 20,
        }
    }

    #[test]
    fn a_process_that_ends_leaves_every_family() {
        let m = Metrics::new(true);
        let cg = CgroupSeries {
            path: "/pod".into(),
            anon_bytes: 16 << 20,
            anon_thp_bytes: 4 << 20,
        };
        m.set_processes(
            &[process(41, "/pod"), process(42, "/pod")],
            std::slice::from_ref(&cg),
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"collapse_process_anon_thp_bytes{pid="42",comm="w",cgroup="/pod"} 2097152"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"collapse_process_pte_mapped_folio_bytes{pid="41",comm="w",cgroup="/pod",size="64K"} 65536"#),
            "{text}"
        );
        assert!(
            text.contains(r#"collapse_cgroup_processes{cgroup="/pod"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"collapse_cgroup_thp_coverage_ratio{cgroup="/pod"} 0.25"#),
            "{text}"
        );
        // 42 ended; 41's folio sizes were not read again this time and stay as last read.
        let mut p = process(41, "/pod");
        p.folio_bytes = None;
        m.set_processes(&[p], &[cg]);
        let text = m.encode();
        assert!(!text.contains(r#"pid="42""#), "{text}");
        assert!(
            text.contains(r#"cgroup="/pod",size="64K"} 65536"#),
            "{text}"
        );
        assert!(
            text.contains(r#"collapse_cgroup_processes{cgroup="/pod"} 1"#),
            "{text}"
        );
        m.set_processes(&[], &[]);
        let text = m.encode();
        assert!(!text.contains("pid="), "{text}");
        assert!(!text.contains("cgroup=\"/pod\""), "{text}");
    }

    #[test]
    fn counters_rise_and_drops_count_from_totals() {
        let m = Metrics::new(true);
        m.record_outcome("collapsed", None, Duration::from_millis(2), 2 << 20);
        m.record_outcome("failed", Some("EAGAIN"), Duration::from_millis(1), 0);
        m.record_advice(4);
        let health = |n| TracerHealth {
            drops: vec![("ring_buf_full", n)],
            region_entries: 64,
            region_capacity: 256,
            processes: 1,
        };
        m.set_tracer(&health(3), Duration::from_secs(1));
        m.set_tracer(&health(5), Duration::from_secs(1));
        let text = m.encode();
        for line in [
            r#"collapse_collapses_total{result="collapsed",reason=""} 1"#,
            r#"collapse_collapses_total{result="failed",reason="EAGAIN"} 1"#,
            "collapse_collapsed_bytes_total 2097152",
            r#"collapse_advice_total{size="64K"} 1"#,
            r#"collapse_tracer_drops_total{reason="ring_buf_full"} 5"#,
            "collapse_tracer_region_map_fill_ratio 0.25",
            "collapse_collapse_latency_seconds_count 2",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("# HELP collapse_collapses "), "{text}");
        assert!(text.contains("# TYPE collapse_collapse_latency_seconds histogram"));
    }

    #[test]
    fn trace_has_no_executor_families() {
        let text = Metrics::new(false).encode();
        assert!(
            text.contains("collapse_tracer_region_map_capacity"),
            "{text}"
        );
        assert!(!text.contains("collapse_collapses"), "{text}");
    }
}
