//! Processes and cgroups as /proc and cgroupfs describe them (Documentation/filesystems/proc.rst,
//! Documentation/admin-guide/cgroup-v2.rst).

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use procfs::{ProcError, process::Process};

use super::AccessDenied;

/// Where cgroup v2 is mounted on a unified system, and on a hybrid one (like ours: v1
/// controllers, v2 at `unified`).
pub const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

#[derive(Debug, thiserror::Error)]
pub enum ProcsError {
    #[error("no process with pid {pid}")]
    NoProcess { pid: i32 },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error("{}: malformed: {what}", path.display())]
    Parse { path: PathBuf, what: String },
    #[error(
        "{} is not a cgroup directory (it has no cgroup.procs); give a directory under {}",
        path.display(),
        CGROUP_ROOTS.join(" or ")
    )]
    NotCgroup { path: PathBuf },
    #[error(
        "{} is a cgroup v1 directory; processes are matched by their cgroup v2 id \
         (bpf_get_current_cgroup_id), so give the same group under the v2 mount ({})",
        path.display(),
        CGROUP_ROOTS.join(" or ")
    )]
    NotCgroupV2 { path: PathBuf },
}

type Result<T> = std::result::Result<T, ProcsError>;

/// Whether `pid` names a live process or thread (not a zombie).
pub fn exists(pid: i32) -> bool {
    pid > 0 && Process::new(pid).is_ok_and(|p| p.is_alive())
}

/// The command name (`comm`, at most 15 bytes) of `pid`.
pub fn comm(pid: i32) -> Result<String> {
    let path = PathBuf::from(format!("/proc/{pid}/comm"));
    let text = fs::read_to_string(&path).map_err(|e| io_error(pid, path, e))?;
    Ok(text.trim_end_matches('\n').to_owned())
}

/// The thread-group id (the process id) of thread `pid`.
pub fn tgid(pid: i32) -> Result<i32> {
    let path = || PathBuf::from(format!("/proc/{pid}/status"));
    let status = Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| proc_error(pid, path(), e))?;
    Ok(status.tgid)
}

