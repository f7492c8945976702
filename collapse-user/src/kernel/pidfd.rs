//! A handle on one process that a reused pid cannot redirect (`pidfd_open(2)`, Linux 5.3), and
//! `MADV_COLLAPSE` on that process through it (`process_madvise(2)`, Linux 5.10; the advice is
//! accepted on another process since 6.1, `mm/madvise.c` `process_madvise_remote_valid`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use collapse_common::consts::MADV_COLLAPSE;
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

/// Why a pidfd could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("no process with pid {pid}")]
    NoProcess { pid: i32 },
    #[error(
        "pid {pid} is a thread, not a process: give its process id (Tgid in /proc/{pid}/status)"
    )]
    NotProcess { pid: i32 },
    #[error("opening a pidfd for pid {pid} was refused: run collapse as root")]
    NotRoot { pid: i32 },
    #[error("pidfd_open({pid}): {source}")]
    Open { pid: i32, source: Errno },
}

/// An open pidfd: it names the process that had `pid` when it was opened, and only that one.
/// Once the process exits, [`Pidfd::is_alive`] says so and [`Pidfd::collapse`] fails with
/// `ESRCH`, even if the pid number has been given to another process since.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// `pidfd_open(pid, 0)`.
    pub fn open(pid: i32) -> Result<Self, PidfdError> {
        if pid <= 0 {
            return Err(PidfdError::NoProcess { pid });
        }
        // SAFETY: a plain syscall with integer arguments.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
        if ret < 0 {
            return Err(match Errno::last() {
                Errno::ESRCH => PidfdError::NoProcess { pid },
                // kernel/pid.c: pidfd_open() of a pid that is not a thread-group leader.
                Errno::EINVAL => PidfdError::NotProcess { pid },
                Errno::EPERM | Errno::EACCES => PidfdError::NotRoot { pid },
                source => PidfdError::Open { pid, source },
            });
        }
        let raw = i32::try_from(ret).map_err(|_| PidfdError::Open {
            pid,
            source: Errno::EBADF,
        })?;
        // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, pid })
    }

    /// The pid the process had when the pidfd was opened.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process is still running: a pidfd polls readable once it has exited
    /// (`kernel/pid.c` `pidfd_poll`), before it is reaped and before its pid can be reused.
    pub fn is_alive(&self) -> bool {
        loop {
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(0) => return true,
                Ok(_) => {
                    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                    return !revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP);
                }
                Err(Errno::EINTR) => continue,
                // A pidfd that cannot be polled is not one we can reason about; the collapse
                // through it reports what is wrong.
                Err(_) => return true,
            }
        }
    }

    /// `process_madvise(pidfd, [addr, len), MADV_COLLAPSE)`: collapse every PMD-aligned 2 MiB
    /// range inside `[addr, addr + len)` of the process to a PMD-mapped THP. One call reports
    /// one result for all of its PMDs, so callers collapse one PMD per call.
    ///
    /// `Ok` also for a range that was PMD-mapped already (`mm/khugepaged.c`
    /// `madvise_collapse` counts `SCAN_PMD_MAPPED` as success): confirm through pagemap.
    pub fn collapse(&self, addr: u64, len: u64) -> Result<(), Errno> {
        let iov = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: usize::try_from(len).map_err(|_| Errno::EINVAL)?,
        };
        // SAFETY: `iov` is one valid iovec that outlives the call; the kernel only reads it
        // (the addresses it names are the target's, never dereferenced here).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                self.fd.as_raw_fd(),
                &iov as *const libc::iovec,
                1usize,
                MADV_COLLAPSE as libc::c_int,
                0u32,
            )
        };
        if ret < 0 { Err(Errno::last()) } else { Ok(()) }
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ourselves_and_nobody() {
        let me = Pidfd::open(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert_eq!(me.pid(), std::process::id() as i32);
        assert!(matches!(
            Pidfd::open(4_194_305),
            Err(PidfdError::NoProcess { pid: 4_194_305 })
        ));
        assert!(matches!(Pidfd::open(0), Err(PidfdError::NoProcess { .. })));
    }

    #[test]
    fn a_thread_is_not_a_process() {
        let tid = std::thread::spawn(|| nix::unistd::gettid().as_raw())
            .join()
            .unwrap();
        // The thread is gone by now: either answer names the problem, neither opens it.
        assert!(matches!(
            Pidfd::open(tid),
            Err(PidfdError::NotProcess { .. } | PidfdError::NoProcess { .. })
        ));
    }

    #[test]
    fn an_exited_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = Pidfd::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!fd.is_alive());
        // A reaped process: the pidfd still names it, not a successor.
        assert_eq!(fd.collapse(0x20_0000, 0x20_0000), Err(Errno::ESRCH));
    }
}
