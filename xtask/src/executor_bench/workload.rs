//! The child that holds the memory: `collapse workload script`, driven over stdin one command
//! per line, one reply line each (collapse-user/src/workload.rs `Script`), `ready <pid>` first.

use std::{
    io::Write as _,
    path::Path,
    process::{ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::Signal;

use super::probe::Coverage;
use crate::child::{LineReader, Spawned};

/// Touching 1 GiB in 4 KiB pages takes about half a second; a reply this late means a hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// The child's area, named in its commands.
const AREA: &str = "area";

/// How the child maps its area (`map NAME MIB plain|nohuge|huge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// No advice: MADV_COLLAPSE takes it, khugepaged (THP `enabled` = `madvise`) never does.
    Plain,
    /// MADV_NOHUGEPAGE while it is populated, so every page is 4 KiB; MADV_HUGEPAGE after.
    NoHugeThenHuge,
}

/// A running `collapse workload script` with one populated area; killed (SIGKILL) and reaped
/// when dropped, so its memory is gone before the next arm starts.
pub(crate) struct Workload {
    process: Spawned,
    stdin: ChildStdin,
    lines: LineReader,
    pid: u32,
    addr: u64,
    pages: u64,
}

impl Workload {
    /// Spawns the child, maps `mib` MiB and writes one byte in every page of it: dense, in
    /// 4 KiB pages. Fails if any of it is PMD-mapped already.
    pub(crate) fn populated(bin: &Path, mib: u64, mapping: Mapping) -> Result<Self> {
        let mut c = Command::new(bin);
        c.args(["workload", "script"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let what = "collapse workload script";
        let mut process = Spawned::spawn(&mut c, what, Signal::SIGKILL)?;
        let stdin = process.stdin()?;
        let lines = LineReader::new(process.stdout()?, what);
        let first = lines
            .next(REPLY_TIMEOUT)?
            .ok_or_else(|| anyhow!("{what} ended before saying `ready <pid>`"))?;
        let pid = first
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("{what} began with {first:?}, not `ready <pid>`"))?;
        let mut w = Self {
            process,
            stdin,
            lines,
            pid,
            addr: 0,
            pages: 0,
        };
        let advice = match mapping {
            Mapping::Plain => "plain",
            Mapping::NoHugeThenHuge => "nohuge",
        };
        let reply = w.command(&format!("map {AREA} {mib} {advice}"))?;
        // `mapped NAME 0xADDR PAGES`
        let fields: Vec<&str> = reply.split_whitespace().collect();
        (w.addr, w.pages) = match fields.as_slice() {
            ["mapped", _, addr, pages] => (
                addr.strip_prefix("0x")
                    .and_then(|a| u64::from_str_radix(a, 16).ok())
                    .ok_or_else(|| anyhow!("map: bad address in {reply:?}"))?,
                pages
                    .parse()
                    .map_err(|_| anyhow!("map: bad page count in {reply:?}"))?,
            ),
            _ => bail!("map: unexpected reply {reply:?}"),
        };
        w.command(&format!("touch {AREA} 0 {}", w.pages))?;
        let start = Coverage::of(pid)?;
        if start.anon_huge > 0 {
            bail!(
                "the child's fresh {mib} MiB {advice} area is already {} MiB PMD-mapped: is THP \
                 `enabled` really `madvise`, or is something else collapsing it?",
                start.anon_huge >> 20
            );
        }
        Ok(w)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn area_bytes(&self) -> u64 {
        self.pages * 4096
    }

    /// The area's start address (2 MiB aligned) in the child.
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }

    /// MADV_HUGEPAGE over the whole area: from now on khugepaged may collapse it.
    pub(crate) fn mark_huge(&mut self) -> Result<()> {
        self.command(&format!("huge {AREA} 0 {}", self.pages))
            .map(drop)
    }

    /// One command, its reply; `error <message>` is an error.
    fn command(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("write {line:?} to the workload's stdin"))?;
        let reply = self
            .lines
            .next(REPLY_TIMEOUT)?
            .ok_or_else(|| anyhow!("the workload ended instead of answering {line:?}"))?;
        if let Some(msg) = reply.strip_prefix("error ") {
            bail!("workload: {line:?} failed: {msg}");
        }
        Ok(reply)
    }

    /// Whether the child is still running (it must be, for the whole arm).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        match self.process.exited()? {
            None => Ok(()),
            Some(status) => bail!(
                "the workload (pid {}) ended during the arm: {status}",
                self.pid
            ),
        }
    }
}
