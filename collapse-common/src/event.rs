//! Records the eBPF programs send through the ring buffer. Rare events only: faults are
//! aggregated in maps, never streamed one by one (large-folio faults are the exception, and
//! they are rare by nature).

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A user fault mapped a large folio: `addr` is the folio start, `order` its order.
    LargeFolioFault = 0,
    /// A khugepaged tracepoint fired for a traced process: `khugepaged` says which, `status`
    /// and `a`/`b`/`c` carry its fields (see [`Event`]).
    Khugepaged = 1,
    /// A traced thread group ended (`tgid`): userspace drops its regions.
    Exit = 2,
    /// A traced process replaced its address space by exec: userspace drops its regions.
    Exec = 3,
    /// A traced process forked a new traced process `addr` (the child tgid).
    Fork = 4,
    /// Pages in `[addr, addr + len)` went away but the range spans more regions than one
    /// program may visit: userspace clears them.
    ClearRange = 5,
    /// Pages in `[addr, addr + len)` may have appeared without a user fault (mremap moved
    /// them, MADV_POPULATE, MAP_POPULATE, mlock): userspace re-reads them from pagemap.
    Resync = 6,
    /// A process became traced in-kernel (exec with a matching comm, a child in the cgroup).
    Attach = 7,
    /// A traced process asked for huge pages on `[addr, addr + len)` (MADV_HUGEPAGE): its
    /// faults there may map large folios from now on.
    HugepageAdvice = 8,
    // 9 was `UnknownMm` (an `mm` guessed from a page frame); every traced `mm` is now
    // learned exactly (the task iterator), so nothing is left to guess.
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::LargeFolioFault),
            1 => Some(Self::Khugepaged),
            2 => Some(Self::Exit),
            3 => Some(Self::Exec),
            4 => Some(Self::Fork),
            5 => Some(Self::ClearRange),
            6 => Some(Self::Resync),
            7 => Some(Self::Attach),
            8 => Some(Self::HugepageAdvice),
            _ => None,
        }
    }
}

/// One ring-buffer record.
///
/// For `Khugepaged`: `a`, `b`, `c` are, per tracepoint,
/// scan_pmd: referenced, none_or_zero, unmapped (`addr` = pfn);
/// collapse: isolated, -, -;
/// isolate: none_or_zero, referenced, - (`addr` = pfn);
/// swapin: swapped_in, referenced, - (`status` = ret).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub ts_ns: u64,
    pub addr: u64,
    pub len: u64,
    pub kind: u32,
    pub tgid: u32,
    /// The task that produced it (khugepaged's pid for its events).
    pub pid: u32,
    /// A [`crate::maps::KhugepagedEvent`] for `Khugepaged` events.
    pub khugepaged: u16,
    pub order: u16,
    pub status: i32,
    pub a: i32,
    pub b: i32,
    pub c: i32,
}

const _: () = assert!(core::mem::size_of::<Event>() == 56);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
