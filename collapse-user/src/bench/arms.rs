//! One run of one arm: a fresh workload, the arm's THP regime, samples about 4 times a second
//! from `go` until the workload reports its result, and the CPU it cost.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use collapse_common::policy::Policy;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{
    error::BenchError,
    model::{ArmFigures, ArmKind, BenchSample, SysfsChange},
    sampler::{self, VmstatCollapses},
    workloads::BuiltIn,
};
use crate::{
    kernel::thp::{SysfsRestore, read_value},
    snapshot::SnapshotRegion,
};

/// How often the sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How long a workload may take to populate, or to finish after its measured phase.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// One arm of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmSpec {
    None,
    Khugepaged,
    KhugepagedFast,
    Collapse { policy: Policy, max_ptes_none: u16 },
}

impl ArmSpec {
    pub fn kind(self) -> ArmKind {
        match self {
            Self::None => ArmKind::None,
            Self::Khugepaged => ArmKind::Khugepaged,
            Self::KhugepagedFast => ArmKind::KhugepagedFast,
            Self::Collapse { .. } => ArmKind::Collapse,
        }
    }

    /// `none`, `khugepaged`, `khugepaged-fast`, `collapse seed n=255`.
    pub fn name(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Khugepaged => "khugepaged".into(),
            Self::KhugepagedFast => "khugepaged-fast".into(),
            Self::Collapse {
                policy,
                max_ptes_none,
            } => format!("collapse {} n={max_ptes_none}", policy.name()),
        }
    }
}

/// What runs in each arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchWorkload {
    BuiltIn(BuiltIn),
    /// A real redis-server on a loopback port, filled then read by redis-benchmark.
    Redis,
    /// Any program; its runtime is the metric.
    Command(Vec<String>),
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub samples: Vec<BenchSample>,
    pub figures: ArmFigures,
    /// The workload's regions right after populating (for the modelled policies).
    pub populated: Vec<SnapshotRegion>,
    /// The sysfs values the run changed, and whether they are back.
    pub sysfs: Vec<SysfsChange>,
}

/// Restores the run's sysfs values and says what they were and whether they are back.
pub(super) fn finish_sysfs(sysfs: SysfsRestore) -> Vec<SysfsChange> {
    let changed: Vec<(PathBuf, String)> = sysfs
        .changes()
        .map(|(p, prev)| (p.to_owned(), prev.to_owned()))
        .collect();
    let now: Vec<String> = changed
        .iter()
        .map(|(p, _)| read_value(p).unwrap_or_default())
        .collect();
    drop(sysfs);
    changed
        .into_iter()
        .zip(now)
        .map(|((path, from), to)| SysfsChange {
            restored: read_value(&path).is_ok_and(|v| v == from),
            path: path.display().to_string(),
            from,
            to,
        })
        .collect()
}

/// The parts every run shares.
pub struct RunContext<'a> {
    /// The `collapse` binary (this one).
    pub exe: &'a PathBuf,
    pub size: u64,
    pub run_for: Duration,
    pub stop: &'a AtomicBool,
    /// Called with (progress 0..1, coverage) about 4 times a second.
    pub progress: &'a mut dyn FnMut(f64, f64),
    /// Take the populated regions from pagemap (once per bench is enough).
    pub want_regions: bool,
}

/// What the reader threads share with the sampler.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) progress: f64,
    pub(super) result: Option<(f64, bool)>,
    pub(super) collapses: u64,
    pub(super) failures: BTreeMap<String, u64>,
    pub(super) summary: Option<serde_json::Value>,
}

pub(super) fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

fn expect_line(
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

/// The built-in workload child.
struct BuiltInChild {
    child: Owned,
    stdin: ChildStdin,
    pid: i32,
}

fn start_builtin(
    ctx: &RunContext<'_>,
    kind: BuiltIn,
    advise: &str,
    shared: &Arc<Mutex<Shared>>,
) -> Result<BuiltInChild, BenchError> {
    let mut cmd = Command::new(ctx.exe);
    cmd.arg("workload");
    match kind {
        BuiltIn::Mixed => {
            cmd.arg("mixed");
        }
        BuiltIn::SparseStride { stride } => {
            cmd.args(["sparse-stride", "--stride", &stride.to_string()]);
        }
    }
    cmd.args([
        "--size",
        &ctx.size.to_string(),
        "--run-for",
        &ctx.run_for.as_secs_f64().to_string(),
        "--advise",
        advise,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    die_with_us(&mut cmd);
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: "the workload".into(),
        source: e,
    })?);
    let stdin = child.0.stdin.take().expect("piped");
    let rx = lines(child.0.stdout.take().expect("piped"));
    let ready = expect_line(&rx, "ready ", "workload")?;
    let pid = ready[6..].trim().parse().unwrap_or(child.pid());
    expect_line(&rx, "populated ", "workload")?;
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        for l in rx {
            let mut s = lock(&shared);
            if let Some(p) = l.strip_prefix("progress ") {
                s.progress = p.trim().parse().unwrap_or(s.progress);
            } else if let Some(rest) = l.strip_prefix("result ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let perf = words
                    .iter()
                    .position(|w| *w == "ops_per_s")
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let ok = rest.ends_with("checksum ok");
                s.progress = 1.0;
                s.result = Some((perf, ok));
            }
        }
    });
    Ok(BuiltInChild { child, stdin, pid })
}

