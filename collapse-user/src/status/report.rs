//! The report `status` prints: sections of aligned rows for people, one typed JSON object for
//! programs.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Found, Status, VMSTAT_OF_INTEREST};
use crate::{
    kernel::{btf, features::MINIMUM_KERNEL, thp::SizeEnabled},
    render::{size_name_kib, yes_no},
};

pub(super) fn render(status: &Status) -> String {
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

    let (min_major, min_minor) = MINIMUM_KERNEL;
    let mut rows = vec![
        (
            "release".to_owned(),
            format!("{} ({})", status.release, std::env::consts::ARCH),
        ),
        (
            "minimum kernel".to_owned(),
            format!(
                "{min_major}.{min_minor} ({}; checked against 6.1, 6.6, 6.12 and 6.18, tested on each)",
                if status.kernel_supported() {
                    "this one is newer"
                } else {
                    "this one is OLDER: not supported"
                }
            ),
        ),
        ("running as root".to_owned(), yes_no(status.root)),
        (
            "BTF".to_owned(),
            match &status.task_mm {
                Ok(off) => format!("{} (task_struct.mm at offset {off})", btf::VMLINUX_BTF),
                Err(e) if status.btf_available => format!("present, but {e}"),
                Err(_) => format!(
                    "no {} (kernel without CONFIG_DEBUG_INFO_BTF)",
                    btf::VMLINUX_BTF
                ),
            },
        ),
        (
            "tracefs".to_owned(),
            match &status.tracefs {
                Ok((p, true)) => format!("{} (was not mounted: mounted it now)", p.display()),
                Ok((p, false)) => p.display().to_string(),
                Err(e) => e.to_string(),
            },
        ),
        (
            "kprobes".to_owned(),
            match status.kprobe_events {
                Some(true) => "kprobe_events present".to_owned(),
                Some(false) => {
                    "no kprobe_events (CONFIG_KPROBES off; collapse does not need it)".to_owned()
                }
                None => "unknown (tracefs not readable)".to_owned(),
            },
        ),
        (
            "MADV_COLLAPSE".to_owned(),
            match (&status.madv_collapse_probe, status.madv_collapse_kernel()) {
                (Ok(()), _) => "yes (probe collapsed 2 MiB of our own memory)".to_owned(),
                (Err(e), true) => format!("kernel has it (>= 6.1), but the probe failed: {e}"),
                (Err(e), false) => format!("no (kernel older than 6.1: {e})"),
            },
        ),
        (
            "pagemap".to_owned(),
            match &status.pagemap {
                Ok(scan) => format!(
                    "readable with PFNs and kpageflags; PAGEMAP_SCAN {}",
                    if *scan {
                        "yes"
                    } else {
                        "no (before 6.7: slower reads)"
                    }
                ),
                Err(e) => e.to_string(),
            },
        ),
    ];
    section("Kernel", std::mem::take(&mut rows));

    match &status.thp {
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
            vec![("error".to_owned(), e.to_string())],
        ),
    }

    let counters: Vec<(String, String)> = VMSTAT_OF_INTEREST
        .iter()
        .filter_map(|&name| {
            status
                .vmstat
                .get(name)
                .map(|v| (name.to_owned(), v.to_string()))
        })
        .collect();
    if !counters.is_empty() {
        section("Counters (/proc/vmstat)", counters);
    }

    section(
        "Tracepoints",
        status
            .tracepoints
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
        "Kernel features with a fallback",
        status
            .features
            .iter()
            .map(|(f, probe)| {
                let text = match probe {
                    Ok(()) => "present".to_owned(),
                    Err(why) => format!("FALLBACK  {why}: {}", f.fallback()),
                };
                (f.name().to_owned(), text)
            })
            .collect(),
    );

    section(
        "What works here",
        status
            .works()
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

/// `status --json`: one object, tagged like every JSON line collapse writes.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StatusLine<'a> {
    Status(StatusJson<'a>),
}

#[derive(Serialize)]
struct StatusJson<'a> {
    kernel: KernelJson<'a>,
    root: bool,
    btf: BtfJson,
    tracefs: TracefsJson,
    kprobe_events: Option<bool>,
    madv_collapse: MadvCollapseJson,
    pagemap: PagemapJson,
    thp: ThpJson<'a>,
    vmstat: &'a std::collections::BTreeMap<String, i64>,
    /// `true`, `false`, or `null` when tracefs cannot be read.
    tracepoints: std::collections::BTreeMap<String, Option<bool>>,
    works: std::collections::BTreeMap<&'static str, WorksJson>,
    /// Per probed feature (`COLLAPSE_FALLBACKS` names): whether the kernel has it, and if not
    /// why and what runs instead.
    features: std::collections::BTreeMap<&'static str, FeatureJson<'a>>,
    /// The names of the features whose fallback runs on this machine.
    fallbacks: Vec<&'static str>,
}

