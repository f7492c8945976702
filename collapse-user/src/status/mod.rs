//! `collapse status`: what this kernel offers and what will work here.
//!
//! A report: it exits 0 even when features are missing, and fails only if it cannot read
//! /proc or /sys at all.

mod probe;
mod report;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub use self::probe::ProbeError;
use crate::kernel::{
    btf::{self, BtfError},
    features::{Feature, MINIMUM_KERNEL},
    thp::{ThpError, ThpSettings},
    tracefs::{self, TracefsError},
};

/// Tracepoints `collapse trace` needs to keep bitmaps exact: faults populate, syscalls and
/// exits depopulate, task events follow processes.
const TRACE_TRACEPOINTS: [(&str, &str); 13] = [
    ("exceptions", "page_fault_user"),
    ("exceptions", "page_fault_kernel"),
    ("syscalls", "sys_enter_munmap"),
    ("syscalls", "sys_enter_madvise"),
    ("syscalls", "sys_exit_madvise"),
    ("syscalls", "sys_enter_mremap"),
    ("syscalls", "sys_exit_mremap"),
    ("syscalls", "sys_enter_mmap"),
    ("syscalls", "sys_exit_mmap"),
    ("task", "task_newtask"),
    ("sched", "sched_process_exit"),
    ("sched", "sched_process_exec"),
    ("kmem", "mm_page_alloc"),
];

/// Tracepoints of khugepaged's work (include/trace/events/huge_memory.h).
const KHUGEPAGED_TRACEPOINTS: [(&str, &str); 4] = [
    ("huge_memory", "mm_khugepaged_scan_pmd"),
    ("huge_memory", "mm_collapse_huge_page"),
    ("huge_memory", "mm_collapse_huge_page_isolate"),
    ("huge_memory", "mm_collapse_huge_page_swapin"),
];

/// /proc/vmstat counters worth showing (mm/vmstat.c, Documentation/admin-guide/mm/transhuge.rst).
const VMSTAT_OF_INTEREST: [&str; 12] = [
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "thp_scan_exceed_none_pte",
    "thp_scan_exceed_swap_pte",
    "thp_scan_exceed_share_pte",
    "thp_split_page",
    "thp_split_pmd",
    "thp_deferred_split_page",
    "thp_zero_page_alloc",
    "thp_swpout",
];

/// `status` could not look at the machine at all.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot read /proc or /sys: collapse needs procfs and sysfs mounted")]
    NoProcOrSys,
}

/// `collapse status`: the report (or, with `json`, one JSON object) on stdout.
pub fn run(json: bool) -> Result<(), StatusError> {
    if !Path::new("/proc/self/stat").exists() || !Path::new("/sys/kernel").is_dir() {
        return Err(StatusError::NoProcOrSys);
    }
    let status = Status::gather();
    if json {
        println!("{}", report::json(&status));
    } else {
        print!("{}", report::render(&status));
    }
    Ok(())
}

/// Whether a tracepoint is there; unknown when tracefs cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Yes,
    No,
    Unknown,
}

/// Everything `status` found out; each probe's failure is kept as its error.
struct Status {
    release: String,
    version: Option<(u32, u32)>,
    root: bool,
    btf_available: bool,
    task_mm: Result<u32, BtfError>,
    /// The tracefs root, and whether this run mounted it.
    tracefs: Result<(PathBuf, bool), TracefsError>,
    tracepoints: Vec<((&'static str, &'static str), Found)>,
    /// `mm_collapse_huge_page` has an `order` field (khugepaged collapses to mTHP, 7.2+).
    khugepaged_mthp: bool,
    kprobe_events: Option<bool>,
    madv_collapse_probe: Result<(), ProbeError>,
    /// Whether PAGEMAP_SCAN is there, once pagemap could be read.
    pagemap: Result<bool, ProbeError>,
    thp: Result<ThpSettings, ThpError>,
    vmstat: BTreeMap<String, i64>,
    /// Each probed feature: present, or why its fallback would run here.
    features: Vec<(Feature, Result<(), String>)>,
}

