//! What `collapse trace` shows: per-process statistics computed from the maps each interval,
//! rendered for people (aligned table) or programs (one JSON object per line).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use collapse_common::{
    maps::{DropReason, KhugepagedEvent},
    policy::{self, OrderSet, Policy, Settings},
};

use super::session::{Observed, SCAN_SUCCEED, Session};
use crate::{
    kernel::{
        procs::{self, MemoryCoverage},
        thp::ThpSettings,
    },
    render::{count, mib},
};

/// Occupancy buckets: eighths of a region, then completely full.
pub const BUCKETS: usize = 9;
const BUCKET_NAMES: [&str; BUCKETS] = [
    "<1/8", "<2/8", "<3/8", "<4/8", "<5/8", "<6/8", "<7/8", "<8/8", "full",
];

#[derive(Clone, Debug, Default)]
pub struct ProcessStats {
    pub tgid: u32,
    pub comm: String,
    pub regions: u32,
    pub populated_pages: u64,
    pub histogram: [u32; BUCKETS],
    /// Regions a PMD maps (THPs).
    pub pmd_mapped: u32,
    /// Regions not yet PMD-mapped that the `pmd` rule would collapse with the kernel's
    /// max_ptes_* settings.
    pub pmd_collapsible: u32,
    /// Anonymous RSS and how much of it THPs map.
    pub memory: MemoryCoverage,
    /// khugepaged events per tracepoint, by status name.
    pub khugepaged: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl ProcessStats {
    pub(crate) fn collapses(&self) -> (u64, u64) {
        let Some(c) = self.khugepaged.get(KhugepagedEvent::Collapse.name()) else {
            return (0, 0);
        };
        let ok = c.get("succeeded").copied().unwrap_or(0);
        (ok, c.values().sum::<u64>() - ok)
    }
}

/// One sample of everything the view shows.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub elapsed_s: f64,
    pub processes: Vec<ProcessStats>,
    pub drops: Vec<(DropReason, u64)>,
    pub max_ptes_none: u16,
}

fn bucket(count: u32) -> usize {
    if count >= 512 {
        8
    } else {
        (count / 64) as usize
    }
}

/// The `pmd` rule as the running kernel applies it (its max_ptes_* settings).
fn kernel_pmd_settings(thp: Option<&ThpSettings>) -> Settings {
    let Some(t) = thp else {
        return Settings::default();
    };
    let k = &t.khugepaged;
    let orders = OrderSet::from_orders([9]).unwrap_or_default();
    Settings::new(
        k.max_ptes_none,
        k.max_ptes_swap,
        k.max_ptes_shared,
        orders,
        3,
    )
    .unwrap_or_default()
}

pub fn sample(session: &Session) -> Result<Sample, super::error::TracerError> {
    let thp = ThpSettings::read().ok();
    let settings = kernel_pmd_settings(thp.as_ref());
    let regions = session.current();
    let mut counts: HashMap<u32, BTreeMap<&'static str, BTreeMap<String, u64>>> = HashMap::new();
    for (key, n) in session.bpf().khugepaged_counts()? {
        // Counts of an earlier process with the pid are not this one's.
        if !session.is_live(key.tgid, key.generation) {
            continue;
        }
        let Some(which) = KhugepagedEvent::from_u16(key.event) else {
            continue;
        };
        let status = session
            .bpf()
            .status_names()
            .describe(which, key.status.into());
        *counts
            .entry(key.tgid)
            .or_default()
            .entry(which.name())
            .or_default()
            .entry(status)
            .or_default() += n;
    }
    let mut processes = Vec::new();
    for p in session.processes() {
        let mut s = ProcessStats {
            tgid: p.tgid,
            comm: p.comm.clone(),
            ..ProcessStats::default()
        };
        for r in regions.get(&p.tgid).map(Vec::as_slice).unwrap_or_default() {
            let n = r.state.present.count();
            s.regions += 1;
            s.populated_pages += u64::from(n);
            s.histogram[bucket(n)] += 1;
            if r.pmd_mapped {
                s.pmd_mapped += 1;
            } else if !policy::plan(Policy::Pmd, &r.state, &settings).is_empty() {
                s.pmd_collapsible += 1;
            }
        }
        if let Ok(m) = procs::memory_coverage(p.tgid as i32) {
            s.memory = m;
        }
        s.khugepaged = counts.remove(&p.tgid).unwrap_or_default();
        processes.push(s);
    }
    Ok(Sample {
        elapsed_s: session.elapsed().as_secs_f64(),
        processes,
        drops: session.bpf().drops()?,
        max_ptes_none: settings.max_ptes_none(),
    })
}

