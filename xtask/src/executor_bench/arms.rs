//! The arms: what each does to a freshly populated child, and what is measured while it does.
//!
//! Keeping the arms apart. `collapse run`, the plain loop and the jobs arms collapse a `plain`
//! mapping: with THP `enabled` at `madvise` khugepaged never collapses a VMA without
//! MADV_HUGEPAGE (`mm/huge_memory.c` `__thp_vma_allowable_orders`), so it cannot do their
//! work, whatever its scan interval; its `pages_collapsed` counter, which MADV_COLLAPSE does not
//! touch (`mm/khugepaged.c`), and its CPU are recorded over every arm to show it. The
//! khugepaged arms populate under MADV_NOHUGEPAGE (4 KiB pages only) and then mark the area
//! MADV_HUGEPAGE, which is the moment they start. Each arm has children of its own, killed and
//! reaped before the next arm, and nothing of `collapse run` is left running.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::{errno::Errno, sys::signal::Signal};
use serde_json::Value;

use super::{
    Settings,
    probe::{self, FreeMemory, Sample, Sampler, Watch},
    workload::{Mapping, Workload},
};
use crate::{
    child::{LineReader, Spawned},
    cmd::{self, say},
    interrupt,
    sysfs::{self, SysfsGuard},
};

const PMD_SIZE: u64 = 2 << 20;
/// process_madvise(2)'s advice value (`include/uapi/asm-generic/mman-common.h`).
const MADV_COLLAPSE: i32 = 25;
/// The coverage the arms are timed to.
pub(crate) const TARGET_COVERAGE: f64 = 0.9;
/// An arm that has reached 90 % and gained nothing for this long is over.
const SETTLE: Duration = Duration::from_secs(3);
/// `collapse run` printing its summary after SIGTERM.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of an arm whose settings someone else keeps changing.
const DISTURBED_ATTEMPTS: u32 = 3;
/// How long an arm waits for someone else to put THP `enabled` back to `madvise`.
pub(crate) const ENABLED_WAIT: Duration = Duration::from_secs(120);
/// khugepaged's settings that "default" means (kernel-facts.md; `mm/khugepaged.c`).
pub(crate) const KHUGEPAGED_DEFAULTS: [(&str, &str); 3] = [
    ("scan_sleep_millisecs", "10000"),
    ("pages_to_scan", "4096"),
    ("alloc_sleep_millisecs", "60000"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arm {
    /// (a) `collapse run --pid P` started on a populated child.
    CollapseRun,
    /// process_madvise(MADV_COLLAPSE) per PMD from xtask, nothing else.
    PlainMadvise,
    /// (c) khugepaged with `scan_sleep_millisecs` 0.
    KhugepagedFast,
    /// (b) khugepaged with its default settings, given up on after `--default-timeout`.
    KhugepagedDefault,
    /// Two children, `collapse run --pid A --pid B --jobs N`.
    Jobs(u8),
}

impl Arm {
    pub(crate) fn label(self) -> String {
        match self {
            Arm::CollapseRun => "(a) collapse run".into(),
            Arm::PlainMadvise => "plain process_madvise".into(),
            Arm::KhugepagedFast => "(c) khugepaged sleep 0".into(),
            Arm::KhugepagedDefault => "(b) khugepaged default".into(),
            Arm::Jobs(n) => format!("2 targets, --jobs {n}"),
        }
    }

    pub(crate) fn key(self) -> String {
        match self {
            Arm::CollapseRun => "collapse_run".into(),
            Arm::PlainMadvise => "plain_process_madvise".into(),
            Arm::KhugepagedFast => "khugepaged_scan_sleep_0".into(),
            Arm::KhugepagedDefault => "khugepaged_default".into(),
            Arm::Jobs(n) => format!("two_targets_jobs_{n}"),
        }
    }

    /// Whether the arm starts a `collapse run`, whose start-up is measured apart.
    pub(crate) fn runs_collapse(self) -> bool {
        matches!(self, Arm::CollapseRun | Arm::Jobs(_))
    }
}

/// How an arm's watch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte of the children's areas PMD-mapped.
    Complete,
    /// 90 % reached, then nothing more for [`SETTLE`].
    Settled,
    /// The arm's time limit.
    TimedOut,
    /// The plain loop went over every PMD.
    LoopDone,
}

impl End {
    pub(crate) fn name(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::Settled => "settled",
            End::TimedOut => "timed_out",
            End::LoopDone => "loop_done",
        }
    }
}

