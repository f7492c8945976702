//! `collapse` as a node agent: a real Prometheus server (Debian's `prometheus`, installed when
//! missing) scrapes `collapse run --metrics` on loopback and its HTTP API shows the target's
//! coverage and the collapses counter rising after a collapse; `promtool check metrics` passes
//! on a scrape; an exited process's series leave at the next pass; the endpoint refuses all
//! but `GET /metrics`; series are grouped by memory cgroup (also with the cgroup v2 path
//! forced off); SIGHUP re-reads the config and keeps the old settings when the new ones are
//! bad; bad config and `--metrics` values are one-line errors; the systemd unit as installed by
//! `cargo xtask install --root` passes `systemd-analyze verify`.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    skip::{needs_root_tests, skip, skip_if, thp_not_madvise},
    *,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `METHOD path` on `addr`: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    // hyper answers with a length or in chunks; a chunked body is undone here.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// Samples of `name` in a text exposition whose labels contain `labels`: their values.
fn samples(text: &str, name: &str, labels: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels)).then(|| value.parse().ok())?
        })
        .collect()
}

fn one(text: &str, name: &str, labels: &str) -> f64 {
    let v = samples(text, name, labels);
    assert_eq!(v.len(), 1, "{name}{{{labels}}}: {v:?} in\n{text}");
    v[0]
}

/// Polls `f` until it gives `Some` or `timeout` passes.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Debian's prometheus and promtool, installed when missing.
fn prometheus_binaries() -> (PathBuf, PathBuf) {
    let mut b = debian::binaries("fleet", "prometheus", &["prometheus", "promtool"]);
    let promtool = b.pop().expect("promtool");
    (b.pop().expect("prometheus"), promtool)
}

