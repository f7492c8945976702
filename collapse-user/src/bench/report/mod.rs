//! The files people read from a [`BenchReport`]: `report.json` (the report itself, read back
//! by `collapse report DIR`), `report.md` (the summary table first, then the DAMON-style
//! figures, the modelled mTHP outcome, the machine, the sysfs changes and the notes) and a
//! self-contained `report.html` (the same, with SVG charts of coverage and RSS over time and
//! of bloat against speedup). [`summary_table`] is the summary for the terminal.
//!
//! Only the bench fills a `BenchReport`; nothing here measures anything.

mod charts;
mod error;
mod files;
mod format;
mod html;
mod markdown;
mod sections;
mod summary;

#[cfg(test)]
mod sample;

pub use self::{
    error::ReportError,
    files::{ReportFiles, read, write, write_rendered},
    summary::summary_table,
};