/// `collapse run` on the workload, its JSON lines counted as they come.
pub(super) fn start_collapse(
    ctx: &RunContext<'_>,
    pid: i32,
    policy: Policy,
    max_ptes_none: u16,
    shared: &Arc<Mutex<Shared>>,
) -> Result<Owned, BenchError> {
    let mut cmd = Command::new(ctx.exe);
    cmd.args([
        "run",
        "--pid",
        &pid.to_string(),
        "--policy",
        policy.name(),
        "--max-ptes-none",
        &max_ptes_none.to_string(),
        "--interval",
        "0.5",
        "--json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    die_with_us(&mut cmd);
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: "collapse run".into(),
        source: e,
    })?);
    let rx = lines(child.0.stdout.take().expect("piped"));
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        for l in rx {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                continue;
            };
            let mut s = lock(&shared);
            match v["type"].as_str() {
                Some("collapse") if v["result"] == "collapsed" => s.collapses += 1,
                Some("collapse") if v["result"] == "failed" => {
                    let why = v["reason"].as_str().unwrap_or("?").to_owned();
                    *s.failures.entry(why).or_default() += 1;
                }
                Some("summary") => s.summary = Some(v),
                _ => {}
            }
        }
    });
    Ok(child)
}

/// One run of `arm` on `workload`.
pub fn run_arm(
    ctx: &mut RunContext<'_>,
    workload: &BenchWorkload,
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    match workload {
        BenchWorkload::BuiltIn(kind) => run_builtin(ctx, *kind, arm),
        BenchWorkload::Redis => super::redis::run_arm(ctx, arm),
        BenchWorkload::Command(cmd) => run_command(ctx, cmd, arm),
    }
}

/// The arm's sysfs regime, journalled and restored when dropped. `fast` is khugepaged with
/// `scan_sleep_millisecs` 0; `always` sets THP `enabled` to `always` (external programs
/// cannot be registered with MADV_HUGEPAGE).
pub(super) fn regime(arm: ArmSpec, always: bool) -> Result<SysfsRestore, BenchError> {
    let mut sysfs = SysfsRestore::journalled();
    if arm == ArmSpec::KhugepagedFast {
        sysfs.set_thp("khugepaged/scan_sleep_millisecs", "0")?;
    }
    if always && matches!(arm, ArmSpec::Khugepaged | ArmSpec::KhugepagedFast) {
        sysfs.set_thp("enabled", "always")?;
    }
    Ok(sysfs)
}