#[derive(Serialize)]
struct FeatureJson<'a> {
    present: bool,
    why: Option<&'a str>,
    fallback: &'static str,
}

#[derive(Serialize)]
struct KernelJson<'a> {
    release: &'a str,
    version: Option<[u32; 2]>,
    arch: &'static str,
    /// The oldest kernel collapse supports, and whether this one is at least that.
    minimum: [u32; 2],
    supported: bool,
}

#[derive(Serialize)]
struct BtfJson {
    available: bool,
    task_struct_mm_offset: Option<u32>,
    error: Option<String>,
}

#[derive(Serialize)]
struct TracefsJson {
    path: Option<String>,
    mounted_now: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct MadvCollapseJson {
    kernel_supports: bool,
    probe_ok: bool,
    probe_error: Option<String>,
}

#[derive(Serialize)]
struct PagemapJson {
    readable: bool,
    pagemap_scan: Option<bool>,
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ThpJson<'a> {
    Settings {
        enabled: &'static str,
        defrag: &'a str,
        sizes: Vec<SizeJson>,
        khugepaged: &'a crate::kernel::thp::KhugepagedSettings,
    },
    Error {
        error: String,
    },
}

#[derive(Serialize)]
struct SizeJson {
    size_kib: u64,
    order: u8,
    enabled: &'static str,
    on: bool,
}

#[derive(Serialize)]
struct WorksJson {
    ok: bool,
    why: Vec<String>,
}

fn error<T, E: std::fmt::Display>(r: &Result<T, E>) -> Option<String> {
    r.as_ref().err().map(ToString::to_string)
}

/// The report as one line of JSON.
pub(super) fn json(status: &Status) -> String {
    let line = StatusLine::Status(StatusJson {
        kernel: KernelJson {
            release: &status.release,
            version: status.version.map(|(a, b)| [a, b]),
            arch: std::env::consts::ARCH,
            minimum: [MINIMUM_KERNEL.0, MINIMUM_KERNEL.1],
            supported: status.kernel_supported(),
        },
        root: status.root,
        btf: BtfJson {
            available: status.btf_available,
            task_struct_mm_offset: status.task_mm.as_ref().ok().copied(),
            error: error(&status.task_mm),
        },
        tracefs: TracefsJson {
            path: status
                .tracefs
                .as_ref()
                .ok()
                .map(|(p, _)| p.display().to_string()),
            mounted_now: status.tracefs.as_ref().is_ok_and(|(_, m)| *m),
            error: error(&status.tracefs),
        },
        kprobe_events: status.kprobe_events,
        madv_collapse: MadvCollapseJson {
            kernel_supports: status.madv_collapse_kernel(),
            probe_ok: status.madv_collapse_probe.is_ok(),
            probe_error: error(&status.madv_collapse_probe),
        },
        pagemap: PagemapJson {
            readable: status.pagemap.is_ok(),
            pagemap_scan: status.pagemap.as_ref().ok().copied(),
            error: error(&status.pagemap),
        },
        thp: match &status.thp {
            Ok(t) => ThpJson::Settings {
                enabled: t.enabled.name(),
                defrag: &t.defrag,
                sizes: t
                    .sizes
                    .iter()
                    .map(|s| SizeJson {
                        size_kib: s.size_kib,
                        order: s.order,
                        enabled: s.enabled.name(),
                        on: s.is_on(t.enabled),
                    })
                    .collect(),
                khugepaged: &t.khugepaged,
            },
            Err(e) => ThpJson::Error {
                error: e.to_string(),
            },
        },
        vmstat: &status.vmstat,
        tracepoints: status
            .tracepoints
            .iter()
            .map(|((c, n), f)| {
                let v = match f {
                    Found::Yes => Some(true),
                    Found::No => Some(false),
                    Found::Unknown => None,
                };
                (format!("{c}:{n}"), v)
            })
            .collect(),
        works: status
            .works()
            .into_iter()
            .map(|(name, verdict)| {
                let v = match verdict {
                    Ok(why) => WorksJson {
                        ok: true,
                        why: vec![why],
                    },
                    Err(why) => WorksJson { ok: false, why },
                };
                (name, v)
            })
            .collect(),
        features: status
            .features
            .iter()
            .map(|(f, probe)| {
                let v = FeatureJson {
                    present: probe.is_ok(),
                    why: probe.as_ref().err().map(String::as_str),
                    fallback: f.fallback(),
                };
                (f.name(), v)
            })
            .collect(),
        fallbacks: status
            .features
            .iter()
            .filter(|(_, probe)| probe.is_err())
            .map(|(f, _)| f.name())
            .collect(),
    });
    serde_json::to_string(&line).expect("the status serialises")
}
