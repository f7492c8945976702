//! Kernel features the tracer probes at start, each with a fallback, and forcing those
//! fallbacks on a kernel that has the feature (tests run every fallback path on this one).
//!
//! `COLLAPSE_FALLBACKS=name,name` (or `all`) makes [`Feature::forced_off`] true for the named
//! features; `COLLAPSE_CLASSIC_TRACEPOINTS=1` is the older spelling of `btf_tracepoints`.

/// The oldest kernel collapse runs on: MADV_COLLAPSE (the executor) is 6.1's, and every
/// tracepoint, BTF member, helper and map type the tracer needs is in 6.1, or has a
/// [`Feature`] fallback (README "Kernels" has the table and the sources checked).
pub const MINIMUM_KERNEL: (u32, u32) = (6, 1);

/// A probed kernel feature that has a fallback. Add new ones here, with their name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// BTF-typed raw tracepoints for the hot programs (else classic tracepoints).
    BtfTracepoints,
    /// The task iterator (`iter/task`, 5.8+) learns every traced process's `mm` when it is
    /// attached (else `sched:sched_switch` learns it the next time the process runs).
    TaskIter,
    /// `sched_process_exit`'s `group_dead` field (6.16+; else `current->signal->live == 0`,
    /// read through BTF offsets).
    ExitGroupDead,
    /// `PAGEMAP_SCAN` on /proc/PID/pagemap (Linux 6.7+): populated ranges by category, so a
    /// tick reads only regions that changed (else every entry of every anonymous VMA is read,
    /// and a changed process is read whole).
    PagemapScan,
    /// `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+): the region map in a few calls per tick (else one
    /// `get_next_key` and one lookup per region).
    MapBatch,
    /// A process's memory cgroup and its `memory.stat` in cgroup v2 (else the v1 memory
    /// controller's, `kernel::memcg`).
    CgroupV2Memory,
    /// `task_struct::in_user_fault` (CONFIG_MEMCG, CONFIG_MEMCG_V1 since 6.11): the
    /// large-folio hook takes a thread's in-flight fault only while it is inside a user fault
    /// (else the record is trusted until its first large folio, the thread's next fault or a
    /// hooked syscall, and pagemap confirms every large folio).
    InUserFault,
}

impl Feature {
    pub const ALL: &[Self] = &[
        Self::BtfTracepoints,
        Self::TaskIter,
        Self::ExitGroupDead,
        Self::PagemapScan,
        Self::MapBatch,
        Self::CgroupV2Memory,
        Self::InUserFault,
    ];

    /// The name `COLLAPSE_FALLBACKS` and the reports use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BtfTracepoints => "btf_tracepoints",
            Self::TaskIter => "task_iter",
            Self::ExitGroupDead => "exit_group_dead",
            Self::PagemapScan => "pagemap_scan",
            Self::MapBatch => "map_batch",
            Self::CgroupV2Memory => "cgroup_v2_memory",
            Self::InUserFault => "in_user_fault",
        }
    }

    /// What collapse does without it.
    pub const fn fallback(self) -> &'static str {
        match self {
            Self::BtfTracepoints => "classic tracepoints, offsets from the tracefs format files",
            Self::TaskIter => {
                "sched_switch learns a traced process's mm when it next runs: khugepaged events \
                 of a process idle since it was attached are not attributed"
            }
            Self::ExitGroupDead => "a process has ended when current->signal->live is 0",
            Self::PagemapScan => "pagemap is read PTE by PTE over every anonymous VMA (slower)",
            Self::MapBatch => "the region map is read one get_next_key and lookup per region",
            Self::CgroupV2Memory => {
                "per-cgroup coverage from the v1 memory controller's memory.stat (total_rss, \
                 total_rss_huge)"
            }
            Self::InUserFault => {
                "a thread's in-flight fault is trusted until its first large folio, its next \
                 fault or a hooked syscall, and pagemap confirms every large folio"
            }
        }
    }

    /// Whether the environment asks for this feature's fallback even where the kernel has it.
    pub fn forced_off(self) -> bool {
        if self == Self::BtfTracepoints
            && std::env::var_os("COLLAPSE_CLASSIC_TRACEPOINTS").is_some_and(|v| v == "1")
        {
            return true;
        }
        std::env::var("COLLAPSE_FALLBACKS").is_ok_and(|v| forced_in(&v, self))
    }
}

fn forced_in(list: &str, feature: Feature) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|n| n == "all" || n == feature.name())
}

/// A feature the running kernel lacks (or that was forced off), and what collapse does instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub feature: Feature,
    /// Why: the probe's answer, or "forced by COLLAPSE_FALLBACKS".
    pub why: String,
}

/// The reason string for a forced fallback.
pub const FORCED: &str = "forced by COLLAPSE_FALLBACKS";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_parse() {
        let mut names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
        for &f in Feature::ALL {
            assert!(forced_in(&format!("x, {} ,y", f.name()), f));
            assert!(forced_in("all", f));
            assert!(!forced_in("", f));
            assert!(!forced_in("x,y", f));
        }
    }
}
