//! `collapse run` as a subprocess on workload children of known layout: exactly the PMDs the
//! policy chooses become PMD-mapped (pagemap and kpageflags, PMD by PMD), opt-outs and
//! processes not named are left alone, contents are kept, `--dry-run` changes nothing, a target
//! dying mid-run does not stop the daemon, a region that fills up is collapsed without waiting
//! for the interval, a region split after its collapse is collapsed and reported again, and bad
//! input is refused before anything is acted on.
//!
//! The children map their areas without advice (`plain`) or with MADV_NOHUGEPAGE, so with THP
//! in `madvise` mode neither faults nor khugepaged make anything huge behind the test's back.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use collapse::kernel::{pidfd::Pidfd, procs};
use collapse_common::consts::PMD_SIZE;
use common::{
    skip::{needs_root_tests, skip_if, thp_not_madvise},
    *,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// The policy of every run here: a PMD qualifies iff at least 257 of its 512 PTEs are present.
const POLICY: [&str; 4] = ["--policy", "pmd", "--max-ptes-none", "255"];

/// `collapse run ARGS --json` to completion: exit status, stdout lines, stderr.
fn run_once(args: &[&str]) -> (ExitStatus, Vec<Value>, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = collapse_output(&all);
    (
        out.status,
        json_lines(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a `collapse` line says about one region: result, reason, detail.
type Said = (String, Option<String>, Option<String>);

fn said(result: &str, reason: Option<&str>, detail: Option<&str>) -> Said {
    (
        result.to_owned(),
        reason.map(str::to_owned),
        detail.map(str::to_owned),
    )
}

fn addr_of(v: &Value) -> u64 {
    let hex = v["addr"].as_str().unwrap_or_else(|| panic!("no addr: {v}"));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// The `collapse` lines by (pid, addr); a region reported twice fails the test. Every line is
/// order 9, and has a latency exactly when process_madvise was called.
fn collapse_lines(lines: &[Value]) -> BTreeMap<(i32, u64), Said> {
    let mut out = BTreeMap::new();
    for v in lines.iter().filter(|v| v["type"] == "collapse") {
        let pid = v["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {v}")) as i32;
        let s = (
            v["result"].as_str().expect("result").to_owned(),
            v["reason"].as_str().map(str::to_owned),
            v["detail"].as_str().map(str::to_owned),
        );
        assert_eq!(v["order"], 9, "{v}");
        let called = s.0 == "collapsed" || s.0 == "failed";
        let latency = v["latency_us"].as_u64().expect("latency_us");
        assert_eq!(latency > 0, called, "latency of {v}");
        assert!(
            out.insert((pid, addr_of(v)), s).is_none(),
            "region reported twice: {v}"
        );
    }
    out
}

/// Asserts the stream of a `--once` run: collapse lines, then one pass line, then the summary,
/// and the pass and summary counts equal to the lines' own. Returns the summary.
fn assert_once_stream(lines: &[Value]) -> Value {
    let types: Vec<&str> = lines.iter().filter_map(|v| v["type"].as_str()).collect();
    let n = types.len();
    assert!(n >= 2, "{lines:?}");
    assert_eq!(&types[n - 2..], ["pass", "summary"], "{types:?}");
    assert!(
        types[..n - 2].iter().all(|&t| t == "collapse"),
        "only collapse lines before the pass: {types:?}"
    );
    let mut by_result: BTreeMap<String, u64> = BTreeMap::new();
    for v in &lines[..n - 2] {
        *by_result
            .entry(v["result"].as_str().expect("result").to_owned())
            .or_default() += 1;
    }
    let pass = &lines[n - 2];
    assert_eq!(pass["pass"], 1, "{pass}");
    assert_eq!(
        pass["results"],
        serde_json::to_value(&by_result).unwrap(),
        "the pass line counts its lines"
    );
    let summary = lines[n - 1].clone();
    assert_summary_counts(&summary, &lines[..n - 1]);
    assert_eq!(summary["passes"], 1, "{summary}");
    summary
}

/// Asserts that the summary's results, reasons and opt-outs are the counts of the collapse
/// lines among `lines`, its bytes those of the collapsed lines, and its latency count the number
/// of calls (no region here fails twice, which would be one line for two calls).
fn assert_summary_counts(summary: &Value, lines: &[Value]) {
    let mut results: BTreeMap<&str, u64> = ["collapsed", "already_huge", "skipped", "failed"]
        .into_iter()
        .map(|r| (r, 0))
        .collect();
    let mut reasons: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    let mut opted_out: BTreeMap<&str, u64> = BTreeMap::new();
    reasons.insert("skipped", BTreeMap::new());
    reasons.insert("failed", BTreeMap::new());
    for v in lines.iter().filter(|v| v["type"] == "collapse") {
        let result = v["result"].as_str().expect("result");
        *results.entry(result).or_default() += 1;
        if let Some(why) = v["reason"].as_str() {
            *reasons.entry(result).or_default().entry(why).or_default() += 1;
        }
        if let Some(d) = v["detail"].as_str() {
            *opted_out.entry(d).or_default() += 1;
        }
    }
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(
        summary["results"],
        serde_json::to_value(&results).unwrap(),
        "{summary}"
    );
    assert_eq!(
        summary["reasons"],
        serde_json::to_value(&reasons).unwrap(),
        "{summary}"
    );
    assert_eq!(
        summary["opted_out"],
        serde_json::to_value(&opted_out).unwrap(),
        "{summary}"
    );
    assert_eq!(
        summary["bytes_collapsed"],
        results["collapsed"] * PMD_SIZE,
        "{summary}"
    );
    assert_eq!(
        summary["latency_us"]["count"],
        results["collapsed"] + results["failed"],
        "{summary}"
    );
}

/// The lines of `pid`, keyed by address.
fn of_pid(got: &BTreeMap<(i32, u64), Said>, pid: i32) -> BTreeMap<u64, Said> {
    got.iter()
        .filter(|((p, _), _)| *p == pid)
        .map(|(&(_, a), s)| (a, s.clone()))
        .collect()
}

fn expect(regions: impl IntoIterator<Item = u64>, s: &Said) -> BTreeMap<u64, Said> {
    regions.into_iter().map(|r| (r, s.clone())).collect()
}

/// Three identical children: the target, a sibling that disabled THP with prctl (also named),
/// and one that is not named. The target's dense PMDs become PMD-mapped and nothing else does;
/// the second pass finds them huge already.
#[test]
fn once_collapses_exactly_the_chosen_pmds_and_nothing_else() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut target = Workload::spawn();
    let mut no_thp = Workload::spawn();
    let mut stranger = Workload::spawn();
    no_thp.cmd("thp off");
    let areas = populate(&mut target);
    let no_thp_areas = populate(&mut no_thp);
    let stranger_areas = populate(&mut stranger);
    let sums = |t: &mut Workload, n: &mut Workload, s: &mut Workload| {
        [
            checksums(t, &areas),
            checksums(n, &no_thp_areas),
            checksums(s, &stranger_areas),
        ]
    };
    let before = sums(&mut target, &mut no_thp, &mut stranger);
    for (w, a) in [
        (&target, &areas),
        (&no_thp, &no_thp_areas),
        (&stranger, &stranger_areas),
    ] {
        assert_huge_exactly("before the run", w.pid, a, &[]);
    }

    let (t, n) = (target.pid.to_string(), no_thp.pid.to_string());
    let mut args = vec!["--once", "--pid", &t, "--pid", &n];
    args.extend_from_slice(&POLICY);
    let (status, lines, stderr) = run_once(&args);
    assert!(status.success(), "run --once: {status}, stderr {stderr:?}");
    assert_eq!(stderr, "", "nothing on stderr with --json");
    let summary = assert_once_stream(&lines);
    let got = collapse_lines(&lines);

    // pmd at 255 chooses the dense and the MADV_NOHUGEPAGE PMDs only: the 40 % and sparse ones
    // get no line at all, the unnamed child none either.
    let (dense, nh) = (areas[0], areas[3]);
    let mut want = expect(dense.regions(), &said("collapsed", None, None));
    want.extend(expect(
        nh.regions(),
        &said("skipped", Some("opted-out"), Some("nohugepage")),
    ));
    assert_eq!(of_pid(&got, target.pid), want, "the target's lines");
    let prctl = said("skipped", Some("opted-out"), Some("prctl"));
    assert_eq!(
        of_pid(&got, no_thp.pid),
        expect(
            no_thp_areas[0].regions().chain(no_thp_areas[3].regions()),
            &prctl
        ),
        "the prctl sibling's lines"
    );
    assert_eq!(got.len(), 12, "no lines for anyone else: {got:?}");
    assert_eq!(summary["dry_run"], false);
    assert_eq!(summary["results"]["collapsed"], 4, "{summary}");
    assert_eq!(
        summary["opted_out"],
        serde_json::json!({"nohugepage": 2, "prctl": 6}),
        "{summary}"
    );
    let pids: Vec<&Value> = summary["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| &t["pid"])
        .collect();
    assert_eq!(pids.len(), 2, "{summary}");
    assert!(pids.contains(&&target.pid.into()) && pids.contains(&&no_thp.pid.into()));

    let dense_regions: Vec<u64> = dense.regions().collect();
    assert_huge_exactly("target", target.pid, &areas, &dense_regions);
    assert_huge_exactly("THP disabled by prctl", no_thp.pid, &no_thp_areas, &[]);
    assert_huge_exactly("not named", stranger.pid, &stranger_areas, &[]);
    let after = sums(&mut target, &mut no_thp, &mut stranger);
    assert_eq!(before, after, "memory contents changed");

    // Again: the dense PMDs are found huge (re-checked, nothing called), the rest as before.
    let (status, lines, stderr) = run_once(&args);
    assert!(status.success(), "second run --once: {status}, {stderr:?}");
    let summary = assert_once_stream(&lines);
    let got = collapse_lines(&lines);
    let mut want = expect(dense.regions(), &said("already_huge", None, None));
    want.extend(expect(
        nh.regions(),
        &said("skipped", Some("opted-out"), Some("nohugepage")),
    ));
    assert_eq!(of_pid(&got, target.pid), want, "the target's second lines");
    assert_eq!(of_pid(&got, no_thp.pid).len(), 6);
    assert_eq!(got.len(), 12, "{got:?}");
    assert_eq!(summary["results"]["collapsed"], 0, "{summary}");
    assert_huge_exactly("target after two runs", target.pid, &areas, &dense_regions);
    assert_eq!(
        sums(&mut target, &mut no_thp, &mut stranger),
        before,
        "memory contents changed in the second run"
    );
}

#[test]
fn dry_run_changes_nothing() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let areas = populate(&mut w);
    let before = checksums(&mut w, &areas);
    let pid = w.pid.to_string();
    let mut args = vec!["--once", "--dry-run", "--pid", &pid];
    args.extend_from_slice(&POLICY);
    let (status, lines, stderr) = run_once(&args);
    assert!(status.success(), "{status}: {stderr:?}");
    let summary = assert_once_stream(&lines);
    let mut want = expect(areas[0].regions(), &said("skipped", Some("dry-run"), None));
    want.extend(expect(
        areas[3].regions(),
        &said("skipped", Some("opted-out"), Some("nohugepage")),
    ));
    assert_eq!(of_pid(&collapse_lines(&lines), w.pid), want);
    assert_eq!(summary["dry_run"], true, "{summary}");
    assert_eq!(summary["results"]["collapsed"], 0, "{summary}");
    assert_huge_exactly("dry run", w.pid, &areas, &[]);
    assert_eq!(checksums(&mut w, &areas), before, "memory contents changed");
}

/// `collapse run ARGS --json` in the background, its lines read as they come.
/// `collapse run ... --json` in the background.
struct Daemon(Tracer);

impl Daemon {
    fn start(args: &[&str]) -> Self {
        Self(Tracer::spawn("run", args, &[]))
    }

    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.0.wait_for(timeout, pred)
    }

    /// Waits for `collapsed` lines for every region of `area` of `pid`; the lines seen.
    fn wait_collapsed(&mut self, pid: i32, area: &Area, timeout: Duration) -> Vec<Value> {
        let mut left: Vec<u64> = area.regions().collect();
        let mut found = Vec::new();
        let deadline = Instant::now() + timeout;
        while !left.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.wait_for(wait, |v| v["type"] == "collapse" && v["pid"] == pid)
            else {
                panic!(
                    "{} of {pid} not all collapsed ({} left); lines: {:?}",
                    area.name,
                    left.len(),
                    self.0.seen
                );
            };
            if let Some(i) = left.iter().position(|&r| r == addr_of(&v)) {
                assert_eq!(
                    v["result"],
                    "collapsed",
                    "{} of {pid}: {v}{}; lines: {:?}",
                    area.name,
                    thp_changed(),
                    self.0.seen
                );
                left.remove(i);
                found.push(v);
            }
        }
        found
    }

    /// Waits for every region of `area` to be collapsed and for the pass line that reports it
    /// (a pass prints its collapse lines, then itself): (the pass line before, that pass line).
    fn pass_collapsing(&mut self, pid: i32, area: &Area) -> (Value, Value) {
        self.wait_collapsed(pid, area, Duration::from_secs(30));
        let reporting = self
            .wait_for(Duration::from_secs(30), |v| v["type"] == "pass")
            .unwrap_or_else(|| panic!("no pass line after the collapse: {:?}", self.0.seen));
        let before = self.0.seen[..self.0.seen.len() - 1]
            .iter()
            .rev()
            .find(|v| v["type"] == "pass")
            .cloned()
            .unwrap_or_else(|| panic!("no pass line before {reporting}"));
        (before, reporting)
    }

    fn is_running(&mut self) -> bool {
        self.0.is_running()
    }

    /// SIGTERM, then the rest of its lines and its exit status.
    fn stop(self) -> (ExitStatus, Vec<Value>) {
        self.0.stop()
    }
}

fn pass_pids(v: &Value) -> Vec<i64> {
    v["targets"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["pid"].as_i64()).collect())
        .unwrap_or_default()
}

