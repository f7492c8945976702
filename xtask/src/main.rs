//! `cargo xtask`: set up the machine, build, run, test, lint and benchmark collapse.
//! Every task first runs `setup`, so a fresh machine needs nothing but rustup and cargo.

mod child;
mod cmd;
mod setup;
mod tasks;
mod tracer_bench;

use std::{ffi::OsString, process::ExitCode};

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
    /// Setup, build, and run `collapse ARGS` as root (`collapse demo` without ARGS).
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
    /// Setup, then rustfmt (nightly), clippy on the host crates, clippy on the eBPF crate.
    Lint,
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
        Task::Bench {
            bench: Bench::Policies { args },
        } => tasks::bench_policies(&ws, args).map(|()| ExitCode::SUCCESS),
        Task::Bench {
            bench: Bench::Tracer(TracerBenchArgs { size, runs, rounds }),
        } => tracer_bench::run(&ws, &tracer_bench::Settings { size, runs, rounds })
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
}
