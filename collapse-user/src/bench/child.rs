//! The processes a bench starts: stopped by pid (never by name), dying with the bench even
//! after a SIGKILL, THP off for the `none` arm of external programs; their output read line by
//! line.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::error::BenchError;

/// How long a workload may take to populate, or to finish after its measured phase.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// A child process we started, stopped by pid (never by name) when dropped.
pub(super) struct Owned(pub(super) Child);

/// Children die with the bench's thread, also when the bench is killed with SIGKILL.
pub(super) fn die_with_us(cmd: &mut Command) {
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Owned {
    pub(super) fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub(super) fn terminate(&mut self, grace: Duration) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// THP off for a command we start (inherited across exec): the `none` arm of external programs.
pub(super) fn thp_off(cmd: &mut Command) {
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Reads lines of `r` on a thread into a channel.
pub(super) fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub(super) fn expect_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    what: &str,
) -> Result<String, BenchError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(_) => {}
            Err(_) => return Err(BenchError::Workload(format!("{what}: no `{prefix}` line"))),
        }
    }
}