/// Two targets; one is SIGKILLed just after filling fresh dense memory (so a pass for it is
/// due as it dies). The daemon keeps running: it stops listing the dead one, keeps printing
/// passes, collapses memory the survivor fills afterwards, and on SIGTERM prints its summary
/// and exits 0. No outcome is a failure, and the survivor's are all `collapsed`.
#[test]
fn a_target_killed_mid_run_leaves_the_daemon_running() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut doomed = Workload::spawn();
    let mut alive = Workload::spawn();
    let first_doomed = Area::map(&mut doomed, "a", 4, "plain");
    let first_alive = Area::map(&mut alive, "a", 4, "plain");
    doomed.cmd("fill a 0 1024");
    alive.cmd("fill a 0 1024");
    let (d, a) = (doomed.pid.to_string(), alive.pid.to_string());
    let mut args = vec!["--pid", &d, "--pid", &a, "--interval", "0.2"];
    args.extend_from_slice(&POLICY);
    let mut run = Daemon::start(&args);
    run.wait_collapsed(doomed.pid, &first_doomed, Duration::from_secs(30));
    run.wait_collapsed(alive.pid, &first_alive, Duration::from_secs(30));

    Area::map(&mut doomed, "b", 8, "plain");
    doomed.cmd("fill b 0 2048");
    let watch = Pidfd::open(doomed.pid).expect("pidfd of the doomed child");
    // Only the child this test started, by its pid.
    kill(Pid::from_raw(doomed.pid), Signal::SIGKILL).expect("SIGKILL the doomed child");
    let deadline = Instant::now() + Duration::from_secs(10);
    while watch.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!watch.is_alive(), "the killed child did not exit");

    // It stops listing the dead target, and goes on passing.
    let only_alive = run.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "pass" && pass_pids(v) == [i64::from(alive.pid)]
    });
    assert!(
        only_alive.is_some(),
        "no pass without the dead target: {:?}",
        run.0.seen
    );
    for _ in 0..3 {
        assert!(
            run.wait_for(Duration::from_secs(10), |v| v["type"] == "pass")
                .is_some(),
            "no more passes after the kill: {:?}",
            run.0.seen
        );
    }
    assert!(run.is_running(), "collapse run ended with its target");

    // The survivor's new dense memory is still collapsed.
    let late = Area::map(&mut alive, "late", 4, "plain");
    alive.cmd("fill late 0 1024");
    run.wait_collapsed(alive.pid, &late, Duration::from_secs(30));
    assert_huge_exactly(
        "the survivor",
        alive.pid,
        &[first_alive, late],
        &first_alive
            .regions()
            .chain(late.regions())
            .collect::<Vec<_>>(),
    );
    assert!(run.is_running());

    let (status, lines) = run.stop();
    assert!(status.success(), "collapse run after SIGTERM: {status}");
    let summary = lines.last().expect("lines");
    assert_eq!(summary["type"], "summary", "the last line: {summary}");
    assert_eq!(
        lines.iter().filter(|v| v["type"] == "summary").count(),
        1,
        "one summary"
    );
    assert_summary_counts(summary, &lines);
    assert_eq!(summary["results"]["failed"], 0, "{lines:?}");
    for v in lines.iter().filter(|v| v["type"] == "collapse") {
        // The dying child's regions may also be found exited, or unmapped while its memory
        // is torn down (before its pidfd says it exited).
        assert!(
            v["result"] == "collapsed"
                || (v["pid"] == doomed.pid
                    && v["result"] == "skipped"
                    && (v["reason"] == "exited" || v["reason"] == "unmapped")),
            "unexpected outcome: {v}"
        );
    }
    assert_eq!(
        pass_pids(summary),
        [i64::from(alive.pid)],
        "the summary lists the survivor only: {summary}"
    );
}