/// Samples `pids` from now until `done` says so (or the bench is stopped), then once more.
pub(super) fn sample_until(
    ctx: &mut RunContext<'_>,
    pids: &[i32],
    shared: &Arc<Mutex<Shared>>,
    from_vmstat: bool,
    done: &mut dyn FnMut(&Shared) -> bool,
) -> (Vec<BenchSample>, Instant) {
    let started = Instant::now();
    let base = VmstatCollapses::read();
    let mut samples = Vec::new();
    let deadline = started + ctx.run_for * 3 + SETUP_TIMEOUT;
    loop {
        let (finished, progress, mut collapses, mut failures) = {
            let s = lock(shared);
            (done(&s), s.progress, s.collapses, s.failures.clone())
        };
        if from_vmstat {
            (collapses, failures) = VmstatCollapses::read().since(&base);
        }
        let sample = sampler::sample(pids, started, collapses, failures, progress);
        (ctx.progress)(progress, sample.coverage);
        samples.push(sample);
        if finished || ctx.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    (samples, started)
}

fn run_builtin(
    ctx: &mut RunContext<'_>,
    kind: BuiltIn,
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let advise = match arm {
        ArmSpec::None => "thp-off",
        ArmSpec::Khugepaged | ArmSpec::KhugepagedFast => "huge",
        ArmSpec::Collapse { .. } => "none",
    };
    let sysfs = regime(arm, false)?;
    let mut w = start_builtin(ctx, kind, advise, &shared)?;
    let populated = if ctx.want_regions {
        super::populated_regions(w.pid)
    } else {
        Vec::new()
    };
    let kh = sampler::khugepaged_pid();
    let kh_cpu0 = kh.and_then(sampler::cpu_seconds);
    let mut collapse = match arm {
        ArmSpec::Collapse {
            policy,
            max_ptes_none,
        } => Some(start_collapse(ctx, w.pid, policy, max_ptes_none, &shared)?),
        _ => None,
    };
    writeln!(w.stdin, "go").map_err(BenchError::Io)?;
    w.stdin.flush().map_err(BenchError::Io)?;
    let from_vmstat = collapse.is_none();
    let (samples, _) = sample_until(ctx, &[w.pid], &shared, from_vmstat, &mut |s| {
        s.result.is_some()
    });
    let cpu_collapse = collapse
        .as_ref()
        .and_then(|c| sampler::cpu_seconds(c.pid()));
    if let Some(c) = &mut collapse {
        c.terminate(Duration::from_secs(10));
    }
    // The summary line arrives as `run` stops.
    std::thread::sleep(Duration::from_millis(100));
    let kh_cpu1 = kh.and_then(sampler::cpu_seconds);
    let _ = writeln!(w.stdin, "exit");
    w.child.terminate(Duration::from_secs(10));
    let changes = finish_sysfs(sysfs);
    let s = lock(&shared);
    let mut figures = ArmFigures {
        perf: s.result.map(|r| r.0),
        checksum_ok: s.result.map(|r| r.1),
        cpu_khugepaged_s: kh_cpu0.zip(kh_cpu1).map(|(a, b)| b - a),
        cpu_collapse_s: cpu_collapse,
        zero_filled_pages: s
            .summary
            .as_ref()
            .and_then(|v| v["zero_filled_pages"].as_u64()),
        ..ArmFigures::default()
    };
    super::figures::from_samples(&samples, &mut figures);
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(BenchError::Stopped);
    }
    if s.result.is_none() {
        return Err(BenchError::Workload(
            "the workload reported no result".into(),
        ));
    }
    Ok(RunResult {
        samples,
        figures,
        populated,
        sysfs: changes,
    })
}

fn run_command(
    ctx: &mut RunContext<'_>,
    argv: &[String],
    arm: ArmSpec,
) -> Result<RunResult, BenchError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let sysfs = regime(arm, true)?;
    let kh = sampler::khugepaged_pid();
    let kh_cpu0 = kh.and_then(sampler::cpu_seconds);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if arm == ArmSpec::None {
        thp_off(&mut cmd);
    }
    die_with_us(&mut cmd);
    let started = Instant::now();
    let mut child = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: format!("{:?}", argv[0]),
        source: e,
    })?);
    let pid = child.pid();
    let mut collapse = match arm {
        ArmSpec::Collapse {
            policy,
            max_ptes_none,
        } => Some(start_collapse(ctx, pid, policy, max_ptes_none, &shared)?),
        _ => None,
    };
    let mut status = None;
    let from_vmstat = collapse.is_none();
    let (samples, _) = sample_until(ctx, &[pid], &shared, from_vmstat, &mut |_| {
        status = status.or_else(|| child.0.try_wait().ok().flatten());
        status.is_some()
    });
    let runtime = started.elapsed().as_secs_f64();
    // The last samples after the program exited see no memory.
    let mut samples = samples;
    while samples.len() > 1 && samples.last().is_some_and(|s| s.anon_rss_bytes == 0) {
        samples.pop();
    }
    let cpu_collapse = collapse
        .as_ref()
        .and_then(|c| sampler::cpu_seconds(c.pid()));
    if let Some(c) = &mut collapse {
        c.terminate(Duration::from_secs(10));
    }
    let kh_cpu1 = kh.and_then(sampler::cpu_seconds);
    let changes = finish_sysfs(sysfs);
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(BenchError::Stopped);
    }
    let mut figures = ArmFigures {
        perf: Some(runtime),
        checksum_ok: status.map(|s| s.success()),
        cpu_khugepaged_s: kh_cpu0.zip(kh_cpu1).map(|(a, b)| b - a),
        cpu_collapse_s: cpu_collapse,
        zero_filled_pages: lock(&shared)
            .summary
            .as_ref()
            .and_then(|v| v["zero_filled_pages"].as_u64()),
        ..ArmFigures::default()
    };
    super::figures::from_samples(&samples, &mut figures);
    Ok(RunResult {
        samples,
        figures,
        populated: Vec::new(),
        sysfs: changes,
    })
}
