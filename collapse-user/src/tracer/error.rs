//! What can go wrong while tracing, as types callers can match on.

use std::{io, path::PathBuf};

use super::bpf::BpfError;
use crate::kernel::{pagemap::PagemapError, procs::ProcsError};

/// Naming the target went wrong (nothing is loaded yet).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with pid {0}")]
    NoProcess(i32),
    #[error("reading /proc/{pid}/status")]
    Status {
        pid: i32,
        #[source]
        source: ProcsError,
    },
    #[error("--comm {0:?}: a command name is 1 to 15 bytes (the kernel's comm)")]
    CommLength(String),
    #[error(transparent)]
    Procs(#[from] ProcsError),
    #[error("-- CMD: no command given")]
    NoCommand,
    #[error("cannot run {0:?}: not found in PATH")]
    NotInPath(String),
    #[error("{0} has a NUL byte")]
    Nul(&'static str),
    #[error("{call}")]
    Syscall {
        call: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot run {program:?}: {source}")]
    Exec { program: String, source: io::Error },
    #[error(
        "tracing from a nested pid namespace is not supported: the eBPF programs see the host's pids, not this namespace's; run collapse in the host's pid namespace"
    )]
    NestedPidNamespace,
    #[error("cgroup {} was removed", .0.display())]
    CgroupGone(PathBuf),
}

/// Tracing went wrong.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A process named on the command line (or the command) could not be seeded.
    #[error("seeding pid {pid} from pagemap")]
    Seed {
        pid: u32,
        #[source]
        source: Box<TracerError>,
    },
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error(transparent)]
    Procs(#[from] ProcsError),
    #[error("polling the ring buffer: {0}")]
    Poll(#[source] io::Error),
    #[error("cannot write snapshot {}: {} is not a directory", path.display(), dir.display())]
    SnapshotDir { path: PathBuf, dir: PathBuf },
    #[error("{action} {}", path.display())]
    Snapshot {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing what the tracer shows (stdout).
    #[error(transparent)]
    Output(#[from] io::Error),
    /// Whoever read our output went away (`| head`): nothing more can be shown.
    #[error("stdout was closed")]
    OutputClosed,
}