/// A Prometheus server of this test's own on loopback, scraping one target every second;
/// killed (by its pid) and its data removed when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    api: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, target: SocketAddr) -> Self {
        let dir = temp_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: collapse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Self { child, dir, api };
        eventually("prometheus ready", Duration::from_secs(60), || {
            TcpStream::connect(api)
                .ok()
                .and_then(|_| (http(api, "GET", "/-/ready", None).0 == 200).then_some(()))
        });
        p
    }

    /// An instant query through the HTTP API: each series' labels and value.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http(
            self.api,
            "GET",
            &format!("/api/v1/query?query={encoded}"),
            None,
        );
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("API answer is JSON");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let value = r["value"][1].as_str().and_then(|s| s.parse().ok());
                (r["metric"].clone(), value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The target's health as Prometheus last saw it.
    fn target_health(&self) -> String {
        let (_, body) = http(self.api, "GET", "/api/v1/targets", None);
        body
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Maps `mib` dense MiB in `w` without advice and fills every page.
fn dense(w: &mut Workload, name: &'static str, mib: u64) -> Area {
    let a = Area::map(w, name, mib, "plain");
    w.cmd(&format!("fill {name} 0 {}", a.pages));
    a
}

fn collapsed_lines(run: &mut Tracer, pid: i32, area: &Area) {
    let mut left: Vec<u64> = area.regions().collect();
    while !left.is_empty() {
        let v = run
            .wait_for(Duration::from_secs(60), |v| {
                v["type"] == "collapse" && v["pid"] == pid && v["result"] == "collapsed"
            })
            .unwrap_or_else(|| panic!("{} of {pid} not collapsed: {:?}", area.name, run.seen));
        let addr = v["addr"]
            .as_str()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .expect("addr");
        left.retain(|&r| r != addr);
    }
}

#[test]
fn prometheus_scrapes_coverage_and_rising_collapses_and_exited_processes_leave() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let (prometheus, promtool) = prometheus_binaries();
    let mut w1 = Workload::spawn();
    let mut w2 = Workload::spawn();
    dense(&mut w1, "a", 8);
    dense(&mut w2, "a", 4);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (p1, p2) = (w1.pid.to_string(), w2.pid.to_string());
    let mut run = Tracer::spawn(
        "run",
        &[
            "--pid",
            &p1,
            "--pid",
            &p2,
            "--policy",
            "pmd",
            "--max-ptes-none",
            "255",
            // Not the per-size sysfs settings, which other tests may change meanwhile.
            "--orders",
            "2M",
            "--interval",
            "0.5",
            "--metrics",
            &addr.to_string(),
        ],
        &[],
    );
    run.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "collapse" && v["result"] == "collapsed"
    })
    .unwrap_or_else(|| panic!("no collapse: {:?}", run.seen));
    let server = Prometheus::start(&prometheus, addr);

    // The target's coverage series, through Prometheus.
    let q1 = format!("collapse_process_thp_coverage_ratio{{pid=\"{p1}\"}}");
    let coverage = eventually(
        "w1's coverage in Prometheus",
        Duration::from_secs(60),
        || {
            server
                .query(&q1)
                .into_iter()
                .find(|(_, v)| *v > 0.5)
                .or_else(|| {
                    eprintln!("not yet: {}", server.target_health());
                    None
                })
        },
    );
    assert_eq!(coverage.0["comm"], "collapse", "{:?}", coverage.0);
    assert!(
        coverage.0["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with('/')),
        "{:?}",
        coverage.0
    );
    let anon = server.query(&format!("collapse_process_anon_thp_bytes{{pid=\"{p1}\"}}"));
    assert!(
        anon.iter().any(|(_, v)| *v >= (8 << 20) as f64),
        "w1's 8 MiB are huge: {anon:?}"
    );
    // The collapses counter, then a collapse, then the counter risen by the new regions.
    let collapsed = "sum(collapse_collapses_total{result=\"collapsed\"})";
    let before = eventually("the collapses counter", Duration::from_secs(60), || {
        // Both children's areas are in: 4 + 2 regions.
        server
            .query(collapsed)
            .first()
            .map(|(_, v)| *v)
            .filter(|&v| v >= 6.0)
    });
    let b = dense(&mut w1, "b", 4);
    collapsed_lines(&mut run, w1.pid, &b);
    let after = eventually(
        "the collapses counter risen",
        Duration::from_secs(60),
        || {
            server
                .query(collapsed)
                .first()
                .map(|(_, v)| *v)
                .filter(|&v| v >= before + 2.0)
        },
    );
    assert_eq!(
        after,
        before + 2.0,
        "exactly b's two regions were collapsed"
    );

    // promtool on one scrape.
    let text = scrape(addr);
    let check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut check = check;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\non\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "collapse_process_anon_bytes",
        "collapse_process_anon_thp_bytes",
        "collapse_process_pmd_mapped_bytes",
        "collapse_process_populated_bytes",
        "collapse_process_collapsible_bytes",
        "collapse_cgroup_anon_bytes",
        "collapse_cgroup_anon_thp_bytes",
        "collapse_collapses_total",
        "collapse_collapsed_bytes_total",
        "collapse_collapse_latency_seconds",
        "collapse_psi_paused_seconds_total",
        "collapse_rate_limit_bytes_per_second",
        "collapse_tracer_drops_total",
        "collapse_tracer_region_map_fill_ratio",
        "collapse_tracer_events_per_second",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} "))
                && text.contains(&format!("# TYPE {family} ")),
            "{family} has no HELP and TYPE in\n{text}"
        );
    }
    assert_eq!(
        one(
            &text,
            "collapse_process_pmd_mapped_bytes",
            &format!("pid=\"{p1}\"")
        ),
        (12 << 20) as f64
    );
    assert_eq!(
        one(&text, "collapse_collapsed_bytes_total", ""),
        one(&text, "collapse_collapses_total", "result=\"collapsed\"") * (2 << 20) as f64
    );
    // OpenMetrics for those who ask for it (Prometheus does).
    let (status, om) = http(
        addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text"),
    );
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "{om}");
    // Anything but GET /metrics is refused.
    assert_eq!(http(addr, "POST", "/metrics", None).0, 405);
    assert_eq!(http(addr, "GET", "/", None).0, 404);
    assert_eq!(http(addr, "GET", "/metrics/../debug", None).0, 404);

    // w2 ends: its series leave at the next pass (passes run every 0.5 s, scrapes every 1 s,
    // so within two scrapes), w1's stay.
    let pid2 = format!("pid=\"{p2}\"");
    assert!(scrape(addr).contains(&pid2), "w2's series before it exits");
    drop(w2);
    let at_exit = one(&scrape(addr), "collapse_passes_total", "");
    let text = eventually("a pass after w2 exited", Duration::from_secs(30), || {
        let t = scrape(addr);
        (one(&t, "collapse_passes_total", "") >= at_exit + 1.0).then_some(t)
    });
    assert!(!text.contains(&pid2), "w2's series after a pass:\n{text}");
    assert!(text.contains(&format!("pid=\"{p1}\"")), "{text}");
    eventually("w2 gone from Prometheus", Duration::from_secs(30), || {
        server
            .query(&format!("collapse_process_anon_bytes{{pid=\"{p2}\"}}"))
            .is_empty()
            .then_some(())
    });
    assert!(
        !server
            .query(&format!("collapse_process_anon_bytes{{pid=\"{p1}\"}}"))
            .is_empty()
    );
    drop(server);
    let (status, _) = run.stop();
    assert!(status.success(), "collapse run exited with {status}");
}

