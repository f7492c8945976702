//! Command-line surface (DESIGN.md "The binary"). Each subcommand hands its parsed arguments
//! to the module that owns the stage.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, error::ErrorKind};

#[derive(Debug, Parser)]
#[command(name = "collapse", version, about = "Huge-page occupancy tracing and mTHP collapse planning", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Kernel, THP settings, tracepoints found, and what works on this machine.
    Status(StatusArgs),
    /// Trace how processes populate their memory, live.
    Trace(TraceArgs),
    /// What each policy would collapse, and at what bloat.
    Plan(PlanArgs),
    /// Built-in demo: a workload with dense, sparse and half-full regions, traced live.
    Demo(DemoArgs),
    /// Test and benchmark workload (used by tests/ and `cargo xtask bench`).
    #[command(hide = true)]
    Workload(crate::workload::WorkloadArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Which processes to watch. `--comm` and `--cgroup` also pick up processes that start later;
/// `-- CMD` follows the command's children.
#[derive(Debug, Args, Default, Clone)]
pub struct TargetArgs {
    /// A process to trace (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<i32>,
    /// Every process in this cgroup (v2 path, e.g. /sys/fs/cgroup/system.slice/x.service).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Every process whose command name (comm, at most 15 bytes) is NAME.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Every process on the system.
    #[arg(long)]
    pub all: bool,
    /// Spawn CMD ARGS and trace it and its children (its stdout goes to stderr).
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

impl TargetArgs {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.cgroup.is_none()
            && self.comm.is_none()
            && !self.all
            && self.cmd.is_empty()
    }
}

/// BPF map capacities (a full map is counted and shown as drops).
#[derive(Debug, Args, Clone)]
pub struct CapacityArgs {
    /// Region map entries (one per traced 2 MiB region).
    #[arg(long, default_value_t = 262_144, value_name = "N")]
    pub max_regions: u32,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub ringbuf_kib: u32,
    /// Processes whose mm can be attributed khugepaged events.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub max_processes: u32,
}

impl Default for CapacityArgs {
    fn default() -> Self {
        Self {
            max_regions: 262_144,
            ringbuf_kib: 1024,
            max_processes: 16_384,
        }
    }
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Stop after S seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Refresh the view every S seconds.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub interval: f64,
    /// Stream khugepaged events and large-folio faults as lines.
    #[arg(long)]
    pub events: bool,
    /// JSON lines instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// Write the region snapshot (DESIGN.md format) here at exit.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    #[command(flatten)]
    pub capacity: CapacityArgs,
}

/// Policy and settings (defaults: the running kernel's).
#[derive(Debug, Args, Clone, Default)]
pub struct PolicyArgs {
    /// seed (default), merged, scaled or pmd.
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// Empty PTEs a PMD collapse may fill (0..511).
    #[arg(long, value_name = "N")]
    pub max_ptes_none: Option<u16>,
    /// Enabled collapse sizes, e.g. 16K,64K,2M (order numbers 2..9 also accepted).
    #[arg(long, value_name = "LIST")]
    pub orders: Option<String>,
    /// Chunk size of the `seed` bitmap, 16K..1M (default 32K, order 3).
    #[arg(long, value_name = "SIZE")]
    pub min_order: Option<String>,
    /// Swap PTEs a collapse may bring back (0..511).
    #[arg(long, value_name = "N")]
    pub max_ptes_swap: Option<u16>,
    /// Shared PTEs a collapse may include (0..511).
    #[arg(long, value_name = "N")]
    pub max_ptes_shared: Option<u16>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Region snapshot to plan over (`-` for stdin) instead of a live target.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Apply the policy up to N times to its own output (the creep model); stops at a fixed
    /// point. With --json: the region lines (pass 1, the plan itself), one "pass" line per
    /// pass, then the summary (of pass 1, plus "passes").
    #[arg(long, value_name = "N")]
    pub passes: Option<u32>,
    /// Every policy (or only --policy) over a list of max_ptes_none values: coverage and bloat
    /// per policy and value (with --json, one "sweep" line each).
    #[arg(long)]
    pub sweep: bool,
    /// max_ptes_none values for --sweep (default 0,32,64,128,192,255,256,320,384,448,511).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub sweep_values: Option<Vec<u16>>,
    /// With --sweep: an SVG chart of coverage against bloat.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// JSON lines (DESIGN.md) instead of the report.
    #[arg(long)]
    pub json: bool,
    /// For a live target: how long to trace before planning, in seconds (0 = the seeded state).
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub duration: f64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to trace the demo workload, in seconds.
    #[arg(long, default_value_t = 15.0, value_name = "S")]
    pub duration: f64,
}

/// Parses arguments, runs the command, and turns any error into one line on stderr and a
/// non-zero exit status.
pub fn main() -> ExitCode {
    // Like other command-line tools: a closed pipe (`| head`) ends us quietly instead of
    // failing a print.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let result = match cli.command {
        Command::Status(args) => crate::status::run(&args),
        Command::Trace(args) => crate::tracer::run(args),
        Command::Plan(args) => crate::planner::run(args),
        Command::Demo(args) => crate::tracer::demo(args),
        Command::Workload(args) => crate::workload::run(args),
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
    let first = text.lines().next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("collapse: {first} (see --help)");
    ExitCode::from(2)
}
