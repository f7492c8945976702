//! `cargo xtask soak`: `collapse trace --all --json` (release build) for a long run on a busy
//! host, as issue 9 asks: short processes started and ended all along (at least 20,000 in 10
//! minutes), and 4 processes that map, touch, MADV_DONTNEED and unmap 64 MiB in a loop.
//!
//! Every few seconds it samples collapse's VmRSS and CPU (utime + stime of
//! `/proc/PID/stat`) and the ticks it printed (`sample` lines), and at the end checks that:
//! the trace never stopped by itself and ended cleanly with an `end` line; its RSS at the end
//! is within 10 % of its RSS at one minute; the short processes were started. It prints the
//! summary (drops by reason from the last sample, CPU per tick median and p95) and writes it to
//! `target/bench/soak.json`. Every process it starts is stopped by its pid.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::Path,
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::{
    child::{LineReader, Spawned},
    cmd::{self, Workspace, say},
    interrupt,
    setup::setup,
};

pub(crate) struct Settings {
    pub(crate) minutes: f64,
    /// collapse trace's `--interval`, in seconds.
    pub(crate) interval: f64,
    /// Short processes started per second.
    pub(crate) spawn_rate: u32,
}

/// How often collapse's RSS and CPU are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// When the RSS the end is compared with is taken.
const RSS_BASELINE_AT: Duration = Duration::from_secs(60);
/// How far the end RSS may be from the baseline.
const RSS_TOLERANCE: f64 = 0.10;
/// Short processes the issue asks for in 10 minutes.
const PROCESSES_PER_10_MIN: u64 = 20_000;
const MEMORY_CHURNERS: usize = 4;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

/// One sample of collapse itself.
#[derive(Clone, Copy, Debug)]
struct Probe {
    at_s: f64,
    rss_kib: u64,
    cpu_s: f64,
    ticks: u64,
}

fn probe(pid: u32, started: Instant, ticks: u64) -> Result<Probe> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15 (proc(5)).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks_of = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc/PID/stat")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = (ticks_of(11)? + ticks_of(12)?) as f64 / hz;
    Ok(Probe {
        at_s: started.elapsed().as_secs_f64(),
        rss_kib,
        cpu_s,
        ticks,
    })
}

/// The `q` quantile (0..=1) of `xs`, nearest rank.
fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// CPU milliseconds per tick between consecutive probes that saw ticks.
fn cpu_per_tick_ms(probes: &[Probe]) -> Vec<f64> {
    probes
        .windows(2)
        .filter(|w| w[1].ticks > w[0].ticks)
        .map(|w| (w[1].cpu_s - w[0].cpu_s) * 1000.0 / (w[1].ticks - w[0].ticks) as f64)
        .collect()
}

/// Starts `/bin/true` `rate` times a second until `stop`, each waited for; counts them.
fn short_processes(rate: u32, stop: Arc<AtomicBool>, started: Arc<AtomicU64>) -> Result<()> {
    let period = Duration::from_secs(1) / rate.max(1);
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("run /bin/true")?;
        ensure!(status.success(), "/bin/true failed: {status}");
        started.fetch_add(1, Ordering::SeqCst);
        next += period;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            // Behind (a slow machine): go on at once, and do not bank the lost time.
            next = now;
        }
    }
    Ok(())
}

