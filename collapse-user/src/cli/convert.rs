//! Each value the user typed, validated once, and each argument struct turned into its stage's
//! own input type.

use std::{path::Path, time::Duration};

use anyhow::bail;
use collapse::{
    bench::{ArmSpec, BenchJob, BenchWorkload},
    executor::GuardRails,
    planner::{Mode, Overrides},
    tracer::{Capacity, TargetSpec},
    workload::{Advice, BuiltIn, Workload},
};
use collapse_common::policy::Policy;

use super::{
    args::{
        BenchArgs, BenchWorkloadArgs, CapacityArgs, PlanArgs, RunArgs, TargetArgs, WorkloadKind,
    },
    policy::check_ptes,
};

/// max_ptes_none values of `--sweep` unless `--sweep-values` says otherwise.
const DEFAULT_SWEEP_VALUES: [u16; 11] = [0, 32, 64, 128, 192, 255, 256, 320, 384, 448, 511];

/// A duration flag: 0 up to a year (far enough to mean "until stopped", near enough that
/// adding it to now cannot overflow).
pub(crate) fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    const YEAR: f64 = 365.0 * 86_400.0;
    if !s.is_finite() || !(0.0..=YEAR).contains(&s) {
        bail!("{flag} {s} is not a number of seconds from 0 to {YEAR}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// `--interval`: more than 0 seconds.
pub(crate) fn interval(s: f64) -> anyhow::Result<Duration> {
    let interval = seconds("--interval", s)?;
    if interval.is_zero() {
        bail!("--interval must be more than 0 seconds");
    }
    Ok(interval)
}

/// Whether any target was named at all.
pub(crate) fn target_given(args: &TargetArgs) -> bool {
    !args.pids.is_empty()
        || args.cgroup.is_some()
        || args.comm.is_some()
        || args.all
        || !args.cmd.is_empty()
}

/// The one kind of target the user named.
pub(crate) fn target_spec(args: &TargetArgs) -> anyhow::Result<TargetSpec> {
    let TargetArgs {
        pids,
        cgroup,
        comm,
        all,
        cmd,
    } = args;
    let kinds = [
        !pids.is_empty(),
        cgroup.is_some(),
        comm.is_some(),
        *all,
        !cmd.is_empty(),
    ];
    match kinds.iter().filter(|&&k| k).count() {
        0 => bail!("no target: give --pid PID, --cgroup PATH, --comm NAME, --all, or -- CMD ARGS"),
        1 => {}
        _ => bail!("give one kind of target: --pid, --cgroup, --comm, --all or -- CMD"),
    }
    Ok(if !pids.is_empty() {
        TargetSpec::Pids(pids.clone())
    } else if let Some(path) = cgroup {
        TargetSpec::Cgroup(path.clone())
    } else if let Some(name) = comm {
        TargetSpec::Comm(name.clone())
    } else if *all {
        TargetSpec::All
    } else {
        TargetSpec::Command(cmd.clone())
    })
}

pub(crate) fn capacity(args: &CapacityArgs) -> Capacity {
    Capacity {
        max_regions: args.max_regions,
        ringbuf_bytes: args.ringbuf_kib.saturating_mul(1024),
        max_processes: args.max_processes,
    }
}

/// Where `plan` reads its regions from.
#[derive(Clone, Debug)]
pub(crate) enum PlanInput {
    File(std::path::PathBuf),
    Stdin,
    Live { duration: Duration },
}

impl PlanInput {
    /// For the report: where the regions came from.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Stdin => "stdin".to_owned(),
            Self::Live { duration } if !duration.is_zero() => {
                format!("live target, traced {} s", duration.as_secs_f64())
            }
            Self::Live { .. } => "live target, seeded from pagemap".to_owned(),
        }
    }
}

pub(crate) fn plan_input(args: &PlanArgs) -> anyhow::Result<PlanInput> {
    let duration = seconds("plan: --duration", args.duration)?;
    match (&args.input, target_given(&args.target)) {
        (None, false) => {
            bail!("plan: give --input FILE or a target (--pid, --cgroup, --comm, --all, -- CMD)")
        }
        (Some(_), true) => bail!("plan: give either --input FILE or a target, not both"),
        (Some(_), false) if !duration.is_zero() => {
            bail!("plan: --duration applies to a live target, not to --input")
        }
        (Some(path), false) if path == Path::new("-") => Ok(PlanInput::Stdin),
        (Some(path), false) => Ok(PlanInput::File(path.clone())),
        (None, true) => Ok(PlanInput::Live { duration }),
    }
}

