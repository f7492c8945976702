//! Interfaces to the running kernel: tracefs formats, THP sysfs (with restore), pagemap and
//! kpageflags, BTF, /proc, pidfd + process_madvise, THP opt-outs, PSI, memory cgroups.

use std::path::PathBuf;

pub mod btf;
pub mod eligibility;
pub mod features;
pub mod journal;
pub mod memcg;
pub mod pagemap;
pub mod pidfd;
pub mod procs;
pub mod psi;
pub mod thp;
pub mod tracefs;

/// A /proc file the kernel would not let us read: for want of root, or refused to root too.
#[derive(Debug, thiserror::Error)]
pub enum AccessDenied {
    #[error("reading {} needs root: run collapse as root", path.display())]
    NeedsRoot { path: PathBuf },
    #[error(
        "reading {} was refused although collapse runs as root: the process is protected \
         (another user namespace, a security module, or capabilities we lack)",
        path.display()
    )]
    Refused { path: PathBuf },
}

impl AccessDenied {
    /// Which of the two a permission error on `path` is, for the user we run as.
    pub fn of(path: PathBuf) -> Self {
        if nix::unistd::geteuid().is_root() {
            Self::Refused { path }
        } else {
            Self::NeedsRoot { path }
        }
    }
}
