//! Where the regions to plan come from: a snapshot file, stdin, or a live target.

use std::{
    fs::File,
    io::{self, BufReader},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{
    cli::{PlanArgs, TargetArgs},
    snapshot::{SnapshotRegion, read_snapshot},
};

/// The source of regions, chosen from the arguments.
#[derive(Clone, Debug)]
pub(crate) enum Input {
    File(PathBuf),
    Stdin,
    Live { target: TargetArgs, duration_s: f64 },
}

impl Input {
    pub(crate) fn from_args(args: &PlanArgs) -> anyhow::Result<Self> {
        let duration_s = args.duration;
        if !(duration_s.is_finite() && duration_s >= 0.0) {
            bail!("plan: --duration {duration_s} must be a number of seconds, 0 or more");
        }
        match (&args.input, args.target.is_empty()) {
            (None, true) => bail!(
                "plan: give --input FILE or a target (--pid, --cgroup, --comm, --all, -- CMD)"
            ),
            (Some(_), false) => bail!("plan: give either --input FILE or a target, not both"),
            (Some(_), true) if duration_s != 0.0 => {
                bail!("plan: --duration applies to a live target, not to --input")
            }
            (Some(path), true) if path == Path::new("-") => Ok(Self::Stdin),
            (Some(path), true) => Ok(Self::File(path.clone())),
            (None, false) => Ok(Self::Live {
                target: args.target.clone(),
                duration_s,
            }),
        }
    }

    /// Every region, validated.
    pub(crate) fn load(&self) -> anyhow::Result<Vec<SnapshotRegion>> {
        match self {
            Self::File(path) => {
                let file = File::open(path)
                    .with_context(|| format!("open snapshot {}", path.display()))?;
                read_snapshot(BufReader::new(file))
                    .with_context(|| format!("snapshot {}", path.display()))
            }
            Self::Stdin => read_snapshot(io::stdin().lock()).context("snapshot on stdin"),
            Self::Live { target, duration_s } => live_snapshot(target, *duration_s),
        }
    }

    /// For the report: where the regions came from.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Stdin => "stdin".to_owned(),
            Self::Live { duration_s, .. } if *duration_s > 0.0 => {
                format!("live target, traced {duration_s} s")
            }
            Self::Live { .. } => "live target, seeded from pagemap".to_owned(),
        }
    }
}

/// The tracer's snapshot of a live target. Kept apart so that the tracer can be wired in
/// here alone.
fn live_snapshot(target: &TargetArgs, duration_s: f64) -> anyhow::Result<Vec<SnapshotRegion>> {
    // A plan traces at most a few processes briefly: the tracer's default capacities suffice.
    crate::tracer::snapshot_target(target, duration_s, &crate::cli::CapacityArgs::default())
}