/// The processes (thread-group ids) whose `comm` is `name`, ascending.
pub fn pids_with_comm(name: &str) -> Result<Vec<i32>> {
    let mut out: Vec<i32> = all_processes()?
        .into_iter()
        .filter(|p| p.stat().is_ok_and(|s| s.comm == name))
        .map(|p| p.pid())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Every user-space process (thread-group ids, ascending): kernel threads left out.
pub fn user_processes() -> Result<Vec<i32>> {
    // PF_KTHREAD, include/linux/sched.h.
    const PF_KTHREAD: u32 = 0x0020_0000;
    let mut out: Vec<i32> = all_processes()?
        .into_iter()
        .filter(|p| {
            p.stat()
                .is_ok_and(|s| s.flags & PF_KTHREAD == 0 && s.state != 'Z')
        })
        .map(|p| p.pid())
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn all_processes() -> Result<Vec<Process>> {
    let procs =
        procfs::process::all_processes().map_err(|e| proc_error(0, PathBuf::from("/proc"), e))?;
    // Processes that exit while we list them are skipped.
    Ok(procs.filter_map(|p| p.ok()).collect())
}

/// The cgroup directory `path` names: as given if it exists, else relative to a cgroup mount
/// (`system.slice/x.service`).
pub fn resolve_cgroup(path: &Path) -> Result<PathBuf> {
    let candidates = std::iter::once(path.to_path_buf())
        .chain(
            (!path.is_absolute())
                .then(|| {
                    CGROUP_ROOTS
                        .iter()
                        .rev()
                        .map(|root| Path::new(root).join(path))
                })
                .into_iter()
                .flatten(),
        )
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.join("cgroup.procs").is_file())
        .ok_or_else(|| ProcsError::NotCgroup {
            path: path.to_path_buf(),
        })
}

/// The processes in cgroup `path` and every cgroup below it, from their `cgroup.procs`,
/// ascending. On cgroup v2 a cgroup with children holds no processes of its own ("no internal
/// processes", Documentation/admin-guide/cgroup-v2.rst), so a slice's processes are all in its
/// descendants. Works for v1 and v2 directories. A descendant removed while it is read is
/// skipped; `path` itself gone is an error.
pub fn cgroup_pids(path: &Path) -> Result<Vec<i32>> {
    let dir = resolve_cgroup(path)?;
    let mut out = Vec::new();
    let mut todo = vec![dir.clone()];
    while let Some(cg) = todo.pop() {
        let top = cg == dir;
        let procs = cg.join("cgroup.procs");
        let text = match fs::read_to_string(&procs) {
            Ok(text) => text,
            Err(e) if !top && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(0, procs, e)),
        };
        for l in text.lines() {
            out.push(l.trim().parse::<i32>().map_err(|_| ProcsError::Parse {
                path: procs.clone(),
                what: format!("pid {l:?}"),
            })?);
        }
        let Ok(entries) = fs::read_dir(&cg) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// How deep cgroup v2 directory `path` is below its hierarchy's root (0: the root), the level
/// `bpf_get_current_ancestor_cgroup_id` takes: the number of parents that are on cgroup2 too.
pub fn cgroup_level(path: &Path) -> Result<u32> {
    let dir = resolve_cgroup(path)?;
    let dir = fs::canonicalize(&dir).map_err(|source| ProcsError::Read {
        path: dir.clone(),
        source,
    })?;
    let on_cgroup2 = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    };
    let mut level = 0;
    let mut cur = dir.as_path();
    while let Some(parent) = cur.parent() {
        if !on_cgroup2(parent) {
            break;
        }
        level += 1;
        cur = parent;
    }
    Ok(level)
}

/// When `pid` started, in clock ticks after boot (`/proc/PID/stat` field 22): with the pid,
/// it names one process, whatever reuses the pid later.
pub fn start_time(pid: i32) -> Result<u64> {
    let path = || PathBuf::from(format!("/proc/{pid}/stat"));
    Process::new(pid)
        .and_then(|p| p.stat())
        .map(|s| s.starttime)
        .map_err(|e| proc_error(pid, path(), e))
}

/// The inode of the initial pid namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Whether we run in the initial pid namespace, where /proc's pids are the ones the eBPF
/// programs see (`bpf_get_current_pid_tgid` reports the initial namespace's ids).
pub fn in_initial_pid_namespace() -> Result<bool> {
    let path = Path::new("/proc/self/ns/pid");
    let meta = fs::metadata(path).map_err(|source| ProcsError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.ino() == PROC_PID_INIT_INO)
}

/// The id of cgroup v2 directory `path`: its inode number, which is the kernfs node id that
/// `bpf_get_current_cgroup_id()` returns (kernel/bpf/helpers.c, `cgroup_id()` in
/// include/linux/cgroup.h).
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let dir = resolve_cgroup(path)?;
    let fs = nix::sys::statfs::statfs(&dir).map_err(|e| ProcsError::Read {
        path: dir.clone(),
        source: io::Error::from(e),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(ProcsError::NotCgroupV2 { path: dir });
    }
    let meta = fs::metadata(&dir).map_err(|source| ProcsError::Read {
        path: dir.clone(),
        source,
    })?;
    Ok(meta.ino())
}

/// Whether `pid` is a kernel thread (PF_KTHREAD in /proc/PID/stat's flags,
/// include/linux/sched.h).
pub fn is_kernel_thread(pid: i32) -> bool {
    const PF_KTHREAD: u32 = 0x0020_0000;
    Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.flags & PF_KTHREAD != 0)
}

/// How much of a process's anonymous memory is PMD-mapped THP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryCoverage {
    /// `RssAnon` of /proc/<pid>/status.
    pub anon_rss_kb: u64,
    /// `AnonHugePages` of /proc/<pid>/smaps_rollup: PMD-mapped THP only (mTHP is not counted,
    /// fs/proc/task_mmu.c smaps_pmd_entry).
    pub anon_huge_kb: u64,
}

impl MemoryCoverage {
    /// Fraction of anonymous RSS that is PMD-mapped, 0 when there is none.
    pub fn coverage(&self) -> f64 {
        if self.anon_rss_kb == 0 {
            0.0
        } else {
            self.anon_huge_kb as f64 / self.anon_rss_kb as f64
        }
    }
}