/// Ctrl-C in the middle of a pass ends it at its next region, not at its end: with `--max-rate`
/// 16 MiB/s and a 4 s interval the pass takes 32 PMDs and about 4 s of waiting for tokens, and
/// a SIGINT after its first PMDs leaves most of them alone. The summary still comes, status 0.
#[test]
fn a_signal_stops_a_pass_in_progress() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let a = Area::map(&mut w, "a", 128, "plain");
    w.cmd("fill a 0 32768");
    let pid = w.pid.to_string();
    let mut args = vec![
        "--once",
        "--json",
        "--pid",
        &pid,
        "--max-rate",
        "16",
        "--interval",
        "4",
    ];
    args.extend_from_slice(&POLICY);
    let child = Command::new(collapse_bin())
        .arg("run")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("collapse run");
    // Attaching takes well under a second here; the pass then needs about 4 s of tokens. (One
    // source only while collapses are under way: pagemap and kpageflags may disagree for a
    // moment mid-collapse, which `pmd_mapped` would take for an error.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let huge = |r| collapse::kernel::pagemap::read_region(w.pid, r).is_ok_and(|t| t.pmd_mapped);
    while !a.regions().any(huge) {
        assert!(Instant::now() < deadline, "the pass never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("collapse run");
    assert!(
        out.status.success(),
        "collapse run after SIGINT: {}",
        out.status
    );
    let lines = json_lines(&out);
    let summary = lines.last().expect("lines");
    assert_eq!(summary["type"], "summary", "{lines:?}");
    let collapsed = summary["results"]["collapsed"].as_u64().unwrap();
    // The rate allows 32 PMDs in this pass; the signal came after the first.
    assert!(
        (1..24).contains(&collapsed),
        "{collapsed} PMDs collapsed after a SIGINT early in a pass of 32"
    );
}

/// A collapsed PMD that the target splits again (MADV_DONTNEED of part of it) and that still
/// qualifies is collapsed again, and that second collapse is reported and counted like the
/// first: a `collapsed` line, and a summary whose counts, bytes and latencies agree.
#[test]
fn a_region_split_after_its_collapse_is_collapsed_and_reported_again() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let a = Area::map(&mut w, "a", 4, "plain");
    w.cmd("fill a 0 1024");
    let kept = w.cmd("checksum a 100 1024");
    let pid = w.pid.to_string();
    let mut args = vec!["--pid", &pid, "--interval", "0.2"];
    args.extend_from_slice(&POLICY);
    let mut run = Daemon::start(&args);
    run.wait_collapsed(w.pid, &a, Duration::from_secs(30));
    // 100 PTEs dropped out of the THP: the PMD is split, 412 pages stay (over 257).
    w.cmd("dontneed a 0 100");
    let again = run.wait_for(Duration::from_secs(10), |v| {
        v["type"] == "collapse" && addr_of(v) == a.addr
    });
    let (status, lines) = run.stop();
    assert!(status.success(), "{status}");
    let again =
        again.unwrap_or_else(|| panic!("the split region was not reported again: {lines:?}"));
    assert_eq!(again["result"], "collapsed", "{again}");
    assert_huge_exactly(
        "after the second collapse",
        w.pid,
        &[a],
        &[a.addr, a.region(1)],
    );
    assert_eq!(w.cmd("checksum a 100 1024"), kept, "the kept pages changed");
    assert_eq!(
        w.cmd("checksum a 0 100"),
        {
            let mut z = Workload::spawn();
            Area::map(&mut z, "z", 2, "plain");
            z.cmd("checksum z 0 100")
        },
        "the dropped pages read back as zeroes"
    );
    let summary = lines.last().expect("lines");
    assert_summary_counts(summary, &lines);
    assert_eq!(summary["results"]["collapsed"], 3, "{summary}");
}

