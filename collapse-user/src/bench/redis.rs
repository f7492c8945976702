//! The `redis` workload: a real `redis-server` (Debian's package, installed if absent) on a
//! loopback port, filled with `redis-benchmark` SETs, then read by `redis-benchmark` GETs for
//! the measured phase. The dataset's `DEBUG DIGEST` before and after is its checksum.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{
    arm::ArmSpec,
    child::{Owned, die_with_us, thp_off},
    error::BenchError,
    measure::{
        KhugepagedCpu, RunContext, RunResult, Shared, finish_sysfs, lock, regime, run_figures,
        sample_until, start_collapse, stop_collapse,
    },
};

/// Value size of each key, in bytes.
const VALUE_BYTES: u64 = 1024;
/// Requests per redis-benchmark call of the measured phase.
const CHUNK: u64 = 100_000;

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Installs `redis-server` and `redis-tools` (redis-benchmark, redis-cli) from Debian if
/// missing, without letting the package start a server of its own.
pub fn ensure_installed() -> Result<(), BenchError> {
    if have("redis-server") && have("redis-benchmark") && have("redis-cli") {
        return Ok(());
    }
    eprintln!("collapse bench: installing redis-server and redis-tools (apt-get)");
    // policy-rc.d 101: packages may not start services (no stray redis-server on 6379).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").map_err(BenchError::Io)?;
        let _ = Command::new("chmod")
            .args(["755", "/usr/sbin/policy-rc.d"])
            .status();
    }
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
    };
    let ok = run(&["install", "-y", "redis-server", "redis-tools"]).is_ok_and(|s| s.success())
        || (run(&["update"]).is_ok_and(|s| s.success())
            && run(&["install", "-y", "redis-server", "redis-tools"]).is_ok_and(|s| s.success()));
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    if !ok || !have("redis-server") {
        return Err(BenchError::Workload(
            "could not install redis-server and redis-tools with apt-get".into(),
        ));
    }
    Ok(())
}

fn free_port() -> Result<u16, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(BenchError::Io)?;
    Ok(l.local_addr().map_err(BenchError::Io)?.port())
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `GET: 123456.79 requests per second, ...` → requests per second (the progress lines before
/// it, `GET: rps=...`, end in carriage returns).
fn parse_rps(text: &str) -> Option<f64> {
    text.split(['\r', '\n']).find_map(|l| {
        let rest = l.trim().strip_prefix("GET: ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn benchmark(port: u16, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::Spawn {
            what: "redis-benchmark".into(),
            source: e,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn run(ctx: &mut RunContext<'_>, arm: ArmSpec) -> Result<RunResult, BenchError> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    // THP `always` from the start for the khugepaged arms: redis cannot be given MADV_HUGEPAGE,
    // and khugepaged only scans an mm registered while THP applied to it (at fault or mmap).
    let sysfs = regime(arm, true)?;
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
        // Redis disables THP for itself when `enabled` is `always` (prctl), which would make
        // the khugepaged arms measure nothing; the `none` arm does that on purpose.
        "--disable-thp",
        "no",
        "--daemonize",
        "no",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if arm == ArmSpec::None {
        thp_off(&mut cmd);
    }
    die_with_us(&mut cmd);
    let mut server = Owned(cmd.spawn().map_err(|e| BenchError::Spawn {
        what: "redis-server".into(),
        source: e,
    })?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(port, &["PING"]).as_deref() != Some("PONG") {
        if Instant::now() > deadline {
            return Err(BenchError::Workload(
                "redis-server did not answer PING".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let keys = (ctx.size / (VALUE_BYTES + 100)).max(1000);
    let keys_s = keys.to_string();
    // Random keys over 0..keys, twice as many SETs as keys: most keys exist afterwards.
    benchmark(
        port,
        &[
            "-t",
            "set",
            "-n",
            &(2 * keys).to_string(),
            "-r",
            &keys_s,
            "-d",
            &VALUE_BYTES.to_string(),
            "-P",
            "16",
        ],
    )?;
    let digest = cli(port, &["DEBUG", "DIGEST"]);
    let khugepaged = KhugepagedCpu::start();
    let collapse = match arm {
        ArmSpec::Collapse {
            policy,
            max_ptes_none,
        } => Some(start_collapse(
            ctx,
            server.pid(),
            policy,
            max_ptes_none,
            &shared,
        )?),
        _ => None,
    };
    // The measured phase runs on its own thread; the sampler watches it finish.
    let run_for = ctx.run_for;
    let stop = ctx.stop;
    // The measured phase runs on a thread of its own, which the sampler watches finish. It
    // always says it is done (a result, even after an error or a stop), so nothing waits for it.
    let load = || -> Result<(), BenchError> {
        let started = Instant::now();
        let (mut requests, mut busy) = (0f64, 0f64);
        let chunk = CHUNK.to_string();
        let args = ["-t", "get", "-n", &chunk, "-r", &keys_s, "-P", "16"];
        let mut failed = None;
        while started.elapsed() < run_for && !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let out = match benchmark(port, &args) {
                Ok(out) => out,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let secs = t.elapsed().as_secs_f64();
            if parse_rps(&out).is_none() {
                failed = Some(BenchError::Workload(
                    "redis-benchmark gave no GET figure (is redis-server still up?)".into(),
                ));
                break;
            }
            requests += CHUNK as f64;
            busy += secs;
            lock(&shared).progress =
                (started.elapsed().as_secs_f64() / run_for.as_secs_f64()).min(1.0);
        }
        lock(&shared).result = Some((requests / busy.max(1e-9), failed.is_none()));
        failed.map_or(Ok(()), Err)
    };
    let from_vmstat = collapse.is_none();
    let (samples, loaded) = std::thread::scope(|scope| {
        let load = scope.spawn(load);
        let (samples, _) = sample_until(ctx, &[server.pid()], &shared, from_vmstat, &mut |s| {
            s.result.is_some()
        });
        let loaded = load
            .join()
            .map_err(|_| BenchError::Workload("the load thread panicked".into()))
            .and_then(|r| r);
        (samples, loaded)
    });
    let collapse_cpu = stop_collapse(collapse);
    let intact = digest.is_some() && cli(port, &["DEBUG", "DIGEST"]) == digest;
    server.terminate(Duration::from_secs(10));
    let changes = finish_sysfs(sysfs);
    loaded?;
    if ctx.stop.load(Ordering::Relaxed) {
        return Err(BenchError::Stopped);
    }
    let s = lock(&shared);
    let f = run_figures(
        &s,
        &samples,
        s.result.map(|r| r.0),
        Some(intact),
        &khugepaged,
        collapse_cpu,
    );
    Ok(RunResult {
        samples,
        figures: f,
        populated: Vec::new(),
        sysfs: changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_second() {
        let out = "GET: 183150.19 requests per second, p50=0.143 msec\n";
        assert_eq!(parse_rps(out), Some(183150.19));
        let progress = "\rGET: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)\r   \rGET: 869565.19 requests per second, p50=0.615 msec\n";
        assert_eq!(parse_rps(progress), Some(869565.19));
        assert_eq!(parse_rps("SET: 1 requests per second"), None);
    }
}
