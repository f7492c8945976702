//! `cargo xtask bench tracer`: what tracing costs per page fault.
//!
//! `collapse workload storm` touches SIZE of memory in 4 KiB pages under MADV_NOHUGEPAGE and
//! reports ns per fault. Four arms: untraced, traced by `collapse trace --pid`, the same with
//! the large-folio hook attached (as with THP `always`), traced by `collapse trace --all`; they
//! are interleaved round by round so drift on a shared machine hits them alike, and each arm
//! keeps its best run across all rounds.
//!
//! The storm's protocol: with `--wait` it prints `ready <pid>`, then for each run reads one
//! line from stdin and prints `run <i> ns_per_fault <x>`; at the end `best ns_per_fault <x>`.
//! `collapse trace --json` prints `{"type": "attached", ...}` once the target is traced and
//! stops cleanly on SIGTERM.

use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::{
    child::{LineReader, Spawned},
    cmd::{self, Workspace, say},
    setup::setup,
};

/// The overhead the product promises (DESIGN.md: per-fault cost is a benchmarked number).
const TARGET_OVERHEAD_PCT: f64 = 10.0;
/// One storm run on 1 GiB takes about half a second; a line this late means it hangs.
const STORM_LINE_TIMEOUT: Duration = Duration::from_secs(300);
/// Loading the programs and seeding the target's bitmaps from pagemap.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct Settings {
    pub(crate) size: String,
    pub(crate) runs: u32,
    pub(crate) rounds: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Untraced,
    TracePid,
    /// `trace --pid` with the large-folio hook attached from the start, as it is when THP is
    /// `always` or a traced process has MADV_HUGEPAGE memory.
    TracePidHook,
    TraceAll,
}

impl Arm {
    const ALL: [Arm; 4] = [
        Arm::Untraced,
        Arm::TracePid,
        Arm::TracePidHook,
        Arm::TraceAll,
    ];

    fn label(self) -> &'static str {
        match self {
            Arm::Untraced => "untraced",
            Arm::TracePid => "trace --pid",
            Arm::TracePidHook => "trace --pid +hook",
            Arm::TraceAll => "trace --all",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Arm::Untraced => "untraced",
            Arm::TracePid => "trace_pid",
            Arm::TracePidHook => "trace_pid_large_folio_hook",
            Arm::TraceAll => "trace_all",
        }
    }
}

/// One storm process: the ns/fault of each run, and the best the storm itself reported.
struct StormResult {
    runs: Vec<f64>,
    best: f64,
}

