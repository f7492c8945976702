//! What can go wrong while planning, as types callers can match on.

use std::{io, path::PathBuf};

use collapse_common::policy::SettingsError;

use crate::render::ChartError;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A kernel value outside its range 0..=max (a fake or future sysfs).
    #[error("khugepaged/{name} is {value}, outside 0..{max}")]
    KernelValue {
        name: &'static str,
        value: u16,
        max: u16,
    },
    #[error("enabled orders: {0}")]
    Orders(SettingsError),
    #[error("settings: {0}")]
    Settings(SettingsError),
    #[error("--sweep-values {value}: {source}")]
    SweepValue { value: u16, source: SettingsError },
    #[error(transparent)]
    Chart(#[from] ChartError),
    #[error("write {}", path.display())]
    Plot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write to stdout")]
    Stdout(#[source] io::Error),
}