/// The memory cgroup the test expects collapse to name for `pid`: the v2 group when it has
/// memory.stat (and `v2`), else the v1 memory controller's.
fn expected_cgroup(pid: i32, v2: bool) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctl, path) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
        if v2 && id == Some("0") && ctl == Some("") {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                if Path::new(root)
                    .join(path.trim_start_matches('/'))
                    .join("memory.stat")
                    .is_file()
                {
                    return path.to_owned();
                }
            }
        }
        if ctl.is_some_and(|c| c.split(',').any(|c| c == "memory")) {
            v1 = Some(path.to_owned());
        }
    }
    v1.expect("a memory cgroup")
}

/// Series by memory cgroup: the label names each process's group, the group's own THP bytes
/// hold its processes', its process count is theirs; the same with the v2 path forced off.
#[test]
fn series_are_grouped_by_memory_cgroup_also_with_the_v1_fallback() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    for env in [vec![], vec![("COLLAPSE_FALLBACKS", "cgroup_v2_memory")]] {
        let v2 = env.is_empty();
        let mut w1 = Workload::spawn();
        let mut w2 = Workload::spawn();
        dense(&mut w1, "a", 4);
        dense(&mut w2, "a", 4);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (p1, p2) = (w1.pid.to_string(), w2.pid.to_string());
        let mut run = Tracer::spawn(
            "run",
            &[
                "--pid",
                &p1,
                "--pid",
                &p2,
                "--orders",
                "2M",
                "--interval",
                "0.5",
                "--metrics",
                &addr.to_string(),
            ],
            &env,
        );
        let pass = run
            .wait_for(Duration::from_secs(60), |v| {
                v["type"] == "pass"
                    && v["targets"]
                        .as_array()
                        .is_some_and(|t| t.iter().all(|t| t["coverage"].as_f64() > Some(0.5)))
            })
            .unwrap_or_else(|| panic!("no pass with both huge: {:?}", run.seen));
        let group = expected_cgroup(w1.pid, v2);
        assert_eq!(group, expected_cgroup(w2.pid, v2), "one group for both");
        // The live stream groups them too.
        assert_eq!(pass["cgroups"][0]["cgroup"], group.as_str(), "{pass}");
        assert_eq!(pass["cgroups"][0]["processes"], 2, "{pass}");
        let text = eventually(
            "a scrape after the collapses",
            Duration::from_secs(30),
            || {
                let t = scrape(addr);
                (samples(&t, "collapse_process_anon_thp_bytes", "")
                    .iter()
                    .sum::<f64>()
                    >= (8 << 20) as f64)
                    .then_some(t)
            },
        );
        let label = format!("cgroup=\"{group}\"");
        for p in [&p1, &p2] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("collapse_process_anon_bytes{")
                        && l.contains(&format!("pid=\"{p}\""))
                        && l.contains(&label)),
                "pid {p} not in {group} (v2 {v2}):\n{text}"
            );
        }
        assert_eq!(one(&text, "collapse_cgroup_processes", &label), 2.0);
        let group_thp = one(&text, "collapse_cgroup_anon_thp_bytes", &label);
        let procs_thp: f64 = samples(&text, "collapse_process_anon_thp_bytes", &label)
            .iter()
            .sum();
        assert!(
            group_thp >= procs_thp && procs_thp >= (8 << 20) as f64,
            "group THP {group_thp} < its processes' {procs_thp} (v2 {v2})"
        );
        assert!(one(&text, "collapse_cgroup_anon_bytes", &label) >= group_thp);
        let (status, _) = run.stop();
        assert!(status.success());
    }
}

