//! `cargo xtask bench executor`: how fast and at what CPU cost dense memory becomes huge.
//!
//! A child (`collapse workload script`) holds SIZE of dense anonymous memory in 4 KiB pages.
//! The arms, each on a fresh child: (a) `collapse run --pid` started on it; a plain
//! process_madvise(MADV_COLLAPSE) loop per PMD from xtask; (c) khugepaged with
//! `scan_sleep_millisecs` 0; (b) khugepaged with its defaults, given up on after
//! `--default-timeout` and run once (`--default-runs`) since it takes that long; and two
//! children under one `collapse run --jobs 1` and `--jobs 2`. The bench samples coverage
//! (AnonHugePages / RssAnon) and CPU (utime + stime of the arm's process or thread and of
//! khugepaged) every `--sample-ms` on a thread of its own; see `arms` for how the arms are
//! kept apart and `report` for the figures. The arms are interleaved round by round, each
//! round starting one arm later, since what an arm leaves fragmented slows the next one's
//! THP allocations.
//!
//! Everything it changes in sysfs (THP `enabled`, if it is not `madvise`; khugepaged's scan
//! settings during its arms) is restored on every way out: drop guards, with Ctrl-C, SIGTERM
//! and SIGHUP turned into an error while the bench runs.

mod arms;
mod probe;
mod report;
mod workload;

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::json;

use self::{
    arms::{Arm, ArmRun, Bench},
    probe::FreeMemory,
    report::Report,
};
use crate::{
    cmd::{self, Workspace, say},
    interrupt::{self, CatchStop},
    setup::setup,
    sysfs::{self, SysfsGuard},
};

pub(crate) struct Settings {
    /// Memory of the child in the single-target arms, in MiB.
    pub(crate) size_mib: u64,
    /// Memory of each of the two children in the jobs arms, in MiB.
    pub(crate) jobs_size_mib: u64,
    pub(crate) rounds: u32,
    /// Runs of arm (b), in the first rounds.
    pub(crate) default_runs: u32,
    /// Arm (b) stops here.
    pub(crate) default_timeout: Duration,
    /// Every other arm stops here.
    pub(crate) timeout: Duration,
    pub(crate) sample_interval: Duration,
    /// How long each arm waits between populating its children and starting: see
    /// `Bench::settle`.
    pub(crate) settle: Duration,
}

/// How long the bench waits for THP `enabled` to become `madvise` before it sets it itself.
const ENABLED_TAKEOVER: Duration = Duration::from_secs(30);

/// The arms of every round, in the order of round 1.
const ROUND: [Arm; 5] = [
    Arm::CollapseRun,
    Arm::PlainMadvise,
    Arm::KhugepagedFast,
    Arm::Jobs(1),
    Arm::Jobs(2),
];
/// The order of the report.
const REPORT_ORDER: [Arm; 6] = [
    Arm::CollapseRun,
    Arm::PlainMadvise,
    Arm::KhugepagedFast,
    Arm::KhugepagedDefault,
    Arm::Jobs(1),
    Arm::Jobs(2),
];

pub(crate) fn run(ws: &Workspace, settings: &Settings) -> Result<()> {
    let Settings {
        size_mib,
        jobs_size_mib,
        rounds,
        default_runs,
        default_timeout,
        timeout,
        sample_interval,
        settle,
    } = settings;
    ensure!(*rounds >= 1, "--rounds must be at least 1");
    ensure!(
        *size_mib >= 2 && *jobs_size_mib >= 2,
        "--size and --jobs-size must be at least 2 MiB (one PMD)"
    );
    ensure!(!sample_interval.is_zero(), "--sample-ms must be at least 1");
    setup(ws)?;
    if !cmd::is_root() {
        bail!(
            "bench executor loads eBPF programs, collapses another process's memory and sets \
             khugepaged's sysfs values; run it as root"
        );
    }
    let bin = ws.build_release_collapse()?;

    // From here on a stop signal is an error, so the guards below are dropped on the way out.
    let _catch = CatchStop::install()?;
    let result = measure_all(&bin, settings).and_then(|(runs, context)| {
        let heading = format!(
            "executor bench: {size_mib} MiB dense in 4 KiB pages ({jobs_size_mib} MiB x 2 for \
             the jobs arms); {rounds} round(s), (b) {default_runs} run(s) cut off at {:.0} s; \
             {:.0} s settle before each arm; {} CPUs, kernel {}",
            default_timeout.as_secs_f64(),
            settle.as_secs_f64(),
            context["cpus"],
            context["kernel"].as_str().unwrap_or("?"),
        );
        let report = Report::new(&runs, &REPORT_ORDER);
        print!("{}", report.render(&heading));
        for v in context["void_runs"].as_array().into_iter().flatten() {
            println!(
                "note: {} of round {} was not measured: THP or khugepaged settings were changed \
                 by someone else in each of its attempts",
                v["arm"].as_str().unwrap_or("?"),
                v["round"]
            );
        }
        let mut out = report.json();
        out["benchmark"] = json!("executor");
        out["settings"] = json!({
            "size_mib": size_mib,
            "jobs_size_mib": jobs_size_mib,
            "rounds": rounds,
            "default_runs": default_runs,
            "default_timeout_s": default_timeout.as_secs_f64(),
            "timeout_s": timeout.as_secs_f64(),
            "sample_interval_ms": sample_interval.as_millis() as u64,
            "settle_s": settle.as_secs_f64(),
        });
        out["machine"] = context;
        let dir = ws.target_dir().join("bench");
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("executor.json");
        fs::write(&path, format!("{out:#}\n"))
            .with_context(|| format!("write {}", path.display()))?;
        say!("bench executor: results written to {}", path.display());
        Ok(())
    });
    if interrupt::requested() {
        bail!("bench executor interrupted: its children are stopped and sysfs restored");
    }
    result
}

