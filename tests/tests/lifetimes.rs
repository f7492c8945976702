//! The tracer on long runs and busy hosts: a reused pid inherits nothing, full maps and a
//! removed cgroup are drops (the trace goes on), `--cgroup` covers a subtree, a nested pid
//! namespace is refused, and a closed stdout still leaves the snapshot and stops the command.
//! Runs as root; each test starts its own children and its own `collapse trace`.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use collapse_common::consts::PMD_SIZE;
use common::{
    cloned::Cloned,
    skip::{needs_root_tests, skip, skip_if},
    *,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// The collapse binary copied into `dir` as `comm`: its processes carry that comm.
fn binary_named(dir: &Path, comm: &str) -> PathBuf {
    let bin = dir.join(comm);
    std::fs::copy(collapse_bin(), &bin).expect("copy collapse");
    bin
}

/// `process_madvise(pidfd, [addr, addr + 2 MiB), MADV_COLLAPSE)` on another process: what
/// fires `mm_collapse_huge_page` for its mm without waiting for khugepaged.
fn collapse_now(pid: i32, addr: u64) -> std::io::Result<()> {
    // SAFETY: plain syscalls on our own child; the iovec lives across the call.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let iov = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: PMD_SIZE as usize,
        };
        let ret = libc::syscall(libc::SYS_process_madvise, pidfd, &iov, 1, 25, 0);
        let err = std::io::Error::last_os_error();
        libc::close(pidfd);
        if ret < 0 { Err(err) } else { Ok(()) }
    }
}

/// A sample line's entry for `pid`.
fn process_in(sample: &Value, pid: i32) -> Option<&Value> {
    sample["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)
}

fn drops(sample: &Value, what: &str) -> u64 {
    sample["drops"][what].as_u64().unwrap_or(0)
}

/// A process that gets a pid another traced process had never sees that process's khugepaged
/// counts or regions: the programs key both by (tgid, generation), and the snapshot shows the
/// pid's current process.
#[test]
fn reused_pid_inherits_nothing() {
    skip_if!(needs_root_tests());
    let dir = temp_dir("reused-pid");
    let bin = binary_named(&dir, "ltreuse");
    let snap = dir.join("snap.jsonl");
    let mut tracer = Tracer::start(&[
        "--comm",
        "ltreuse",
        "--interval",
        "0.3",
        "--snapshot",
        snap.to_str().expect("UTF-8"),
    ]);
    let mut old = Cloned::spawn(&bin, None).expect("first child");
    let pid = old.pid;
    let addr = old.map("a", 4);
    old.cmd("fill a 0 1024");
    collapse_now(pid, addr).expect("MADV_COLLAPSE of the first region");
    let counted = tracer.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "sample"
            && process_in(v, pid).is_some_and(|p| p["collapses_ok"].as_u64() >= Some(1))
    });
    assert!(
        counted.is_some(),
        "the first process's collapse was never counted: {:?}",
        tracer.seen.last()
    );
    // Seen whole at a tick, so its regions are kept for the snapshot when it ends.
    old.kill_and_reap();
    let Some(mut new) = Cloned::spawn(&bin, Some(pid)) else {
        skip!("pid {pid} was taken by another process before we could reuse it");
    };
    assert_eq!(new.pid, pid);
    assert_eq!(new.map("a", 4), addr, "the same layout without ASLR");
    new.cmd("touch a 0 16");
    let seen_new = tracer.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "sample"
            && process_in(v, pid).is_some_and(|p| p["populated_bytes"].as_u64() >= Some(16 * 4096))
    });
    let sample = seen_new.expect("the second process traced with its pages");
    // Two more ticks: whatever the first one left must still not show.
    for _ in 0..2 {
        tracer
            .wait_for(Duration::from_secs(60), |v| v["type"] == "sample")
            .expect("another sample");
    }
    let last = tracer
        .seen
        .iter()
        .rev()
        .find(|v| v["type"] == "sample")
        .cloned()
        .unwrap_or(sample);
    let p = process_in(&last, pid).expect("the second process in the last sample");
    assert_eq!(p["collapses_ok"], 0, "inherited khugepaged counts: {p}");
    assert_eq!(
        p["khugepaged"],
        serde_json::json!({}),
        "inherited khugepaged counts: {p}"
    );
    let truth_now = truth(pid);
    let (status, _) = tracer.stop();
    assert!(status.success(), "collapse trace exited with {status}");
    let traced = snapshot_regions(&snap, pid);
    assert_same("the second process's snapshot", &traced, &truth_now);
    assert_eq!(
        traced.get(&addr).map(|b| b.count()),
        Some(16),
        "only the second process's 16 pages: {traced:?}"
    );
    drop(new);
    let _ = std::fs::remove_dir_all(dir);
}

