//! What `collapse trace` prints as it runs: the live view for people (redrawn in place on a
//! terminal), or the JSON-lines stream for programs; `--events` adds one line per event.

use std::io::Write as _;

use super::{
    error::TracerError,
    event_loop::TickHandler,
    json::TraceLine,
    session::{Observed, Session},
    view,
};
use crate::render::count;

/// How `trace` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOutput {
    /// The table for people; `redraw` clears the terminal before each sample.
    Human { events: bool, redraw: bool },
    /// JSON lines (DESIGN.md).
    Json { events: bool },
}

impl TraceOutput {
    fn events(self) -> bool {
        match self {
            Self::Human { events, .. } | Self::Json { events } => events,
        }
    }
}

/// A failed write to stdout: a closed pipe (`| head -1`) means nobody reads any more, which
/// stops the trace (the caller still writes the snapshot and stops the command).
pub(super) fn written(r: std::io::Result<()>) -> Result<(), TracerError> {
    r.map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            TracerError::OutputClosed
        } else {
            TracerError::Output(e)
        }
    })
}

/// The [`TickHandler`] of `collapse trace`: prints what the session sees.
pub struct TracePrinter {
    pub output: TraceOutput,
}

impl TickHandler for TracePrinter {
    type Error = TracerError;

    fn attached(&mut self, session: &Session) -> Result<(), TracerError> {
        match self.output {
            TraceOutput::Json { .. } => written(writeln!(
                std::io::stdout(),
                "{}",
                TraceLine::attached(session).to_json()
            ))?,
            TraceOutput::Human { .. } => {
                let names: Vec<String> = session
                    .processes()
                    .map(|p| format!("{} {}", p.tgid, p.comm))
                    .collect();
                eprintln!(
                    "collapse: tracing {} ({}); Ctrl-C to stop",
                    count(names.len() as u64, "process"),
                    names.join(", ")
                );
                for m in session.bpf().missing() {
                    eprintln!("collapse: warning: not attached: {m}");
                }
            }
        }
        written(std::io::stdout().flush())
    }

    fn observed(&mut self, session: &mut Session, what: &Observed) -> Result<(), TracerError> {
        if !self.output.events() {
            return Ok(());
        }
        let elapsed = session.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        written(match self.output {
            TraceOutput::Human { .. } => writeln!(out, "{}", view::render_observed(what, elapsed)),
            TraceOutput::Json { .. } => {
                writeln!(out, "{}", TraceLine::observed(what, elapsed).to_json())
            }
        })?;
        written(out.flush())
    }

    fn tick(&mut self, session: &mut Session, _last: bool) -> Result<(), TracerError> {
        let sample = view::sample(session)?;
        let mut out = std::io::stdout().lock();
        written(match self.output {
            TraceOutput::Human { redraw, .. } => {
                if redraw {
                    written(write!(out, "\x1b[H\x1b[2J"))?;
                }
                writeln!(out, "{}", view::render(&sample))
            }
            TraceOutput::Json { .. } => writeln!(out, "{}", TraceLine::sample(&sample).to_json()),
        })?;
        written(out.flush())
    }
}
