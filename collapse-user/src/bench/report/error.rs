//! What can go wrong reading or writing a report directory, as types callers can match on.
//! Each names the file; the CLI prints the chain on one line.

use std::{io, path::PathBuf};

use crate::{bench::REPORT_VERSION, render::ChartError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: no such directory", .0.display())]
    NoDir(PathBuf),
    #[error("{}: not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("{}: missing (`collapse bench --out DIR` writes it)", .0.display())]
    Missing(PathBuf),
    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not JSON", path.display())]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: not a bench report (no \"version\" number)", .0.display())]
    NoVersion(PathBuf),
    #[error("{}: report version {found}, but this collapse reads version {REPORT_VERSION}", path.display())]
    Version { path: PathBuf, found: u64 },
    #[error("{}: not a bench report of version {REPORT_VERSION}", path.display())]
    NotReport {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Chart(#[from] ChartError),
}
