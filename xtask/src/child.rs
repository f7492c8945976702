//! The children the benches drive: stopped when dropped, so an error half-way leaves nothing
//! behind, and their stdout read line by line on a thread of its own.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, ChildStdin, Command, ExitStatus},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{cmd::say, interrupt};

/// Exiting after the stop signal: detaching, restoring sysfs, printing a summary.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child that is stopped (with `stop_signal`, then SIGKILL) if it is still running when
/// this is dropped, so an error half-way leaves nothing behind.
pub(crate) struct Spawned {
    child: Child,
    /// Reaped: its pid may belong to another process now, so it must not be signalled.
    reaped: bool,
    what: String,
    stop_signal: Signal,
}

impl Spawned {
    pub(crate) fn spawn(cmd: &mut Command, what: &str, stop_signal: Signal) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {what}"))?;
        Ok(Self {
            child,
            reaped: false,
            what: what.to_owned(),
            stop_signal,
        })
    }

    /// The pid we spawned; only meaningful until the child is reaped.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdin(&mut self) -> Result<ChildStdin> {
        self.child
            .stdin
            .take()
            .with_context(|| format!("{}: stdin not piped", self.what))
    }

    pub(crate) fn stdout(&mut self) -> Result<impl Read + Send + 'static> {
        self.child
            .stdout
            .take()
            .with_context(|| format!("{}: stdout not piped", self.what))
    }

    /// `Some(status)` when the child has ended.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("wait for {}", self.what))?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.what);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the stop signal to the pid we spawned (never by name) and waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exited()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(self.child.id().cast_signed());
        kill(pid, self.stop_signal)
            .with_context(|| format!("kill({pid}, {}) for {}", self.stop_signal, self.what))?;
        let status = self.wait(STOP_TIMEOUT);
        if status.is_err() {
            self.kill_now();
        }
        status
    }

    fn kill_now(&mut self) {
        if !self.reaped {
            // Errors here mean it has already gone; there is nothing else to do.
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if self.stop_signal != Signal::SIGKILL
            && let Err(err) = self.stop()
        {
            say!("{err:#}; killing {}", self.what);
        }
        self.kill_now();
    }
}

/// Reads a child's stdout on a thread, one line at a time, so the pipe never fills; the
/// thread keeps draining after this is dropped, until the child closes its stdout.
pub(crate) struct LineReader {
    rx: Receiver<std::io::Result<String>>,
    what: String,
}

impl LineReader {
    pub(crate) fn new(stdout: impl Read + Send + 'static, what: &str) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let failed = line.is_err();
                // Once nobody listens, lines are read and dropped.
                let _ = tx.send(line);
                if failed {
                    break;
                }
            }
        });
        Self {
            rx,
            what: what.to_owned(),
        }
    }

    /// The next line; `None` at end of output. A stop signal caught by `interrupt` ends the
    /// wait with an error within a tenth of a second.
    pub(crate) fn next(&self, timeout: Duration) -> Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    return line
                        .map(Some)
                        .with_context(|| format!("read {}'s stdout", self.what));
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) if left.is_zero() => {
                    bail!("{} printed nothing for {timeout:?}", self.what)
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Skips lines until a JSON object with `"type": ty`, and returns it.
    pub(crate) fn wait_for_type(&self, ty: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .next(left)?
                .ok_or_else(|| anyhow!("{} ended its output", self.what))?;
            let value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(value) => value,
                Err(_) => continue,
            };
            if value.get("type").and_then(|t| t.as_str()) == Some(ty) {
                return Ok(value);
            }
        }
    }
}