/// The THP coverage of `pid`'s anonymous memory.
pub fn memory_coverage(pid: i32) -> Result<MemoryCoverage> {
    let process =
        Process::new(pid).map_err(|e| proc_error(pid, PathBuf::from(format!("/proc/{pid}")), e))?;
    let status_path = || PathBuf::from(format!("/proc/{pid}/status"));
    let rollup_path = || PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let status = process
        .status()
        .map_err(|e| proc_error(pid, status_path(), e))?;
    let rollup = process
        .smaps_rollup()
        .map_err(|e| proc_error(pid, rollup_path(), e))?;
    // procfs converts the smaps "kB" values to bytes.
    let anon_huge_bytes = rollup
        .memory_map_rollup
        .iter()
        .filter_map(|m| m.extension.map.get("AnonHugePages"))
        .sum::<u64>();
    Ok(MemoryCoverage {
        // Kernel threads and zombies have no RssAnon line.
        anon_rss_kb: status.rssanon.unwrap_or(0),
        anon_huge_kb: anon_huge_bytes / 1024,
    })
}

/// Whether any VMA of `pid` carries MADV_HUGEPAGE (`hg` in smaps VmFlags,
/// Documentation/filesystems/proc.rst): with THP in `madvise` mode only such VMAs get large
/// folios at fault time.
pub fn has_hugepage_advice(pid: i32) -> Result<bool> {
    let process =
        Process::new(pid).map_err(|e| proc_error(pid, PathBuf::from(format!("/proc/{pid}")), e))?;
    let maps = process
        .smaps()
        .map_err(|e| proc_error(pid, PathBuf::from(format!("/proc/{pid}/smaps")), e))?;
    Ok(maps
        .iter()
        .any(|m| m.extension.vm_flags.contains(procfs::process::VmFlags::HG)))
}

fn proc_error(pid: i32, path: PathBuf, e: ProcError) -> ProcsError {
    match e {
        ProcError::NotFound(_) if pid > 0 => ProcsError::NoProcess { pid },
        ProcError::NotFound(p) => ProcsError::Read {
            path: p.unwrap_or(path),
            source: io::Error::from(io::ErrorKind::NotFound),
        },
        ProcError::PermissionDenied(p) => AccessDenied::of(p.unwrap_or(path)).into(),
        ProcError::Io(source, p) => io_error(pid, p.unwrap_or(path), source),
        other => ProcsError::Parse {
            path,
            what: other.to_string(),
        },
    }
}

fn io_error(pid: i32, path: PathBuf, e: io::Error) -> ProcsError {
    match e.kind() {
        io::ErrorKind::NotFound if pid > 0 => ProcsError::NoProcess { pid },
        _ if e.raw_os_error() == Some(libc::ESRCH) && pid > 0 => ProcsError::NoProcess { pid },
        io::ErrorKind::PermissionDenied => AccessDenied::of(path).into(),
        _ => ProcsError::Read { path, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ourselves() {
        let me = std::process::id() as i32;
        assert!(exists(me));
        assert_eq!(tgid(me).unwrap(), me);
        let name = comm(me).unwrap();
        assert!(!name.is_empty() && name.len() <= 15);
        assert!(pids_with_comm(&name).unwrap().contains(&me));
        assert!(user_processes().unwrap().contains(&me));
        // Kernel threads are left out: kthreadd is pid 2.
        assert!(!user_processes().unwrap().contains(&2));
    }

    #[test]
    fn missing() {
        assert!(!exists(0));
        assert!(!exists(-5));
        // pid_max is at most 2^22.
        let nobody = 4_194_305;
        assert!(!exists(nobody));
        let err = comm(nobody).unwrap_err();
        assert_eq!(err.to_string(), format!("no process with pid {nobody}"));
        assert!(matches!(tgid(nobody), Err(ProcsError::NoProcess { pid }) if pid == nobody));
        assert!(matches!(
            memory_coverage(nobody),
            Err(ProcsError::NoProcess { .. })
        ));
        assert!(pids_with_comm("no-such-comm-x").unwrap().is_empty());
        assert!(start_time(std::process::id() as i32).unwrap() > 0);
        assert!(matches!(
            start_time(nobody),
            Err(ProcsError::NoProcess { .. })
        ));
        let err = cgroup_pids(Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, ProcsError::NotCgroup { .. }), "{err}");
        assert!(
            err.to_string().contains("/tmp is not a cgroup directory"),
            "{err}"
        );
    }

    #[test]
    fn coverage_fraction() {
        assert_eq!(MemoryCoverage::default().coverage(), 0.0);
        assert_eq!(
            MemoryCoverage {
                anon_rss_kb: 4096,
                anon_huge_kb: 2048
            }
            .coverage(),
            0.5
        );
    }
}
