//! Ctrl-C, SIGTERM and SIGHUP while a bench has changed the machine: the handler only sets a
//! flag, and the bench's loops check it and return an error, so that every guard on the way
//! out (sysfs values, children) runs its drop.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// While this lives, the stop signals set the flag instead of ending xtask; the previous
/// dispositions come back on drop.
#[must_use = "the previous signal dispositions come back when this is dropped"]
pub(crate) struct CatchStop {
    previous: Vec<(Signal, SigAction)>,
}

impl CatchStop {
    pub(crate) fn install() -> Result<Self> {
        let action = SigAction::new(
            SigHandler::Handler(on_stop_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut previous = Vec::new();
        for signal in SIGNALS {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            let old = unsafe { sigaction(signal, &action) }
                .with_context(|| format!("sigaction({signal})"))?;
            previous.push((signal, old));
        }
        Ok(Self { previous })
    }
}

impl Drop for CatchStop {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: puts back the disposition that was in place before.
            let _ = unsafe { sigaction(*signal, old) };
        }
    }
}

pub(crate) fn requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// An error once a stop signal has arrived.
pub(crate) fn check() -> Result<()> {
    if requested() {
        bail!("interrupted by a signal");
    }
    Ok(())
}
