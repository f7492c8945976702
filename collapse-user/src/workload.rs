//! Deterministic memory workloads for the tests, the demo and the benchmarks.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct WorkloadArgs {}

pub fn run(_args: WorkloadArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("workload: not built yet")
}
