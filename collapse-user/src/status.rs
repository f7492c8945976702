//! `collapse status`: what this kernel offers and what will work here.
//!
//! A report: it exits 0 even when features are missing, and fails only if it cannot read
//! /proc or /sys at all.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::bail;
use serde_json::{Value, json};

use crate::{
    render::{size_name_kib, yes_no},
    kernel::{
    btf,
    pagemap::PagemapReader,
    thp::{SizeEnabled, ThpSettings},
    tracefs,
    tracefs::TracepointFormat,
}};

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

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    if !Path::new("/proc/self/stat").exists() || !Path::new("/sys/kernel").is_dir() {
        bail!("cannot read /proc or /sys: collapse needs procfs and sysfs mounted");
    }
    let status = Status::gather();
    if json {
        println!("{}", status.to_json());
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a tracepoint is there; unknown when tracefs cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Yes,
    No,
    Unknown,
}

/// Everything `status` found out; each probe's failure is kept as its message.
struct Status {
    release: String,
    version: Option<(u32, u32)>,
    root: bool,
    btf_available: bool,
    task_mm: Result<u32, String>,
    /// The tracefs root, and whether this run mounted it.
    tracefs: Result<(PathBuf, bool), String>,
    tracepoints: Vec<((&'static str, &'static str), Found)>,
    /// `mm_collapse_huge_page` has an `order` field (khugepaged collapses to mTHP, 7.2+).
    khugepaged_mthp: bool,
    kprobe_events: Option<bool>,
    madv_collapse_probe: Result<(), String>,
    /// Whether PAGEMAP_SCAN is there, once pagemap could be read.
    pagemap: Result<bool, String>,
    thp: Result<ThpSettings, String>,
    vmstat: BTreeMap<String, i64>,
}