/// The human view of one sample.
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    let losses: u64 = s
        .drops
        .iter()
        .filter(|(r, _)| r.is_loss())
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        out,
        "collapse trace  {:>7.1}s  {}  pmd rule: max_ptes_none {}  drops: {}",
        s.elapsed_s,
        count(s.processes.len() as u64, "process"),
        s.max_ptes_none,
        if losses == 0 {
            "none".to_string()
        } else {
            losses.to_string()
        }
    );
    let _ = write!(
        out,
        "{:>8} {:<16} {:>7} {:>9} {:>5} {:>7} {:>6}  ",
        "PID", "COMM", "REGIONS", "POP MiB", "THP", "PMD-OK", "THP%"
    );
    for b in BUCKET_NAMES {
        let _ = write!(out, "{b:>5}");
    }
    out.push('\n');
    for p in &s.processes {
        let _ = write!(
            out,
            "{:>8} {:<16} {:>7} {:>9.1} {:>5} {:>7} {:>5.1}%  ",
            p.tgid,
            p.comm,
            p.regions,
            mib(p.populated_pages),
            p.pmd_mapped,
            p.pmd_collapsible,
            p.memory.coverage() * 100.0
        );
        for n in p.histogram {
            let _ = write!(out, "{n:>5}");
        }
        out.push('\n');
        if !p.khugepaged.is_empty() {
            let (ok, failed) = p.collapses();
            let scans = p
                .khugepaged
                .get(KhugepagedEvent::ScanPmd.name())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "none".into());
            let _ = writeln!(
                out,
                "{:>8} khugepaged: scans: {scans}; collapses ok {ok}, failed {failed}",
                ""
            );
            if let Some(c) = p.khugepaged.get(KhugepagedEvent::Collapse.name()) {
                let failures: Vec<String> = c
                    .iter()
                    .filter(|(k, _)| k.as_str() != "succeeded")
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                if !failures.is_empty() {
                    let _ = writeln!(out, "{:>8} collapse failures: {}", "", failures.join(", "));
                }
            }
        }
    }
    if losses > 0 {
        let detail: Vec<String> = s
            .drops
            .iter()
            .filter(|(r, n)| *n > 0 && r.is_loss())
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        let _ = writeln!(
            out,
            "drops: {} (raise --max-regions / --ringbuf-kib)",
            detail.join(", ")
        );
    }
    out
}

/// One `--events` line for people.
pub fn render_observed(o: &Observed, elapsed_s: f64) -> String {
    match o {
        Observed::LargeFolio { tgid, addr, order } => {
            format!(
                "{elapsed_s:>9.3} {tgid:>8} large folio  {addr:#x} order {order} ({} KiB)",
                4u64 << order
            )
        }
        Observed::Khugepaged {
            tgid,
            which,
            status,
            event,
        } => {
            let detail = match which {
                KhugepagedEvent::ScanPmd => {
                    format!(
                        "referenced {} none_or_zero {} unmapped {}",
                        event.a, event.b, event.c
                    )
                }
                KhugepagedEvent::Collapse => format!("isolated {}", event.a),
                KhugepagedEvent::Isolate => {
                    format!("none_or_zero {} referenced {}", event.a, event.b)
                }
                KhugepagedEvent::Swapin => format!("swapped_in {} referenced {}", event.a, event.b),
            };
            let ok = if event.status == SCAN_SUCCEED
                || (*which == KhugepagedEvent::Swapin && event.status == 0)
            {
                "ok"
            } else {
                "--"
            };
            format!(
                "{elapsed_s:>9.3} {tgid:>8} khugepaged {:<9} {ok} {status:<22} {detail}",
                which.name()
            )
        }
        Observed::Started { tgid, comm, how } => {
            format!("{elapsed_s:>9.3} {tgid:>8} traced ({how}) {comm}")
        }
        Observed::Ended { tgid, comm, how } => {
            format!("{elapsed_s:>9.3} {tgid:>8} ended ({how}) {comm}")
        }
        Observed::HugepageAdvice { tgid, addr, len } => {
            format!(
                "{elapsed_s:>9.3} {tgid:>8} MADV_HUGEPAGE {addr:#x} ({} KiB)",
                len / 1024
            )
        }
        Observed::LargeFolioHook { how, why } => {
            format!(
                "{elapsed_s:>9.3} {:>8} large-folio hook on kmem:mm_page_alloc ({how}): {why}",
                ""
            )
        }
    }
}
