//! The fault storm of `cargo xtask bench tracer`: SIZE of fresh memory touched in 4 KiB
//! pages, RUNS times, ns per fault printed for each.

use std::{
    io::{self, BufRead, Write},
    process::ExitCode,
    time::Instant,
};

use nix::sys::mman::MmapAdvise;

use super::{Area, WorkloadError};

pub(super) fn run(size: u64, runs: u32, wait: bool) -> Result<ExitCode, WorkloadError> {
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    if wait {
        writeln!(out, "ready {}", std::process::id())?;
        out.flush()?;
    }
    let mut best = f64::INFINITY;
    for run in 1..=runs {
        if wait {
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                refuse!("stdin closed before run {run}");
            }
        }
        let area = Area::map(size, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
        let pages = area.pages();
        let t0 = Instant::now();
        area.touch(0, pages)?;
        let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
        drop(area);
        best = best.min(ns);
        writeln!(out, "run {run} ns_per_fault {ns:.1}")?;
        out.flush()?;
    }
    writeln!(out, "best ns_per_fault {best:.1}")?;
    Ok(ExitCode::SUCCESS)
}
