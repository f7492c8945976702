//! Deterministic memory workloads for the integration tests, the demo and the benchmarks
//! (`collapse workload ...`, hidden from `--help`), each a program of its own:
//!
//! - `storm`: the fault storm of `cargo xtask bench tracer` (touch SIZE in 4 KiB pages under
//!   MADV_NOHUGEPAGE, ns per fault per run).
//! - `script`: a process driven line by line over stdin, so a test can map, touch, unmap and
//!   then hold still while it compares the tracer with pagemap.
//! - `demo`: dense, sparse and half-full regions, populated over a few seconds.
//! - `bench`: the workloads of `collapse bench` (mixed, sparse-stride).
//!
//! `area` is the memory they all shape: an anonymous mapping with a 2 MiB-aligned start.

use std::{io, process::ExitCode, time::Duration};

/// `Err(WorkloadError::Script(...))` from a format string.
macro_rules! refuse {
    ($($arg:tt)+) => {
        return Err(WorkloadError::Script(format!($($arg)+)))
    };
}

mod area;
mod bench;
mod demo;
mod script;
mod storm;

pub use self::{
    area::{Area, AreaError},
    bench::{Advice, BuiltIn},
    script::Script,
};

/// Which workload to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Touch `size` bytes of fresh anonymous memory in 4 KiB pages, `runs` times; print ns per
    /// fault. With `wait`, print `ready <pid>` and wait for a line on stdin before each run.
    Storm { size: u64, runs: u32, wait: bool },
    /// Read commands from stdin (see `Script::command`); print `ready <pid>` first.
    Script,
    /// The demo's memory: dense, sparse and half-full regions populated over time, then held
    /// for `hold` seconds.
    Demo { hold: u64 },
    /// A bench workload (`collapse bench`): see [`bench`].
    Bench {
        kind: BuiltIn,
        size: u64,
        run_for: Duration,
        advice: Advice,
    },
}

pub fn run(workload: Workload) -> Result<ExitCode, WorkloadError> {
    match workload {
        Workload::Storm { size, runs, wait } => storm::run(size, runs, wait),
        Workload::Script => Script::default().run(),
        Workload::Demo { hold } => demo::run(hold),
        Workload::Bench {
            kind,
            size,
            run_for,
            advice,
        } => {
            bench::run(kind, size, run_for, advice)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A workload program failed: an area operation, its stdin/stdout, or a bad script line.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Area(#[from] AreaError),
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A script line the workload cannot carry out (it replies `error ...` and goes on).
    #[error("{0}")]
    Script(String),
}
