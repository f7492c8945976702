//! The tracer's event loop: ring-buffer records as they arrive, and a tick every interval.
//! The caller owns stopping (a shutdown future) and what happens on each tick (a
//! [`TickHandler`]): `trace` prints, `run` plans and collapses, and the loop knows neither.

use std::{future::Future, time::Duration};

use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};

use super::{
    error::TracerError,
    session::{self, Observed, Session},
};

/// Why the loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The shutdown future completed (Ctrl-C, SIGTERM).
    Signal,
    /// The duration ran out.
    Duration,
    /// Every process the target named has ended.
    TargetsGone,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Duration => "duration",
            Self::TargetsGone => "targets ended",
        }
    }
}

/// How often the loop ticks and for how long it runs (`None`: until stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticks {
    pub interval: Duration,
    pub duration: Option<Duration>,
}

/// What the caller does with what the loop sees. Every method has a default that does
/// nothing.
pub trait TickHandler {
    /// What the handler's own work can fail with; tracing errors convert into it.
    type Error: From<TracerError>;

    /// Once, when the loop starts, before the first tick.
    fn attached(&mut self, _session: &Session) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Something the session saw happen: a record it handled, a process joining or ending.
    fn observed(&mut self, _session: &mut Session, _what: &Observed) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Each tick, once the session has picked up new members, re-read what it had to and
    /// refreshed its regions. `last` is the extra tick after the loop stopped (only when the
    /// state changed since the last one); a handler that acts may leave it alone.
    fn tick(&mut self, _session: &mut Session, _last: bool) -> Result<(), Self::Error> {
        Ok(())
    }

    /// How long until the next tick, asked after each one (`None`: the loop's interval). The
    /// executor backs off this way when collapses are slow.
    fn next_interval(&self) -> Option<Duration> {
        None
    }

    /// How often to ask [`TickHandler::tick_now`] between ticks (`None`: never).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Whether to tick now rather than at the end of the interval (for example because a
    /// region's bitmap changed noticeably). The session's maps are current; its regions are as
    /// of the last tick.
    fn tick_now(&mut self, _session: &Session) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// Runs the session until `shutdown` completes, the duration runs out or the targets end.
pub async fn run<H: TickHandler>(
    session: &mut Session,
    shutdown: impl Future<Output = ()>,
    ticks: Ticks,
    handler: &mut H,
) -> Result<Stop, H::Error> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
    // the AsyncFd holds it.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(session.take_events()?, Interest::READABLE) }
            .map_err(|e| TracerError::Poll(e.into_parts().1))?;
    let deadline = ticks.duration.map(|d| Instant::now() + d);
    let mut interval = ticks.interval;
    handler.attached(session)?;
    // Each tick is due one interval after the previous one fired (a late tick delays the
    // next instead of bunching them up, like tokio's `MissedTickBehavior::Delay`).
    let mut next_tick = Instant::now() + interval;
    let poll_every = handler.poll_interval();
    let mut next_poll = poll_every.map(|p| Instant::now() + p);
    tokio::pin!(shutdown);
    // When a tick last handed the state over, and whether anything happened since.
    let mut shown_at: Option<Instant> = None;
    let stop = loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break Stop::Signal,
            () = sleep => break Stop::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(TracerError::Poll)?;
                let events = session::drain(guard.get_inner_mut());
                guard.clear_ready();
                let ended = handle_events(session, handler, &events)?;
                if !events.is_empty() {
                    shown_at = None;
                }
                // The last target ending stops the loop now, not at the next tick.
                if ended && session.targets_gone() {
                    break Stop::TargetsGone;
                }
            }
            () = sleep_until_some(next_poll), if next_poll.is_some() => {
                let now = Instant::now();
                next_poll = poll_every.map(|p| now + p);
                if next_tick > now && handler.tick_now(session)? {
                    next_tick = now;
                }
            }
            () = tokio::time::sleep_until(next_tick) => {
                let fired = Instant::now();
                let mut joined = session.rescan()?;
                joined.extend(session.take_hook_news());
                for o in &joined {
                    handler.observed(session, o)?;
                }
                session.refresh()?;
                handler.tick(session, false)?;
                shown_at = Some(Instant::now());
                if session.targets_gone() {
                    break Stop::TargetsGone;
                }
                interval = handler.next_interval().unwrap_or(ticks.interval);
                next_tick = fired + interval;
            }
        }
    };
    // What arrived before the stop still counts.
    let events = session::drain(ring.get_mut());
    session.give_back_events(ring.into_inner());
    handle_events(session, handler, &events)?;
    session.resync_pending()?;
    // The final state, unless a tick has just handed it over.
    let just_shown = shown_at.is_some_and(|t| t.elapsed() < interval / 4);
    if !events.is_empty() || !just_shown {
        session.refresh()?;
        handler.tick(session, true)?;
    }
    Ok(stop)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands `events` to the session and what it saw to the handler; whether a process ended.
fn handle_events<H: TickHandler>(
    session: &mut Session,
    handler: &mut H,
    events: &[collapse_common::event::Event],
) -> Result<bool, H::Error> {
    let mut ended = false;
    for ev in events {
        let mut seen: Vec<Observed> = session.handle(ev)?.into_iter().collect();
        seen.extend(session.take_hook_news());
        for o in &seen {
            ended |= matches!(o, Observed::Ended { .. });
            handler.observed(session, o)?;
        }
    }
    Ok(ended)
}
