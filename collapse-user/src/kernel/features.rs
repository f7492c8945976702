//! Kernel features the tracer probes at start, each with a fallback, and forcing those
//! fallbacks on a kernel that has the feature (tests run every fallback path on this one).
//!
//! `COLLAPSE_FALLBACKS=name,name` (or `all`) makes [`Feature::forced_off`] true for the named
//! features; `COLLAPSE_CLASSIC_TRACEPOINTS=1` is the older spelling of `btf_tracepoints`.

/// A probed kernel feature that has a fallback. Add new ones here, with their name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// BTF-typed raw tracepoints for the hot programs (else classic tracepoints).
    BtfTracepoints,
    /// `task_struct::in_user_fault` (CONFIG_MEMCG, CONFIG_MEMCG_V1 since 6.11): the
    /// large-folio hook takes a thread's in-flight fault only while it is inside a user fault
    /// (else the record is trusted until its first large folio, the thread's next fault or a
    /// hooked syscall, and pagemap confirms every large folio).
    InUserFault,
}

impl Feature {
    pub const ALL: &[Self] = &[Self::BtfTracepoints, Self::InUserFault];

    /// The name `COLLAPSE_FALLBACKS` and the reports use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BtfTracepoints => "btf_tracepoints",
            Self::InUserFault => "in_user_fault",
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