/// `collapse run --config FILE --json` with stderr read line by line too.
struct ConfiguredRun {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    said: Vec<String>,
}

fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl ConfiguredRun {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(collapse_bin())
            .args(["run", "--json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn collapse run");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
            said: Vec::new(),
        }
    }

    fn hup(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_said(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => self.said.push(l),
                Err(_) => panic!("collapse never said {needle:?}; it said {:?}", self.said),
            }
        }
    }

    /// Stdout lines until one satisfies `pred`, or `None` after `timeout`.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.stdout.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            if pred(&v) {
                return Some(v);
            }
        }
    }
}

impl Drop for ConfiguredRun {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// SIGHUP re-reads the config: a bad value is said in one line and the old settings stay (the
/// 40 % region is still not collapsed under `pmd` at max_ptes_none 0); valid new settings
/// (max_ptes_none 511) take effect at the next pass: the region is collapsed.
#[test]
fn sighup_rereads_the_config_and_keeps_the_old_settings_when_it_is_bad() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let forty = Area::map(&mut w, "forty", 2, "plain");
    w.cmd("fill forty 0 205");
    let dir = temp_dir("sighup");
    let config = dir.join("collapse.toml");
    let write = |body: &str| {
        std::fs::write(
            &config,
            format!("pid = [{}]\norders = \"2M\"\n{body}", w.pid),
        )
        .unwrap()
    };
    write("policy = \"pmd\"\nmax-ptes-none = 0\ninterval = 0.5\n");
    let mut run = ConfiguredRun::start(&config);
    let first = run
        .wait_line(Duration::from_secs(60), |v| v["type"] == "pass")
        .expect("a first pass");
    assert_eq!(first["results"].get("collapsed"), None, "{first}");
    write("policy = \"pmd\"\nmax-ptes-none = 600\ninterval = 0.5\n");
    run.hup();
    let said = run.wait_said("keeping the previous settings");
    assert!(
        said.starts_with("collapse: SIGHUP: ") && said.contains("600"),
        "{said}"
    );
    write("policy = \"pmd\"\nmax-ptes-nne = 511\n");
    run.hup();
    let said = run.wait_said("keeping the previous settings");
    assert!(said.contains("max-ptes-nne"), "{said}");
    // Two passes under the old settings after both bad reloads: nothing collapsed.
    for _ in 0..2 {
        let pass = run
            .wait_line(Duration::from_secs(30), |v| v["type"] == "pass")
            .expect("passes go on");
        assert_eq!(pass["results"].get("collapsed"), None, "{pass}");
    }
    assert!(
        !pmd_mapped(w.pid, forty.addr),
        "collapsed under the old settings"
    );
    write("policy = \"pmd\"\nmax-ptes-none = 511\ninterval = 0.5\n");
    run.hup();
    let said = run.wait_said("settings reloaded");
    assert!(said.contains("policy pmd, max_ptes_none 511"), "{said}");
    let v = run
        .wait_line(Duration::from_secs(30), |v| {
            v["type"] == "collapse" && v["result"] == "collapsed"
        })
        .unwrap_or_else(|| panic!("not collapsed after the reload; said {:?}", run.said));
    assert_eq!(v["addr"], format!("{:#x}", forty.addr), "{v}");
    assert!(pmd_mapped(w.pid, forty.addr), "{}", thp_changed());
    drop(run);
    let _ = std::fs::remove_dir_all(dir);
}

fn collapse_out(args: &[&str]) -> std::process::Output {
    Command::new(collapse_bin())
        .args(args)
        .output()
        .expect("run collapse")
}