impl Status {
    fn gather() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let version = parse_version(&release);
        let root = nix::unistd::geteuid().is_root();
        let tracefs = tracefs::ensure_mounted_reporting().map_err(|e| e.to_string());
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
        let khugepaged_mthp = tracefs_root.as_ref().is_some_and(|r| {
            TracepointFormat::read(r, "huge_memory", "mm_collapse_huge_page")
                .is_ok_and(|f| f.field("order").is_ok())
        });
        let kprobe_events = tracefs_root
            .as_ref()
            .filter(|_| readable)
            .map(|r| r.join("kprobe_events").exists());
        let thp = ThpSettings::read().map_err(|e| e.to_string());
        let madv_collapse_probe = if thp.is_ok() {
            probe_madv_collapse()
        } else {
            Err("no THP support in this kernel".to_owned())
        };
        Self {
            release,
            version,
            root,
            btf_available: btf::btf_available(),
            task_mm: btf::task_struct_mm_offset().map_err(|e| e.to_string()),
            tracefs,
            tracepoints,
            khugepaged_mthp,
            kprobe_events,
            madv_collapse_probe,
            pagemap: probe_pagemap(),
            thp,
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

    fn render(&self) -> String {
        let mut s = String::new();
        let mut section = |title: &str, rows: Vec<(String, String)>| {
            let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            let _ = writeln!(s, "{title}");
            for (k, v) in rows {
                let _ = writeln!(s, "  {k:width$}  {v}");
            }
            s.push('\n');
        };
        let yes_no = |b: bool| yes_no(b).to_owned();

        let mut rows = vec![
            (
                "release".to_owned(),
                format!("{} ({})", self.release, std::env::consts::ARCH),
            ),
            ("running as root".to_owned(), yes_no(self.root)),
            (
                "BTF".to_owned(),
                match &self.task_mm {
                    Ok(off) => format!("{} (task_struct.mm at offset {off})", btf::VMLINUX_BTF),
                    Err(e) if self.btf_available => format!("present, but {e}"),
                    Err(_) => format!(
                        "no {} (kernel without CONFIG_DEBUG_INFO_BTF)",
                        btf::VMLINUX_BTF
                    ),
                },
            ),
            (
                "tracefs".to_owned(),
                match &self.tracefs {
                    Ok((p, true)) => format!("{} (was not mounted: mounted it now)", p.display()),
                    Ok((p, false)) => p.display().to_string(),
                    Err(e) => e.clone(),
                },
            ),
            (
                "kprobes".to_owned(),
                match self.kprobe_events {
                    Some(true) => "kprobe_events present".to_owned(),
                    Some(false) => {
                        "no kprobe_events (CONFIG_KPROBES off; collapse does not need it)"
                            .to_owned()
                    }
                    None => "unknown (tracefs not readable)".to_owned(),
                },
            ),
            (
                "MADV_COLLAPSE".to_owned(),
                match (&self.madv_collapse_probe, self.madv_collapse_kernel()) {
                    (Ok(()), _) => "yes (probe collapsed 2 MiB of our own memory)".to_owned(),
                    (Err(e), true) => format!("kernel has it (>= 6.1), but the probe failed: {e}"),
                    (Err(e), false) => format!("no (kernel older than 6.1: {e})"),
                },
            ),
            (
                "pagemap".to_owned(),
                match &self.pagemap {
                    Ok(scan) => format!(
                        "readable with PFNs and kpageflags; PAGEMAP_SCAN {}",
                        if *scan {
                            "yes"
                        } else {
                            "no (before 6.7: slower reads)"
                        }
                    ),
                    Err(e) => e.clone(),
                },
            ),
        ];
        section("Kernel", std::mem::take(&mut rows));

        match &self.thp {
            Ok(t) => {
                let mut rows = vec![
                    ("enabled".to_owned(), t.enabled.to_string()),
                    ("defrag".to_owned(), t.defrag.clone()),
                ];
                for size in &t.sizes {
                    let setting = match size.enabled {
                        SizeEnabled::Inherit => format!("inherit ({})", t.enabled),
                        other => other.to_string(),
                    };
                    rows.push((
                        format!("{} (order {})", size_name_kib(size.size_kib), size.order),
                        setting,
                    ));
                }
                section("Transparent huge pages", rows);
                let k = &t.khugepaged;
                section(
                    "khugepaged",
                    vec![
                        ("pages_to_scan".to_owned(), k.pages_to_scan.to_string()),
                        (
                            "scan_sleep_millisecs".to_owned(),
                            k.scan_sleep_millisecs.to_string(),
                        ),
                        (
                            "alloc_sleep_millisecs".to_owned(),
                            k.alloc_sleep_millisecs.to_string(),
                        ),
                        ("max_ptes_none".to_owned(), k.max_ptes_none.to_string()),
                        ("max_ptes_swap".to_owned(), k.max_ptes_swap.to_string()),
                        ("max_ptes_shared".to_owned(), k.max_ptes_shared.to_string()),
                        ("defrag".to_owned(), yes_no(k.defrag)),
                        ("pages_collapsed".to_owned(), k.pages_collapsed.to_string()),
                        ("full_scans".to_owned(), k.full_scans.to_string()),
                    ],
                );
            }
            Err(e) => section(
                "Transparent huge pages",
                vec![("error".to_owned(), e.clone())],
            ),
        }

        let counters: Vec<(String, String)> = VMSTAT_OF_INTEREST
            .iter()
            .filter_map(|&name| {
                self.vmstat
                    .get(name)
                    .map(|v| (name.to_owned(), v.to_string()))
            })
            .collect();
        if !counters.is_empty() {
            section("Counters (/proc/vmstat)", counters);
        }

        section(
            "Tracepoints",
            self.tracepoints
                .iter()
                .map(|((c, n), f)| {
                    let state = match f {
                        Found::Yes => "ok",
                        Found::No => "MISSING",
                        Found::Unknown => "unknown (tracefs not readable)",
                    };
                    (format!("{c}:{n}"), state.to_owned())
                })
                .collect(),
        );

        section(
            "What works here",
            self.works()
                .into_iter()
                .map(|(name, verdict)| {
                    let text = match verdict {
                        Ok(why) => format!("ok   {why}"),
                        Err(why) => format!("NOT  {}", why.join("; ")),
                    };
                    (name.to_owned(), text)
                })
                .collect(),
        );
        s
    }

    fn to_json(&self) -> Value {
        let err = |r: Result<(), &String>| r.err().cloned();
        json!({
            "kernel": {
                "release": self.release,
                "version": self.version.map(|(a, b)| json!([a, b])),
                "arch": std::env::consts::ARCH,
            },
            "root": self.root,
            "btf": {
                "available": self.btf_available,
                "task_struct_mm_offset": self.task_mm.as_ref().ok(),
                "error": err(self.task_mm.as_ref().map(|_| ())),
            },
            "tracefs": {
                "path": self.tracefs.as_ref().ok().map(|(p, _)| p.display().to_string()),
                "mounted_now": self.tracefs.as_ref().is_ok_and(|(_, m)| *m),
                "error": err(self.tracefs.as_ref().map(|_| ())),
            },
            "kprobe_events": self.kprobe_events,
            "madv_collapse": {
                "kernel_supports": self.madv_collapse_kernel(),
                "probe_ok": self.madv_collapse_probe.is_ok(),
                "probe_error": err(self.madv_collapse_probe.as_ref().copied()),
            },
            "pagemap": {
                "readable": self.pagemap.is_ok(),
                "pagemap_scan": self.pagemap.as_ref().ok(),
                "error": err(self.pagemap.as_ref().map(|_| ())),
            },
            "thp": match &self.thp {
                Ok(t) => json!({
                    "enabled": t.enabled.name(),
                    "defrag": t.defrag,
                    "sizes": t.sizes.iter().map(|s| json!({
                        "size_kib": s.size_kib,
                        "order": s.order,
                        "enabled": s.enabled.name(),
                        "on": s.is_on(t.enabled),
                    })).collect::<Vec<_>>(),
                    "khugepaged": {
                        "pages_to_scan": t.khugepaged.pages_to_scan,
                        "scan_sleep_millisecs": t.khugepaged.scan_sleep_millisecs,
                        "alloc_sleep_millisecs": t.khugepaged.alloc_sleep_millisecs,
                        "max_ptes_none": t.khugepaged.max_ptes_none,
                        "max_ptes_swap": t.khugepaged.max_ptes_swap,
                        "max_ptes_shared": t.khugepaged.max_ptes_shared,
                        "defrag": t.khugepaged.defrag,
                        "pages_collapsed": t.khugepaged.pages_collapsed,
                        "full_scans": t.khugepaged.full_scans,
                    },
                }),
                Err(e) => json!({ "error": e }),
            },
            "vmstat": self.vmstat,
            "tracepoints": self.tracepoints.iter().map(|((c, n), f)| {
                let v = match f { Found::Yes => json!(true), Found::No => json!(false), Found::Unknown => Value::Null };
                (format!("{c}:{n}"), v)
            }).collect::<serde_json::Map<_, _>>(),
            "works": self.works().into_iter().map(|(name, verdict)| {
                let v = match verdict {
                    Ok(why) => json!({ "ok": true, "why": [why] }),
                    Err(why) => json!({ "ok": false, "why": why }),
                };
                (name.to_owned(), v)
            }).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// `6.18.44-fc-v657` → (6, 18).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether pagemap of our own process reads with PFNs and kpageflags; Ok(PAGEMAP_SCAN works).
fn probe_pagemap() -> Result<bool, String> {
    let me = std::process::id() as i32;
    let mut reader = PagemapReader::open(me).map_err(|e| e.to_string())?;
    let regions = reader.read_regions().map_err(|e| e.to_string())?;
    if regions.is_empty() {
        return Err("no anonymous memory found in our own process".to_owned());
    }
    Ok(reader.uses_pagemap_scan())
}

/// Collapses 2 MiB of our own memory with MADV_COLLAPSE (include/uapi/asm-generic/mman-common.h,
/// mm/khugepaged.c madvise_collapse): the real test of whether the executor can work.
fn probe_madv_collapse() -> Result<(), String> {
    use collapse_common::consts::{MADV_COLLAPSE, PTES_PER_PMD};
    let area = crate::workload::Area::map(collapse_common::consts::PMD_SIZE, None)
        .map_err(|e| format!("{e:#}"))?;
    area.touch(0, 1).map_err(|e| format!("{e:#}"))?;
    // SAFETY: one 2 MiB-aligned PMD of our own mapping, unmapped when `area` drops.
    let rc = unsafe {
        libc::madvise(
            area.addr() as *mut libc::c_void,
            PTES_PER_PMD * collapse_common::consts::PAGE_SIZE as usize,
            MADV_COLLAPSE as i32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EINVAL) => {
            format!("{e} (MADV_COLLAPSE unknown, or THP disabled for this process)")
        }
        Some(libc::EAGAIN | libc::ENOMEM | libc::EBUSY) => {
            format!("{e} (no huge page available right now)")
        }
        _ => e.to_string(),
    })
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
        let text = status.render();
        for heading in ["Kernel", "Tracepoints", "What works here"] {
            assert!(text.contains(heading), "{text}");
        }
        let json = status.to_json();
        assert!(json["kernel"]["release"].is_string());
        assert_eq!(json["works"].as_object().unwrap().len(), 5);
        assert_eq!(json["works"]["mTHP collapse"]["ok"], false);
        assert_eq!(
            json["tracepoints"].as_object().unwrap().len(),
            TRACE_TRACEPOINTS.len() + KHUGEPAGED_TRACEPOINTS.len()
        );
        // One line.
        assert!(!json.to_string().contains('\n'));
    }
}
