//! What the executor hands on: one [`CollapseOutcome`] per PMD decision it looked at, one
//! [`Advice`] per decision below PMD size. Their names are the stable vocabulary of `run --json`
//! (DESIGN.md, "Machine-readable formats").

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use collapse_common::consts::{PAGE_SIZE, PMD_ORDER};
use nix::errno::Errno;

/// The result of the executor's look at one PMD decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollapseOutcome {
    pub pid: i32,
    /// PMD-aligned start of the region.
    pub addr: u64,
    /// Always [`PMD_ORDER`]: MADV_COLLAPSE builds PMD-sized folios only.
    pub order: u8,
    pub result: CollapseResult,
    /// Time spent in `process_madvise` for this region (both calls if it was retried); zero
    /// when nothing was called.
    pub latency: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollapseResult {
    /// MADV_COLLAPSE succeeded and pagemap shows the region PMD-mapped afterwards.
    Collapsed,
    /// The region was PMD-mapped before anything was called.
    AlreadyHuge,
    Skipped(SkipReason),
    Failed(Failure),
}

/// Why a region was left alone. None of these is a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The process was never selected (or was forgotten): it is never touched.
    NotSelected,
    /// The process exited (its pidfd says so, or the kernel answered ESRCH).
    Exited,
    /// The process or the VMA declines THP, or MADV_COLLAPSE cannot take the VMA.
    OptedOut(OptOut),
    /// pagemap now shows an occupancy for which the policy no longer picks order 9.
    BelowThreshold,
    /// A recent attempt on this region failed; it waits out its back-off.
    BackingOff,
    /// `--dry-run`: re-checked, not acted on.
    DryRun,
    /// The range is no longer mapped, or maps nothing.
    Unmapped,
}

/// Who declined: see `kernel::eligibility`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptOut {
    /// `prctl(PR_SET_THP_DISABLE)`: the process disabled THP for all of its memory.
    Prctl,
    /// `MADV_NOHUGEPAGE` on the VMA.
    NoHugePage,
    /// A VMA MADV_COLLAPSE cannot take: it does not cover the whole 2 MiB, or it is not
    /// anonymous private memory THP applies to.
    Vma,
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `process_madvise` failed with this errno (after one retry for EAGAIN).
    Errno(Errno),
    /// `process_madvise` returned 0 but pagemap does not show the region PMD-mapped.
    Unconfirmed,
    /// /proc of a live target could not be read to re-check or confirm the region.
    Unreadable,
}

impl CollapseResult {
    /// `collapsed`, `already_huge`, `skipped` or `failed`.
    pub const fn result_name(&self) -> &'static str {
        match self {
            Self::Collapsed => "collapsed",
            Self::AlreadyHuge => "already_huge",
            Self::Skipped(_) => "skipped",
            Self::Failed(_) => "failed",
        }
    }

    /// For a skip, its reason (`opted-out`, `below-threshold`, ...); for a failure, the errno
    /// name (`EAGAIN`, `EBUSY`, ...) or `unconfirmed` / `unreadable`; none otherwise.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Collapsed | Self::AlreadyHuge => None,
            Self::Skipped(s) => Some(s.name()),
            Self::Failed(f) => Some(f.name()),
        }
    }

    /// What an `opted-out` skip was opted out by: `prctl`, `nohugepage` or `vma`.
    pub const fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Skipped(SkipReason::OptedOut(o)) => Some(o.name()),
            _ => None,
        }
    }

    pub const fn is_failure(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

impl SkipReason {
    pub const ALL: [Self; 9] = [
        Self::NotSelected,
        Self::Exited,
        Self::OptedOut(OptOut::Prctl),
        Self::OptedOut(OptOut::NoHugePage),
        Self::OptedOut(OptOut::Vma),
        Self::BelowThreshold,
        Self::BackingOff,
        Self::DryRun,
        Self::Unmapped,
    ];

    pub const fn name(&self) -> &'static str {
        match self {
            Self::NotSelected => "not-selected",
            Self::Exited => "exited",
            Self::OptedOut(_) => "opted-out",
            Self::BelowThreshold => "below-threshold",
            Self::BackingOff => "backing-off",
            Self::DryRun => "dry-run",
            Self::Unmapped => "unmapped",
        }
    }
}

impl OptOut {
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Prctl => "prctl",
            Self::NoHugePage => "nohugepage",
            Self::Vma => "vma",
        }
    }
}

impl Failure {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Errno(e) => errno_name(*e),
            Self::Unconfirmed => "unconfirmed",
            Self::Unreadable => "unreadable",
        }
    }
}

/// The symbolic name of an errno (`EAGAIN`), as nix spells its variants. Names are made once
/// per distinct errno and kept: there are fewer than 150 of them.
pub fn errno_name(e: Errno) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<i32, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    names
        .entry(e as i32)
        .or_insert_with(|| Box::leak(format!("{e:?}").into_boxed_str()))
}