/// One arm, one time.
pub(crate) struct ArmRun {
    pub(crate) arm: Arm,
    pub(crate) round: u32,
    pub(crate) children: usize,
    pub(crate) area_bytes: u64,
    pub(crate) end: End,
    /// Seconds from the start to the end of the work (see [`End`]).
    pub(crate) done: f64,
    pub(crate) limit: f64,
    /// The first sample at ≥ 90 % coverage.
    pub(crate) t90: Option<f64>,
    /// `collapse run` arms: the first sample with a huge page in it (loading the programs,
    /// seeding from pagemap, the first plan), and the CPU used until then.
    pub(crate) startup: Option<f64>,
    pub(crate) cpu_startup: Option<f64>,
    /// CPU seconds over the arm, up to `done`.
    pub(crate) cpu_own: f64,
    pub(crate) cpu_khugepaged: f64,
    /// Own + khugepaged CPU at the t90 sample.
    pub(crate) cpu_to_90: Option<f64>,
    pub(crate) final_coverage: f64,
    /// PMD-mapped bytes gained, and over which window: from the last sample before the first
    /// huge page to `done` (so the window errs long by up to two sample intervals).
    pub(crate) bytes_collapsed: u64,
    pub(crate) collapse_window: Option<f64>,
    pub(crate) free_before: FreeMemory,
    pub(crate) vmstat: BTreeMap<&'static str, u64>,
    pub(crate) khugepaged_counters: BTreeMap<&'static str, u64>,
    /// khugepaged sysfs values during the arm.
    pub(crate) khugepaged_settings: BTreeMap<&'static str, String>,
    /// `collapse run`'s summary line.
    pub(crate) run_summary: Option<Value>,
    /// The plain loop: results by errno name (`ok` for 0).
    pub(crate) plain_results: BTreeMap<String, u64>,
    pub(crate) samples: Vec<Sample>,
}

impl ArmRun {
    /// MiB made huge per second of collapsing (start-up excluded).
    pub(crate) fn throughput_mib_s(&self) -> Option<f64> {
        let w = self.collapse_window?;
        (w > 0.0).then(|| self.bytes_collapsed as f64 / (1 << 20) as f64 / w)
    }

    /// The executor's CPU once started: the arm's own CPU less its start-up.
    pub(crate) fn cpu_collapsing(&self) -> f64 {
        self.cpu_own - self.cpu_startup.unwrap_or(0.0)
    }

    /// khugepaged at its default settings collapses at a steady rate (`pages_to_scan` PTEs per
    /// `scan_sleep_millisecs`), so when it did not reach 90 % the time to it is estimated by a
    /// straight line from the start through the coverage at the end.
    pub(crate) fn t90_extrapolated(&self) -> Option<f64> {
        if self.t90.is_some() || self.final_coverage <= 0.0 {
            return None;
        }
        Some(self.done * TARGET_COVERAGE / self.final_coverage)
    }
}

/// What every arm needs.
pub(crate) struct Bench<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) settings: &'a Settings,
    pub(crate) khugepaged_stat: PathBuf,
}

/// THP `enabled` or khugepaged's settings were changed by someone else during an arm (other
/// engineers' tests share the machine): the run says nothing about the settings it was meant
/// to measure. With `enabled` at `always`, for one, the children's plain mappings get THPs at
/// fault and khugepaged may collapse them.
#[derive(Debug)]
struct Disturbed(String);