/// One policy (with the creep model) or a sweep, from the flags that choose between them.
pub(crate) fn plan_mode(args: &PlanArgs, overrides: &Overrides) -> anyhow::Result<Mode> {
    if !args.sweep {
        if args.plot.is_some() {
            bail!("plan: --plot needs --sweep");
        }
        if args.sweep_values.is_some() {
            bail!("plan: --sweep-values needs --sweep");
        }
        if args.passes == Some(0) {
            bail!("plan: --passes must be at least 1");
        }
        return Ok(Mode::Plan {
            passes: args.passes,
        });
    }
    if args.passes.is_some() {
        bail!("plan: --passes and --sweep do not go together");
    }
    if overrides.max_ptes_none.is_some() {
        bail!(
            "plan: --sweep varies max_ptes_none itself: give the values with --sweep-values, not --max-ptes-none"
        );
    }
    let values = match &args.sweep_values {
        Some(values) if values.is_empty() => bail!("plan: --sweep-values is empty"),
        Some(values) => {
            for &v in values {
                check_ptes("plan: --sweep-values:", Some(v))?;
            }
            let mut values = values.clone();
            values.sort_unstable();
            values.dedup();
            values
        }
        None => DEFAULT_SWEEP_VALUES.to_vec(),
    };
    let policies = overrides
        .policy
        .map_or_else(|| Policy::ALL.to_vec(), |p| vec![p]);
    Ok(Mode::Sweep {
        policies,
        values,
        plot: args.plot.clone(),
    })
}

/// `run`'s guard rails, each value checked.
pub(crate) fn guard_rails(args: &RunArgs) -> anyhow::Result<GuardRails> {
    let base_interval = interval(args.interval)?;
    let max_rate = match args.max_rate {
        None => None,
        Some(r) if r.is_finite() && r > 0.0 => Some((r * 1024.0 * 1024.0).max(1.0) as u64),
        Some(r) => bail!("--max-rate {r} must be more than 0 MiB/s"),
    };
    if !(args.psi_limit.is_finite() && (0.0..=100.0).contains(&args.psi_limit)) {
        bail!(
            "--psi-limit {} is not a percentage from 0 to 100",
            args.psi_limit
        );
    }
    if !(args.max_latency_ms.is_finite() && args.max_latency_ms > 0.0) {
        bail!(
            "--max-latency-ms {} must be more than 0 milliseconds",
            args.max_latency_ms
        );
    }
    let max_latency = seconds("--max-latency-ms", args.max_latency_ms / 1000.0)?;
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok(GuardRails {
        dry_run: args.dry_run,
        max_rate,
        psi_limit: args.psi_limit,
        max_latency,
        jobs: args.jobs,
        base_interval,
    })
}

/// `bench`'s job, each value checked.
pub(crate) fn bench_job(args: &BenchArgs, exe: std::path::PathBuf) -> anyhow::Result<BenchJob> {
    let workload = match (&args.workload, args.cmd.is_empty()) {
        (Some(_), false) => bail!("bench: give --workload NAME or -- CMD, not both"),
        (None, false) => BenchWorkload::Command(args.cmd.clone()),
        (None, true) => BenchWorkload::BuiltIn(BuiltIn::Mixed),
        (Some(name), true) => match name.as_str() {
            "mixed" => BenchWorkload::BuiltIn(BuiltIn::Mixed),
            "sparse-stride" => BenchWorkload::BuiltIn(BuiltIn::SparseStride { stride: 16 }),
            "redis" => BenchWorkload::Redis,
            other => bail!(
                "bench: unknown workload {other:?} (mixed, sparse-stride or redis, or -- CMD)"
            ),
        },
    };
    let mut arms = Vec::new();
    for name in args
        .arms
        .clone()
        .unwrap_or_else(|| vec!["none".into(), "khugepaged".into(), "khugepaged-fast".into()])
    {
        arms.push(match name.trim() {
            "none" => ArmSpec::None,
            "khugepaged" => ArmSpec::Khugepaged,
            "khugepaged-fast" => ArmSpec::KhugepagedFast,
            other => bail!("bench: unknown arm {other:?} (none, khugepaged, khugepaged-fast; collapse arms with --collapse POLICY:N)"),
        });
    }
    let collapse = if args.collapse.is_empty() {
        vec!["seed:255".to_owned(), "pmd:511".to_owned()]
    } else {
        args.collapse.clone()
    };
    for c in &collapse {
        let (policy, n) = c.split_once(':').ok_or_else(|| {
            anyhow::anyhow!("bench: --collapse {c:?} is not POLICY:MAX_PTES_NONE")
        })?;
        let policy = Policy::from_name(policy.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "bench: --collapse {c:?}: unknown policy {policy:?} (seed, merged, scaled or pmd)"
            )
        })?;
        let max_ptes_none: u16 = n.trim().parse().ok().filter(|&n| n <= 511).ok_or_else(|| {
            anyhow::anyhow!("bench: --collapse {c:?}: max_ptes_none must be 0..511")
        })?;
        arms.push(ArmSpec::Collapse {
            policy,
            max_ptes_none,
        });
    }
    arms.dedup();
    if !arms.contains(&ArmSpec::None) {
        bail!("bench: the arms need `none`: every figure is measured against it");
    }
    let runs = args.runs.unwrap_or(1);
    if runs == 0 {
        bail!("bench: --runs must be at least 1");
    }
    let size = args
        .size
        .unwrap_or(if args.quick { 256 << 20 } else { 1 << 30 });
    let run_for = seconds(
        "--run-for",
        args.run_for.unwrap_or(if args.quick { 10.0 } else { 30.0 }),
    )?;
    if run_for < std::time::Duration::from_secs(1) {
        bail!("bench: --run-for must be at least 1 second");
    }
    Ok(BenchJob {
        workload,
        size,
        run_for,
        quick: args.quick,
        arms,
        runs,
        exe,
    })
}

