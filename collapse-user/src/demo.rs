//! The main job behind a bare `cargo xtask run`: a built-in workload with dense, sparse and
//! half-full regions, traced live, then every policy planned over its memory as the workload
//! populated it. (The bench's quick comparison takes this place next.)
//!
//! It combines stages: the tracer, whose loop it drives with its own tick handler, and the
//! planner, over the regions it captured.

use std::{
    future::Future,
    io::{self, BufWriter, Write},
    time::Duration,
};

use collapse_common::policy::{MAX_ORDER, MIN_ORDER, Policy};

use crate::{
    kernel::thp::ThpSettings,
    planner::{self, Job, Origin, Overrides, PlanError},
    snapshot::SnapshotRegion,
    tracer::{
        Capacity, Observed, Session, Target, TargetSpec, TickHandler, Ticks, TraceOutput,
        TracePrinter, TracerError,
    },
};

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("finding the collapse binary")]
    Exe(#[source] std::io::Error),
    #[error(transparent)]
    Tracer(#[from] TracerError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("write the comparison")]
    Write(#[source] std::io::Error),
}

/// Prints like `trace --events`, and keeps the regions as they were at the workload's first
/// MADV_HUGEPAGE (it asks for huge pages once it has populated its memory).
struct DemoView {
    printer: TracePrinter,
    at_hugepage_advice: Option<Vec<SnapshotRegion>>,
}

impl TickHandler for DemoView {
    type Error = TracerError;

    fn attached(&mut self, session: &Session) -> Result<(), TracerError> {
        self.printer.attached(session)
    }

    fn observed(&mut self, session: &mut Session, what: &Observed) -> Result<(), TracerError> {
        if matches!(what, Observed::HugepageAdvice { .. }) && self.at_hugepage_advice.is_none() {
            self.at_hugepage_advice = Some(session.snapshot()?);
        }
        self.printer.observed(session, what)
    }

    fn tick(&mut self, session: &mut Session, last: bool) -> Result<(), TracerError> {
        self.printer.tick(session, last)
    }
}

/// `collapse demo`: the workload traced for `duration`, then the policies compared.
pub async fn run(duration: Duration, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    let hold = (duration.as_secs() + 5).to_string();
    let spec = TargetSpec::Command(vec![
        exe.display().to_string(),
        "workload".into(),
        "demo".into(),
        "--hold".into(),
        hold,
    ]);
    eprintln!(
        "collapse demo: a workload with 8 dense, 8 sparse (1 page in 32) and 8 half-full 2 MiB regions,\n\
         populated over ~3 s, then marked MADV_HUGEPAGE for khugepaged; traced for {:.0} s (Ctrl-C stops).",
        duration.as_secs_f64()
    );
    let target = Target::resolve(&spec).map_err(TracerError::from)?;
    let mut session = Session::start(target, Capacity::default())?;
    let mut view = DemoView {
        printer: TracePrinter {
            output: TraceOutput::Human {
                events: true,
                redraw: false,
            },
        },
        at_hugepage_advice: None,
    };
    let ticks = Ticks {
        interval: Duration::from_secs(1),
        duration: Some(duration),
    };
    crate::tracer::run(&mut session, shutdown, ticks, &mut view).await?;
    // Plan over the memory as the workload populated it, not as khugepaged has left it since.
    let regions = match view.at_hugepage_advice.take() {
        Some(regions) => regions,
        None => session.snapshot()?,
    };
    session.stop_child();
    println!();
    let mut out = BufWriter::new(io::stdout().lock());
    write_comparison(&mut out, &regions)?;
    out.flush().map_err(DemoError::Write)
}

/// Every policy over `regions` at max_ptes_none 0, 255 and the kernel's value, with every
/// collapse size 16K..2M enabled (the running kernel may enable only 2M, which would make the
/// policies look alike), as the `--sweep` table.
pub fn write_comparison(out: &mut impl Write, regions: &[SnapshotRegion]) -> Result<(), DemoError> {
    let every_size = Overrides {
        orders: Some((MIN_ORDER..=MAX_ORDER).collect()),
        ..Overrides::default()
    };
    // Not a sweep for `resolve`: the kernel's max_ptes_none is one of the values shown.
    let mut settings = planner::resolve(&every_size, false, ThpSettings::read)?;
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
    let points = planner::sweep(regions, &Policy::ALL, &values, &settings.settings)?;
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
    .and_then(|()| planner::write_sweep(out, &job, &points, None))
    .map_err(DemoError::Write)
}
