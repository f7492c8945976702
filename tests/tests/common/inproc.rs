//! A tracing session in the test process itself, so a test reads the programs' maps directly:
//! what the eBPF programs recorded before userspace's re-reads from pagemap (`poll`,
//! `rescan`) had a chance to copy pagemap in, and bits the snapshot would hide (it is masked to
//! the VMAs that exist now).

use std::time::{Duration, Instant};

use collapse::tracer::{Capacity, Observed, Session, Target, TargetSpec};

use super::Regions;

/// Small maps: the tests trace a few processes.
pub const SMALL: Capacity = Capacity {
    max_regions: 4096,
    ringbuf_bytes: 1 << 16,
    max_processes: 64,
};

/// A session on `spec` with `cap`, started in this process.
pub fn session(spec: TargetSpec, cap: Capacity) -> Session {
    Session::start(Target::resolve(&spec).expect("target"), cap).expect("start session")
}

/// A session on `pid` alone, with small maps.
pub fn session_for(pid: i32) -> Session {
    session(TargetSpec::Pids(vec![pid]), SMALL)
}

/// `tgid`'s regions as the programs' maps hold them now (pending per-CPU bits included),
/// without a poll: nothing from pagemap is merged in here. Empty regions are left out.
pub fn map_regions(session: &Session, tgid: i32) -> Regions {
    // The process holding the pid now: an earlier one's regions (a reused pid) are not its.
    let generation = session
        .bpf()
        .generation(tgid as u32)
        .expect("read the pid's generation");
    session
        .bpf()
        .regions()
        .expect("read the region map")
        .into_iter()
        .filter(|(k, b)| k.tgid == tgid as u32 && k.generation == generation && !b.is_empty())
        .map(|(k, b)| (k.addr, b))
        .collect()
}

/// How many large-folio records of `tgid` and `order` are among `seen`.
pub fn large_folios(seen: &[Observed], tgid: i32, order: u16) -> usize {
    seen.iter()
        .filter(|o| {
            matches!(o, Observed::LargeFolio { tgid: t, order: r, .. }
                if *t == tgid as u32 && *r == order)
        })
        .count()
}

/// Polls `session` (handling its records as `collapse trace` does) until `done` holds for it,
/// or `timeout` passes; returns everything observed and whether `done` held.
pub fn poll_until(
    session: &mut Session,
    timeout: Duration,
    mut done: impl FnMut(&Session, &[Observed]) -> bool,
) -> (Vec<Observed>, bool) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        seen.extend(session.poll().expect("poll"));
        if done(session, &seen) {
            return (seen, true);
        }
        if Instant::now() >= deadline {
            return (seen, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