/// `--metrics ADDR`: `PORT` alone listens on 127.0.0.1 (loopback unless told otherwise),
/// `localhost:PORT` too; else an IP address and port (`0.0.0.0:9464`, `[::1]:9464`).
pub(crate) fn metrics_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, SocketAddr};
    let s = s.trim();
    let parsed = if let Ok(port) = s.parse::<u16>() {
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    } else if let Some(port) = s.strip_prefix("localhost:") {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    } else {
        s.parse::<SocketAddr>().ok()
    };
    match parsed {
        Some(addr) => Ok(addr),
        None => bail!(
            "--metrics {s:?} is not an address: give PORT (on 127.0.0.1) or IP:PORT, e.g. 127.0.0.1:9464"
        ),
    }
}

/// `run` acts only where it was told to: never on every process.
pub(crate) fn run_target(args: &TargetArgs) -> anyhow::Result<TargetSpec> {
    if args.all {
        bail!(
            "run: --all is not a target for collapse run (it acts only where it is told to): give --pid, --cgroup, --comm or -- CMD"
        );
    }
    target_spec(args)
}

pub(crate) fn workload(kind: WorkloadKind) -> anyhow::Result<Workload> {
    let bench = |kind, args: &BenchWorkloadArgs| -> anyhow::Result<Workload> {
        let advice = match args.advise.as_str() {
            "none" => Advice::None,
            "huge" => Advice::Huge,
            "thp-off" => Advice::ThpOff,
            other => bail!("--advise {other:?}: none, huge or thp-off"),
        };
        Ok(Workload::Bench {
            kind,
            size: args.size,
            run_for: seconds("--run-for", args.run_for)?,
            advice,
        })
    };
    Ok(match kind {
        WorkloadKind::Storm { size, runs, wait } => Workload::Storm { size, runs, wait },
        WorkloadKind::Script => Workload::Script,
        WorkloadKind::Demo { hold } => Workload::Demo { hold },
        WorkloadKind::Mixed(args) => bench(BuiltIn::Mixed, &args)?,
        WorkloadKind::SparseStride { common, stride } => {
            bench(BuiltIn::SparseStride { stride }, &common)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses() {
        assert_eq!(metrics_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(
            metrics_addr("localhost:9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(metrics_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert_eq!(
            metrics_addr("0.0.0.0:80").unwrap().to_string(),
            "0.0.0.0:80"
        );
        for bad in ["", "x", "127.0.0.1", "127.0.0.1:99999", "host:1", ":9464"] {
            let err = metrics_addr(bad).unwrap_err().to_string();
            assert!(err.starts_with("--metrics "), "{err}");
        }
    }

    #[test]
    fn durations_and_byte_sizes() {
        assert_eq!(
            seconds("--duration", 1.5).unwrap(),
            Duration::from_millis(1500)
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e30] {
            let err = seconds("--duration", bad).unwrap_err().to_string();
            assert!(err.starts_with("--duration "), "{err}");
        }
        assert!(
            interval(0.0)
                .unwrap_err()
                .to_string()
                .contains("more than 0")
        );
        assert_eq!(super::super::args::parse_bytes("64K").unwrap(), 65536);
        assert_eq!(super::super::args::parse_bytes("1g").unwrap(), 1 << 30);
        assert!(super::super::args::parse_bytes("0").is_err());
        assert!(super::super::args::parse_bytes("x").is_err());
    }
}