impl std::fmt::Display for CollapseResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.result_name())?;
        if let Some(reason) = self.reason() {
            write!(f, " ({reason}")?;
            if let Some(detail) = self.detail() {
                write!(f, ": {detail}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A decision below PMD size, which no released kernel lets userspace carry out: what a 7.2+
/// khugepaged would build there (khugepaged-mthp-cover-letter.txt), and with which settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advice {
    pub pid: i32,
    /// PMD-aligned start of the region.
    pub addr: u64,
    /// First PTE of the range within the region.
    pub offset: u16,
    /// The range is 2^order pages.
    pub order: u8,
    /// The plan's `max_ptes_none`, which khugepaged would need to decide the same.
    pub max_ptes_none: u16,
}

/// A sysfs value a 7.2+ khugepaged needs to build an [`Advice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysfsNeed {
    /// `hugepages-<size>kB/enabled` must not be `never` (`inherit` then also needs the global
    /// `enabled` not to be `never`).
    SizeEnabled { path: PathBuf },
    /// `khugepaged/max_ptes_none` must be this value: khugepaged scales it to the order.
    MaxPtesNone { path: PathBuf, value: u16 },
}

/// Where THP's sysfs lives (Documentation/admin-guide/mm/transhuge.rst).
const THP_SYSFS: &str = "/sys/kernel/mm/transparent_hugepage";

impl Advice {
    /// Start address of the range.
    pub fn range_addr(&self) -> u64 {
        self.addr + u64::from(self.offset) * PAGE_SIZE
    }

    /// Size of the folio it would build, in KiB.
    pub fn size_kb(&self) -> u64 {
        (PAGE_SIZE << self.order) / 1024
    }

    /// The settings under which a 7.2+ khugepaged would build it.
    pub fn sysfs_needs(&self) -> [SysfsNeed; 2] {
        [
            SysfsNeed::SizeEnabled {
                path: PathBuf::from(format!(
                    "{THP_SYSFS}/hugepages-{}kB/enabled",
                    self.size_kb()
                )),
            },
            SysfsNeed::MaxPtesNone {
                path: PathBuf::from(format!("{THP_SYSFS}/khugepaged/max_ptes_none")),
                value: self.max_ptes_none,
            },
        ]
    }
}

impl SysfsNeed {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::SizeEnabled { path } | Self::MaxPtesNone { path, .. } => path,
        }
    }

    /// What the file must hold, as a person reads it: `not never`, `255`.
    pub fn wanted(&self) -> String {
        match self {
            Self::SizeEnabled { .. } => "not never".to_owned(),
            Self::MaxPtesNone { value, .. } => value.to_string(),
        }
    }

    /// Whether `current` (the file's content, e.g. `always [inherit] madvise never` or `255`)
    /// meets the need.
    pub fn is_met(&self, current: &str) -> bool {
        match self {
            Self::SizeEnabled { .. } => {
                let selected = current
                    .split_whitespace()
                    .find(|w| w.starts_with('['))
                    .unwrap_or(current.trim());
                selected.trim_matches(['[', ']']) != "never"
            }
            Self::MaxPtesNone { value, .. } => current.trim().parse::<u16>() == Ok(*value),
        }
    }
}

impl std::fmt::Display for SysfsNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SizeEnabled { path } => write!(f, "{} not never", path.display()),
            Self::MaxPtesNone { path, value } => write!(f, "{} = {value}", path.display()),
        }
    }
}

/// The order every outcome has.
pub(crate) const COLLAPSE_ORDER: u8 = PMD_ORDER;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let r = |r: CollapseResult| (r.result_name(), r.reason(), r.detail());
        assert_eq!(r(CollapseResult::Collapsed), ("collapsed", None, None));
        assert_eq!(r(CollapseResult::AlreadyHuge), ("already_huge", None, None));
        assert_eq!(
            r(CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Prctl))),
            ("skipped", Some("opted-out"), Some("prctl"))
        );
        assert_eq!(
            r(CollapseResult::Skipped(SkipReason::OptedOut(
                OptOut::NoHugePage
            )))
            .2,
            Some("nohugepage")
        );
        assert_eq!(
            r(CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Vma))).2,
            Some("vma")
        );
        for (e, name) in [
            (Errno::EAGAIN, "EAGAIN"),
            (Errno::EBUSY, "EBUSY"),
            (Errno::ENOMEM, "ENOMEM"),
            (Errno::EINVAL, "EINVAL"),
            (Errno::EHWPOISON, "EHWPOISON"),
        ] {
            assert_eq!(
                r(CollapseResult::Failed(Failure::Errno(e))),
                ("failed", Some(name), None)
            );
        }
        assert_eq!(
            CollapseResult::Failed(Failure::Unconfirmed).reason(),
            Some("unconfirmed")
        );
        let skips: Vec<&str> = SkipReason::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            skips,
            [
                "not-selected",
                "exited",
                "opted-out",
                "opted-out",
                "opted-out",
                "below-threshold",
                "backing-off",
                "dry-run",
                "unmapped"
            ]
        );
        assert_eq!(
            CollapseResult::Skipped(SkipReason::OptedOut(OptOut::Vma)).to_string(),
            "skipped (opted-out: vma)"
        );
        assert_eq!(
            CollapseResult::Failed(Failure::Errno(Errno::EBUSY)).to_string(),
            "failed (EBUSY)"
        );
        // The same &'static str every time.
        assert!(std::ptr::eq(
            errno_name(Errno::ENOMEM),
            errno_name(Errno::ENOMEM)
        ));
    }

    #[test]
    fn advice_needs() {
        let a = Advice {
            pid: 7,
            addr: 0x4000_0000,
            offset: 16,
            order: 4,
            max_ptes_none: 255,
        };
        assert_eq!(a.size_kb(), 64);
        assert_eq!(a.range_addr(), 0x4001_0000);
        let [size, none] = a.sysfs_needs();
        assert_eq!(
            size.path(),
            std::path::Path::new("/sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled")
        );
        assert!(size.is_met("always inherit [madvise] never"));
        assert!(size.is_met("always [inherit] madvise never"));
        assert!(!size.is_met("always inherit madvise [never]"));
        assert!(none.is_met("255\n"));
        assert!(!none.is_met("511"));
        assert_eq!(
            none.to_string(),
            "/sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none = 255"
        );
    }
}