/// Every arm of every round; the machine's context for the report.
fn measure_all(bin: &Path, settings: &Settings) -> Result<(Vec<ArmRun>, serde_json::Value)> {
    let largest = (settings.size_mib).max(2 * settings.jobs_size_mib) << 20;
    let free = FreeMemory::now()?;
    // The child's memory, plus room for the THPs a collapse allocates before it frees the
    // small pages.
    if free.available < 2 * largest + (1 << 30) {
        bail!(
            "only {} MiB available; the bench needs about {} MiB: lower --size or --jobs-size",
            free.available >> 20,
            (2 * largest + (1 << 30)) >> 20
        );
    }
    let enabled_path = sysfs::thp("enabled");
    let enabled = sysfs::read(&enabled_path)?;
    // khugepaged must not see the plain mappings of the collapse arms (see `arms`), yet must
    // see the MADV_HUGEPAGE ones: that is `madvise`.
    // Someone else's test may hold it at another value for a while: wait for that to end
    // before taking it over.
    let _enabled = (enabled != "madvise" && !arms::wait_for_madvise(ENABLED_TAKEOVER)?)
        .then(|| SysfsGuard::set(enabled_path, "madvise"))
        .transpose()?;
    let khugepaged = probe::khugepaged_pid()?;
    let mut initial = Vec::new();
    for (name, default) in arms::KHUGEPAGED_DEFAULTS {
        let value = sysfs::read(&sysfs::thp(&format!("khugepaged/{name}")))?;
        initial.push((name, value.clone()));
        if value != default {
            say!(
                "bench executor: note: khugepaged/{name} is {value}, not its default {default}; \
                 the arms set what they need and restore it"
            );
        }
    }
    let context = json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "thp_enabled_before": enabled,
        "khugepaged_pid": khugepaged,
        "loadavg_before": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "free_page_reporting": probe::free_page_reporting(),
    });
    if probe::free_page_reporting() {
        say!(
            "bench executor: note: this VM's balloon reports free memory to the host, so every \
             THP allocated costs a host fault; each arm waits --settle ({} s) before it starts \
             so that all of them do",
            settings.settle.as_secs()
        );
    }
    let bench = Bench {
        bin,
        settings,
        khugepaged_stat: format!("/proc/{khugepaged}/stat").into(),
    };

    let mut runs = Vec::new();
    let mut void = Vec::new();
    let total: u32 = settings.rounds * ROUND.len() as u32 + settings.default_runs;
    let mut n = 0;
    for round in 1..=settings.rounds.max(settings.default_runs) {
        let mut order: Vec<Arm> = if round <= settings.rounds {
            let mut o = ROUND.to_vec();
            o.rotate_left((round as usize - 1) % ROUND.len());
            o
        } else {
            Vec::new()
        };
        if round <= settings.default_runs {
            order.push(Arm::KhugepagedDefault);
        }
        for arm in order {
            n += 1;
            let free = FreeMemory::now()?;
            let needed = match arm {
                Arm::Jobs(_) => 2 * settings.jobs_size_mib,
                _ => settings.size_mib,
            } << 20;
            if free.free_pmd_blocks < needed {
                say!(
                    "bench executor: note: only {} MiB free in blocks of 2 MiB or more for {} \
                     MiB of THPs: this arm's collapses will compact or reclaim first",
                    free.free_pmd_blocks >> 20,
                    needed >> 20
                );
            }
            say!(
                "bench executor: [{n}/{total}] round {round}: {}",
                arm.label()
            );
            let Some(r) = bench
                .measure(arm, round)
                .with_context(|| format!("round {round}, arm {}", arm.label()))?
            else {
                say!(
                    "bench executor: round {round}: {} not measured: THP or khugepaged \
                     settings were changed by someone else in every attempt",
                    arm.label()
                );
                void.push((arm, round));
                continue;
            };
            say!(
                "bench executor:   90 % at {}, done at {:.2} s ({}), {:.1} % huge; CPU own {:.2} s, \
                 khugepaged {:.2} s{}",
                r.t90
                    .map_or_else(|| format!("> {:.0} s", r.limit), |t| format!("{t:.2} s")),
                r.done,
                r.end.name(),
                r.final_coverage * 100.0,
                r.cpu_own,
                r.cpu_khugepaged,
                r.startup
                    .map_or_else(String::new, |s| format!(", start-up {s:.2} s"))
            );
            runs.push(r);
        }
    }
    // Every guard has restored its value by now; say so if the machine does not look as it
    // did before the bench (someone else changed it meanwhile, or restored our value).
    for (name, before) in &initial {
        let now = sysfs::read(&sysfs::thp(&format!("khugepaged/{name}")))?;
        if now != *before {
            say!(
                "bench executor: warning: khugepaged/{name} is {now} now but was {before} when \
                 the bench started: something else on this machine changed it meanwhile"
            );
        }
    }
    let mut context = context;
    context["void_runs"] = json!(
        void.iter()
            .map(|(arm, round)| json!({ "arm": arm.key(), "round": round }))
            .collect::<Vec<_>>()
    );
    context["loadavg_after"] = json!(
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    Ok((runs, context))
}
