//! The binary's edge: clap parses (`args`), each value is validated once and converted into its
//! stage's input type (`convert`, `policy`), the command is dispatched, and any error becomes one
//! line on stderr and a non-zero exit status. Nothing in the library sees a clap type.

mod args;
mod config;
mod convert;
mod policy;

use std::{
    fs::File,
    io::{self, BufReader},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, error::ErrorKind};
use collapse::{
    bench::report,
    demo,
    kernel::{journal, thp::ThpSettings},
    metrics::{self, Feed, Metrics, WithMetrics},
    pipeline::{self, Reload, RunJob, RunOutput},
    planner::{self, Origin},
    snapshot::{SnapshotRegion, read_snapshot},
    status,
    tracer::{self, Capacity, Target, Ticks, TraceJob, TraceOutput, TracePrinter},
    workload,
};
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::{
    args::{BenchArgs, Cli, Command, PlanArgs, ReportArgs, RunArgs, TraceArgs},
    convert::PlanInput,
};

/// Parses arguments, runs the command, and turns any error into one line on stderr and a
/// non-zero exit status.
pub fn main() -> ExitCode {
    // Like other command-line tools: a closed pipe (`| head`) ends us quietly instead of
    // failing a print.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // The matches too: which `run` flags the command line gave itself (they win over --config).
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(err) => return usage_error(err),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    recover_sysfs();
    let result = match cli.command {
        Command::Status(args) => status::run(args.json)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Trace(args) => trace(&args),
        Command::Plan(args) => plan(&args),
        Command::Run(args) => run(&args, matches.subcommand_matches("run")),
        Command::Bench(args) => bench(&args),
        Command::Demo(args) => demo(args.duration),
        Command::Report(args) => rerender(&args),
        Command::Workload(args) => convert::workload(args.kind).and_then(|w| Ok(workload::run(w)?)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the chain of contexts, outermost first. A cause that spans lines (a
            // verifier log) is cut to its first; COLLAPSE_DEBUG=1 prints all of it after.
            let text = format!("{err:#}");
            match text.split_once('\n') {
                None => eprintln!("collapse: {text}"),
                Some((first, _)) => {
                    eprintln!("collapse: {first} (more with COLLAPSE_DEBUG=1)");
                    if std::env::var_os("COLLAPSE_DEBUG").is_some_and(|v| v == "1") {
                        eprintln!("{text}");
                    }
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn trace(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let interval = convert::interval(args.interval)?;
    let duration = args
        .duration
        .map(|d| convert::seconds("--duration", d))
        .transpose()?;
    if let Some(path) = &args.snapshot {
        tracer::check_snapshot_path(path)?;
    }
    // A closed stdout must not kill us before the snapshot is written and the command stopped:
    // writes fail with EPIPE instead, and the trace ends on it. (The command gets the default
    // back before it execs.)
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let target = Target::resolve(&convert::target_spec(&args.target)?)?;
    let output = if args.json {
        TraceOutput::Json {
            events: args.events,
        }
    } else {
        TraceOutput::Human {
            events: args.events,
            redraw: !args.events && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        }
    };
    let metrics_addr = args
        .metrics
        .as_deref()
        .map(convert::metrics_addr)
        .transpose()?;
    let capacity = convert::capacity(&args.capacity);
    let job = TraceJob {
        capacity,
        ticks: Ticks { interval, duration },
        output,
        snapshot: args.snapshot.clone(),
    };
    // Ctrl-C and SIGTERM are caught from here on: one during seeding still ends with a
    // snapshot.
    let (rt, mut signals) = runtime()?;
    let printer = TracePrinter { output };
    let traced = match metrics_addr {
        None => {
            let mut printer = printer;
            rt.block_on(tracer::trace_with(
                target,
                job,
                &mut printer,
                signals.recv(),
            ))
        }
        Some(addr) => {
            let metrics = Metrics::new(false);
            let _endpoint = serve_metrics(&rt, addr, &metrics)?;
            let mut handler = WithMetrics {
                inner: printer,
                feed: Feed::new(metrics, capacity.max_regions),
            };
            rt.block_on(tracer::trace_with(
                target,
                job,
                &mut handler,
                signals.recv(),
            ))
        }
    };
    match traced {
        // Whoever read us went away (`| head -1`): the snapshot is written and the command
        // stopped; like other tools in a pipeline, end quietly.
        Err(tracer::TracerError::OutputClosed) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
        Ok(_) => Ok(ExitCode::SUCCESS),
    }
}

fn plan(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let overrides = policy::overrides(&args.policy)?;
    let mode = convert::plan_mode(args, &overrides)?;
    let input = convert::plan_input(args)?;
    let settings = planner::resolve(&overrides, mode.is_sweep(), ThpSettings::read)?;
    let regions = load_regions(args, &input)?;
    planner::run(&settings, mode, input.describe(), &regions, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// Every region of the plan's input, validated.
fn load_regions(args: &PlanArgs, input: &PlanInput) -> anyhow::Result<Vec<SnapshotRegion>> {
    match input {
        PlanInput::File(path) => {
            let file =
                File::open(path).with_context(|| format!("open snapshot {}", path.display()))?;
            read_snapshot(BufReader::new(file))
                .with_context(|| format!("snapshot {}", path.display()))
        }
        PlanInput::Stdin => read_snapshot(io::stdin().lock()).context("snapshot on stdin"),
        PlanInput::Live { duration } => {
            let target = Target::resolve(&convert::target_spec(&args.target)?)?;
            let (rt, mut signals) = runtime()?;
            // A plan traces at most a few processes briefly: the default capacities suffice.
            Ok(rt.block_on(tracer::snapshot_of(
                target,
                Capacity::default(),
                *duration,
                signals.recv(),
            ))?)
        }
    }
}

/// `run`'s arguments with its config file's values under them (a flag given wins).
fn run_args(args: &RunArgs, given: Option<&ArgMatches>) -> anyhow::Result<RunArgs> {
    match &args.config {
        None => Ok(args.clone()),
        Some(path) => Ok(config::apply(
            &config::load(path)?,
            args,
            &config::Given(given),
        )),
    }
}

/// The settings a SIGHUP may change, checked as the flags are.
fn reloadable(args: &RunArgs) -> anyhow::Result<Reload> {
    let overrides = policy::overrides(&args.policy)?;
    let rails = convert::guard_rails(args)?;
    let settings = planner::resolve(&overrides, false, ThpSettings::read)?;
    Ok(Reload { settings, rails })
}

fn run(cli_args: &RunArgs, given: Option<&ArgMatches>) -> anyhow::Result<ExitCode> {
    let args = &run_args(cli_args, given)?;
    let Reload { settings, rails } = reloadable(args)?;
    let duration = args
        .duration
        .map(|d| convert::seconds("--duration", d))
        .transpose()?;
    if args.once && duration.is_some() {
        anyhow::bail!("run: --once and --duration do not go together");
    }
    let spec = convert::run_target(&args.target)?;
    let metrics_addr = args
        .metrics
        .as_deref()
        .map(convert::metrics_addr)
        .transpose()?;
    if let Origin::Defaults { reason } = &settings.origin {
        eprintln!(
            "collapse: warning: THP settings unreadable ({reason}); using the kernel defaults"
        );
    }
    let target = Target::resolve(&spec)?;
    let output = if args.json {
        RunOutput::Json
    } else {
        RunOutput::Human {
            redraw: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        }
    };
    let capacity = convert::capacity(&args.capacity);
    let (rt, mut signals) = runtime()?;
    let metrics = metrics_addr.map(|addr| (addr, Metrics::new(true)));
    let _endpoint = metrics
        .as_ref()
        .map(|(addr, m)| serve_metrics(&rt, *addr, m))
        .transpose()?;
    let reload = args
        .config
        .as_ref()
        .map(|path| watch_config(&rt, path.clone(), cli_args.clone(), given.cloned(), args))
        .transpose()?;
    let job = RunJob {
        capacity,
        settings,
        rails,
        once: args.once,
        duration,
        output,
        metrics: metrics.map(|(_, m)| Feed::new(m, capacity.max_regions)),
        reload,
    };
    let summary = rt.block_on(pipeline::run(target, job, signals.recv()))?;
    if args.once && !summary.all_fine() {
        eprintln!(
            "collapse: {} of the collapses failed",
            summary.tally.failed()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts the metrics endpoint on `rt` and says where it is.
fn serve_metrics(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    metrics: &Metrics,
) -> anyhow::Result<metrics::Endpoint> {
    let endpoint = {
        let _in_runtime = rt.enter();
        metrics::serve(addr, metrics.clone())?
    };
    if !endpoint.local_addr().ip().is_loopback() {
        eprintln!(
            "collapse: warning: metrics are served beyond this host, on {}",
            endpoint.local_addr()
        );
    }
    eprintln!(
        "collapse: metrics at http://{}/metrics",
        endpoint.local_addr()
    );
    Ok(endpoint)
}

/// On each SIGHUP, reads `path` again over the command line's own flags: valid settings go to
/// the pipeline (taken at its next pass), invalid ones are said and the old ones kept. The
/// target, outputs, capacities and endpoint stay as started (a restart changes them).
fn watch_config(
    rt: &tokio::runtime::Runtime,
    path: std::path::PathBuf,
    cli_args: RunArgs,
    given: Option<ArgMatches>,
    started: &RunArgs,
) -> anyhow::Result<std::sync::mpsc::Receiver<Reload>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut hup = {
        let _in_runtime = rt.enter();
        signal(SignalKind::hangup()).context("SIGHUP handler")?
    };
    let fixed = |a: &RunArgs| {
        format!(
            "{:?}",
            (
                &a.target,
                &a.metrics,
                a.json,
                a.once,
                a.duration,
                &a.capacity
            )
        )
    };
    let started = fixed(started);
    rt.spawn(async move {
        while hup.recv().await.is_some() {
            let next = run_args(&cli_args, given.as_ref())
                .and_then(|args| Ok((reloadable(&args)?, args)));
            match next {
                Ok((reload, args)) => {
                    if fixed(&args) != started {
                        eprintln!(
                            "collapse: {}: the target, outputs, capacities and --metrics change only at a restart; they stay as started",
                            path.display()
                        );
                    }
                    if tx.send(reload).is_err() {
                        break;
                    }
                }
                Err(err) => eprintln!(
                    "collapse: SIGHUP: {}; keeping the previous settings",
                    format!("{err:#}").replace('\n', " ")
                ),
            }
        }
    });
    Ok(rx)
}

fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the collapse binary")?;
    let job = convert::bench_job(args, exe)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rt, mut signals) = runtime()?;
    // The bench runs on a thread of its own; a signal here tells it to stop (it restores what
    // it changed and returns).
    let worker = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || collapse::bench::run(&job, &stop))
    };
    let bench = rt.block_on(async {
        let waiting = tokio::task::spawn_blocking(move || worker.join());
        tokio::pin!(waiting);
        tokio::select! {
            joined = &mut waiting => joined,
            () = signals.recv() => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                waiting.await
            }
        }
    });
    let bench = bench
        .context("waiting for the bench")?
        .map_err(|_| anyhow::anyhow!("the bench panicked"))??;
    let files = report::write(&args.out, &bench)?;
    print!("{}", report::summary_table(&bench));
    eprintln!(
        "collapse bench: report in {} ({} and {} beside it)",
        files.html.display(),
        files.markdown.display(),
        files.json.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn demo(duration: f64) -> anyhow::Result<ExitCode> {
    let duration = convert::seconds("--duration", duration)?;
    let (rt, mut signals) = runtime()?;
    rt.block_on(demo::run(duration, signals.recv()))?;
    Ok(ExitCode::SUCCESS)
}

/// Puts back what a collapse killed with SIGKILL left changed in sysfs (its restore journal
/// says what), and says so. Only root can write sysfs; others have nothing to recover.
fn recover_sysfs() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    match journal::recover() {
        Ok(recovered) => {
            for r in recovered {
                for e in &r.restored {
                    eprintln!(
                        "collapse: restored {} to {:?} (collapse pid {} was killed with it set to {:?})",
                        e.path.display(),
                        e.previous,
                        r.pid,
                        e.value
                    );
                }
                for (e, why) in &r.failed {
                    eprintln!(
                        "collapse: warning: could not restore {} to {:?} (left by collapse pid {}): {why}",
                        e.path.display(),
                        e.previous,
                        r.pid
                    );
                }
            }
        }
        Err(err) => eprintln!("collapse: warning: {err}"),
    }
}

/// `collapse report DIR`: report.md and report.html again from DIR/report.json, and the
/// summary table on stdout.
fn rerender(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let bench = report::read(&args.dir)?;
    let files = report::write_rendered(&args.dir, &bench)?;
    print!("{}", report::summary_table(&bench));
    println!(
        "\nwrote {} and {}",
        files.markdown.display(),
        files.html.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, caught: both stop the command cleanly.
struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Completes at the first SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
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

/// Help and version go to stdout as clap writes them; a usage error becomes one line.
fn usage_error(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = err.render().to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("bad arguments");
    let mut first = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    // "the following required arguments were not provided:" lists them on the lines below.
    if first.ends_with(':') {
        let listed: Vec<&str> = lines
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        if !listed.is_empty() {
            first = format!("{first} {}", listed.join(" "));
        }
    }
    eprintln!("collapse: {first} (see --help)");
    ExitCode::from(2)
}
