//! The `trace --json` stream (DESIGN.md): one tagged object per line, `attached` first, then
//! `sample` and `event` lines, `end` last. The keys are a contract: other tools read them.

use std::collections::BTreeMap;

use collapse_common::maps::KhugepagedEvent;
use serde::Serialize;

use super::{
    session::{Observed, Session},
    view::{BUCKETS, Sample},
};
use crate::render::bytes;

/// One line of the trace stream.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TraceLine<'a> {
    Attached {
        pids: Vec<u32>,
        pid_max: u32,
        missing: &'a [String],
        fast_path: &'a [&'static str],
        slow_path: &'a [String],
        large_folio_hook: Option<&'static str>,
        /// Kernel features this machine lacks (or that were forced off) and what runs instead.
        fallbacks: Vec<FallbackLine>,
    },
    Sample(SampleLine<'a>),
    Event(EventLine<'a>),
    /// Last: why the trace stopped, and how long it ran (from the start of tracing, so a
    /// `--duration` trace says at least its duration).
    End {
        reason: &'static str,
        elapsed_s: f64,
    },
}

#[derive(Debug, Serialize)]
pub struct FallbackLine {
    pub feature: &'static str,
    pub why: String,
    pub instead: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SampleLine<'a> {
    pub elapsed_s: f64,
    pub max_ptes_none: u16,
    pub processes: Vec<ProcessLine<'a>>,
    pub drops: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct ProcessLine<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub regions: u32,
    pub populated_bytes: u64,
    pub histogram: [u32; BUCKETS],
    pub pmd_mapped: u32,
    pub pmd_collapsible: u32,
    pub anon_rss_bytes: u64,
    pub anon_huge_bytes: u64,
    pub coverage: f64,
    pub khugepaged: &'a BTreeMap<&'static str, BTreeMap<String, u64>>,
    pub collapses_ok: u64,
    pub collapses_failed: u64,
}

/// What the session saw, tagged by `event`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventLine<'a> {
    LargeFolioFault {
        elapsed_s: f64,
        pid: u32,
        addr: String,
        order: u16,
    },
    ScanPmd(KhugepagedLine<'a>),
    Collapse(KhugepagedLine<'a>),
    Isolate(KhugepagedLine<'a>),
    Swapin(KhugepagedLine<'a>),
    Traced {
        elapsed_s: f64,
        pid: u32,
        comm: &'a str,
        how: &'static str,
    },
    Ended {
        elapsed_s: f64,
        pid: u32,
        comm: &'a str,
        how: &'static str,
    },
    LargeFolioHook {
        elapsed_s: f64,
        how: &'static str,
        why: &'static str,
    },
    HugepageAdvice {
        elapsed_s: f64,
        pid: u32,
        addr: String,
        len: u64,
    },
}

/// A khugepaged tracepoint's record, attributed to a traced process.
#[derive(Debug, Serialize)]
pub struct KhugepagedLine<'a> {
    pub elapsed_s: f64,
    pub pid: u32,
    pub status: &'a str,
    pub status_code: i32,
    pub khugepaged_pid: u32,
    pub a: i32,
    pub b: i32,
    pub c: i32,
    /// Only the scan and isolate tracepoints report a pfn.
    pub pfn: Option<u64>,
}

impl<'a> TraceLine<'a> {
    pub fn attached(session: &'a Session) -> Self {
        let bpf = session.bpf();
        Self::Attached {
            pids: session.tgids().collect(),
            pid_max: bpf.pid_limit(),
            missing: bpf.missing(),
            fast_path: bpf.fast_path(),
            slow_path: bpf.slow_path(),
            large_folio_hook: bpf.large_folio_hook(),
            fallbacks: session
                .fallbacks()
                .into_iter()
                .map(|f| FallbackLine {
                    feature: f.feature.name(),
                    why: f.why,
                    instead: f.feature.fallback(),
                })
                .collect(),
        }
    }

    pub fn sample(s: &'a Sample) -> Self {
        let processes = s
            .processes
            .iter()
            .map(|p| {
                let (collapses_ok, collapses_failed) = p.collapses();
                ProcessLine {
                    pid: p.tgid,
                    comm: &p.comm,
                    regions: p.regions,
                    populated_bytes: bytes(p.populated_pages),
                    histogram: p.histogram,
                    pmd_mapped: p.pmd_mapped,
                    pmd_collapsible: p.pmd_collapsible,
                    anon_rss_bytes: p.memory.anon_rss_kb * 1024,
                    anon_huge_bytes: p.memory.anon_huge_kb * 1024,
                    coverage: p.memory.coverage(),
                    khugepaged: &p.khugepaged,
                    collapses_ok,
                    collapses_failed,
                }
            })
            .collect();
        Self::Sample(SampleLine {
            elapsed_s: s.elapsed_s,
            max_ptes_none: s.max_ptes_none,
            processes,
            drops: s.drops.iter().map(|(r, n)| (r.name(), *n)).collect(),
        })
    }

    pub fn observed(o: &'a Observed, elapsed_s: f64) -> Self {
        Self::Event(match o {
            Observed::LargeFolio { tgid, addr, order } => EventLine::LargeFolioFault {
                elapsed_s,
                pid: *tgid,
                addr: format!("{addr:#x}"),
                order: *order,
            },
            Observed::Khugepaged {
                tgid,
                which,
                status,
                event,
            } => {
                let line = KhugepagedLine {
                    elapsed_s,
                    pid: *tgid,
                    status,
                    status_code: event.status,
                    khugepaged_pid: event.pid,
                    a: event.a,
                    b: event.b,
                    c: event.c,
                    pfn: matches!(which, KhugepagedEvent::ScanPmd | KhugepagedEvent::Isolate)
                        .then_some(event.addr),
                };
                match which {
                    KhugepagedEvent::ScanPmd => EventLine::ScanPmd(line),
                    KhugepagedEvent::Collapse => EventLine::Collapse(line),
                    KhugepagedEvent::Isolate => EventLine::Isolate(line),
                    KhugepagedEvent::Swapin => EventLine::Swapin(line),
                }
            }
            Observed::Started { tgid, comm, how } => EventLine::Traced {
                elapsed_s,
                pid: *tgid,
                comm,
                how,
            },
            Observed::Ended { tgid, comm, how } => EventLine::Ended {
                elapsed_s,
                pid: *tgid,
                comm,
                how,
            },
            Observed::LargeFolioHook { how, why } => EventLine::LargeFolioHook {
                elapsed_s,
                how,
                why,
            },
            Observed::HugepageAdvice { tgid, addr, len } => EventLine::HugepageAdvice {
                elapsed_s,
                pid: *tgid,
                addr: format!("{addr:#x}"),
                len: *len,
            },
        })
    }

    /// The line as JSON text (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("trace lines serialise")
    }
}

#[cfg(test)]
mod tests {
    use collapse_common::event::Event;

    use super::*;

    #[test]
    fn lines_keep_their_keys() {
        let end = TraceLine::End {
            reason: "duration",
            elapsed_s: 20.5,
        }
        .to_json();
        assert_eq!(
            end,
            r#"{"type":"end","reason":"duration","elapsed_s":20.5}"#
        );
        let ev = Event {
            status: 1,
            pid: 77,
            a: 3,
            addr: 0x1234,
            ..Event::default()
        };
        let o = Observed::Khugepaged {
            tgid: 42,
            which: KhugepagedEvent::ScanPmd,
            status: "succeeded".into(),
            event: ev,
        };
        let v: serde_json::Value =
            serde_json::from_str(&TraceLine::observed(&o, 1.5).to_json()).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["event"], "scan_pmd");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["status"], "succeeded");
        assert_eq!(v["status_code"], 1);
        assert_eq!(v["khugepaged_pid"], 77);
        assert_eq!(v["pfn"], 0x1234);
        let o = Observed::Khugepaged {
            tgid: 42,
            which: KhugepagedEvent::Collapse,
            status: "succeeded".into(),
            event: ev,
        };
        let v: serde_json::Value =
            serde_json::from_str(&TraceLine::observed(&o, 1.5).to_json()).unwrap();
        assert_eq!(v["event"], "collapse");
        assert!(v["pfn"].is_null());
    }
}
