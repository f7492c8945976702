//! A run of a built-in workload (`mixed`, `sparse-stride`): the `collapse workload` child.

use std::{
    io::Write as _,
    process::{ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use super::{
    arm::ArmSpec,
    child::{Owned, die_with_us, expect_line, lines},
    error::BenchError,
    measure::{
        KhugepagedCpu, RunContext, RunResult, Shared, finish_sysfs, lock, regime, run_figures,
        sample_until, start_collapse, stop_collapse,
    },
};
use crate::workload::BuiltIn;

/// The built-in workload child.
struct BuiltInChild {
    child: Owned,
    stdin: ChildStdin,
    pid: i32,
}

fn start_builtin(
    ctx: &RunContext<'_>,
    kind: BuiltIn,
    advise: &str,
    shared: &Arc<Mutex<Shared>>,
) -> Result<BuiltInChild, BenchError> {
    let mut cmd = Command::new(ctx.exe);
    cmd.arg("workload");
    match kind {
        BuiltIn::Mixed => {
            cmd.arg("mixed");
        }
        BuiltIn::SparseStride { stride } => {
            cmd.args(["sparse-stride", "--stride", &stride.to_string()]);
        }
    }
    cmd.args([
        "--size",
        &ctx.size.to_string(),
        "--run-for",
        &ctx.run_for.as_secs_f64().to_string(),
        "--advise",
        advise,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    die_with_us(&mut cmd);
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: "the workload".into(),
        source: e,
    })?);
    let stdin = child.0.stdin.take().expect("piped");
    let rx = lines(child.0.stdout.take().expect("piped"));
    let ready = expect_line(&rx, "ready ", "workload")?;
    let pid = ready[6..].trim().parse().unwrap_or(child.pid());
    expect_line(&rx, "populated ", "workload")?;
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        for l in rx {
            let mut s = lock(&shared);
            if let Some(p) = l.strip_prefix("progress ") {
                s.progress = p.trim().parse().unwrap_or(s.progress);
            } else if let Some(rest) = l.strip_prefix("result ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let perf = words
                    .iter()
                    .position(|w| *w == "ops_per_s")
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let ok = rest.ends_with("checksum ok");
                s.progress = 1.0;
                s.result = Some((perf, ok));
            }
        }
    });
    Ok(BuiltInChild { child, stdin, pid })
}

pub(super) fn run(
    ctx: &mut RunContext<'_>,
    kind: BuiltIn,
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let advise = match arm {
        ArmSpec::None => "thp-off",
        ArmSpec::Khugepaged | ArmSpec::KhugepagedFast => "huge",
        ArmSpec::Collapse { .. } => "none",
    };
    let sysfs = regime(arm, false)?;
    let mut w = start_builtin(ctx, kind, advise, &shared)?;
    let populated = if ctx.want_regions {
        super::populated_regions(w.pid)
    } else {
        Vec::new()
    };
    let khugepaged = KhugepagedCpu::start();
    let collapse = match arm {
        ArmSpec::Collapse {
            policy,
            max_ptes_none,
        } => Some(start_collapse(ctx, w.pid, policy, max_ptes_none, &shared)?),
        _ => None,
    };
    writeln!(w.stdin, "go").map_err(BenchError::Io)?;
    w.stdin.flush().map_err(BenchError::Io)?;
    let from_vmstat = collapse.is_none();
    let (samples, _) = sample_until(ctx, &[w.pid], &shared, from_vmstat, &mut |s| {
        s.result.is_some()
    });
    let collapse_cpu = stop_collapse(collapse);
    let _ = writeln!(w.stdin, "exit");
    w.child.terminate(Duration::from_secs(10));
    let changes = finish_sysfs(sysfs);
    let s = lock(&shared);
    let figures = run_figures(
        &s,
        &samples,
        s.result.map(|r| r.0),
        s.result.map(|r| r.1),
        &khugepaged,
        collapse_cpu,
    );
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(BenchError::Stopped);
    }
    if s.result.is_none() {
        return Err(BenchError::Workload(
            "the workload reported no result".into(),
        ));
    }
    Ok(RunResult {
        samples,
        figures,
        populated,
        sysfs: changes,
    })
}
