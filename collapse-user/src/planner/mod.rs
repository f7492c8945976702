//! `collapse plan`: the policies of collapse-common over region snapshots.

use std::process::ExitCode;

pub fn run(_args: crate::cli::PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("plan: not built yet")
}
