//! What the bench samples about 4 times a second, and the CPU it charges to each arm.

use std::{collections::BTreeMap, fs, time::Instant};

use super::model::BenchSample;
use crate::kernel::{
    procs,
    thp::{THP_ROOT, size_dir_kib},
};

/// CPU seconds (utime + stime) of `pid` so far; `None` once it is gone.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some((stat.utime + stat.stime) as f64 / ticks)
}

/// The pid of khugepaged's kernel thread (read only: never signalled).
pub fn khugepaged_pid() -> Option<i32> {
    procfs::process::all_processes()
        .ok()?
        .filter_map(Result::ok)
        .find(|p| {
            p.stat()
                .is_ok_and(|s| s.comm == "khugepaged" && s.ppid == 2)
        })
        .map(|p| p.pid)
}

/// `/proc/vmstat` counters of collapses, machine-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmstatCollapses {
    pub alloc: u64,
    pub alloc_failed: u64,
    pub exceed_none: u64,
    pub exceed_swap: u64,
    pub exceed_shared: u64,
}

impl VmstatCollapses {
    pub fn read() -> Self {
        let v = procfs::vmstat().unwrap_or_default();
        let get = |k: &str| v.get(k).copied().unwrap_or(0).max(0) as u64;
        Self {
            alloc: get("thp_collapse_alloc"),
            alloc_failed: get("thp_collapse_alloc_failed"),
            exceed_none: get("thp_scan_exceed_none_pte"),
            exceed_swap: get("thp_scan_exceed_swap_pte"),
            exceed_shared: get("thp_scan_exceed_share_pte"),
        }
    }

    /// What happened since `base`: collapses, and failures by reason.
    pub fn since(&self, base: &Self) -> (u64, BTreeMap<String, u64>) {
        let mut failures = BTreeMap::new();
        for (name, now, then) in [
            ("alloc_failed", self.alloc_failed, base.alloc_failed),
            ("exceed_none_pte", self.exceed_none, base.exceed_none),
            ("exceed_swap_pte", self.exceed_swap, base.exceed_swap),
            ("exceed_shared_pte", self.exceed_shared, base.exceed_shared),
        ] {
            if now > then {
                failures.insert(name.to_owned(), now - then);
            }
        }
        (self.alloc.saturating_sub(base.alloc), failures)
    }
}

/// `hugepages-<kB>kB/stats/nr_anon` of every size, machine-wide.
pub fn nr_anon_by_size() -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let Ok(dirs) = fs::read_dir(THP_ROOT) else {
        return out;
    };
    for d in dirs.filter_map(Result::ok) {
        let Some(kb) = size_dir_kib(&d.file_name()) else {
            continue;
        };
        if let Ok(v) = fs::read_to_string(d.path().join("stats/nr_anon"))
            && let Ok(n) = v.trim().parse::<u64>()
        {
            out.insert(kb, n);
        }
    }
    out
}

/// One sample of the workload's processes.
pub fn sample(
    pids: &[i32],
    started: Instant,
    collapses: u64,
    failures: BTreeMap<String, u64>,
    progress: f64,
) -> BenchSample {
    let (mut huge, mut rss) = (0u64, 0u64);
    for &pid in pids {
        if let Ok(m) = procs::memory_coverage(pid) {
            huge += m.anon_huge_kb * 1024;
            rss += m.anon_rss_kb * 1024;
        }
    }
    BenchSample {
        t_s: started.elapsed().as_secs_f64(),
        anon_huge_bytes: huge,
        anon_rss_bytes: rss,
        coverage: if rss == 0 {
            0.0
        } else {
            huge as f64 / rss as f64
        },
        nr_anon_by_size_kb: nr_anon_by_size(),
        collapses,
        failures,
        progress,
    }
}
