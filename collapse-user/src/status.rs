//! `collapse status`: what this kernel offers and what will work here.

use std::process::ExitCode;

pub fn run(_args: &crate::cli::StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status: not built yet")
}
