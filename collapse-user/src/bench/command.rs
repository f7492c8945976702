//! A run of any program (`collapse bench -- CMD ARGS`): its runtime is the metric, its exit
//! status the verdict.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Instant,
};

use super::{
    arm::ArmSpec,
    child::{Owned, die_with_us, thp_off},
    error::BenchError,
    measure::{
        KhugepagedCpu, RunContext, RunResult, Shared, finish_sysfs, lock, regime, run_figures,
        sample_until, start_collapse, stop_collapse,
    },
};

pub(super) fn run(
    ctx: &mut RunContext<'_>,
    argv: &[String],
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let sysfs = regime(arm, true)?;
    let khugepaged = KhugepagedCpu::start();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if arm == ArmSpec::None {
        thp_off(&mut cmd);
    }
    die_with_us(&mut cmd);
    let started = Instant::now();
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: format!("{:?}", argv[0]),
        source: e,
    })?);
    let pid = child.pid();
    let collapse = match arm {
        ArmSpec::Collapse {
            policy,
            max_ptes_none,
        } => Some(start_collapse(ctx, pid, policy, max_ptes_none, &shared)?),
        _ => None,
    };
    let mut status = None;
    let from_vmstat = collapse.is_none();
    let (samples, _) = sample_until(ctx, &[pid], &shared, from_vmstat, &mut |_| {
        status = status.or_else(|| child.0.try_wait().ok().flatten());
        status.is_some()
    });
    let runtime = started.elapsed().as_secs_f64();
    // The last samples after the program exited see no memory.
    let mut samples = samples;
    while samples.len() > 1 && samples.last().is_some_and(|s| s.anon_rss_bytes == 0) {
        samples.pop();
    }
    let collapse_cpu = stop_collapse(collapse);
    let changes = finish_sysfs(sysfs);
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(BenchError::Stopped);
    }
    let figures = run_figures(
        &lock(&shared),
        &samples,
        Some(runtime),
        status.map(|s| s.success()),
        &khugepaged,
        collapse_cpu,
    );
    Ok(RunResult {
        samples,
        figures,
        populated: Vec::new(),
        sysfs: changes,
    })
}