pub(crate) fn run(ws: &Workspace, settings: &Settings) -> Result<()> {
    let Settings { size, runs, rounds } = settings;
    ensure!(
        *runs >= 1 && *rounds >= 1,
        "--runs and --rounds must be at least 1"
    );
    setup(ws)?;
    if !cmd::is_root() {
        bail!("bench tracer loads eBPF programs and needs root; run it as root");
    }
    let bin = ws.build_release_collapse()?;

    // results[arm][round]
    let mut results: Vec<Vec<StormResult>> = Arm::ALL.iter().map(|_| Vec::new()).collect();
    for round in 1..=*rounds {
        for (arm, arm_results) in Arm::ALL.into_iter().zip(&mut results) {
            let label = arm.label();
            let result = measure(&bin, size, *runs, arm)
                .with_context(|| format!("round {round}, arm {label}"))?;
            say!(
                "bench tracer: round {round}/{rounds}: {label:<17}: runs {} ns/fault, best {:.1}",
                result
                    .runs
                    .iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                result.best
            );
            arm_results.push(result);
        }
    }

    let best: Vec<f64> = results
        .iter()
        .map(|rounds| rounds.iter().map(|r| r.best).fold(f64::INFINITY, f64::min))
        .collect();
    let untraced = best[0];
    let overhead_pct = |ns: f64| (ns / untraced - 1.0) * 100.0;

    println!("fault storm: {size} in 4 KiB pages, best of {runs} runs x {rounds} rounds");
    println!(
        "{:<18} {:>15} {:>12}",
        "arm", "best ns/fault", "vs untraced"
    );
    for (arm, &ns) in Arm::ALL.iter().zip(&best) {
        let (vs, note) = match arm {
            Arm::Untraced => (String::new(), ""),
            _ if overhead_pct(ns) <= TARGET_OVERHEAD_PCT => {
                (format!("{:+.1} %", overhead_pct(ns)), "")
            }
            _ => (format!("{:+.1} %", overhead_pct(ns)), "  over target"),
        };
        println!("{:<18} {:>15.1} {:>12}{note}", arm.label(), ns, vs);
    }
    println!("target: tracing adds at most {TARGET_OVERHEAD_PCT} % per fault");

    let report = json!({
        "benchmark": "tracer",
        "size": size,
        "runs": runs,
        "rounds": rounds,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "arms": Arm::ALL.iter().zip(&best).zip(&results).map(|((arm, &ns), rounds)| json!({
            "arm": arm.key(),
            "best_ns_per_fault": ns,
            "overhead_pct": overhead_pct(ns),
            "within_target": overhead_pct(ns) <= TARGET_OVERHEAD_PCT,
            "ns_per_fault_by_round": rounds.iter().map(|r| &r.runs).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let dir = ws.target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("tracer.json");
    fs::write(&path, format!("{report:#}\n"))
        .with_context(|| format!("write {}", path.display()))?;
    say!("bench tracer: results written to {}", path.display());
    Ok(())
}

fn measure(bin: &Path, size: &str, runs: u32, arm: Arm) -> Result<StormResult> {
    let trace_target = match arm {
        Arm::Untraced => return Storm::spawn(bin, size, runs, false)?.finish(runs),
        Arm::TracePid | Arm::TracePidHook => None,
        Arm::TraceAll => Some("--all"),
    };
    let mut storm = Storm::spawn(bin, size, runs, true)?;
    let pid = storm.ready()?;
    let pid_arg = pid.to_string();
    let target: Vec<&str> = match trace_target {
        Some(all) => vec![all],
        None => vec!["--pid", &pid_arg],
    };
    let mut trace = Command::new(bin);
    trace
        .arg("trace")
        .args(&target)
        .args(["--json", "--interval", "3600"])
        .env(
            "COLLAPSE_LARGE_FOLIO_HOOK",
            if arm == Arm::TracePidHook { "1" } else { "0" },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let what = format!("collapse trace {}", target.join(" "));
    say!("bench tracer: $ {}", cmd::describe(&trace, Path::new("")));
    let mut trace = Spawned::spawn(&mut trace, &what, Signal::SIGTERM)?;
    let lines = LineReader::new(trace.stdout()?, &what);
    lines
        .wait_for_type("attached", ATTACH_TIMEOUT)
        .map(drop)
        .map_err(|err| {
            let status = trace
                .stop()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| format!("{e:#}"));
            err.context(format!("{what} did not attach (it ended with: {status})"))
        })?;
    // The reader thread keeps draining trace's stdout so the pipe never fills.
    drop(lines);

    let result = storm.feed(runs)?;
    if let Some(status) = trace.exited()? {
        bail!("{what} ended during the storm ({status}); the measurement is void");
    }
    let status = trace.stop()?;
    ensure!(
        status.success(),
        "{what} did not stop cleanly on SIGTERM ({status})"
    );
    Ok(result)
}

/// A `collapse workload storm` process and its stdout, line by line.
struct Storm {
    process: Spawned,
    stdin: Option<ChildStdin>,
    lines: LineReader,
}

enum StormLine {
    Ready(i32),
    Run(f64),
    Best(f64),
}

impl Storm {
    fn spawn(bin: &Path, size: &str, runs: u32, wait: bool) -> Result<Self> {
        let mut c = Command::new(bin);
        c.args([
            "workload",
            "storm",
            "--size",
            size,
            "--runs",
            &runs.to_string(),
        ]);
        if wait {
            c.arg("--wait");
        }
        c.stdin(if wait { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped());
        let what = "collapse workload storm";
        say!("bench tracer: $ {}", cmd::describe(&c, Path::new("")));
        let mut process = Spawned::spawn(&mut c, what, Signal::SIGKILL)?;
        let stdin = if wait { Some(process.stdin()?) } else { None };
        let lines = LineReader::new(process.stdout()?, what);
        Ok(Self {
            process,
            stdin,
            lines,
        })
    }

    /// The next line of the protocol; other lines are ignored.
    fn next(&mut self) -> Result<StormLine> {
        loop {
            let line = self
                .lines
                .next(STORM_LINE_TIMEOUT)?
                .ok_or_else(|| anyhow!("collapse workload storm ended before its protocol did"))?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let float = |s: &str| {
                s.parse::<f64>()
                    .with_context(|| format!("storm printed {line:?}: bad ns_per_fault"))
            };
            match fields.as_slice() {
                ["ready", pid] => {
                    return pid
                        .parse()
                        .map(StormLine::Ready)
                        .with_context(|| format!("storm printed {line:?}: bad pid"));
                }
                ["run", _, "ns_per_fault", ns] => return float(ns).map(StormLine::Run),
                ["best", "ns_per_fault", ns] => return float(ns).map(StormLine::Best),
                _ => {}
            }
        }
    }

    fn ready(&mut self) -> Result<i32> {
        match self.next()? {
            StormLine::Ready(pid) => Ok(pid),
            _ => bail!("collapse workload storm --wait did not start with `ready <pid>`"),
        }
    }

    /// Lets each run go (one stdin line each) and collects the results.
    fn feed(mut self, runs: u32) -> Result<StormResult> {
        let mut stdin = self
            .stdin
            .take()
            .context("storm was not started with --wait")?;
        let mut results = Vec::new();
        for i in 1..=runs {
            writeln!(stdin, "go")
                .and_then(|()| stdin.flush())
                .with_context(|| format!("write to storm's stdin for run {i}"))?;
            match self.next()? {
                StormLine::Run(ns) => results.push(ns),
                _ => bail!("storm: expected `run {i} ns_per_fault <x>`"),
            }
        }
        drop(stdin);
        self.best(results)
    }

    /// For a storm without --wait: reads the runs as they come.
    fn finish(mut self, runs: u32) -> Result<StormResult> {
        let mut results = Vec::new();
        while results.len() < runs as usize {
            match self.next()? {
                StormLine::Run(ns) => results.push(ns),
                StormLine::Ready(_) => {}
                StormLine::Best(_) => bail!("storm printed its best after {} runs", results.len()),
            }
        }
        self.best(results)
    }

    fn best(mut self, runs: Vec<f64>) -> Result<StormResult> {
        let best = match self.next()? {
            StormLine::Best(ns) => ns,
            _ => bail!("storm: expected `best ns_per_fault <x>` after its runs"),
        };
        let status = self.process.wait(STORM_LINE_TIMEOUT)?;
        ensure!(
            status.success(),
            "collapse workload storm failed ({status})"
        );
        Ok(StormResult { runs, best })
    }
}