/// With a 5 s interval, a PMD filled after the first pass is collapsed by a pass that comes
/// well before the interval is up (the daemon polls the bitmaps every quarter interval and
/// passes early when a region changed by 64 PTEs or more), and a change of fewer than 64 PTEs
/// (a region going from 250 to 260 present, over the threshold) waits for the interval.
/// Asserted on each pass line's `trigger`, not on time: the pass reporting the filled region
/// ran because of the `change`, the one reporting the 10-PTE change because its `interval`
/// came.
#[test]
fn a_region_that_fills_up_is_collapsed_before_the_interval() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let seed = Area::map(&mut w, "seed", 2, "plain");
    let fresh = Area::map(&mut w, "fresh", 2, "plain");
    let slow = Area::map(&mut w, "slow", 2, "plain");
    w.cmd("fill seed 0 512");
    w.cmd("fill slow 0 250");
    assert_huge_exactly("before the run", w.pid, &[seed, fresh, slow], &[]);
    let pid = w.pid.to_string();
    let mut args = vec!["--pid", &pid, "--interval", "5"];
    args.extend_from_slice(&POLICY);
    let mut run = Daemon::start(&args);
    // The first pass (early too: the seeded bitmaps differ from nothing) collapses `seed`: the
    // daemon is attached from then on.
    run.wait_collapsed(w.pid, &seed, Duration::from_secs(30));
    run.wait_for(Duration::from_secs(30), |v| v["type"] == "pass")
        .expect("a first pass");

    w.cmd("fill fresh 0 512");
    let (before, reporting) = run.pass_collapsing(w.pid, &fresh);
    assert_eq!(
        reporting["trigger"], "change",
        "the pass collapsing the filled region was not early: {before} then {reporting}"
    );

    // 10 more pages: over the threshold, but not a noticeable change.
    w.cmd("fill slow 250 260");
    let (before, reporting) = run.pass_collapsing(w.pid, &slow);
    assert_eq!(
        reporting["trigger"], "interval",
        "a 10-PTE change made a pass early: {before} then {reporting}"
    );
    assert!(run.is_running());
    let (status, _) = run.stop();
    assert!(status.success(), "{status}");
    assert_huge_exactly(
        "the target",
        w.pid,
        &[seed, fresh, slow],
        &[seed.addr, fresh.addr, slow.addr],
    );
}

