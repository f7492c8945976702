//! `cargo xtask`: set up the machine, build, run, test, lint and benchmark collapse.
//! Every task first runs `setup`, so a fresh machine needs nothing but rustup and cargo.

mod child;
mod cmd;
mod executor_bench;
mod install;
mod interrupt;
mod kernels;
mod setup;
mod soak;
mod sysfs;
mod tasks;
mod tracer_bench;

use std::{ffi::OsString, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::cmd::{Workspace, say};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test, lint and benchmark collapse"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing: LLVM 22 (apt), nightly with rust-src, bpf-linker; mount tracefs.
    Setup,
    /// Setup, then build the workspace (the eBPF programs are built by collapse-user's build.rs).
    Build {
        /// The release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, then the host tests, then the root integration tests (one at a time).
    Test,
    /// Setup, build, and run `collapse ARGS` as root (without ARGS, the main job: `collapse
    /// bench --workload mixed --quick`, release build).
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for collapse, e.g. `-- status` or `-- trace --pid 1234`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Build the release binary and install it with the systemd unit
    /// (contrib/collapse.service) and the example config (/etc/collapse/collapse.toml,
    /// never overwritten).
    Install {
        /// Install into DIR instead of / (the unit then names the paths under DIR).
        #[arg(long, default_value = "/", value_name = "DIR")]
        root: std::path::PathBuf,
        /// Where the binary goes: PREFIX/bin/collapse.
        #[arg(long, default_value = "/usr/local", value_name = "DIR")]
        prefix: std::path::PathBuf,
        /// Install this binary instead of building the release one.
        #[arg(long, value_name = "FILE")]
        binary: Option<std::path::PathBuf>,
    },
    /// Setup, then rustfmt (nightly), clippy on the host crates, clippy on the eBPF crate.
    Lint,
    /// A long `collapse trace --all` (release) on a busy host: short processes started all
    /// along and 4 processes churning memory; checks it never aborts, RSS stays flat within
    /// 10 %, counts drops and CPU per tick; writes target/bench/soak.json.
    Soak(SoakArgs),
    /// Boot Debian's 6.1 and 6.12 LTS kernels in qemu (downloaded, not installed) and run
    /// `collapse status` and the tracer's root tests inside each; as root.
    Kernels(KernelsArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The policy engine (criterion): `cargo bench -p collapse-common --bench policies`.
    Policies {
        /// Arguments for criterion, e.g. `-- seed`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Cost of tracing per page fault: a fault storm untraced, traced by pid, traced --all.
    Tracer(TracerBenchArgs),
    /// Time to 90 % huge and CPU cost on dense memory: `collapse run`, a plain
    /// process_madvise loop, khugepaged (scan_sleep 0 and default), and --jobs 1 vs 2.
    Executor(ExecutorBenchArgs),
}

#[derive(Debug, Args)]
struct KernelsArgs {
    /// Only this kernel (6.1 or 6.12); repeat for more. Default: all.
    #[arg(long = "kernel", value_name = "VERSION")]
    kernels: Vec<String>,
    /// Only this root test file (e.g. tracer); repeat for more. Default: the tracer's and
    /// executor's files.
    #[arg(long = "test", value_name = "FILE")]
    tests: Vec<String>,
    /// Also boot this bzImage of your own, under NAME (e.g. 6.6=~/linux/arch/x86/boot/bzImage);
    /// repeat for more. With an image and no --kernel, only the images boot.
    #[arg(long = "image", value_name = "NAME=PATH", value_parser = parse_image)]
    images: Vec<(String, std::path::PathBuf)>,
    /// Run the guest's vCPUs on one host thread (qemu's `-accel tcg,thread=single`): for a
    /// kernel whose live code patching trips qemu 7.2's multi-threaded TCG (6.6.87 built from
    /// x86_64_defconfig: an int3 oops in __schedule when a tracepoint is enabled). Slower.
    #[arg(long)]
    single_thread: bool,
    /// Seconds a guest may run before it is stopped.
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct ExecutorBenchArgs {
    /// Dense memory in the child of each single-target arm (e.g. 1G, 512M).
    #[arg(long, default_value = "1G", value_parser = parse_mib)]
    size: u64,
    /// Dense memory in each of the two children of the --jobs arms.
    #[arg(long, default_value = "1G", value_parser = parse_mib)]
    jobs_size: u64,
    /// Rounds of the arms, interleaved against drift.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Runs of khugepaged at its default settings (each up to --default-timeout).
    #[arg(long, default_value_t = 1)]
    default_runs: u32,
    /// Seconds after which khugepaged at its default settings is given up on.
    #[arg(long, default_value_t = 120)]
    default_timeout: u64,
    /// Seconds after which any other arm is given up on.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Milliseconds between coverage samples.
    #[arg(long, default_value_t = 50)]
    sample_ms: u64,
    /// Seconds each arm waits between populating its children and starting, so that free
    /// memory has been reported to the host (virtio-balloon) as it is for every arm.
    #[arg(long, default_value_t = 5)]
    settle: u64,
}

/// `NAME=PATH` of `kernels --image`: a kernel name and a bzImage that exists.
fn parse_image(s: &str) -> Result<(String, std::path::PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("{s:?}: expected NAME=PATH, e.g. 6.6=arch/x86/boot/bzImage"))?;
    let path = std::path::PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    Ok((name.to_owned(), path))
}

/// `1G`, `512M`, `512MiB`, or a bare number of MiB.
fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 1G or 512M"))?;
    let mib = match unit.to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => n,
        "G" | "GB" | "GIB" => n * 1024,
        _ => return Err(format!("{s:?}: the unit must be M or G")),
    };
    if mib % 2 != 0 {
        return Err(format!("{s:?}: must be a whole number of 2 MiB PMDs"));
    }
    Ok(mib)
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// How long to trace, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// collapse trace's --interval, in seconds.
    #[arg(long, default_value_t = 0.5)]
    interval: f64,
    /// Short processes (`/bin/true`) started per second (40: 24,000 in 10 minutes).
    #[arg(long, default_value_t = 40)]
    spawn_rate: u32,
}

#[derive(Debug, Args)]
struct TracerBenchArgs {
    /// Memory each storm run touches, in 4 KiB pages (passed to `collapse workload storm`).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Storm runs per process; each arm keeps its best.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Rounds of the three arms, interleaved against drift.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            say!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ws = Workspace::locate()?;
    match cli.task {
        Task::Setup => setup::setup(&ws).map(|()| ExitCode::SUCCESS),
        Task::Build { release } => tasks::build(&ws, release).map(|()| ExitCode::SUCCESS),
        Task::Test => tasks::test(&ws),
        Task::Run { release, args } => tasks::run(&ws, release, args),
        Task::Lint => tasks::lint(&ws).map(|()| ExitCode::SUCCESS),
        Task::Soak(SoakArgs {
            minutes,
            interval,
            spawn_rate,
        }) => soak::run(
            &ws,
            &soak::Settings {
                minutes,
                interval,
                spawn_rate,
            },
        ),
        Task::Install {
            root,
            prefix,
            binary,
        } => install::install(&ws, &install::Layout { root, prefix }, binary)
            .map(|()| ExitCode::SUCCESS),
        Task::Kernels(KernelsArgs {
            kernels,
            tests,
            images,
            single_thread,
            timeout,
        }) => kernels::run(
            &ws,
            &kernels::Settings {
                kernels,
                tests,
                images,
                single_thread,
                timeout,
            },
        )
        .map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
        Task::Bench {
            bench: Bench::Policies { args },
        } => tasks::bench_policies(&ws, args).map(|()| ExitCode::SUCCESS),
        Task::Bench {
            bench: Bench::Tracer(TracerBenchArgs { size, runs, rounds }),
        } => tracer_bench::run(&ws, &tracer_bench::Settings { size, runs, rounds })
            .map(|()| ExitCode::SUCCESS),
        Task::Bench {
            bench:
                Bench::Executor(ExecutorBenchArgs {
                    size,
                    jobs_size,
                    rounds,
                    default_runs,
                    default_timeout,
                    timeout,
                    sample_ms,
                    settle,
                }),
        } => executor_bench::run(
            &ws,
            &executor_bench::Settings {
                size_mib: size,
                jobs_size_mib: jobs_size,
                rounds,
                default_runs,
                default_timeout: Duration::from_secs(default_timeout),
                timeout: Duration::from_secs(timeout),
                sample_interval: Duration::from_millis(sample_ms),
                settle: Duration::from_secs(settle),
            },
        )
        .map(|()| ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn run_args(argv: &[&str]) -> (bool, Vec<String>) {
        let cli = Cli::try_parse_from(["cargo xtask"].iter().chain(argv)).unwrap();
        match cli.task {
            Task::Run { release, args } => (
                release,
                args.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            ),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_passes_everything_after_the_first_argument_to_collapse() {
        assert_eq!(run_args(&["run"]), (false, vec![]));
        assert_eq!(
            run_args(&["run", "--", "status"]),
            (false, vec!["status".into()])
        );
        assert_eq!(
            run_args(&["run", "--release", "--", "trace", "--pid", "7", "--json"]),
            (
                true,
                vec!["trace".into(), "--pid".into(), "7".into(), "--json".into()]
            )
        );
        // Without `--`: the first argument for collapse ends xtask's options; a later
        // `--release` belongs to collapse.
        assert_eq!(
            run_args(&["run", "--release", "plan", "--pid", "7", "--release"]),
            (
                true,
                vec![
                    "plan".into(),
                    "--pid".into(),
                    "7".into(),
                    "--release".into()
                ]
            )
        );
        assert_eq!(
            run_args(&["run", "--", "--help"]),
            (false, vec!["--help".into()])
        );
    }

    #[test]
    fn soak_defaults() {
        let cli = Cli::try_parse_from(["cargo xtask", "soak"]).unwrap();
        let Task::Soak(a) = cli.task else {
            panic!("parsed as {:?}", cli.task);
        };
        assert_eq!((a.minutes, a.interval, a.spawn_rate), (10.0, 0.5, 40));
    }

    #[test]
    fn bench_tracer_defaults() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench", "tracer"]).unwrap();
        let Task::Bench {
            bench: Bench::Tracer(TracerBenchArgs { size, runs, rounds }),
        } = cli.task
        else {
            panic!("parsed as {:?}", cli.task);
        };
        assert_eq!((size.as_str(), runs, rounds), ("1G", 5, 3));
    }

    #[test]
    fn bench_executor_defaults_and_sizes() {
        let cli = Cli::try_parse_from(["cargo xtask", "bench", "executor"]).unwrap();
        let Task::Bench {
            bench: Bench::Executor(a),
        } = cli.task
        else {
            panic!("parsed as {:?}", cli.task);
        };
        assert_eq!(
            (
                a.size,
                a.jobs_size,
                a.rounds,
                a.default_runs,
                a.default_timeout
            ),
            (1024, 1024, 3, 1, 120)
        );
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("2GiB"), Ok(2048));
        assert_eq!(parse_mib("64"), Ok(64));
        assert!(parse_mib("3M").is_err());
        assert!(parse_mib("1T").is_err());
        assert!(parse_mib("G").is_err());
    }
}
