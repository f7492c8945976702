//! Which processes a session traces (DESIGN.md TARGET): `--pid`, `--cgroup`, `--comm`,
//! `--all`, or `-- CMD ARGS` spawned here and followed with its children.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork, pipe2},
};

use super::error::TargetError;
use crate::kernel::procs;

/// A resolved target: the processes it names now and how it finds later ones. Its session
/// reads its fields; everyone else asks it.
#[derive(Debug, Default)]
pub struct Target {
    pub(super) all: bool,
    /// Thread-group ids named with `--pid`.
    pub(super) pids: Vec<u32>,
    pub(super) comm: Option<String>,
    pub(super) cgroup: Option<PathBuf>,
    pub(super) cgroup_id: Option<u64>,
    /// Depth of `cgroup` below the cgroup v2 root.
    pub(super) cgroup_level: u32,
    /// `-- CMD`: forked, waiting for `release` before it execs.
    pub(super) spawn: Option<Spawned>,
    command: bool,
}

/// Which processes to trace, as the user named them (DESIGN.md TARGET): one kind each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    /// These processes (any thread id names its process).
    Pids(Vec<i32>),
    /// Every process in this cgroup v2 directory.
    Cgroup(PathBuf),
    /// Every process whose comm is this name, now and later.
    Comm(String),
    /// Every process on the system.
    All,
    /// Spawn this command (program and arguments) and trace it with its children.
    Command(Vec<String>),
}

impl Target {
    /// Checks the target and, for `-- CMD`, forks the command (held before exec). Nothing is
    /// loaded yet, so bad input fails before anything changes.
    pub fn resolve(spec: &TargetSpec) -> Result<Self, TargetError> {
        // The programs see the initial namespace's pids (bpf_get_current_pid_tgid), /proc and
        // the command line this namespace's: they would not name the same processes.
        if !procs::in_initial_pid_namespace()? {
            return Err(TargetError::NestedPidNamespace);
        }
        let mut target = Self::default();
        match spec {
            TargetSpec::All => target.all = true,
            TargetSpec::Pids(pids) => {
                for &pid in pids {
                    if pid <= 0 || !procs::exists(pid) {
                        return Err(TargetError::NoProcess(pid));
                    }
                    let tgid =
                        procs::tgid(pid).map_err(|source| TargetError::Status { pid, source })?;
                    if !target.pids.contains(&(tgid as u32)) {
                        target.pids.push(tgid as u32);
                    }
                }
            }
            TargetSpec::Comm(comm) => {
                if comm.is_empty() || comm.len() > 15 {
                    return Err(TargetError::CommLength(comm.clone()));
                }
                target.comm = Some(comm.clone());
            }
            TargetSpec::Cgroup(path) => {
                target.cgroup_id = Some(procs::cgroup_id(path)?);
                target.cgroup_level = procs::cgroup_level(path)?;
                target.cgroup = Some(path.clone());
            }
            TargetSpec::Command(cmd) => {
                if cmd.is_empty() {
                    return Err(TargetError::NoCommand);
                }
                target.spawn = Some(Spawned::fork(cmd)?);
                target.command = true;
            }
        }
        Ok(target)
    }

    /// The processes named with `--pid` (thread-group ids).
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// New processes forked by traced ones are traced too.
    pub fn follow_children(&self) -> bool {
        self.command || self.comm.is_some() || self.cgroup.is_some()
    }

    /// The session ends when these processes are gone.
    pub fn ends_with_its_processes(&self) -> bool {
        !self.pids.is_empty() || self.command
    }

    /// Processes may join later.
    pub fn picks_up_later(&self) -> bool {
        self.all || self.comm.is_some() || self.cgroup.is_some()
    }

