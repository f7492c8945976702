//! `collapse plan`: the policies of collapse-common over region snapshots.
//!
//! Everything the user gave (flags, settings, the whole input) is validated before the first
//! byte goes to stdout, so a bad input is one error line and no partial report.

mod creep;
mod input;
mod region_plan;
mod report;
mod settings;
mod sweep;
mod tally;

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use collapse_common::policy::{MAX_ORDER, MIN_ORDER, Policy, merged_warns};

pub use self::region_plan::{RegionPlan, plan_regions};
use self::{
    input::Input,
    settings::{MAX_PTES, Origin, Overrides, PlanSettings},
};
use crate::{cli::PlanArgs, kernel::thp::ThpSettings, snapshot::SnapshotRegion};

/// max_ptes_none values of `--sweep` unless `--sweep-values` says otherwise.
const DEFAULT_SWEEP_VALUES: [u16; 11] = [0, 32, 64, 128, 192, 255, 256, 320, 384, 448, 511];

/// What `plan` prints.
enum Mode {
    /// One policy; with `passes`, the creep model after it.
    Plan { passes: Option<u32> },
    /// Several policies over several max_ptes_none values.
    Sweep {
        policies: Vec<Policy>,
        values: Vec<u16>,
        plot: Option<PathBuf>,
    },
}

/// A validated plan: its settings, its regions, and what to warn about.
pub(crate) struct Job<'a> {
    pub settings: &'a PlanSettings,
    pub input: String,
    pub regions: &'a [SnapshotRegion],
    /// Said in the report (and in the JSON summary): not errors, but they change the result.
    pub warnings: Vec<String>,
    pub json: bool,
}

pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides::parse(&args.policy)?;
    let mode = mode(&args, &overrides)?;
    let input = Input::from_args(&args)?;
    let sweeping = matches!(mode, Mode::Sweep { .. });
    let settings = settings::resolve(&overrides, sweeping, ThpSettings::read)?;
    let regions = input.load()?;

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
        settings: &settings,
        input: input.describe(),
        regions: &regions,
        warnings,
        json: args.json,
    };

    // The sweep and its plot first: a plot that cannot be written is an error with no output.
    let points = match &mode {
        Mode::Plan { .. } => None,
        Mode::Sweep {
            policies,
            values,
            plot,
        } => {
            let points = sweep::run(&regions, policies, values, &settings.settings)?;
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
    .context("write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// For `collapse demo`: every policy over the traced regions at max_ptes_none 0, 255 and the
/// kernel's value, with every collapse size 16K..2M enabled (the running kernel may enable
/// only 2M, which would make the policies look alike), as the `--sweep` table on stdout.
pub fn print_demo_comparison(regions: &[SnapshotRegion]) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    write_demo_comparison(&mut out, regions)?;
    out.flush().context("write to stdout")
}

/// [`print_demo_comparison`] into `out`.
pub fn write_demo_comparison(
    out: &mut impl Write,
    regions: &[SnapshotRegion],
) -> anyhow::Result<()> {
    let every_size = Overrides {
        orders: Some((MIN_ORDER..=MAX_ORDER).collect()),
        ..Overrides::default()
    };
    // Not a sweep for `resolve`: the kernel's max_ptes_none is one of the values shown.
    let mut settings = settings::resolve(&every_size, false, ThpSettings::read)?;
    // Said in the line above the table instead.
    settings.flags.clear();
    let mut warnings = Vec::new();
    if let Origin::Defaults { reason } = &settings.origin {
        warnings.push(format!(
            "THP settings unreadable ({reason}); using the kernel defaults"
        ));
    }
    let mut values = vec![0, 255, settings.settings.max_ptes_none()];
    values.sort_unstable();
    values.dedup();
    let points = sweep::run(regions, &Policy::ALL, &values, &settings.settings)?;
    let job = Job {
        settings: &settings,
        input: "the demo workload".to_owned(),
        regions,
        warnings,
        json: false,
    };
    writeln!(
        out,
        "what each policy would collapse, every collapse size enabled:"
    )
    .and_then(|()| sweep::write(out, &job, &points, None))
    .context("write the comparison")
}

/// The warning `merged` earns (policies.md): the kernel warns once and uses 0 below 2M.
pub(crate) fn merged_warning(max_ptes_none: u16) -> String {
    format!(
        "max_ptes_none {max_ptes_none} is neither 0 nor 511: the kernel (7.2) warns and allows no empty PTEs below 2M"
    )
}

fn mode(args: &PlanArgs, overrides: &Overrides) -> anyhow::Result<Mode> {
    if !args.sweep {
        if args.plot.is_some() {
            bail!("plan: --plot needs --sweep");
        }
        if args.sweep_values.is_some() {
            bail!("plan: --sweep-values needs --sweep");
        }
        if args.passes == Some(0) {
            bail!("plan: --passes must be at least 1");
        }
        return Ok(Mode::Plan {
            passes: args.passes,
        });
    }
    if args.passes.is_some() {
        bail!("plan: --passes and --sweep do not go together");
    }
    if overrides.max_ptes_none.is_some() {
        bail!(
            "plan: --sweep varies max_ptes_none itself: give the values with --sweep-values, not --max-ptes-none"
        );
    }
    let values = match &args.sweep_values {
        Some(values) if values.is_empty() => bail!("plan: --sweep-values is empty"),
        Some(values) => {
            if let Some(v) = values.iter().find(|&&v| v > MAX_PTES) {
                bail!("plan: --sweep-values: {v} is outside 0..{MAX_PTES}");
            }
            let mut values = values.clone();
            values.sort_unstable();
            values.dedup();
            values
        }
        None => DEFAULT_SWEEP_VALUES.to_vec(),
    };
    let policies = overrides
        .policy
        .map_or_else(|| Policy::ALL.to_vec(), |p| vec![p]);
    Ok(Mode::Sweep {
        policies,
        values,
        plot: args.plot.clone(),
    })
}
