//! What can stop a bench.

use crate::kernel::thp::ThpError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the bench needs root (it changes THP sysfs and collapses other processes' memory)")]
    NotRoot,
    #[error("transparent huge pages are `never` here: there is nothing to compare")]
    ThpNever,
    #[error(transparent)]
    Sysfs(#[from] ThpError),
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Workload(String),
    #[error(transparent)]
    Io(std::io::Error),
    #[error("stopped")]
    Stopped,
}
