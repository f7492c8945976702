//! trace → plan → execute on each tick: `collapse run` (and, next, the bench's `collapse` arms).
//!
//! The tracer's event loop drives a [`Pipeline`], its tick handler. Each pass takes the traced
//! regions (`Vec<SnapshotRegion>`), plans them with the chosen policy (`Vec<RegionPlan>`), and
//! hands the plans to the executor (`Pass` of `CollapseOutcome`s and `Advice`). A pass runs
//! every interval (longer while collapses are slow), and as soon as a region's bitmap has
//! changed by an eighth of a PMD or more.

mod json;
mod view;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use collapse_common::{
    consts::{PMD_SIZE, PTES_PER_PMD},
    policy::Planner,
};

pub use self::json::{CgroupLine, RunLine, TargetLine};
use crate::{
    executor::{Advice, CollapseOutcome, CollapseResult, Executor, GuardRails, SkipReason},
    kernel::{memcg, pagemap, procs},
    metrics::{Feed, PassSeries},
    planner::{PlanSettings, RegionPlan, plan_regions},
    snapshot::SnapshotRegion,
    tracer::{
        Capacity, Observed, Session, Target, TickHandler, Ticks, TracerError, run as run_loop,
    },
};

/// A change of this many PTEs in one region since the last pass calls for a pass now.
const NOTICEABLE_PTES: u32 = 64;
/// A region whose last outcome was a lasting skip (opted out, below the threshold, unmapped)
/// and whose bitmap has not changed is planned again only after this long.
const RECHECK_SKIPPED: Duration = Duration::from_secs(30);

/// What `collapse run` was asked for, validated.
#[derive(Debug)]
pub struct RunJob {
    pub capacity: Capacity,
    pub settings: PlanSettings,
    pub rails: GuardRails,
    /// One pass over the current regions, then exit.
    pub once: bool,
    /// Stop after this long (`None`: until stopped or the targets end).
    pub duration: Option<Duration>,
    pub output: RunOutput,
    /// `--metrics`: the families this run feeds.
    pub metrics: Option<Feed>,
    /// New settings (SIGHUP re-read the config file), taken at the next pass.
    pub reload: Option<std::sync::mpsc::Receiver<Reload>>,
}

/// Settings that replace the running ones at the next pass; the targets, outputs and the
/// endpoint stay as they were.
#[derive(Clone, Debug)]
pub struct Reload {
    pub settings: PlanSettings,
    pub rails: GuardRails,
}

/// How `run` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutput {
    /// The live view for people; `redraw` redraws it in place (a terminal), otherwise one line
    /// per pass.
    Human { redraw: bool },
    /// JSON lines (DESIGN.md).
    Json,
}

/// `run` went wrong before or while acting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tracer(#[from] TracerError),
    #[error("pid {0} has no anonymous memory to collapse")]
    NoAnonMemory(u32),
    #[error("pid {0} is a kernel thread: it has no memory of its own to collapse")]
    KernelThread(u32),
    #[error(transparent)]
    Pagemap(#[from] pagemap::PagemapError),
    #[error(transparent)]
    Output(#[from] std::io::Error),
}

impl From<crate::tracer::TargetError> for RunError {
    fn from(e: crate::tracer::TargetError) -> Self {
        Self::Tracer(e.into())
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    pub tally: RunTally,
    pub elapsed: Duration,
}

impl RunSummary {
    /// Every attempt collapsed, was huge already, or was skipped for a stated reason.
    pub fn all_fine(&self) -> bool {
        self.tally.failed() == 0
    }
}

/// The outcomes and advice a run reported (each region's state once, not once per pass).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunTally {
    /// By (result, reason).
    outcomes: BTreeMap<(&'static str, Option<&'static str>), u64>,
    opted_out: BTreeMap<&'static str, u64>,
    /// Distinct advice records by order.
    advice: BTreeMap<u8, u64>,
    passes: u64,
    psi_pauses: u64,
    /// Pages the collapses filled with zeroes: empty PTEs of the collapsed regions, as the
    /// bitmaps had them when planned.
    zero_filled_pages: u64,
}

impl RunTally {
    pub fn zero_filled_pages(&self) -> u64 {
        self.zero_filled_pages
    }

    fn record(&mut self, o: &CollapseOutcome) {
        *self
            .outcomes
            .entry((o.result.result_name(), o.result.reason()))
            .or_default() += 1;
        if let Some(detail) = o.result.detail() {
            *self.opted_out.entry(detail).or_default() += 1;
        }
    }

    /// Outcomes with result `name` (`collapsed`, ...).
    pub fn count(&self, name: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((r, _), _)| *r == name)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn failed(&self) -> u64 {
        self.count("failed")
    }

    /// Reasons of `result` (`skipped`, `failed`) with their counts.
    pub fn reasons(&self, result: &str) -> Vec<(&'static str, u64)> {
        self.outcomes
            .iter()
            .filter(|((r, why), _)| *r == result && why.is_some())
            .map(|(&(_, why), &n)| (why.unwrap_or_default(), n))
            .collect()
    }

    pub fn opted_out(&self) -> &BTreeMap<&'static str, u64> {
        &self.opted_out
    }

    pub fn advice(&self) -> &BTreeMap<u8, u64> {
        &self.advice
    }

    pub fn passes(&self) -> u64 {
        self.passes
    }

    pub fn psi_pauses(&self) -> u64 {
        self.psi_pauses
    }
}