/// A region map too small for the process (`--max-regions 64` against 256 MiB) loses regions,
/// counts them as drops in the samples, and keeps tracing until stopped.
#[test]
fn full_region_map_is_a_drop() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    w.map("a", 256, false);
    w.cmd(&format!("touch a 0 {}", 256 * 256));
    let pid = w.pid.to_string();
    let mut tracer = Tracer::start(&["--pid", &pid, "--interval", "0.2", "--max-regions", "64"]);
    let dropped = tracer.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "sample" && drops(v, "region map full") > 0
    });
    assert!(
        dropped.is_some(),
        "no region-map drop shown: {:?}",
        tracer.seen.last()
    );
    // It goes on: more samples, faults still recorded where there is room.
    w.map("b", 2, false);
    w.cmd("touch b 0 512");
    for _ in 0..3 {
        assert!(
            tracer
                .wait_for(Duration::from_secs(60), |v| v["type"] == "sample")
                .is_some(),
            "tracing stopped after the map filled: {:?}",
            tracer.seen.last()
        );
    }
    assert!(tracer.is_running());
    let (status, seen) = tracer.stop();
    assert!(status.success(), "collapse trace exited with {status}");
    assert!(
        seen.iter()
            .any(|v| v["type"] == "end" && v["reason"] == "signal"),
        "no end line"
    );
}

/// The cgroup v2 mount (`/sys/fs/cgroup` unified, or `unified` under it on a hybrid system).
fn cgroup2_root() -> Option<PathBuf> {
    collapse::kernel::procs::CGROUP_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p.as_path())
                .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
}

/// A cgroup directory this test made, removed (after moving our processes back) when dropped.
struct TestCgroup {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    fn make(root: &Path, rel: &[&str]) -> Self {
        let mut dirs = Vec::new();
        let mut cur = root.to_path_buf();
        for part in rel {
            cur = cur.join(part);
            std::fs::create_dir(&cur).unwrap_or_else(|e| panic!("mkdir {}: {e}", cur.display()));
            dirs.push(cur.clone());
        }
        Self {
            root: root.to_path_buf(),
            dirs,
        }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("a cgroup")
    }

    fn top(&self) -> &Path {
        &self.dirs[0]
    }

    /// Moves our pid `pid` into `dir`.
    fn enter(dir: &Path, pid: i32) {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", dir.display()));
    }