/// Bad `--metrics` values and bad config files: one line each, nothing on stdout.
#[test]
fn bad_metrics_addresses_and_configs_are_one_line_errors() {
    let me = std::process::id().to_string();
    for bad in [
        "nonsense",
        "127.0.0.1",
        "127.0.0.1:99999",
        "host.example:80",
        ":9464",
    ] {
        assert_error(
            &collapse_out(&["run", "--pid", &me, "--metrics", bad]),
            "--metrics",
        );
        assert_error(
            &collapse_out(&["trace", "--pid", &me, "--metrics", bad]),
            "--metrics",
        );
    }
    // A port in use.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_error(
        &collapse_out(&["trace", "--pid", &me, "--metrics", &addr]),
        "cannot listen there",
    );
    let dir = temp_dir("bad-config");
    let cases = [
        ("max-rat = 64\n", "unknown field `max-rat`"),
        ("policy = \"pmd\"\njobs = \"two\"\n", "line 2"),
        ("max-ptes-none = 600\n", "600"),
        ("psi-limit = 200\n", "--psi-limit 200"),
        ("policy = \"fastest\"\n", "fastest"),
        ("metrics = \"nonsense\"\n", "--metrics"),
        ("interval = 0\n", "--interval"),
        ("pid = [1\n", "line 1"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, body).unwrap();
        // --once --dry-run: a config wrongly taken as good ends after one pass instead of
        // running on.
        let out = collapse_out(&[
            "run",
            "--once",
            "--dry-run",
            "--pid",
            &me,
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_error(&out, needle);
    }
    assert_error(
        &collapse_out(&["run", "--config", "/nonexistent/collapse.toml"]),
        "config /nonexistent/collapse.toml",
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The unit as `cargo xtask install --root` lays it out passes `systemd-analyze verify` with
/// nothing to say.
#[test]
fn the_installed_systemd_unit_verifies() {
    let Some(analyze) = debian::in_path("systemd-analyze") else {
        skip!("systemd-analyze is missing (Debian package systemd)");
    };
    let bin = collapse_bin();
    let xtask = bin.with_file_name("xtask");
    if !xtask.is_file() {
        skip!(
            "{} is missing: run through `cargo xtask test` (which builds it)",
            xtask.display()
        );
    }
    let root = temp_dir("install-root");
    let out = Command::new(&xtask)
        .args(["install", "--root"])
        .arg(&root)
        .arg("--binary")
        .arg(&bin)
        .output()
        .expect("xtask install");
    assert!(
        out.status.success(),
        "xtask install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = root.join("etc/systemd/system/collapse.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nRestart=on-failure\n"), "{text}");
    assert!(root.join("etc/collapse/collapse.toml").is_file());
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {}: {:?}\n{}{}",
        unit.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The installed config is a valid config: a dry run with it gets as far as its target.
    let out = collapse_out(&[
        "run",
        "--dry-run",
        "--once",
        "--pid",
        "999999999",
        "--config",
        root.join("etc/collapse/collapse.toml").to_str().unwrap(),
    ]);
    assert_error(&out, "999999999");
    let _ = std::fs::remove_dir_all(root);
}

/// `collapse trace --metrics`: the tracer's own families and the process's, no executor's;
/// the populated bytes are the bitmaps' (every page of the filled area).
#[test]
fn trace_serves_the_tracer_and_process_families() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pid = w.pid.to_string();
    let trace = Tracer::start(&[
        "--pid",
        &pid,
        "--interval",
        "0.5",
        "--metrics",
        &addr.to_string(),
    ]);
    dense(&mut w, "a", 4);
    let label = format!("pid=\"{pid}\"");
    let text = eventually(
        "the area in the populated bytes",
        Duration::from_secs(30),
        || {
            let t = scrape(addr);
            samples(&t, "collapse_process_populated_bytes", &label)
                .first()
                .is_some_and(|&v| v >= (4 << 20) as f64)
                .then_some(t)
        },
    );
    assert_eq!(one(&text, "collapse_tracer_processes", ""), 1.0);
    assert!(
        one(&text, "collapse_tracer_region_map_entries", "") >= 2.0,
        "{text}"
    );
    assert_eq!(
        one(&text, "collapse_tracer_region_map_capacity", ""),
        262_144.0
    );
    // The kernel's PMD rule would collapse both dense regions (THP is not made by faults
    // without advice in madvise mode), and whole PMDs only.
    if thp_not_madvise().is_none() {
        let collapsible = one(&text, "collapse_process_collapsible_bytes", &label);
        assert!(
            collapsible >= (4 << 20) as f64 && collapsible % (2 << 20) as f64 == 0.0,
            "{text}"
        );
    }
    assert!(!text.contains("collapse_collapses_total"), "{text}");
    let (status, _) = trace.stop();
    assert!(status.success());
}