impl Status {
    fn gather() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let version = parse_version(&release);
        let root = nix::unistd::geteuid().is_root();
        let tracefs = tracefs::ensure_mounted_reporting();
        let tracefs_root = tracefs.as_ref().ok().map(|(p, _)| p.clone());
        // Without root the events directory is usually unreadable (mode 0700).
        let readable = tracefs_root
            .as_ref()
            .is_some_and(|r| std::fs::read_dir(r.join("events")).is_ok());
        let tracepoints = TRACE_TRACEPOINTS
            .iter()
            .chain(KHUGEPAGED_TRACEPOINTS.iter())
            .map(|&(c, n)| {
                let found = match &tracefs_root {
                    Some(r) if readable => {
                        if tracefs::exists_in(r, c, n) {
                            Found::Yes
                        } else {
                            Found::No
                        }
                    }
                    _ => Found::Unknown,
                };
                ((c, n), found)
            })
            .collect();
        let khugepaged_mthp = tracefs_root
            .as_ref()
            .is_some_and(|r| tracefs::khugepaged_collapses_mthp(r));
        let kprobe_events = tracefs_root
            .as_ref()
            .filter(|_| readable)
            .map(|r| r.join("kprobe_events").exists());
        let features = Feature::ALL
            .iter()
            .map(|&f| {
                (
                    f,
                    probe::feature(f, tracefs_root.as_deref().filter(|_| readable)),
                )
            })
            .collect();
        let thp = ThpSettings::read();
        let madv_collapse_probe = if thp.is_ok() {
            probe::madv_collapse()
        } else {
            Err(ProbeError::NoThp)
        };
        Self {
            release,
            version,
            root,
            btf_available: btf::btf_available(),
            task_mm: btf::task_struct_mm_offset(),
            tracefs,
            tracepoints,
            khugepaged_mthp,
            kprobe_events,
            madv_collapse_probe,
            pagemap: probe::pagemap(),
            thp,
            features,
            vmstat: procfs::vmstat()
                .map(|m| {
                    m.into_iter()
                        .filter(|(k, _)| k.starts_with("thp_"))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn found(&self, tracepoints: &[(&str, &str)]) -> Vec<String> {
        self.tracepoints
            .iter()
            // Unknown ones are explained by tracefs being unreadable.
            .filter(|((c, n), f)| *f == Found::No && tracepoints.contains(&(*c, *n)))
            .map(|((c, n), _)| format!("{c}:{n}"))
            .collect()
    }

    /// Whether this kernel is at least [`MINIMUM_KERNEL`] (unknown versions count as not).
    fn kernel_supported(&self) -> bool {
        self.version.is_some_and(|v| v >= MINIMUM_KERNEL)
    }

    fn madv_collapse_kernel(&self) -> bool {
        self.version.is_some_and(|v| v >= (6, 1))
    }

    /// Each capability: ok, or the reasons it does not work.
    fn works(&self) -> Vec<(&'static str, Result<String, Vec<String>>)> {
        let mut out = Vec::new();
        let root = || (!self.root).then(|| "not running as root".to_owned());
        let tracefs = || {
            let unknown = self.tracepoints.iter().any(|(_, f)| *f == Found::Unknown);
            match &self.tracefs {
                Err(_) if tracefs::mount_point().is_some() => {
                    Some("tracefs not readable".to_owned())
                }
                Err(_) => Some("tracefs not mounted".to_owned()),
                Ok(_) if unknown => Some("tracefs not readable".to_owned()),
                Ok(_) => None,
            }
        };
        let btf = || {
            self.task_mm
                .as_ref()
                .err()
                .map(|_| "no BTF offset of task_struct.mm".to_owned())
        };
        let missing = |tps: &[(&str, &str)]| {
            let m = self.found(tps);
            (!m.is_empty()).then(|| format!("missing tracepoints: {}", m.join(", ")))
        };
        let verdict = |reasons: Vec<Option<String>>, ok: String| {
            let reasons: Vec<String> = reasons.into_iter().flatten().collect();
            if reasons.is_empty() {
                Ok(ok)
            } else {
                Err(reasons)
            }
        };
        let trace_tps: Vec<_> = TRACE_TRACEPOINTS
            .iter()
            .copied()
            .filter(|(c, _)| *c != "kmem")
            .collect();
        out.push((
            "trace",
            verdict(
                vec![root(), tracefs(), missing(&trace_tps), btf()],
                "faults, unmaps and exits are traced into per-region bitmaps".to_owned(),
            ),
        ));
        out.push((
            "large-folio detection",
            verdict(
                vec![root(), tracefs(), missing(&[("kmem", "mm_page_alloc")])],
                "kmem:mm_page_alloc tells which faults mapped a large folio".to_owned(),
            ),
        ));
        out.push((
            "khugepaged attribution",
            verdict(
                vec![root(), tracefs(), missing(&KHUGEPAGED_TRACEPOINTS), btf()],
                "scan and collapse events are attributed to processes by their mm".to_owned(),
            ),
        ));
        out.push((
            "mTHP collapse",
            Err(vec![if self.khugepaged_mthp {
                "khugepaged collapses to mTHP sizes on this kernel, but MADV_COLLAPSE is PMD-only: \
                 smaller decisions are reported, not carried out"
                    .to_owned()
            } else {
                "no released kernel lets userspace collapse below PMD size: smaller decisions are \
                 reported, not carried out"
                    .to_owned()
            }]),
        ));
        let kernel = (!self.madv_collapse_kernel())
            .then(|| format!("kernel {} is older than 6.1", self.release));
        let probe = match (&self.madv_collapse_probe, self.madv_collapse_kernel()) {
            (Err(e), true) => Some(format!("MADV_COLLAPSE probe failed: {e}")),
            _ => None,
        };
        let pagemap = self.pagemap.as_ref().err().map(|e| format!("pagemap: {e}"));
        out.push((
            "MADV_COLLAPSE executor",
            verdict(
                vec![root(), kernel, probe, pagemap],
                "process_madvise(MADV_COLLAPSE) on traced processes, re-checked against pagemap"
                    .to_owned(),
            ),
        ));
        out
    }
}

/// `6.18.44-fc-v657` → (6, 18).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_sizes() {
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("7.2.0-rc1"), Some((7, 2)));
        assert_eq!(parse_version("junk"), None);
    }

    #[test]
    fn report_renders_and_serialises() {
        let status = Status::gather();
        let text = report::render(&status);
        for heading in ["Kernel", "Tracepoints", "What works here"] {
            assert!(text.contains(heading), "{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&report::json(&status)).unwrap();
        assert!(json["kernel"]["release"].is_string());
        assert_eq!(json["works"].as_object().unwrap().len(), 5);
        assert_eq!(json["works"]["mTHP collapse"]["ok"], false);
        assert_eq!(json["kernel"]["minimum"], serde_json::json!([6, 1]));
        assert_eq!(
            json["features"].as_object().unwrap().len(),
            Feature::ALL.len()
        );
        assert!(text.contains("minimum kernel"), "{text}");
        assert_eq!(
            json["tracepoints"].as_object().unwrap().len(),
            TRACE_TRACEPOINTS.len() + KHUGEPAGED_TRACEPOINTS.len()
        );
        // One line.
        assert!(!json.to_string().contains('\n'));
    }
}