/// A `collapse workload script` child mapping, touching, dropping and unmapping 64 MiB in a
/// loop until `stop`. Returns the loops done.
fn memory_churn(bin: &Path, i: usize, stop: Arc<AtomicBool>) -> Result<u64> {
    let what = format!("memory churner {i}");
    let mut c = Command::new(bin);
    c.args(["workload", "script"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = Spawned::spawn(&mut c, &what, Signal::SIGKILL)?;
    let mut stdin = child.stdin()?;
    let lines = LineReader::new(child.stdout()?, &what);
    lines
        .next(Duration::from_secs(30))?
        .context("no ready line")?;
    let script = [
        "map m 64 plain",
        "touch m 0 16384",
        "dontneed m 0 8192",
        "touch m 4096 12288",
        "dontneed m 10000 16384",
        "unmap m 0 16384",
    ];
    let mut loops = 0;
    while !stop.load(Ordering::SeqCst) {
        for line in script {
            writeln!(stdin, "{line}").with_context(|| format!("write to {what}"))?;
            stdin.flush()?;
            let reply = lines
                .next(Duration::from_secs(120))?
                .with_context(|| format!("{what} ended"))?;
            ensure!(!reply.starts_with("error"), "{what}: `{line}`: {reply}");
        }
        loops += 1;
    }
    let _ = writeln!(stdin, "exit");
    drop(stdin);
    let _ = child.wait(Duration::from_secs(10));
    Ok(loops)
}

pub(crate) fn run(ws: &Workspace, settings: &Settings) -> Result<ExitCode> {
    let Settings {
        minutes,
        interval,
        spawn_rate,
    } = *settings;
    ensure!(minutes > 0.0, "--minutes must be positive");
    setup(ws)?;
    if !cmd::is_root() {
        bail!("soak traces with eBPF programs and needs root; run it as root");
    }
    let bin = ws.build_release_collapse()?;
    let _catch = interrupt::CatchStop::install()?;
    let duration = Duration::from_secs_f64(minutes * 60.0);

    let mut trace = Command::new(&bin);
    trace
        .args([
            "trace",
            "--all",
            "--json",
            "--interval",
            &interval.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let what = "collapse trace --all";
    say!("soak: $ {}", cmd::describe(&trace, Path::new("")));
    let mut trace = Spawned::spawn(&mut trace, what, Signal::SIGINT)?;
    let pid = trace.pid();
    let lines = LineReader::new(trace.stdout()?, what);
    lines.wait_for_type("attached", ATTACH_TIMEOUT)?;
    let started = Instant::now();
    say!(
        "soak: tracing (pid {pid}) for {minutes} min: {spawn_rate} short processes/s, \
         {MEMORY_CHURNERS} processes churning 64 MiB"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicU64::new(0));
    let spawner = {
        let (stop, spawned) = (stop.clone(), spawned.clone());
        thread::spawn(move || short_processes(spawn_rate, stop, spawned))
    };
    let churners: Vec<_> = (0..MEMORY_CHURNERS)
        .map(|i| {
            let (bin, stop) = (bin.clone(), stop.clone());
            thread::spawn(move || memory_churn(&bin, i, stop))
        })
        .collect();

    let mut ticks = 0u64;
    let mut last_drops = Value::Null;
    let mut end_reason: Option<String> = None;
    let mut probes = vec![probe(pid, started, 0)?];
    let mut aborted: Option<String> = None;
    let mut next_probe = Instant::now() + SAMPLE_EVERY;
    let mut handle_line = |line: &str, ticks: &mut u64, end: &mut Option<String>| {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        match v["type"].as_str() {
            Some("sample") => {
                *ticks += 1;
                last_drops = v["drops"].clone();
            }
            Some("end") => *end = v["reason"].as_str().map(str::to_owned),
            _ => {}
        }
    };
    while started.elapsed() < duration {
        if interrupt::requested() {
            aborted = Some("interrupted by a signal".into());
            break;
        }
        match lines.next(Duration::from_millis(200)) {
            Ok(Some(line)) => handle_line(&line, &mut ticks, &mut end_reason),
            Ok(None) => {
                aborted = Some(format!("{what} closed its output"));
                break;
            }
            Err(_) if interrupt::requested() => {}
            // Nothing for 200 ms.
            Err(_) => {}
        }
        if let Some(status) = trace.exited()? {
            aborted = Some(format!("{what} ended by itself ({status})"));
            break;
        }
        if Instant::now() >= next_probe {
            next_probe += SAMPLE_EVERY;
            let p = probe(pid, started, ticks)?;
            say!(
                "soak: {:>5.0}s  rss {:>7} KiB  cpu {:>7.2}s  ticks {:>5}  processes started {}",
                p.at_s,
                p.rss_kib,
                p.cpu_s,
                p.ticks,
                spawned.load(Ordering::SeqCst)
            );
            probes.push(p);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let spawner_result = spawner.join();
    let churn_loops: Vec<String> = churners
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(n)) => format!("{n} loops"),
            Ok(Err(e)) => format!("failed: {e:#}"),
            Err(_) => "panicked".into(),
        })
        .collect();
    let running_at_end = trace.exited()?.is_none();
    let status = trace.stop()?;
    // What it printed after the stop signal: the last sample and the `end` line.
    while let Ok(Some(line)) = lines.next(Duration::from_secs(5)) {
        handle_line(&line, &mut ticks, &mut end_reason);
    }

    let processes = spawned.load(Ordering::SeqCst);
    let baseline = probes
        .iter()
        .find(|p| p.at_s >= RSS_BASELINE_AT.as_secs_f64())
        .or(probes.first())
        .copied();
    let last = probes.last().copied();
    let rss_change = match (baseline, last) {
        (Some(b), Some(l)) if b.rss_kib > 0 => {
            Some((l.rss_kib as f64 - b.rss_kib as f64) / b.rss_kib as f64)
        }
        _ => None,
    };
    let per_tick = cpu_per_tick_ms(&probes);
    let median = quantile(&per_tick, 0.5);
    let p95 = quantile(&per_tick, 0.95);
    let wanted = (PROCESSES_PER_10_MIN as f64 * minutes / 10.0).ceil() as u64;

    let mut failures: Vec<String> = Vec::new();
    if let Some(why) = &aborted {
        failures.push(format!("the trace aborted: {why}"));
    }
    if !running_at_end {
        failures.push(format!("{what} was not running at the end"));
    }
    if !status.success() {
        failures.push(format!("{what} exited with {status}"));
    }
    if end_reason.is_none() {
        failures.push("no `end` line".into());
    }
    match rss_change {
        Some(c) if c.abs() > RSS_TOLERANCE => failures.push(format!(
            "RSS moved {:+.1} % between {:.0} s and the end (more than {:.0} %)",
            c * 100.0,
            baseline.map_or(0.0, |b| b.at_s),
            RSS_TOLERANCE * 100.0
        )),
        Some(_) => {}
        None => failures.push("no RSS samples".into()),
    }
    if processes < wanted {
        failures.push(format!(
            "only {processes} short processes started (wanted {wanted} in {minutes} min)"
        ));
    }
    match &spawner_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("starting short processes: {e:#}")),
        Err(_) => failures.push("the process starter panicked".into()),
    }
    for (i, c) in churn_loops.iter().enumerate() {
        if !c.ends_with("loops") {
            failures.push(format!("memory churner {i}: {c}"));
        }
    }

    let drops: BTreeMap<String, u64> = last_drops
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let summary = json!({
        "minutes": minutes,
        "interval_s": interval,
        "ticks": ticks,
        "end_reason": end_reason,
        "exit_status": status.to_string(),
        "aborted": aborted,
        "rss_kib_at_1_min": baseline.map(|b| b.rss_kib),
        "rss_baseline_at_s": baseline.map(|b| b.at_s),
        "rss_kib_at_end": last.map(|l| l.rss_kib),
        "rss_change_pct": rss_change.map(|c| c * 100.0),
        "drops": drops,
        "cpu_ms_per_tick_median": median,
        "cpu_ms_per_tick_p95": p95,
        "cpu_s_total": last.map(|l| l.cpu_s),
        "processes_started": processes,
        "memory_churners": churn_loops,
        "samples": probes.iter().map(|p| json!({
            "at_s": p.at_s, "rss_kib": p.rss_kib, "cpu_s": p.cpu_s, "ticks": p.ticks,
        })).collect::<Vec<_>>(),
        "failures": failures,
    });
    let dir = ws.target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("soak.json");
    fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("write {}", path.display()))?;

    let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
    println!("soak: collapse trace --all for {minutes} min, --interval {interval}");
    println!(
        "  ticks              {ticks}, ended: {}",
        end_reason.as_deref().unwrap_or("(no end line)")
    );
    println!(
        "  RSS                {} KiB at {:.0} s, {} KiB at the end ({} %)",
        baseline.map_or(0, |b| b.rss_kib),
        baseline.map_or(0.0, |b| b.at_s),
        last.map_or(0, |l| l.rss_kib),
        fmt(rss_change.map(|c| c * 100.0))
    );
    println!(
        "  CPU per tick       median {} ms, p95 {} ms",
        fmt(median),
        fmt(p95)
    );
    println!(
        "  drops              {}",
        if drops.values().all(|&n| n == 0) {
            "none".to_string()
        } else {
            drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    println!("  processes started  {processes} (wanted at least {wanted})");
    println!("  memory churners    {}", churn_loops.join(", "));
    println!("  written to         {}", path.display());
    if failures.is_empty() {
        println!("soak: passed");
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            println!("soak: FAILED: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_cpu_per_tick() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.95), Some(4.0));
        let p = |at_s, cpu_s, ticks| Probe {
            at_s,
            rss_kib: 1,
            cpu_s,
            ticks,
        };
        // 0.1 s over 10 ticks, then nothing ticked (skipped), then 0.3 s over 10.
        let probes = [
            p(0.0, 0.0, 0),
            p(5.0, 0.1, 10),
            p(10.0, 0.2, 10),
            p(15.0, 0.5, 20),
        ];
        let ms = cpu_per_tick_ms(&probes);
        assert_eq!(ms.len(), 2);
        assert!(
            (ms[0] - 10.0).abs() < 1e-9 && (ms[1] - 30.0).abs() < 1e-9,
            "{ms:?}"
        );
    }
}