/// An error of type [`Disturbed`] unless THP `enabled` is `madvise`.
fn check_enabled() -> Result<()> {
    let now = sysfs::read(&sysfs::thp("enabled"))?;
    if now != "madvise" {
        return Err(Disturbed(format!(
            "THP `enabled` was changed to {now} by someone else (the bench needs madvise)"
        ))
        .into());
    }
    Ok(())
}

/// Waits up to `limit` for THP `enabled` to be `madvise` (someone else's test may hold it
/// at another value for a while); whether it is.
pub(crate) fn wait_for_madvise(limit: Duration) -> Result<bool> {
    let until = Instant::now() + limit;
    let mut said = false;
    loop {
        if check_enabled().is_ok() {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        if !said {
            say!(
                "bench executor: THP `enabled` is not madvise (someone else changed it); \
                 waiting up to {:.0} s for it to come back",
                limit.as_secs_f64()
            );
            said = true;
        }
        interrupt::check()?;
        thread::sleep(Duration::from_millis(200));
    }
}

impl std::fmt::Display for Disturbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for Disturbed {}

impl Bench<'_> {
    /// One run of `arm`; `None` when it was disturbed [`DISTURBED_ATTEMPTS`] times running,
    /// which the report then says.
    pub(crate) fn measure(&self, arm: Arm, round: u32) -> Result<Option<ArmRun>> {
        for attempt in 1..=DISTURBED_ATTEMPTS {
            if !wait_for_madvise(ENABLED_WAIT)? {
                bail!(
                    "THP `enabled` has not been madvise for {:.0} s: something else on this \
                     machine holds it",
                    ENABLED_WAIT.as_secs_f64()
                );
            }
            match self.measure_once(arm, round) {
                Err(e) if e.downcast_ref::<Disturbed>().is_some() => {
                    say!(
                        "bench executor: warning: {e}; attempt {attempt}/{DISTURBED_ATTEMPTS} \
                         of this arm is void"
                    );
                }
                other => return other.map(Some),
            }
        }
        Ok(None)
    }

    fn measure_once(&self, arm: Arm, round: u32) -> Result<ArmRun> {
        let s = self.settings;
        match arm {
            Arm::CollapseRun => self.collapse_run(arm, round, &[s.size_mib], None),
            Arm::Jobs(n) => {
                self.collapse_run(arm, round, &[s.jobs_size_mib, s.jobs_size_mib], Some(n))
            }
            Arm::PlainMadvise => self.plain(round),
            Arm::KhugepagedFast | Arm::KhugepagedDefault => self.khugepaged(arm, round),
        }
    }

    /// A populated child; a child that starts out huge because THP `enabled` was changed
    /// meanwhile is a disturbance, not a failure.
    fn populate(&self, mib: u64, mapping: Mapping) -> Result<Workload> {
        Workload::populated(self.bin, mib, mapping).map_err(|e| match check_enabled() {
            Err(disturbed) => disturbed.context(format!("{e:#}")),
            Ok(()) => e,
        })
    }

    /// Waits `--settle` between populating the children and starting the arm. On this VM
    /// (virtio-balloon with free page reporting, see `probe::free_page_reporting`) a free 2 MiB
    /// block is reported to the host some seconds after it is freed, a few dozen blocks per
    /// two-second cycle (`mm/page_reporting.c`), and the host drops its backing: a THP
    /// allocated from it is then faulted in by the host again, at several milliseconds of CPU
    /// per 2 MiB, which the guest charges to whoever touches it. A THP from a block freed just
    /// before (by the previous arm's child) costs a tenth of that. Waiting lets the previous
    /// arm's memory be reported, so that every arm pays the host alike instead of by chance.
    fn settle(&self) -> Result<()> {
        let until = Instant::now() + self.settings.settle;
        while Instant::now() < until {
            interrupt::check()?;
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn watch(&self, children: &[&Workload], own: Option<PathBuf>) -> Watch {
        Watch {
            children: children.iter().map(|w| w.pid()).collect(),
            own,
            khugepaged: self.khugepaged_stat.clone(),
            interval: self.settings.sample_interval,
        }
    }

    fn collapse_run(
        &self,
        arm: Arm,
        round: u32,
        sizes: &[u64],
        jobs: Option<u8>,
    ) -> Result<ArmRun> {
        let mut children = sizes
            .iter()
            .map(|&mib| self.populate(mib, Mapping::Plain))
            .collect::<Result<Vec<_>>>()?;
        self.settle()?;
        let limit = self.settings.timeout;
        let before = Before::now(arm, round, limit)?;
        let mut run = Command::new(self.bin);
        run.arg("run");
        for w in &children {
            run.args(["--pid", &w.pid().to_string()]);
        }
        if let Some(n) = jobs {
            run.args(["--jobs", &n.to_string()]);
        }
        run.arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        say!("bench executor: $ {}", cmd::describe(&run, Path::new("")));
        let start = Instant::now();
        let mut run = Spawned::spawn(&mut run, "collapse run", Signal::SIGTERM)?;
        let lines = LineReader::new(run.stdout()?, "collapse run");
        let refs: Vec<&Workload> = children.iter().collect();
        let sampler = Sampler::start(
            self.watch(&refs, Some(format!("/proc/{}/stat", run.pid()).into())),
            start,
        )?;
        let area: u64 = children.iter().map(Workload::area_bytes).sum();
        let end = watch_until(&sampler, area, limit, || {
            if let Some(status) = run.exited()? {
                bail!("collapse run ended during the arm ({status})");
            }
            children.iter_mut().try_for_each(Workload::check_alive)?;
            check_enabled()
        })?;
        let samples = sampler.finish()?;
        let status = run.stop()?;
        ensure!(
            status.success(),
            "collapse run did not stop cleanly on SIGTERM ({status})"
        );
        let summary = summary_line(&lines)?;
        let mut r = before.finish(&children, end, None, samples)?;
        r.run_summary = Some(summary);
        Ok(r)
    }

    /// process_madvise(MADV_COLLAPSE) per PMD over the child's area from this thread, timed
    /// with this thread's CPU (which includes the kernel time of the calls).
    fn plain(&self, round: u32) -> Result<ArmRun> {
        let mut child = self.populate(self.settings.size_mib, Mapping::Plain)?;
        self.settle()?;
        check_enabled()?;
        let before = Before::now(Arm::PlainMadvise, round, self.settings.timeout)?;
        let pidfd = open_pidfd(child.pid())?;
        let start = Instant::now();
        let sampler = Sampler::start(
            self.watch(&[&child], Some(probe::this_thread_stat())),
            start,
        )?;
        let mut results: BTreeMap<String, u64> = BTreeMap::new();
        let (addr, len) = (child.addr(), child.area_bytes());
        for (i, pmd) in (addr..addr + len).step_by(PMD_SIZE as usize).enumerate() {
            interrupt::check()?;
            if i % 64 == 0 {
                check_enabled()?;
            }
            // EAGAIN is transient (kernel-facts.md): one retry, as the executor does.
            let result = match collapse(&pidfd, pmd) {
                Err(Errno::EAGAIN) => collapse(&pidfd, pmd),
                r => r,
            };
            let name = match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("{e:?}"),
            };
            *results.entry(name).or_default() += 1;
        }
        let done = start.elapsed().as_secs_f64();
        // One more sample, now that the loop is idle, to hold all of its CPU.
        thread::sleep(self.settings.sample_interval * 2);
        child.check_alive()?;
        check_enabled()?;
        let samples = sampler.finish()?;
        let mut r = before.finish(&[child], End::LoopDone, Some(done), samples)?;
        r.plain_results = results;
        Ok(r)
    }

    fn khugepaged(&self, arm: Arm, round: u32) -> Result<ArmRun> {
        let mut child = self.populate(self.settings.size_mib, Mapping::NoHugeThenHuge)?;
        self.settle()?;
        // Restored as soon as the watch is over, and by drop on any error before that.
        let mut guards = Vec::new();
        let mut wanted = Vec::new();
        for (name, default) in KHUGEPAGED_DEFAULTS {
            let value = if arm == Arm::KhugepagedFast && name == "scan_sleep_millisecs" {
                "0"
            } else {
                default
            };
            let path = sysfs::thp(&format!("khugepaged/{name}"));
            if sysfs::read(&path)? != value {
                guards.push(SysfsGuard::set(path.clone(), value)?);
            }
            wanted.push((path, value));
        }
        // Someone else's change is seen within one watch step; the run is then void.
        let unchanged = || -> Result<()> {
            check_enabled()?;
            for (path, value) in &wanted {
                let now = sysfs::read(path)?;
                if now != *value {
                    return Err(Disturbed(format!(
                        "{} was changed to {now} by someone else during the arm (the bench had \
                         it at {value})",
                        path.display()
                    ))
                    .into());
                }
            }
            Ok(())
        };
        let limit = match arm {
            Arm::KhugepagedDefault => self.settings.default_timeout,
            _ => self.settings.timeout,
        };
        let before = Before::now(arm, round, limit)?;
        let start = Instant::now();
        let sampler = Sampler::start(self.watch(&[&child], None), start)?;
        child.mark_huge()?;
        let area = child.area_bytes();
        let end = watch_until(&sampler, area, limit, || {
            child.check_alive()?;
            unchanged()
        })?;
        let samples = sampler.finish()?;
        drop(guards);
        before.finish(&[child], end, None, samples)
    }
}

/// Polls the sampler until the arm is over.
fn watch_until(
    sampler: &Sampler,
    area_bytes: u64,
    limit: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<End> {
    let limit = limit.as_secs_f64();
    let mut last_growth: Option<(f64, u64)> = None;
    let mut reported = 0u32;
    loop {
        thread::sleep(Duration::from_millis(50));
        interrupt::check()?;
        alive()?;
        let samples = sampler.samples()?;
        let Some(last) = samples.last() else { continue };
        let huge = last.coverage.anon_huge;
        if huge >= area_bytes {
            return Ok(End::Complete);
        }
        if last_growth.is_none_or(|(_, h)| huge > h) {
            last_growth = Some((last.t, huge));
        }
        let reached = last.coverage.fraction() >= TARGET_COVERAGE;
        if reached && last_growth.is_some_and(|(t, _)| last.t - t >= SETTLE.as_secs_f64()) {
            return Ok(End::Settled);
        }
        if last.t >= limit {
            return Ok(End::TimedOut);
        }
        // A progress line every 10 s on the long arm.
        let tens = (last.t / 10.0) as u32;
        if tens > reported {
            reported = tens;
            say!(
                "bench executor:   {:>4.0} s: {:.1} % huge",
                last.t,
                last.coverage.fraction() * 100.0
            );
        }
    }
}

/// The counters before an arm, and turning its samples into an [`ArmRun`].
struct Before {
    arm: Arm,
    round: u32,
    limit: Duration,
    free: FreeMemory,
    vmstat: BTreeMap<&'static str, u64>,
    khugepaged: BTreeMap<&'static str, u64>,
    settings: BTreeMap<&'static str, String>,
}

impl Before {
    fn now(arm: Arm, round: u32, limit: Duration) -> Result<Self> {
        let settings = KHUGEPAGED_DEFAULTS
            .iter()
            .map(|&(name, _)| {
                Ok((
                    name,
                    sysfs::read(&sysfs::thp(&format!("khugepaged/{name}")))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            arm,
            round,
            limit,
            free: FreeMemory::now()?,
            vmstat: probe::vmstat()?,
            khugepaged: probe::khugepaged_counters()?,
            settings,
        })
    }

    fn finish(
        self,
        children: &[Workload],
        end: End,
        loop_done: Option<f64>,
        samples: Vec<Sample>,
    ) -> Result<ArmRun> {
        let Self {
            arm,
            round,
            limit,
            free,
            vmstat,
            khugepaged,
            settings,
        } = self;
        let vmstat = probe::delta(&vmstat, &probe::vmstat()?);
        let khugepaged_counters = probe::delta(&khugepaged, &probe::khugepaged_counters()?);
        let first = *samples.first().context("the sampler took no sample")?;
        let last = *samples.last().context("the sampler took no sample")?;
        let area_bytes = children.iter().map(Workload::area_bytes).sum();
        // The sample that ends the arm: the first complete one, or the last; for the plain
        // loop the last, taken after the loop, which holds all of its CPU.
        let at_end = match end {
            End::LoopDone => last,
            _ => samples
                .iter()
                .find(|s| s.coverage.anon_huge >= area_bytes)
                .copied()
                .unwrap_or(last),
        };
        let s90 = samples
            .iter()
            .find(|s| s.coverage.fraction() >= TARGET_COVERAGE)
            .copied();
        let first_huge = samples
            .iter()
            .position(|s| s.coverage.anon_huge > first.coverage.anon_huge);
        let base = first_huge.map(|i| samples[i.saturating_sub(1)]);
        let (startup, cpu_startup) = match first_huge {
            Some(i) if arm.runs_collapse() => (Some(samples[i].t), Some(samples[i].cpu_own)),
            _ => (None, None),
        };
        let done = match (end, loop_done) {
            (_, Some(t)) => t,
            (End::Settled, None) => samples
                .iter()
                .find(|s| s.coverage.anon_huge >= at_end.coverage.anon_huge)
                .map_or(at_end.t, |s| s.t),
            (_, None) => at_end.t,
        };
        // The loop starts collapsing at 0; `collapse run` after its start-up.
        let collapse_window = match loop_done {
            Some(t) => Some(t),
            None => base.map(|b| done - b.t),
        };
        Ok(ArmRun {
            arm,
            round,
            children: children.len(),
            area_bytes,
            end,
            done,
            limit: limit.as_secs_f64(),
            t90: s90.map(|s| s.t),
            startup,
            cpu_startup,
            cpu_own: at_end.cpu_own,
            cpu_khugepaged: at_end.cpu_khugepaged,
            cpu_to_90: s90.map(|s| s.cpu_own + s.cpu_khugepaged),
            final_coverage: at_end.coverage.fraction(),
            bytes_collapsed: at_end.coverage.anon_huge.saturating_sub(match loop_done {
                Some(_) => first.coverage.anon_huge,
                None => base.map_or(first.coverage.anon_huge, |b| b.coverage.anon_huge),
            }),
            collapse_window,
            free_before: free,
            vmstat,
            khugepaged_counters,
            khugepaged_settings: settings,
            run_summary: None,
            plain_results: BTreeMap::new(),
            samples,
        })
    }
}

/// Reads `collapse run`'s remaining output to its end and returns the summary line.
fn summary_line(lines: &LineReader) -> Result<Value> {
    let mut summary = None;
    while let Some(line) = lines.next(SUMMARY_TIMEOUT)? {
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v.get("type").and_then(Value::as_str) == Some("summary")
        {
            summary = Some(v);
        }
    }
    summary.context("collapse run ended without a summary line")
}

/// `pidfd_open(pid, 0)`.
fn open_pidfd(pid: u32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: a plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if ret < 0 {
        return Err(Errno::last()).with_context(|| format!("pidfd_open({pid})"));
    }
    let fd = i32::try_from(ret).context("pidfd_open returned a bad descriptor")?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `process_madvise(pidfd, [addr, addr + 2 MiB), MADV_COLLAPSE, 0)`.
fn collapse(pidfd: &std::os::fd::OwnedFd, addr: u64) -> Result<(), Errno> {
    use std::os::fd::AsRawFd as _;
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: PMD_SIZE as usize,
    };
    // SAFETY: one iovec that outlives the call; the kernel reads it, and the addresses it
    // names are the target's, never dereferenced here.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            pidfd.as_raw_fd(),
            &iov as *const libc::iovec,
            1usize,
            MADV_COLLAPSE,
            0u32,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}
