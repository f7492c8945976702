//! The planner stage: (`&[SnapshotRegion]`, `&PlanSettings`) → region plans and a tally, and
//! the writers of `collapse plan` (the report, the sweep, the creep model, their JSON lines).
//!
//! Everything the user gave (flags, settings, the whole input) is validated before the first
//! byte goes to stdout, so a bad input is one error line and no partial report.

mod creep;
mod error;
mod json;
mod region_plan;
mod report;
mod settings;
mod sweep;
mod tally;

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
};

use collapse_common::policy::{Policy, merged_warns};

pub use self::{
    error::PlanError,
    json::PlanLine,
    region_plan::{RegionPlan, plan_regions},
    settings::{MAX_PTES, Origin, Overrides, PlanSettings, kernel_orders, resolve},
    sweep::{SweepPoint, run as sweep, write as write_sweep},
    tally::{OrderTally, Tally},
};
use crate::snapshot::SnapshotRegion;

/// What `plan` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One policy; with `passes`, the creep model after it.
    Plan { passes: Option<u32> },
    /// Several policies over several max_ptes_none values.
    Sweep {
        policies: Vec<Policy>,
        values: Vec<u16>,
        plot: Option<PathBuf>,
    },
}

impl Mode {
    pub fn is_sweep(&self) -> bool {
        matches!(self, Self::Sweep { .. })
    }
}

/// A validated plan: its settings, its regions, and what to warn about.
pub struct Job<'a> {
    pub settings: &'a PlanSettings,
    /// Where the regions came from, for the report.
    pub input: String,
    pub regions: &'a [SnapshotRegion],
    /// Said in the report (and in the JSON summary): not errors, but they change the result.
    pub warnings: Vec<String>,
    pub json: bool,
}

/// `collapse plan` over `regions` (from `input`), written to stdout.
pub fn run(
    settings: &PlanSettings,
    mode: Mode,
    input: String,
    regions: &[SnapshotRegion],
    json: bool,
) -> Result<(), PlanError> {
    let mut warnings = Vec::new();
    // Said on stderr too (it changes every number, and JSON readers may not look for it), but
    // only once nothing can fail any more: an error stays the one line on stderr.
    let mut stderr_warning = None;
    if let Origin::Defaults { reason } = &settings.origin {
        let warning = format!("THP settings unreadable ({reason}); using the kernel defaults");
        stderr_warning = Some(warning.clone());
        warnings.push(warning);
    }
    if settings.kernel_orders_empty {
        warnings.push(
            "the kernel enables no collapse size (THP enabled is never, or every hugepages-*kB/enabled is never): \
             planning with nothing enabled; give --orders to plan anyway"
                .to_owned(),
        );
    }
    if matches!(mode, Mode::Plan { .. })
        && settings.policy == Policy::Merged
        && merged_warns(&settings.settings)
    {
        warnings.push(merged_warning(settings.settings.max_ptes_none()));
    }
    // policies.md: `seed` never chooses an order below its chunk order.
    let chunk = settings.settings.chunk_order();
    if settings.policy == Policy::Seed
        && !settings.settings.orders().is_empty()
        && settings.settings.orders().iter().all(|k| k < chunk)
    {
        warnings.push(format!(
            "seed chooses no size below its chunk ({} KiB, --min-order): none of the enabled sizes can be chosen",
            4u32 << chunk
        ));
    }
    let job = Job {
        settings,
        input,
        regions,
        warnings,
        json,
    };

    // The sweep and its plot first: a plot that cannot be written is an error with no output.
    let points = match &mode {
        Mode::Plan { .. } => None,
        Mode::Sweep {
            policies,
            values,
            plot,
        } => {
            let points = sweep::run(regions, policies, values, &settings.settings)?;
            if let Some(path) = plot {
                sweep::plot(&points, policies, path)?;
            }
            Some(points)
        }
    };
    if let Some(warning) = stderr_warning {
        eprintln!("collapse: warning: {warning}");
    }
    let mut out = BufWriter::new(io::stdout().lock());
    match (mode, points) {
        (Mode::Plan { passes }, _) => report::write(&mut out, &job, passes),
        (Mode::Sweep { plot, .. }, points) => {
            sweep::write(&mut out, &job, &points.unwrap_or_default(), plot.as_deref())
        }
    }
    .and_then(|()| out.flush())
    .map_err(PlanError::Stdout)
}

/// The warning `merged` earns (policies.md): the kernel warns once and uses 0 below 2M.
pub(crate) fn merged_warning(max_ptes_none: u16) -> String {
    format!(
        "max_ptes_none {max_ptes_none} is neither 0 nor 511: the kernel (7.2) warns and allows no empty PTEs below 2M"
    )
}