/// The last state reported for a region, so that each change is said once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reported {
    /// `collapsed` and `already_huge` are the same lasting state: huge.
    state: (&'static str, Option<&'static str>),
    /// Its present PTEs then.
    present: u32,
    at: Instant,
}

/// The tick handler of `collapse run`.
pub struct Pipeline {
    planner: Planner,
    executor: Executor,
    output: RunOutput,
    started: Instant,
    /// Present PTEs per region at the last pass (for [`TickHandler::tick_now`]).
    counts_at_pass: HashMap<(u32, u64), u32>,
    reported: HashMap<(i32, u64), Reported>,
    advice_seen: HashSet<(i32, u64, u16, u8)>,
    tally: RunTally,
    /// The last pass: its reported outcomes by result, PSI, and the targets' coverage.
    last: view::PassView,
    collapsed_before_last: u64,
    /// Print each reported outcome for people (`--once`).
    each_outcome: bool,
    metrics: Option<Feed>,
    reload: Option<std::sync::mpsc::Receiver<Reload>>,
    last_pass_at: Instant,
    /// The next pass runs because a region changed by [`NOTICEABLE_PTES`] or more, not
    /// because its interval came (set by [`TickHandler::tick_now`]).
    early: bool,
    /// Passes so far (the first one runs at start, whatever changed).
    passes: u64,
}

impl Pipeline {
    pub fn new(settings: &PlanSettings, rails: GuardRails, output: RunOutput) -> Self {
        let planner = Planner::new(settings.policy, settings.settings);
        Self {
            executor: Executor::new(rails, planner),
            planner,
            output,
            started: Instant::now(),
            counts_at_pass: HashMap::new(),
            reported: HashMap::new(),
            advice_seen: HashSet::new(),
            tally: RunTally::default(),
            last: view::PassView::default(),
            collapsed_before_last: 0,
            early: false,
            passes: 0,
            each_outcome: false,
            metrics: None,
            reload: None,
            last_pass_at: Instant::now(),
        }
    }

