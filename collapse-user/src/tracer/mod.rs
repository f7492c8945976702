//! The tracer stage: (`TargetSpec`, `Capacity`) → `Session` → `Vec<SnapshotRegion>`. It loads
//! the eBPF programs, keeps the per-(process, PMD) occupancy bitmaps exact, and runs an event
//! loop whose stopping and per-tick work belong to the caller.
//!
//! `bpf` loads and attaches the programs; `target` decides which processes; `session` keeps
//! the bitmaps exact (seeding, resyncs, exits); `event_loop` drives a session; `view` turns the
//! maps into what people read and `json` into what programs read; `output` is `trace`'s own
//! printer.

mod bpf;
mod error;
mod event_loop;
mod json;
mod map_batch;
mod output;
mod session;
mod target;
mod view;

use std::{future::Future, path::PathBuf, time::Duration};

pub use self::{
    bpf::{Bpf, BpfError, Capacity, Selection, StatusNames},
    error::{TargetError, TracerError},
    event_loop::{Stop, TickHandler, Ticks, run},
    json::TraceLine,
    output::{TraceOutput, TracePrinter},
    session::{Observed, Session, TracedProcess, TracedRegion},
    target::{Target, TargetSpec},
    view::{ProcessStats, Sample, sample},
};
use crate::snapshot::{SnapshotRegion, write_snapshot};

/// What `collapse trace` was asked for, validated.
#[derive(Clone, Debug)]
pub struct TraceJob {
    pub capacity: Capacity,
    pub ticks: Ticks,
    pub output: TraceOutput,
    /// Where to write the region snapshot when tracing stops.
    pub snapshot: Option<PathBuf>,
}

/// `collapse trace`: traces `target` until `shutdown`, the duration or the targets' end,
/// printing as it goes; writes the snapshot (also after an error while tracing) and, for
/// JSON, the `end` line.
pub async fn trace(
    target: Target,
    job: TraceJob,
    shutdown: impl Future<Output = ()>,
) -> Result<Stop, TracerError> {
    let mut printer = TracePrinter { output: job.output };
    trace_with(target, job, &mut printer, shutdown).await
}

/// [`trace`] with another tick handler than the printer (the printer and the metrics of
/// `--metrics`).
pub async fn trace_with<H: TickHandler<Error = TracerError>>(
    target: Target,
    job: TraceJob,
    handler: &mut H,
    shutdown: impl Future<Output = ()>,
) -> Result<Stop, TracerError> {
    let mut session = Session::start(target, job.capacity)?;
    let stop = run(&mut session, shutdown, job.ticks, handler).await;
    // An error while tracing still leaves the snapshot of what was traced.
    if let Some(path) = &job.snapshot {
        let regions = session.snapshot()?;
        write_atomically(path, &regions)?;
        if matches!(job.output, TraceOutput::Human { .. }) {
            eprintln!(
                "collapse: wrote {} regions to {}",
                regions.len(),
                path.display()
            );
        }
    }
    // The command stops with the trace, whatever ended it (a closed stdout included).
    session.stop_child();
    let stop = stop?;
    if matches!(job.output, TraceOutput::Json { .. }) {
        use std::io::Write as _;
        output::written(writeln!(
            std::io::stdout(),
            "{}",
            TraceLine::End {
                reason: stop.name(),
                elapsed_s: session.elapsed().as_secs_f64(),
            }
            .to_json()
        ))?;
    }
    Ok(stop)
}

/// Traces `target` for `duration` (zero: just the seeded state) and returns its regions: the
/// live input of `collapse plan`.
pub async fn snapshot_of(
    target: Target,
    capacity: Capacity,
    duration: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<SnapshotRegion>, TracerError> {
    struct Quiet;
    impl TickHandler for Quiet {
        type Error = TracerError;
    }
    let mut session = Session::start(target, capacity)?;
    if !duration.is_zero() {
        let ticks = Ticks {
            interval: Duration::from_secs(1),
            duration: Some(duration),
        };
        run(&mut session, shutdown, ticks, &mut Quiet).await?;
    }
    let regions = session.snapshot()?;
    session.stop_child();
    Ok(regions)
}

/// Fails early, before anything is traced, if the snapshot cannot be written.
pub fn check_snapshot_path(path: &std::path::Path) -> Result<(), TracerError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        return Err(TracerError::SnapshotDir {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    Ok(())
}

/// Writes the snapshot to a temporary file beside `path`, then renames it: never half-written.
fn write_atomically(path: &std::path::Path, regions: &[SnapshotRegion]) -> Result<(), TracerError> {
    let tmp = path.with_extension("tmp-collapse");
    let failed = |action: &'static str, at: &std::path::Path| {
        let path = at.to_owned();
        move |source| TracerError::Snapshot {
            action,
            path,
            source,
        }
    };
    let written = (|| {
        let file = std::fs::File::create(&tmp).map_err(failed("creating", &tmp))?;
        let mut w = std::io::BufWriter::new(file);
        write_snapshot(&mut w, regions).map_err(failed("writing", &tmp))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(failed("writing", &tmp))?;
        file.sync_all().map_err(failed("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(|source| TracerError::Snapshot {
            action: "renaming",
            path: tmp.clone(),
            source: std::io::Error::new(source.kind(), format!("to {}: {source}", path.display())),
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
