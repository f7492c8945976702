//! Which processes a session traces (DESIGN.md TARGET): `--pid`, `--cgroup`, `--comm`,
//! `--all`, or `-- CMD ARGS` spawned here and followed with its children.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, fork, pipe2},
};

use crate::{cli::TargetArgs, kernel::procs};

#[derive(Debug, Default)]
pub struct Target {
    pub all: bool,
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<PathBuf>,
    pub cgroup_id: Option<u64>,
    /// `-- CMD`: forked, waiting for `release` before it execs.
    pub spawn: Option<Spawned>,
    command: bool,
}

impl Target {
    /// Checks the target and, for `-- CMD`, forks the command (held before exec). Nothing is
    /// loaded yet, so bad input fails before anything changes.
    pub fn resolve(args: &TargetArgs) -> anyhow::Result<Self> {
        let kinds = [
            !args.pids.is_empty(),
            args.cgroup.is_some(),
            args.comm.is_some(),
            args.all,
            !args.cmd.is_empty(),
        ];
        match kinds.iter().filter(|&&k| k).count() {
            0 => bail!(
                "no target: give --pid PID, --cgroup PATH, --comm NAME, --all, or -- CMD ARGS"
            ),
            1 => {}
            _ => bail!("give one kind of target: --pid, --cgroup, --comm, --all or -- CMD"),
        }
        let mut target = Self {
            all: args.all,
            ..Self::default()
        };
        for &pid in &args.pids {
            if pid <= 0 || !procs::exists(pid) {
                bail!("no process with pid {pid}");
            }
            let tgid = procs::tgid(pid).with_context(|| format!("reading /proc/{pid}/status"))?;
            if !target.pids.contains(&(tgid as u32)) {
                target.pids.push(tgid as u32);
            }
        }
        if let Some(comm) = &args.comm {
            if comm.is_empty() || comm.len() > 15 {
                bail!("--comm {comm:?}: a command name is 1 to 15 bytes (the kernel's comm)");
            }
            target.comm = Some(comm.clone());
        }
        if let Some(path) = &args.cgroup {
            target.cgroup_id = Some(procs::cgroup_id(path)?);
            target.cgroup = Some(path.clone());
        }
        if !args.cmd.is_empty() {
            target.spawn = Some(Spawned::fork(&args.cmd)?);
            target.command = true;
        }
        Ok(target)
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
    pub fn initial_tgids(&self) -> anyhow::Result<Vec<u32>> {
        let mut out = self.pids.clone();
        out.extend(self.current_members()?);
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The processes that belong to the target now (comm, cgroup, all; empty otherwise).
    pub fn current_members(&self) -> anyhow::Result<Vec<u32>> {
        let me = std::process::id();
        let mut out: Vec<u32> = if let Some(comm) = &self.comm {
            procs::pids_with_comm(comm)?
                .into_iter()
                .map(|p| p as u32)
                .collect()
        } else if let Some(cg) = &self.cgroup {
            procs::cgroup_pids(cg)?
                .into_iter()
                .map(|p| p as u32)
                .collect()
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
    pub tgid: u32,
    go: OwnedFd,
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
    fn fork(cmd: &[String]) -> anyhow::Result<Self> {
        let path = find_in_path(&cmd[0])
            .with_context(|| format!("cannot run {:?}: not found in PATH", cmd[0]))?;
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .context("command path has a NUL byte")?;
        let argv: Vec<CString> = cmd
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .context("argument has a NUL byte")?;
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
        // SAFETY: the child only calls async-signal-safe functions (read, execv, _exit) on data
        // prepared before the fork.
        match unsafe { fork() }.context("fork")? {
            ForkResult::Child => {
                drop(write);
                let mut byte = 0u8;
                // SAFETY: reading one byte into a local.
                let n = unsafe { libc::read(read.as_raw_fd(), (&raw mut byte).cast(), 1) };
                if n == 1 {
                    let _ = nix::unistd::execv(&path, &argv);
                }
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => {
                drop(read);
                Ok(Self {
                    tgid: child.as_raw() as u32,
                    go: write,
                })
            }
        }
    }

    /// Lets the command exec. (Dropped instead, the child reads EOF and exits 127.)
    pub fn release(self) -> anyhow::Result<CommandChild> {
        nix::unistd::write(&self.go, &[1]).context("starting the command")?;
        Ok(CommandChild {
            pid: Pid::from_raw(self.tgid as i32),
            status: None,
        })
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

    /// SIGTERM, then reap.
    pub fn stop(&mut self) {
        if self.try_wait().is_none() {
            let _ = kill(self.pid, Signal::SIGTERM);
            if let Ok(WaitStatus::Exited(_, code)) = waitpid(self.pid, None) {
                self.status = Some(code);
            }
        }
    }
}
