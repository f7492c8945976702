//! Memory pressure stall information (Documentation/accounting/psi.rst): the share of recent
//! time in which some task waited for memory.

use std::path::PathBuf;

use procfs::{Current, MemoryPressure, ProcError};

/// Where the kernel publishes it.
pub const MEMORY_PRESSURE: &str = "/proc/pressure/memory";

#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error(
        "{MEMORY_PRESSURE} is missing: this kernel has no pressure stall information \
         (CONFIG_PSI, or boot with psi=1)"
    )]
    Missing,
    #[error("reading {MEMORY_PRESSURE}: {0}")]
    Read(std::io::Error),
    #[error("{MEMORY_PRESSURE}: malformed: {0}")]
    Parse(String),
}

/// `some avg10` of memory: the percentage (0..100) of the last 10 s in which at least one task
/// stalled on memory (reclaim, compaction, refaults).
pub fn memory_some_avg10() -> Result<f64, PsiError> {
    let pressure = MemoryPressure::current().map_err(|e| match e {
        ProcError::NotFound(_) => PsiError::Missing,
        ProcError::Io(e, _) if e.kind() == std::io::ErrorKind::NotFound => PsiError::Missing,
        // Kernels built with PSI but booted with psi=0 refuse the read.
        ProcError::Io(e, _) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => PsiError::Missing,
        ProcError::Io(e, _) => PsiError::Read(e),
        ProcError::PermissionDenied(p) => PsiError::Read(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            p.unwrap_or_else(|| PathBuf::from(MEMORY_PRESSURE))
                .display()
                .to_string(),
        )),
        other => PsiError::Parse(other.to_string()),
    })?;
    Ok(f64::from(pressure.some.avg10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_percentage_or_says_it_is_missing() {
        match memory_some_avg10() {
            Ok(v) => assert!((0.0..=100.0).contains(&v), "{v}"),
            Err(PsiError::Missing) => {
                assert!(!std::path::Path::new(MEMORY_PRESSURE).exists())
            }
            Err(e) => panic!("{e}"),
        }
    }
}
