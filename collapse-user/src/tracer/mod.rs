//! `collapse trace`: load the eBPF programs, keep the occupancy bitmaps, show them live.

use std::process::ExitCode;

pub fn run(_args: crate::cli::TraceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("trace: not built yet")
}

pub fn demo(_args: crate::cli::DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo: not built yet")
}
