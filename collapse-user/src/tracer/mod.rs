//! `collapse trace`: load the eBPF programs, keep the per-(process, PMD) occupancy bitmaps
//! exact, and show them live.
//!
//! `bpf` loads and attaches the programs; `target` decides which processes; `session` keeps
//! the bitmaps exact (seeding, resyncs, exits); `view` turns the maps into what people and
//! programs read.

pub mod bpf;
pub mod session;
pub mod target;
pub mod view;

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use collapse_common::event::Event;
use serde_json::json;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

pub use self::{
    bpf::Capacity,
    session::{Observed, Session},
    target::Target,
};
use crate::{
    cli::{CapacityArgs, DemoArgs, TargetArgs, TraceArgs},
    snapshot::{SnapshotRegion, write_snapshot},
};

impl From<&CapacityArgs> for Capacity {
    fn from(c: &CapacityArgs) -> Self {
        Self {
            max_regions: c.max_regions,
            ringbuf_bytes: c.ringbuf_kib.saturating_mul(1024),
            max_processes: c.max_processes,
        }
    }
}

/// How a drive of the session reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Human { events: bool, redraw: bool },
    Json { events: bool },
    Quiet,
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Signal,
    Duration,
    TargetsGone,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Duration => "duration",
            Self::TargetsGone => "targets ended",
        }
    }
}

/// A duration argument: 0 up to a year (far enough to mean "until stopped", near enough that
/// adding it to now cannot overflow).
fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    const YEAR: f64 = 365.0 * 86_400.0;
    if !s.is_finite() || !(0.0..=YEAR).contains(&s) {
        bail!("{name} {s} is not a number of seconds from 0 to {YEAR}");
    }
    Ok(Duration::from_secs_f64(s))
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let interval = seconds("--interval", args.interval)?;
    if interval.is_zero() {
        bail!("--interval must be more than 0 seconds");
    }
    let duration = args
        .duration
        .map(|d| seconds("--duration", d))
        .transpose()?;
    if let Some(path) = &args.snapshot {
        check_writable(path)?;
    }
    let target = Target::resolve(&args.target)?;
    // Ctrl-C and SIGTERM are caught from here on: one during seeding still ends with a
    // snapshot.
    let (rt, mut signals) = runtime()?;
    let mut session = Session::start(target, Capacity::from(&args.capacity))?;
    let output = if args.json {
        Output::Json {
            events: args.events,
        }
    } else {
        Output::Human {
            events: args.events,
            redraw: !args.events && std::io::stdout().is_terminal(),
        }
    };
    let stop = rt.block_on(drive(
        &mut session,
        &mut signals,
        output,
        interval,
        duration,
    ));
    // An error while tracing still leaves the snapshot of what was traced.
    if let Some(path) = &args.snapshot {
        let regions = session.snapshot()?;
        write_atomically(path, &regions)?;
        if output != Output::Quiet && !args.json {
            eprintln!(
                "collapse: wrote {} regions to {}",
                regions.len(),
                path.display()
            );
        }
    }
    let stop = stop?;
    if args.json {
        println!("{}", json!({"type": "end", "reason": stop.name()}));
    }
    session.stop_child();
    Ok(ExitCode::SUCCESS)
}

/// Traces `target` for `duration_s` seconds (0: just the seeded state) and returns its regions:
/// the live input of `collapse plan`.
pub fn snapshot_target(
    args: &TargetArgs,
    duration_s: f64,
    capacity: &CapacityArgs,
) -> anyhow::Result<Vec<SnapshotRegion>> {
    let duration = seconds("--duration", duration_s)?;
    let target = Target::resolve(args)?;
    let (rt, mut signals) = runtime()?;
    let mut session = Session::start(target, Capacity::from(capacity))?;
    if !duration.is_zero() {
        rt.block_on(drive(
            &mut session,
            &mut signals,
            Output::Quiet,
            Duration::from_secs(1),
            Some(duration),
        ))?;
    }
    let regions = session.snapshot()?;
    session.stop_child();
    Ok(regions)
}

/// `collapse demo`: the built-in workload (dense, sparse and half-full regions) traced live.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duration = seconds("--duration", args.duration)?;
    let exe = std::env::current_exe().context("finding the collapse binary")?;
    let hold = (duration.as_secs() + 5).to_string();
    let target = TargetArgs {
        cmd: vec![
            exe.display().to_string(),
            "workload".into(),
            "demo".into(),
            "--hold".into(),
            hold,
        ],
        ..TargetArgs::default()
    };
    eprintln!(
        "collapse demo: a workload with 8 dense, 8 sparse (1 page in 32) and 8 half-full 2 MiB regions,\n\
         populated over ~3 s, then marked MADV_HUGEPAGE for khugepaged; traced for {:.0} s (Ctrl-C stops).",
        duration.as_secs_f64()
    );
    let (rt, mut signals) = runtime()?;
    let mut session = Session::start(
        Target::resolve(&target)?,
        Capacity::from(&CapacityArgs::default()),
    )?;
    session.capture_at_hugepage_advice = true;
    let output = Output::Human {
        events: true,
        redraw: false,
    };
    rt.block_on(drive(
        &mut session,
        &mut signals,
        output,
        Duration::from_secs(1),
        Some(duration),
    ))?;
    // Plan over the memory as the workload populated it (it asks for huge pages once done),
    // not as khugepaged has left it since.
    let regions = match session.at_hugepage_advice.take() {
        Some(regions) => regions,
        None => session.snapshot()?,
    };
    session.stop_child();
    println!();
    crate::planner::print_demo_comparison(&regions)?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, caught: both stop tracing cleanly.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// The event loop, and the stop signals caught from now on.