    /// Feeds `metrics` at every pass.
    pub fn with_metrics(mut self, metrics: Option<Feed>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes new settings from `reload` at each pass.
    pub fn with_reload(mut self, reload: Option<std::sync::mpsc::Receiver<Reload>>) -> Self {
        self.reload = reload;
        self
    }

    /// The newest settings sent, if any: the policy and the guard rails change from this pass
    /// on; what the executor knows of its targets (pidfds, back-offs, totals) stays.
    fn take_reload(&mut self) {
        let Some(rx) = &self.reload else {
            return;
        };
        let Some(Reload { settings, rails }) = rx.try_iter().last() else {
            return;
        };
        self.planner = Planner::new(settings.policy, settings.settings);
        self.executor.reconfigure(rails, self.planner);
        // Under new settings every region not huge is planned again at once (a lasting skip
        // was a verdict of the old ones).
        self.reported.retain(|_, r| r.state.0 == "huge");
        eprintln!(
            "collapse: settings reloaded: {}, interval {} s, max rate {}, psi limit {}",
            view::policy_line(&self.planner),
            rails.base_interval.as_secs_f64(),
            rails.max_rate.map_or_else(
                || "none".to_owned(),
                |r| format!("{} MiB/s", r as f64 / 1048576.0)
            ),
            rails.psi_limit
        );
    }

    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    pub fn tally(&self) -> &RunTally {
        &self.tally
    }

    /// Selects what the session traces now and forgets what it no longer does.
    fn follow_targets(&mut self, session: &Session) {
        for tgid in session.tgids() {
            let pid = tgid as i32;
            if !self.executor.is_selected(pid)
                && let Err(e) = self.executor.select(pid)
            {
                // It may have exited since the tracer saw it: its exit event follows.
                eprintln!("collapse: warning: cannot select pid {pid}: {e}");
            }
        }
        for pid in self.executor.selected() {
            if !session.traces(pid as u32) {
                self.executor.forget(pid);
                self.reported.retain(|(p, _), _| *p != pid);
            }
        }
    }

    /// The regions worth a plan now: not those reported huge that are still PMD-mapped, nor
    /// those with a lasting skip whose bitmap has not changed (until it is time to look again).
    fn candidates(&self, session: &Session, now: Instant) -> Vec<SnapshotRegion> {
        let mut out = Vec::new();
        for (&tgid, regions) in session.current() {
            let pid = tgid as i32;
            for r in regions {
                let present = r.state.present.count();
                let settled = self.reported.get(&(pid, r.addr)).is_some_and(|rep| {
                    let huge = rep.state.0 == "huge";
                    let lasting = matches!(
                        rep.state,
                        (
                            "skipped",
                            Some("opted-out" | "below-threshold" | "unmapped" | "dry-run")
                        )
                    );
                    (huge && r.pmd_mapped)
                        || (lasting
                            && rep.present == present
                            && now.duration_since(rep.at) < RECHECK_SKIPPED)
                });
                if !settled {
                    out.push(SnapshotRegion {
                        pid,
                        addr: r.addr,
                        state: r.state,
                    });
                }
            }
        }
        out
    }

    /// One pass: plan the candidates, execute, report what changed.
    fn pass(&mut self, session: &Session) -> Result<(), RunError> {
        let now = Instant::now();
        // Early: a change was seen and the pass comes before its interval would have.
        let early = std::mem::take(&mut self.early)
            && now.duration_since(self.last_pass_at) < self.executor.interval();
        self.take_reload();
        self.follow_targets(session);
        let regions = self.candidates(session, now);
        // A region reported huge is a candidate again only once it is no longer PMD-mapped
        // (split by a partial unmap, MADV_DONTNEED, mprotect, ...): what happens to it next is a
        // new state, so a second collapse is reported and counted like the first (as the
        // executor's bytes and latencies count it).
        for r in &regions {
            let key = (r.pid, r.addr);
            if self
                .reported
                .get(&key)
                .is_some_and(|rep| rep.state.0 == "huge")
            {
                self.reported.remove(&key);
            }
        }
        let mut plans: Vec<RegionPlan> = plan_regions(&self.planner, &regions);
        let collapsible = collapsible_bytes(session, &plans);
        let deferred = self.within_rate(&mut plans);
        let pass = self.executor.execute(&plans);
        self.tally.passes += 1;
        if pass.paused_by_psi.is_some() {
            self.tally.psi_pauses += 1;
        }
        if let Some(feed) = &self.metrics {
            let m = feed.metrics();
            m.record_pass(&PassSeries {
                paused_for: pass
                    .paused_by_psi
                    .map(|_| now.duration_since(self.last_pass_at)),
                psi_avg10: pass.psi_avg10,
                interval: self.executor.interval(),
                rate_limit: self.executor.rails().max_rate,
                rate_deferred_pmds: deferred,
            });
        }
        self.last_pass_at = now;
        let present: HashMap<(i32, u64), u32> = regions
            .iter()
            .map(|r| ((r.pid, r.addr), r.state.present.count()))
            .collect();
        let occupied: HashMap<(i32, u64), u32> = regions
            .iter()
            .map(|r| ((r.pid, r.addr), r.state.occupied().count()))
            .collect();
        let mut results: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut out = std::io::stdout().lock();
        for o in &pass.outcomes {
            let state = match o.result {
                CollapseResult::Collapsed | CollapseResult::AlreadyHuge => ("huge", None),
                r => (r.result_name(), r.reason()),
            };
            let key = (o.pid, o.addr);
            // A region waiting out its back-off keeps its reported failure: the same failure
            // after the back-off is no news, and the wait itself is not reported.
            if o.result == CollapseResult::Skipped(SkipReason::BackingOff) {
                continue;
            }
            let changed = self.reported.get(&key).is_none_or(|rep| rep.state != state);
            self.reported.insert(
                key,
                Reported {
                    state,
                    present: present.get(&key).copied().unwrap_or(0),
                    at: now,
                },
            );
            if !changed {
                continue;
            }
            self.tally.record(o);
            if let Some(feed) = &self.metrics {
                let bytes = if o.result == CollapseResult::Collapsed {
                    PMD_SIZE
                } else {
                    0
                };
                feed.metrics().record_outcome(
                    o.result.result_name(),
                    o.result.reason(),
                    o.latency,
                    bytes,
                );
            }
            if o.result == CollapseResult::Collapsed {
                // Swapped-out PTEs are swapped in, not zero-filled.
                let occupied = occupied.get(&key).copied().unwrap_or(0);
                self.tally.zero_filled_pages +=
                    u64::from(PTES_PER_PMD as u32 - occupied.min(PTES_PER_PMD as u32));
            }
            *results.entry(o.result.result_name()).or_default() += 1;
            match self.output {
                RunOutput::Json => writeln!(out, "{}", RunLine::Collapse(o.into()).to_json())?,
                RunOutput::Human { .. } if self.each_outcome => {
                    writeln!(out, "{}", view::render_outcome(o))?
                }
                RunOutput::Human { .. } => {}
            }
        }
        let fresh: Vec<&Advice> = pass
            .advice
            .iter()
            .filter(|a| self.advice_seen.insert((a.pid, a.addr, a.offset, a.order)))
            .collect();
        for a in fresh {
            *self.tally.advice.entry(a.order).or_default() += 1;
            if let Some(feed) = &self.metrics {
                feed.metrics().record_advice(a.order);
            }
            if self.output == RunOutput::Json {
                writeln!(out, "{}", RunLine::Advice(a.into()).to_json())?;
            }
        }
        drop(out);
        // What `tick_now` compares with: the programs' own bitmaps (file-backed private pages
        // included), not the anonymous view the plan was made on.
        self.counts_at_pass = session
            .bpf()
            .regions()
            .map_err(TracerError::from)?
            .into_iter()
            .map(|(key, bits)| ((key.tgid, key.addr), bits.count()))
            .collect();
        let collapsed = self.tally.count("collapsed");
        let (targets, cgroups) = targets(session);
        let trigger = if self.passes == 0 {
            view::Trigger::Start
        } else if early {
            view::Trigger::Change
        } else {
            view::Trigger::Interval
        };
        self.passes += 1;
        self.last = view::PassView {
            trigger,
            elapsed: self.started.elapsed(),
            interval: self.executor.interval(),
            psi_avg10: pass.psi_avg10,
            paused_by_psi: pass.paused_by_psi,
            results,
            collapsed_now: collapsed - self.collapsed_before_last,
            targets,
            cgroups,
        };
        self.collapsed_before_last = collapsed;
        if let Some(feed) = &mut self.metrics {
            feed.tick(session, &collapsible)?;
        }
        self.show()
    }

    /// With `--max-rate`, a pass takes only the PMD decisions the rate allows in one interval
    /// (the rest wait for later passes), so that waiting for tokens never holds the tracer's
    /// loop for long.
    /// Returns how many PMD decisions wait.
    fn within_rate(&self, plans: &mut Vec<RegionPlan>) -> u64 {
        let rails = self.executor.rails();
        let Some(rate) = rails.max_rate else {
            return 0;
        };
        let budget = (rate as f64 * rails.base_interval.as_secs_f64() / PMD_SIZE as f64)
            .ceil()
            .max(1.0) as usize;
        // Regions whose last attempt failed (they may be backing off) go last, so that they never
        // take the budget from the rest.
        plans.sort_by_key(|p| {
            self.reported
                .get(&(p.pid, p.addr))
                .is_some_and(|r| r.state.0 == "failed")
        });
        let mut pmds = 0;
        plans.retain(|p| {
            if !p.is_pmd() {
                return true;
            }
            pmds += 1;
            pmds <= budget
        });
        pmds.saturating_sub(budget) as u64
    }

    fn show(&self) -> Result<(), RunError> {
        let mut out = std::io::stdout().lock();
        match self.output {
            // `--once` prints its outcomes and the summary.
            RunOutput::Human { .. } if self.each_outcome => {}
            RunOutput::Json => writeln!(out, "{}", self.last.json(self.tally.passes).to_json())?,
            RunOutput::Human { redraw: true } => {
                write!(out, "\x1b[H\x1b[2J")?;
                write!(out, "{}", view::render_live(self, &self.last))?;
            }
            RunOutput::Human { redraw: false } => {
                writeln!(out, "{}", view::render_line(self, &self.last))?
            }
        }
        out.flush()?;
        Ok(())
    }

    /// The final summary, as the output wants it.
    pub fn write_summary(&self) -> Result<(), RunError> {
        let mut out = std::io::stdout().lock();
        match self.output {
            RunOutput::Json => writeln!(out, "{}", view::summary_json(self, &self.last).to_json())?,
            RunOutput::Human { .. } => write!(out, "{}", view::render_summary(self, &self.last))?,
        }
        out.flush()?;
        Ok(())
    }

    fn summary(&self) -> RunSummary {
        RunSummary {
            tally: self.tally.clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

/// What the plans would still collapse per process, in bytes: every decision of a region
/// not PMD-mapped yet.
fn collapsible_bytes(session: &Session, plans: &[RegionPlan]) -> HashMap<u32, u64> {
    let mut out: HashMap<u32, u64> = session.tgids().map(|t| (t, 0)).collect();
    for p in plans {
        let huge = session
            .current()
            .get(&(p.pid as u32))
            .and_then(|rs| rs.iter().find(|r| r.addr == p.addr))
            .is_some_and(|r| r.pmd_mapped);
        if huge {
            continue;
        }
        let bytes: u64 = p.decisions.iter().map(|d| 4096u64 << d.order).sum();
        *out.entry(p.pid as u32).or_default() += bytes;
    }
    out
}

/// Each traced process's coverage now, and its memory cgroup's.
fn targets(session: &Session) -> (Vec<TargetLine>, Vec<CgroupLine>) {
    let mut groups: BTreeMap<String, (memcg::MemoryCgroup, u64)> = BTreeMap::new();
    let targets = session
        .processes()
        .map(|p| {
            let pid = p.tgid as i32;
            let m = procs::memory_coverage(pid).unwrap_or_default();
            let group = memcg::of_process(pid).ok();
            let cgroup = group.as_ref().map(|g| g.path.clone()).unwrap_or_default();
            if let Some(g) = group {
                groups.entry(g.path.clone()).or_insert((g, 0)).1 += 1;
            }
            TargetLine {
                pid,
                comm: p.comm.clone(),
                anon_rss_bytes: m.anon_rss_kb * 1024,
                anon_huge_bytes: m.anon_huge_kb * 1024,
                coverage: m.coverage(),
                cgroup,
            }
        })
        .collect();
    let cgroups = groups
        .into_values()
        .filter_map(|(g, processes)| {
            let m = g.memory().ok()?;
            Some(CgroupLine {
                cgroup: g.path,
                processes,
                anon_bytes: m.anon_bytes,
                anon_thp_bytes: m.anon_thp_bytes,
                coverage: if m.anon_bytes == 0 {
                    0.0
                } else {
                    m.anon_thp_bytes as f64 / m.anon_bytes as f64
                },
            })
        })
        .collect();
    (targets, cgroups)
}

impl TickHandler for Pipeline {
    type Error = RunError;

    fn attached(&mut self, session: &Session) -> Result<(), RunError> {
        self.follow_targets(session);
        if let RunOutput::Human { .. } = self.output {
            let names: Vec<String> = session
                .processes()
                .map(|p| format!("{} {}", p.tgid, p.comm))
                .collect();
            eprintln!(
                "collapse: {} {} with {}; Ctrl-C to stop",
                if self.executor.rails().dry_run {
                    "planning (dry run) for"
                } else {
                    "collapsing"
                },
                names.join(", "),
                view::policy_line(&self.planner),
            );
        }
        Ok(())
    }

    fn observed(&mut self, session: &mut Session, what: &Observed) -> Result<(), RunError> {
        if let Some(feed) = &self.metrics {
            feed.observed();
        }
        match what {
            Observed::Started { .. } => self.follow_targets(session),
            Observed::Ended { tgid, .. } => {
                self.executor.forget(*tgid as i32);
                self.reported.retain(|(p, _), _| *p != *tgid as i32);
            }
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self, session: &mut Session, last: bool) -> Result<(), RunError> {
        // After a stop, act no more: the summary follows.
        if last {
            return Ok(());
        }
        self.pass(session)
    }

    fn next_interval(&self) -> Option<Duration> {
        Some(self.executor.interval())
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some((self.executor.rails().base_interval / 4).max(Duration::from_millis(100)))
    }

    fn tick_now(&mut self, session: &Session) -> Result<bool, RunError> {
        let regions = session.bpf().regions().map_err(TracerError::from)?;
        self.early = regions.iter().any(|(key, bits)| {
            session.is_live(key.tgid, key.generation)
                && self
                    .counts_at_pass
                    .get(&(key.tgid, key.addr))
                    .copied()
                    .unwrap_or(0)
                    .abs_diff(bits.count())
                    >= NOTICEABLE_PTES
        });
        Ok(self.early)
    }
}

/// While it lives, SIGINT and SIGTERM also set the executor's stop flag: a pass in progress
/// (which holds the event loop) ends at its next region, and the loop then sees the signal.
struct StopOnSignal(Vec<signal_hook_registry::SigId>);

impl StopOnSignal {
    fn install(stop: Arc<AtomicBool>) -> Self {
        let ids = [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            .filter_map(|signal| {
                let stop = Arc::clone(&stop);
                // SAFETY: the action only stores to an atomic, which is async-signal-safe; the
                // registry chains it with tokio's own handler.
                unsafe {
                    signal_hook_registry::register(signal, move || {
                        stop.store(true, Ordering::Relaxed);
                    })
                }
                .ok()
            })
            .collect();
        Self(ids)
    }
}

impl Drop for StopOnSignal {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook_registry::unregister(id);
        }
    }
}

/// `collapse run`: traces `target`, and on every tick plans and collapses; with `once`, one
/// pass over the current regions. Prints the summary at the end (also after a signal).
pub async fn run(
    target: Target,
    job: RunJob,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    // Said first, in the words every command uses: collapsing needs root.
    if !nix::unistd::geteuid().is_root() {
        return Err(TracerError::from(crate::tracer::BpfError::NotRoot).into());
    }
    // A named process with nothing to collapse is a mistake worth saying before loading.
    for &tgid in target.pids() {
        if pagemap::anon_vmas(tgid as i32)?.is_empty() {
            if procs::is_kernel_thread(tgid as i32) {
                return Err(RunError::KernelThread(tgid));
            }
            return Err(RunError::NoAnonMemory(tgid));
        }
    }
    let mut session = Session::start(target, job.capacity)?;
    let mut pipeline = Pipeline::new(&job.settings, job.rails, job.output)
        .with_metrics(job.metrics)
        .with_reload(job.reload);
    let _stop_on_signal = StopOnSignal::install(pipeline.executor.stop_flag());
    if job.once {
        pipeline.each_outcome = true;
        session.refresh()?;
        pipeline.follow_targets(&session);
        pipeline.pass(&session)?;
    } else {
        let ticks = Ticks {
            interval: job.rails.base_interval,
            duration: job.duration,
        };
        let result = run_loop(&mut session, shutdown, ticks, &mut pipeline).await;
        // The summary says what was done, also when tracing failed.
        pipeline.write_summary()?;
        result?;
        session.stop_child();
        return Ok(pipeline.summary());
    }
    pipeline.write_summary()?;
    session.stop_child();
    Ok(pipeline.summary())
}
