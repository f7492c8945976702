//! Every clap struct of the binary (DESIGN.md "The binary"): parsed here, validated and turned
//! into each stage's own input types in `convert`, never seen by the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "collapse", version, about = "Huge-page occupancy tracing and mTHP collapse planning", long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Kernel, THP settings, tracepoints found, and what works on this machine.
    Status(StatusArgs),
    /// Trace how processes populate their memory, live.
    Trace(TraceArgs),
    /// What each policy would collapse, and at what bloat.
    Plan(PlanArgs),
    /// Collapse now: plan the targets' regions every interval, carry out the 2M decisions
    /// with process_madvise(MADV_COLLAPSE), report the smaller ones as advice.
    Run(RunArgs),
    /// The same workload under khugepaged and under collapse: coverage over time, bloat,
    /// speed and CPU, written as a report (json, md, html).
    Bench(BenchArgs),
    /// Built-in demo: a workload with dense, sparse and half-full regions, traced live.
    Demo(DemoArgs),
    /// Re-render a bench report: report.md and report.html from DIR/report.json.
    Report(ReportArgs),
    /// Test and benchmark workload (used by tests/ and `cargo xtask bench`).
    #[command(hide = true)]
    Workload(WorkloadArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// One JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which processes to watch. `--comm` and `--cgroup` also pick up processes that start later;
/// `-- CMD` follows the command's children.
#[derive(Debug, Args, Clone)]
pub(crate) struct TargetArgs {
    /// A process to trace (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub(crate) pids: Vec<i32>,
    /// Every process in this cgroup (v2 path, e.g. /sys/fs/cgroup/system.slice/x.service).
    #[arg(long, value_name = "PATH")]
    pub(crate) cgroup: Option<PathBuf>,
    /// Every process whose command name (comm, at most 15 bytes) is NAME.
    #[arg(long, value_name = "NAME")]
    pub(crate) comm: Option<String>,
    /// Every process on the system.
    #[arg(long)]
    pub(crate) all: bool,
    /// Spawn CMD ARGS and trace it and its children (its stdout goes to stderr).
    #[arg(last = true, value_name = "CMD")]
    pub(crate) cmd: Vec<String>,
}

/// BPF map capacities (a full map is counted and shown as drops).
#[derive(Debug, Args, Clone)]
pub(crate) struct CapacityArgs {
    /// Region map entries (one per traced 2 MiB region).
    #[arg(long, default_value_t = 262_144, value_name = "N")]
    pub(crate) max_regions: u32,
    /// Ring buffer size in KiB (a power of two).
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub(crate) ringbuf_kib: u32,
    /// Processes whose mm can be attributed khugepaged events.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    pub(crate) max_processes: u32,
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Stop after S seconds.
    #[arg(long, value_name = "S")]
    pub(crate) duration: Option<f64>,
    /// Refresh the view every S seconds.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub(crate) interval: f64,
    /// Stream khugepaged events and large-folio faults as lines.
    #[arg(long)]
    pub(crate) events: bool,
    /// JSON lines instead of the live view.
    #[arg(long)]
    pub(crate) json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (PORT alone: on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// Write the region snapshot (DESIGN.md format) here at exit.
    #[arg(long, value_name = "FILE")]
    pub(crate) snapshot: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) capacity: CapacityArgs,
}

/// Policy and settings (defaults: the running kernel's).
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct PolicyArgs {
    /// seed (default), merged, scaled or pmd.
    #[arg(long, value_name = "NAME")]
    pub(crate) policy: Option<String>,
    /// Empty PTEs a PMD collapse may fill (0..511).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub(crate) max_ptes_none: Option<u16>,
    /// Enabled collapse sizes, e.g. 16K,64K,2M (order numbers 2..9 also accepted).
    #[arg(long, value_name = "LIST")]
    pub(crate) orders: Option<String>,
    /// Chunk size of the `seed` bitmap, 16K..1M (default 32K, order 3).
    #[arg(long, value_name = "SIZE")]
    pub(crate) min_order: Option<String>,
    /// Swap PTEs a collapse may bring back (0..511).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub(crate) max_ptes_swap: Option<u16>,
    /// Shared PTEs a collapse may include (0..511).
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub(crate) max_ptes_shared: Option<u16>,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Region snapshot to plan over (`-` for stdin) instead of a live target.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Apply the policy up to N times to its own output (the creep model); stops at a fixed
    /// point. With --json: the region lines (pass 1, the plan itself), one "pass" line per
    /// pass, then the summary (of pass 1, plus "passes").
    #[arg(long, value_name = "N")]
    pub(crate) passes: Option<u32>,
    /// Every policy (or only --policy) over a list of max_ptes_none values: coverage and bloat
    /// per policy and value (with --json, one "sweep" line each).
    #[arg(long)]
    pub(crate) sweep: bool,
    /// max_ptes_none values for --sweep (default 0,32,64,128,192,255,256,320,384,448,511).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) sweep_values: Option<Vec<u16>>,
    /// With --sweep: an SVG chart of coverage against bloat.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
    /// JSON lines (DESIGN.md) instead of the report.
    #[arg(long)]
    pub(crate) json: bool,
    /// For a live target: how long to trace before planning, in seconds (0 = the seeded state).
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub(crate) duration: f64,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Plan and re-check against pagemap, but collapse nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// One pass over the targets' current regions, then exit: status 0 when every attempt
    /// collapsed, was huge already, or was skipped for a stated reason.
    #[arg(long)]
    pub(crate) once: bool,
    /// Seconds between passes (a pass also runs as soon as a region changes noticeably).
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 1.0,
        value_name = "S"
    )]
    pub(crate) interval: f64,
    /// Stop after S seconds.
    #[arg(long, allow_negative_numbers = true, value_name = "S")]
    pub(crate) duration: Option<f64>,
    /// At most this much memory made huge per second, in MiB (a token bucket).
    #[arg(long, allow_negative_numbers = true, value_name = "MiB/s")]
    pub(crate) max_rate: Option<f64>,
    /// Pause collapsing while /proc/pressure/memory "some avg10" is above P percent.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 10.0,
        value_name = "P"
    )]
    pub(crate) psi_limit: f64,
    /// When a pass's slowest collapse takes longer than MS milliseconds, the interval doubles;
    /// it shrinks back once collapses are fast again.
    #[arg(
        long,
        allow_negative_numbers = true,
        default_value_t = 30.0,
        value_name = "MS"
    )]
    pub(crate) max_latency_ms: f64,
    /// Collapse up to N targets at once, one thread each (one process's collapses serialise
    /// on its mmap lock anyway).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) jobs: usize,
    /// JSON lines (DESIGN.md) instead of the live view.
    #[arg(long)]
    pub(crate) json: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (PORT alone: on 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
    /// Settings from this TOML file (keys: these flags without the leading dashes; `command`
    /// for `-- CMD`); flags given here win. SIGHUP reads it again. The systemd unit uses
    /// /etc/collapse/collapse.toml.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) capacity: CapacityArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// mixed (default), sparse-stride or redis; or give `-- CMD ARGS` instead.
    #[arg(long, value_name = "NAME")]
    pub(crate) workload: Option<String>,
    /// The baseline arms, from none, khugepaged, khugepaged-fast (default: all three).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub(crate) arms: Option<Vec<String>>,
    /// A `collapse` arm, POLICY:MAX_PTES_NONE (repeatable; default seed:255 and pmd:511).
    #[arg(long = "collapse", value_name = "POLICY:N")]
    pub(crate) collapse: Vec<String>,
    /// Runs of each arm, interleaved; the report gives medians and spreads.
    #[arg(long, value_name = "N")]
    pub(crate) runs: Option<u32>,
    /// Memory of the workload (K, M, G suffixes; default 1G, 256M with --quick).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub(crate) size: Option<u64>,
    /// Seconds of each run's measured phase (default 30, 10 with --quick).
    #[arg(long, value_name = "S")]
    pub(crate) run_for: Option<f64>,
    /// The small preset: 256 MiB, 10 s, one run.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Where the report goes.
    #[arg(long, value_name = "DIR", default_value = "collapse-report")]
    pub(crate) out: PathBuf,
    /// A program to bench instead of a built-in workload (its runtime is the metric).
    #[arg(last = true, value_name = "CMD")]
    pub(crate) cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long to trace the demo workload, in seconds.
    #[arg(long, default_value_t = 15.0, value_name = "S")]
    pub(crate) duration: f64,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The directory `collapse bench --out DIR` wrote.
    #[arg(value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct WorkloadArgs {
    #[command(subcommand)]
    pub(crate) kind: WorkloadKind,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkloadKind {
    /// Touch SIZE of fresh anonymous memory in 4 KiB pages, RUNS times; print ns per fault.
    Storm {
        /// Bytes per run (K, M, G suffixes).
        #[arg(long, default_value = "1G", value_parser = parse_bytes)]
        size: u64,
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Print `ready <pid>` and wait for a line on stdin before each run.
        #[arg(long)]
        wait: bool,
    },
    /// Read commands from stdin (see `Script::command`); print `ready <pid>` first.
    Script,
    /// The demo's memory: dense, sparse and half-full regions populated over time.
    Demo {
        /// Seconds to keep running after populating.
        #[arg(long, default_value_t = 3600)]
        hold: u64,
    },
    /// The bench's `mixed` workload: a hot array chased at random beside sparse and
    /// mid-density regions.
    Mixed(BenchWorkloadArgs),
    /// The bench's `sparse-stride` workload: every STRIDE-th page touched, then read.
    SparseStride {
        #[command(flatten)]
        common: BenchWorkloadArgs,
        #[arg(long, default_value_t = 16)]
        stride: u64,
    },
}

#[derive(Debug, Args)]
pub(crate) struct BenchWorkloadArgs {
    /// Bytes of memory (K, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub(crate) size: u64,
    /// Seconds of the measured phase.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) run_for: f64,
    /// none, huge (MADV_HUGEPAGE after populating) or thp-off (prctl).
    #[arg(long, default_value = "none")]
    pub(crate) advise: String,
}

/// `1G`, `256M`, `64K` or plain bytes (a clap value parser).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 1G, 256M, 64K)"))
}