fn runtime() -> anyhow::Result<(tokio::runtime::Runtime, StopSignals)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let signals = {
        let _in_runtime = rt.enter();
        StopSignals {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        }
    };
    Ok((rt, signals))
}

/// Fails early, before anything is traced, if the snapshot cannot be written.
fn check_writable(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "cannot write snapshot {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Writes the snapshot to a temporary file beside `path`, then renames it: never half-written.
fn write_atomically(path: &Path, regions: &[SnapshotRegion]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-collapse");
    let written = (|| {
        let file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        write_snapshot(&mut w, regions).with_context(|| format!("writing {}", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn report(session: &mut Session, output: Output, events: &[Event]) -> anyhow::Result<()> {
    let elapsed = session.started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut observed = Vec::new();
    for ev in events {
        observed.extend(session.handle(ev)?);
        observed.extend(session.take_hook_news());
    }
    for o in observed {
        match output {
            Output::Human { events: true, .. } => {
                writeln!(out, "{}", view::render_observed(&o, elapsed))?
            }
            Output::Json { events: true } => writeln!(out, "{}", view::observed_json(&o, elapsed))?,
            _ => {}
        }
    }
    Ok(())
}

async fn drive(
    session: &mut Session,
    signals: &mut StopSignals,
    output: Output,
    interval: Duration,
    duration: Option<Duration>,
) -> anyhow::Result<Stop> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
    // the AsyncFd holds it.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(session.bpf.take_events()?, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let deadline = duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    match output {
        Output::Json { .. } => {
            let pids: Vec<u32> = session.procs.keys().copied().collect();
            println!(
                "{}",
                json!({
                    "type": "attached",
                    "pids": pids,
                    "pid_max": session.bpf.pid_limit,
                    "missing": session.bpf.missing,
                    "fast_path": session.bpf.fast_path,
                    "slow_path": session.bpf.slow_path,
                    "large_folio_hook": session.bpf.large_folio_hook,
                })
            );
        }
        Output::Human { .. } => {
            eprintln!(
                "collapse: tracing {} ({}); Ctrl-C to stop",
                crate::render::count(session.procs.len() as u64, "process"),
                session
                    .procs
                    .values()
                    .map(|p| format!("{} {}", p.tgid, p.comm))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for m in &session.bpf.missing {
                eprintln!("collapse: warning: not attached: {m}");
            }
        }
        Output::Quiet => {}
    }
    std::io::stdout().flush()?;
    // When a tick last showed the state, and whether anything happened since.
    let mut shown_at: Option<Instant> = None;
    let stop = loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.int.recv() => break Stop::Signal,
            _ = signals.term.recv() => break Stop::Signal,
            () = sleep => break Stop::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let events = session::drain(guard.get_inner_mut());
                guard.clear_ready();
                report(session, output, &events)?;
                if !events.is_empty() {
                    shown_at = None;
                }
            }
            _ = tick.tick() => {
                let mut joined = session.rescan()?;
                joined.extend(session.take_hook_news());
                let elapsed = session.started.elapsed().as_secs_f64();
                for o in &joined {
                    match output {
                        Output::Human { events: true, .. } => println!("{}", view::render_observed(o, elapsed)),
                        Output::Json { events: true } => println!("{}", view::observed_json(o, elapsed)),
                        _ => {}
                    }
                }
                session.refresh()?;
                show(session, output)?;
                shown_at = Some(Instant::now());
                if session.targets_gone() {
                    break Stop::TargetsGone;
                }
            }
        }
        std::io::stdout().flush()?;
    };
    // What arrived before the stop still counts.
    let events = session::drain(ring.get_mut());
    session.bpf.give_back_events(ring.into_inner());
    report(session, output, &events)?;
    session.resync_pending()?;
    // The final state, unless a tick has just shown it.
    let just_shown = shown_at.is_some_and(|t| t.elapsed() < interval / 4);
    if output != Output::Quiet && (!events.is_empty() || !just_shown) {
        session.refresh()?;
        show(session, output)?;
    }
    Ok(stop)
}

fn show(session: &Session, output: Output) -> anyhow::Result<()> {
    let sample = view::sample(session)?;
    let mut out = std::io::stdout().lock();
    match output {
        Output::Human { redraw, .. } => {
            if redraw {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(out, "{}", view::render(&sample))?;
        }
        Output::Json { .. } => writeln!(out, "{}", view::sample_json(&sample))?,
        Output::Quiet => {}
    }
    Ok(())
}