#[test]
fn bad_input_is_refused_before_acting() {
    skip_if!(needs_root_tests());
    skip_if!(thp_not_madvise());
    let mut w = Workload::spawn();
    let dense = Area::map(&mut w, "dense", 4, "plain");
    w.cmd("fill dense 0 1024");
    let pid = w.pid.to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--json"];
        args.extend_from_slice(extra);
        collapse_output(&args)
    };
    // The bad value in place of the good one, everything else as a run that works.
    let with_pid = |extra: &[&str]| {
        let mut args = vec!["--pid", pid.as_str()];
        for flag in POLICY.chunks(2) {
            if !extra.contains(&flag[0]) {
                args.extend_from_slice(flag);
            }
        }
        args.extend_from_slice(extra);
        run(&args)
    };
    for (extra, needle) in [
        (&["--policy", "nonesuch"][..], "unknown policy \"nonesuch\""),
        (&["--max-ptes-none", "512"], "--max-ptes-none 512"),
        (&["--max-rate", "0"], "--max-rate 0"),
        (&["--max-rate=-1"], "--max-rate -1"),
        (&["--max-rate", "-1"], "--max-rate -1"),
        (&["--jobs", "0"], "--jobs"),
        (&["--psi-limit", "101"], "--psi-limit 101"),
        (&["--interval", "0"], "--interval"),
        (&["--once", "--duration", "1"], "--once and --duration"),
        (&["--all"], "--all is not a target"),
    ] {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        if extra.contains(&"--once") {
            args.remove(0);
        }
        let out = with_pid(&args);
        assert_error(&out, needle);
    }
    assert_error(&run(&["--all", "--once"]), "--all is not a target");
    assert_error(
        &run(&["--pid", "999999999", "--once"]),
        "no process with pid 999999999",
    );
    // A kernel thread has no anonymous memory at all.
    if procs::comm(2).is_ok_and(|c| c == "kthreadd") {
        assert_error(&run(&["--pid", "2", "--once"]), "pid 2 is a kernel thread");
    }
    // As nobody: another user's process, and a command of its own.
    let as_nobody = |args: &[&str]| {
        Command::new(collapse_bin())
            .arg("run")
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run collapse as nobody")
    };
    assert_error(&as_nobody(&["--pid", &pid, "--once"]), "tracing needs root");
    assert_error(
        &as_nobody(&["--once", "--", "/bin/true"]),
        "tracing needs root",
    );
    assert_huge_exactly("after bad input", w.pid, &[dense], &[]);
}
