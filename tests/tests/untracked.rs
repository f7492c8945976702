//! A process that is not traced never appears: not in the region map, not in the khugepaged
//! counts. Uses the library in-process to look at the maps themselves.

mod common;

use collapse::{
    cli::TargetArgs,
    tracer::{Capacity, Session, Target},
};
use common::*;

#[test]
fn untracked_processes_never_appear_in_the_maps() {
    if !root_or_skip("untracked_processes_never_appear_in_the_maps") {
        return;
    }
    let mut traced = Workload::spawn();
    let mut other = Workload::spawn();
    let args = TargetArgs {
        pids: vec![traced.pid],
        ..TargetArgs::default()
    };
    let session = Session::start(
        Target::resolve(&args).expect("target"),
        Capacity {
            max_regions: 4096,
            ringbuf_bytes: 1 << 16,
            max_processes: 64,
        },
    )
    .expect("start session");
    for w in [&mut traced, &mut other] {
        w.map("a", 8, false);
        w.cmd("touch a 0 1024");
        w.cmd("dontneed a 0 100");
        w.cmd("huge a 0 2048");
    }
    let regions = session.bpf.regions().expect("regions");
    assert!(
        regions.iter().any(|(k, _)| k.tgid == traced.pid as u32),
        "the traced process has no regions"
    );
    let strangers: Vec<u32> = regions
        .iter()
        .map(|(k, _)| k.tgid)
        .filter(|&t| t != traced.pid as u32)
        .collect();
    assert!(
        strangers.is_empty(),
        "regions of untraced processes: {strangers:?}"
    );
    let counts = session.bpf.khugepaged_counts().expect("counts");
    assert!(
        counts.iter().all(|(k, _)| k.tgid == traced.pid as u32),
        "{counts:?}"
    );
    assert!(
        !session
            .bpf
            .is_tracked(other.pid as u32)
            .expect("tracked bit")
    );
}