    /// The processes to trace from the start.
    pub fn initial_tgids(&self) -> Result<Vec<u32>, TargetError> {
        let mut out = self.pids.clone();
        out.extend(self.current_members()?);
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The processes that belong to the target now (comm, cgroup, all; empty otherwise).
    pub fn current_members(&self) -> Result<Vec<u32>, TargetError> {
        let me = std::process::id();
        let mut out: Vec<u32> = if let Some(comm) = &self.comm {
            procs::pids_with_comm(comm)?
                .into_iter()
                .map(|p| p as u32)
                .collect()
        } else if let Some(cg) = &self.cgroup {
            match procs::cgroup_pids(cg) {
                Ok(pids) => pids.into_iter().map(|p| p as u32).collect(),
                // Removed while traced (it was empty then: cgroupfs refuses to rmdir one
                // with processes): nobody left to pick up.
                Err(procs::ProcsError::NotCgroup { .. }) => {
                    return Err(TargetError::CgroupGone(cg.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        } else if self.all {
            procs::user_processes()?
                .into_iter()
                .map(|p| p as u32)
                .collect()
        } else {
            Vec::new()
        };
        // Never trace ourselves: our own map reads would fault into the bitmaps.
        out.retain(|&p| p != me);
        Ok(out)
    }
}

/// A command forked before the programs are loaded, held in the child until `release`, so its
/// first fault is already traced.
#[derive(Debug)]
pub struct Spawned {
    pub(super) tgid: u32,
    go: OwnedFd,
    /// Closed by a successful exec (CLOEXEC); carries the errno of a failed one.
    exec_error: OwnedFd,
    program: String,
}

/// The command we started: reaped by pid, signalled by pid, never by name.
#[derive(Debug)]
pub struct CommandChild {
    pid: Pid,
    status: Option<i32>,
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

impl Spawned {
    fn fork(cmd: &[String]) -> Result<Self, TargetError> {
        let path = find_in_path(&cmd[0]).ok_or_else(|| TargetError::NotInPath(cmd[0].clone()))?;
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| TargetError::Nul("command path"))?;
        let args: Vec<CString> = cmd
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| TargetError::Nul("argument"))?;
        // The argv array is built before the fork: the child must not allocate.
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let syscall = |call| move |source| TargetError::Syscall { call, source };
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(syscall("pipe2"))?;
        let (err_read, err_write) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(syscall("pipe2"))?;
        // SAFETY: the child only calls async-signal-safe functions (close, read, execv, write,
        // _exit) on data prepared before the fork.
        match unsafe { fork() }.map_err(syscall("fork"))? {
            ForkResult::Child => unsafe {
                libc::close(write.as_raw_fd());
                libc::close(err_read.as_raw_fd());
                // Our stdout carries collapse's own output (the view, JSON lines, the plan):
                // the command's goes to stderr.
                libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
                // collapse ignores SIGPIPE while tracing; the command gets the default.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut byte = 0u8;
                if libc::read(read.as_raw_fd(), (&raw mut byte).cast(), 1) == 1 {
                    libc::execv(path.as_ptr(), argv.as_ptr());
                    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    libc::write(
                        err_write.as_raw_fd(),
                        (&raw const errno).cast(),
                        size_of::<i32>(),
                    );
                }
                libc::_exit(127)
            },
            ForkResult::Parent { child } => {
                drop(read);
                drop(err_write);
                Ok(Self {
                    tgid: child.as_raw() as u32,
                    go: write,
                    exec_error: err_read,
                    program: cmd[0].clone(),
                })
            }
        }
    }

    /// Lets the command exec, and waits until it has (or failed to: then it is reaped and the
    /// error names the program). Dropped instead, the child reads EOF and exits 127.
    pub fn release(self) -> Result<CommandChild, TargetError> {
        nix::unistd::write(&self.go, &[1]).map_err(|source| TargetError::Syscall {
            call: "starting the command",
            source,
        })?;
        let mut child = CommandChild {
            pid: Pid::from_raw(self.tgid as i32),
            status: None,
        };
        let mut errno = [0u8; size_of::<i32>()];
        match nix::unistd::read(&self.exec_error, &mut errno) {
            Ok(n) if n == errno.len() => {
                child.stop();
                let source = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                Err(TargetError::Exec {
                    program: self.program,
                    source,
                })
            }
            _ => Ok(child),
        }
    }
}

impl CommandChild {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Its exit status once it has ended.
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => self.status = Some(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => self.status = Some(128 + sig as i32),
                Ok(_) => {}
                Err(_) => self.status = Some(-1),
            }
        }
        self.status
    }

    /// SIGTERM; SIGKILL if it is still there after 3 s; then reap.
    pub fn stop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        if let Ok(WaitStatus::Signaled(_, sig, _)) = waitpid(self.pid, None) {
            self.status = Some(128 + sig as i32);
        }
    }
}