    /// Moves every process in our cgroups back to the root and removes them, deepest first.
    fn remove(&mut self) {
        for dir in self.dirs.iter().rev() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in text.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        self.dirs.retain(|d| d.exists());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `--cgroup` on a cgroup whose processes are all in its descendants (cgroup v2 has no
/// processes in inner nodes that delegate controllers, and a service slice never does) traces
/// them: the one there at the start and one moved in later.
#[test]
fn cgroup_covers_its_subtree() {
    skip_if!(needs_root_tests());
    let Some(root) = cgroup2_root() else {
        skip!(
            "no cgroup v2 mount at {:?}",
            collapse::kernel::procs::CGROUP_ROOTS
        );
    };
    let cg = TestCgroup::make(
        &root,
        &[
            &format!("collapse-test-{}", std::process::id()),
            "mid",
            "leaf",
        ],
    );
    let mut first = Workload::spawn();
    TestCgroup::enter(cg.leaf(), first.pid);
    first.map("a", 2, false);
    first.cmd("touch a 0 100");
    let top = cg.top().to_str().expect("UTF-8").to_owned();
    let mut tracer = Tracer::start(&["--cgroup", &top, "--interval", "0.2"]);
    let attached = tracer.seen.last().cloned().expect("attached line");
    assert!(
        attached["pids"]
            .as_array()
            .is_some_and(|p| p.contains(&first.pid.into())),
        "the process two levels down is not traced: {attached}"
    );
    let mut later = Workload::spawn();
    TestCgroup::enter(&cg.dirs[1], later.pid);
    later.map("b", 2, false);
    later.cmd("touch b 0 50");
    let both = tracer.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "sample"
            && process_in(v, first.pid)
                .is_some_and(|p| p["populated_bytes"].as_u64() >= Some(100 * 4096))
            && process_in(v, later.pid)
                .is_some_and(|p| p["populated_bytes"].as_u64() >= Some(50 * 4096))
    });
    assert!(
        both.is_some(),
        "both processes of the subtree with their pages: {:?}",
        tracer.seen.last()
    );
    let (status, _) = tracer.stop();
    assert!(status.success(), "collapse trace exited with {status}");
    drop(cg);
}

/// The traced cgroup removed under a running trace is a drop, shown in the samples; the trace
/// goes on.
#[test]
fn removed_cgroup_is_a_drop() {
    skip_if!(needs_root_tests());
    let Some(root) = cgroup2_root() else {
        skip!(
            "no cgroup v2 mount at {:?}",
            collapse::kernel::procs::CGROUP_ROOTS
        );
    };
    let mut cg = TestCgroup::make(
        &root,
        &[&format!("collapse-test-gone-{}", std::process::id())],
    );
    let w = Workload::spawn();
    TestCgroup::enter(cg.leaf(), w.pid);
    let path = cg.leaf().to_str().expect("UTF-8").to_owned();
    let mut tracer = Tracer::start(&["--cgroup", &path, "--interval", "0.2"]);
    cg.remove();
    assert!(!Path::new(&path).exists(), "could not remove {path}");
    let dropped = tracer.wait_for(Duration::from_secs(60), |v| {
        v["type"] == "sample" && drops(v, "cgroup removed") == 1
    });
    assert!(
        dropped.is_some(),
        "the removed cgroup is not shown as a drop: {:?}",
        tracer.seen.last()
    );
    for _ in 0..3 {
        assert!(
            tracer
                .wait_for(Duration::from_secs(60), |v| v["type"] == "sample")
                .is_some(),
            "tracing stopped after the cgroup went: {:?}",
            tracer.seen.last()
        );
    }
    let (status, seen) = tracer.stop();
    assert!(status.success(), "collapse trace exited with {status}");
    assert!(seen.iter().any(|v| v["type"] == "end"), "no end line");
    drop(w);
}

/// `trace --all` while two processes map, touch and unmap 64 MiB in a loop and a shell starts
/// short processes: it runs its whole duration and ends with an `end` line, in JSON and for
/// people. (It used to stop with an error when it deleted a region the programs had just
/// deleted themselves.) It never ends before its duration, on its own clock or on ours, and
/// never ticks faster than its interval: a report had it end with `duration` after 100 samples
/// while the script driving it had seen about 25 s.
#[test]
fn all_survives_a_process_storm() {
    skip_if!(needs_root_tests());
    for json in [true, false] {
        let storms: Vec<std::process::Child> = (0..2)
            .map(|_| {
                Command::new(collapse_bin())
                    .args(["workload", "storm", "--size", "64M", "--runs", "1000000"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("storm")
            })
            .collect();
        let mut shell = Command::new("/bin/sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done",
            ])
            .spawn()
            .expect("sh");
        let mut args = vec!["trace", "--all", "--duration", "20", "--interval", "0.5"];
        if json {
            args.push("--json");
        }
        let started = std::time::Instant::now();
        let out = Command::new(collapse_bin())
            .args(&args)
            .stderr(Stdio::piped())
            .output()
            .expect("collapse trace --all");
        let took = started.elapsed();
        let _ = shell.kill();
        let _ = shell.wait();
        for mut s in storms {
            let _ = s.kill();
            let _ = s.wait();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "trace --all (json: {json}) exited with {}: {stderr}",
            out.status
        );
        if json {
            let lines = json_lines(&out);
            assert_eq!(
                lines.last().map(|v| v["type"].clone()),
                Some("end".into()),
                "no end line: {stderr}"
            );
            assert_eq!(
                lines.last().map(|v| v["reason"].clone()),
                Some("duration".into())
            );
            let ran = lines.last().and_then(|v| v["elapsed_s"].as_f64());
            assert!(
                ran.is_some_and(|s| s >= 20.0),
                "ended after {ran:?} s of 20"
            );
            // One sample a tick, at most one a 0.5 s interval, and the final one.
            let samples = lines.iter().filter(|v| v["type"] == "sample").count();
            assert!(samples <= 20 * 2 + 1, "{samples} samples in 20 s at 0.5 s");
        }
        // However loaded the machine, a duration is a lower bound.
        assert!(
            took.as_secs_f64() >= 20.0,
            "trace --all returned after {took:?} of 20 s"
        );
    }
}

/// Inside a nested pid namespace the ids the programs see are not the ones /proc shows:
/// tracing is refused with one clear line.
#[test]
fn nested_pid_namespace_is_refused() {
    skip_if!(needs_root_tests());
    if Command::new("unshare").arg("--help").output().is_err() {
        skip!("no unshare(1)");
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(collapse_bin())
        .args(["trace", "--all", "--duration", "1"])
        .output()
        .expect("unshare");
    assert_error(&out, "nested pid namespace");
}

/// `collapse trace --json -- CMD | head -1`: the reader goes after one line; collapse still
/// writes the snapshot, stops the command and exits cleanly (no SIGPIPE death, no panic).
#[test]
fn closed_stdout_still_writes_the_snapshot() {
    skip_if!(needs_root_tests());
    let dir = temp_dir("sigpipe");
    let snap = dir.join("snap.jsonl");
    let mut child = Command::new(collapse_bin())
        .args(["trace", "--json", "--interval", "0.2", "--snapshot"])
        .arg(&snap)
        .args(["--", "sleep", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collapse trace");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    let attached: Value = serde_json::from_str(&first).expect("JSON");
    let cmd_pid = attached["pids"][0].as_i64().expect("the command's pid") as i32;
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = kill(Pid::from_raw(cmd_pid), Signal::SIGKILL);
            panic!("collapse kept running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Before reading stderr: a command left running holds it open.
    let left_running = Path::new(&format!("/proc/{cmd_pid}")).exists();
    if left_running {
        // Ours (collapse's child), by its pid.
        let _ = kill(Pid::from_raw(cmd_pid), Signal::SIGKILL);
    }
    let mut stderr = String::new();
    use std::io::Read as _;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert!(
        status.success(),
        "collapse exited with {status} (a signal: SIGPIPE killed it): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!left_running, "the traced command {cmd_pid} still runs");
    assert!(snap.is_file(), "no snapshot written: {stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Deleting a region the programs have deleted already (a munmap got there first, between
/// userspace listing the keys and deleting them) is done, not an error: `trace --all` under a
/// storm of mapping and unmapping processes used to stop on `bpf_map_delete_elem: ENOENT`.
#[test]
fn deleting_a_region_already_gone_is_done() {
    skip_if!(needs_root_tests());
    use collapse::tracer::{Bpf, Capacity, Selection};
    use collapse_common::{OccupancyBitmap, maps::RegionKey};
    let mut bpf = Bpf::load(&Selection::default(), Capacity::default()).expect("load programs");
    let key = RegionKey::new(std::process::id(), 0x7000_0000_0000);
    assert_eq!(bpf.region(&key).expect("read"), None);
    bpf.set_region(&key, &OccupancyBitmap::EMPTY)
        .expect("deleting an absent region");
    let mut one = OccupancyBitmap::EMPTY;
    one.set(3);
    bpf.set_region(&key, &one).expect("write");
    assert_eq!(bpf.region(&key).expect("read"), Some(one));
    // What it deleted, with its last bits.
    assert_eq!(bpf.prune(|_, _| false).expect("prune"), [(key, one)]);
    assert_eq!(bpf.region(&key).expect("read"), None);
    bpf.set_region(&key, &OccupancyBitmap::EMPTY)
        .expect("deleting it again");
}
