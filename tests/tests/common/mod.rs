//! Shared pieces of the root integration tests: the workload child driven over stdin, the
//! `collapse trace` subprocess read as JSON lines, and pagemap ground truth.
#![expect(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use collapse::{kernel::pagemap, snapshot::read_snapshot};
use collapse_common::{OccupancyBitmap, consts::PMD_SIZE};
use nix::{
    fcntl::OFlag,
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

pub mod cloned;
pub mod debian;
pub mod inproc;
pub mod skip;
pub mod thp;

/// The `collapse` binary built next to this test (xtask builds it first), or `COLLAPSE_BIN`.
pub fn collapse_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("COLLAPSE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("collapse");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p collapse-user`)",
        bin.display()
    );
    bin
}

/// `collapse workload script`: a child whose memory the test shapes command by command.
pub struct Workload {
    /// The process this test spawned; `None` for one a workload forked (`Workload::fork`),
    /// which its parent reaps.
    child: Option<Child>,
    stdin: Box<dyn Write + Send>,
    lines: mpsc::Receiver<String>,
    pub pid: i32,
    /// The FIFOs of a forked workload.
    fifos: Option<PathBuf>,
}

fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// The pid in a `ready <pid>` line.
fn ready_pid(lines: &mpsc::Receiver<String>, what: &str) -> i32 {
    let ready = lines
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: no ready line: {e}"));
    ready
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what}: want `ready <pid>`, got {ready:?}"))
}

impl Workload {
    pub fn spawn() -> Self {
        Self::spawn_as(&collapse_bin())
    }

    /// The workload run through `program`, a path to the `collapse` binary (a symlink names
    /// the process: its comm is the link's name).
    pub fn spawn_as(program: &std::path::Path) -> Self {
        let mut child = Command::new(program)
            .args(["workload", "script"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = Box::new(child.stdin.take().expect("stdin"));
        let lines = line_reader(child.stdout.take().expect("stdout"));
        let pid = ready_pid(&lines, "workload");
        Self {
            child: Some(child),
            stdin,
            lines,
            pid,
            fifos: None,
        }
    }

    /// Forks the workload: the child has a copy of every area (copy-on-write) and is driven
    /// through two FIFOs like any workload.
    pub fn fork(&mut self) -> Workload {
        let dir = temp_dir(&format!("fork-{}", self.pid));
        let (input, output) = (dir.join("in"), dir.join("out"));
        for f in [&input, &output] {
            nix::unistd::mkfifo(f, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        }
        let reply = self.cmd(&format!(
            "fork {} {}",
            input.to_str().expect("UTF-8 temp path"),
            output.to_str().expect("UTF-8 temp path")
        ));
        let pid: i32 = reply
            .strip_prefix("forked ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("want `forked <pid>`, got {reply:?}"));
        let open = |path: &PathBuf, write: bool| {
            // Non-blocking, so a child that never opens its ends fails the test instead of
            // hanging it; blocking again once open.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let opened = std::fs::OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path);
                match opened {
                    Ok(f) => {
                        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
                            .expect("clear O_NONBLOCK");
                        return f;
                    }
                    // ENXIO: no reader yet on the other side of a FIFO opened for writing.
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("open {}: {e}", path.display()),
                }
            }
        };
        let stdin = Box::new(open(&input, true));
        let lines = line_reader(open(&output, false));
        let ready = ready_pid(&lines, "forked workload");
        assert_eq!(ready, pid, "the forked child names another pid");
        Workload {
            child: None,
            stdin,
            lines,
            pid,
            fifos: Some(dir),
        }
    }

    /// Makes the workload exec `program` (a path to the `collapse` binary, or a symlink to it
    /// that names the new image) and waits until the new image is ready: same pid, no areas.
    pub fn exec(&mut self, program: &std::path::Path) {
        writeln!(self.stdin, "exec {}", program.display()).expect("write to workload");
        self.stdin.flush().expect("flush");
        let pid = ready_pid(&self.lines, "exec'd workload");
        assert_eq!(pid, self.pid, "exec changed the pid");
    }

    /// Sends one command and returns its reply; an `error` reply fails the test.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to workload");
        self.stdin.flush().expect("flush");
        let reply = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("workload reply");
        assert!(!reply.starts_with("error"), "workload `{line}`: {reply}");
        reply
    }

    /// Maps `mib` MiB (2 MiB aligned) and returns its address.
    pub fn map(&mut self, name: &str, mib: u64, huge: bool) -> u64 {
        self.map_advised(name, mib, if huge { "huge" } else { "nohuge" })
    }

    /// Maps `mib` MiB with `advice`: `huge`, `nohuge` or `plain` (no madvise).
    pub fn map_advised(&mut self, name: &str, mib: u64, advice: &str) -> u64 {
        let reply = self.cmd(&format!("map {name} {mib} {advice}"));
        let addr = reply
            .split_whitespace()
            .nth(2)
            .expect("mapped NAME ADDR PAGES");
        u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex address")
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            // Its parent reaps it (SIGCHLD ignored there): gone once the pid is.
            None => kill(Pid::from_raw(self.pid), None).is_err(),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut gone = false;
        while Instant::now() < deadline {
            if self.exited() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone {
            // Only the process this test started, by its pid.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            if let Some(c) = &mut self.child {
                let _ = c.wait();
            }
        }
        if let Some(dir) = &self.fifos {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A symlink to the `collapse` binary named `name`: a workload spawned or exec'd through it
/// has `name` as its comm (`fs/exec.c` names the task after the path's last component).
pub struct Alias {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Alias {
    pub fn new(name: &str) -> Self {
        assert!(name.len() <= 15, "a comm has at most 15 bytes: {name}");
        let dir = temp_dir(&format!("alias-{name}"));
        let path = dir.join(name);
        std::os::unix::fs::symlink(collapse_bin(), &path).expect("symlink to collapse");
        Self { dir, path }
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `collapse SUBCOMMAND ... --json` running in the background, its lines read as they come
/// (`trace`, `run`).
pub struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<Value>,
}

impl Tracer {
    /// Starts `collapse SUBCOMMAND ARGS --json` (with extra environment variables).
    pub fn spawn(subcommand: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(collapse_bin())
            .arg(subcommand)
            .args(args)
            .envs(env.iter().copied())
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn collapse {subcommand}: {e}"));
        let lines = line_reader(child.stdout.take().expect("stdout"));
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts `collapse trace ARGS --json` and waits until it reports it is attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Tracer::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut tracer = Self::spawn("trace", args, env);
        let attached = tracer.wait_for(Duration::from_secs(60), |v| v["type"] == "attached");
        assert!(
            attached.is_some(),
            "collapse trace did not attach: {:?}",
            tracer.seen
        );
        tracer
    }

    /// Reads lines until one satisfies `pred` or `timeout` passes.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            self.seen.push(v.clone());
            if pred(&v) {
                return Some(v);
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the rest of the output and the exit status.
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM collapse");
        let status = self.child.wait().expect("wait for collapse");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}")),
            );
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

pub type Regions = BTreeMap<u64, OccupancyBitmap>;

/// pagemap's present bits (not the zero page) for every anonymous region of `pid`.
pub fn truth(pid: i32) -> Regions {
    pagemap::read_regions(pid)
        .expect("read pagemap")
        .into_iter()
        .filter(|r| !r.present.is_empty())
        .map(|r| (r.addr, r.present))
        .collect()
}

/// The regions of `pid` in a snapshot file.
pub fn snapshot_regions(path: &std::path::Path, pid: i32) -> Regions {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    read_snapshot(BufReader::new(file))
        .expect("valid snapshot")
        .into_iter()
        .filter(|r| r.pid == pid)
        .map(|r| (r.addr, r.state.present))
        .collect()
}

/// Only the regions of `[start, start + len)`.
pub fn within(regions: &Regions, start: u64, len: u64) -> Regions {
    regions
        .iter()
        .filter(|(a, _)| **a >= start && **a < start + len)
        .map(|(a, b)| (*a, *b))
        .collect()
}

fn runs(b: &OccupancyBitmap) -> String {
    b.runs()
        .map(|(s, e)| format!("[{s},{e})"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts two region sets are equal, explaining every difference.
pub fn assert_same(what: &str, traced: &Regions, truth: &Regions) {
    let mut diffs = Vec::new();
    for addr in traced
        .keys()
        .chain(truth.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let t = traced.get(addr).copied().unwrap_or_default();
        let g = truth.get(addr).copied().unwrap_or_default();
        if t != g {
            diffs.push(format!(
                "  region {addr:#x}: traced {} pages {}, pagemap {} pages {}; only traced {}; only pagemap {}",
                t.count(),
                runs(&t),
                g.count(),
                runs(&g),
                runs(&t.difference(&g)),
                runs(&g.difference(&t))
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: tracer and pagemap differ in {} region(s):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// Asserts the tracer and pagemap agree on the mapping at `[addr, addr + len)` (named `what`),
/// and then on every region of the process.
pub fn assert_same_mapping_and_process(
    what: &str,
    traced: &Regions,
    truth: &Regions,
    addr: u64,
    len: u64,
) {
    assert!(
        !within(truth, addr, len).is_empty(),
        "{what}: pagemap has no page there, so the comparison would be over nothing"
    );
    assert_same(what, &within(traced, addr, len), &within(truth, addr, len));
    assert_same("every region of the child", traced, truth);
}

/// A fresh temp directory for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("collapse-test-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The pattern the accuracy tests apply to an 8 MiB area (4 regions): a full region, a sparse
/// one (every 7th page), runs at odd offsets straddling a region boundary, read-only pages
/// (zero page: not present), then DONTNEED and munmap of parts.
pub fn shape(w: &mut Workload, name: &str) {
    w.cmd(&format!("touch {name} 0 512"));
    for p in (512..1024).step_by(7) {
        w.cmd(&format!("touch {name} {p} {}", p + 1));
    }
    w.cmd(&format!("touch {name} 1021 1100"));
    w.cmd(&format!("touch {name} 1333 1337"));
    w.cmd(&format!("read {name} 1400 1500"));
    w.cmd(&format!("touch {name} 1536 2048"));
    // Drop parts: inside the full region, across a boundary, a whole region.
    w.cmd(&format!("dontneed {name} 100 164"));
    w.cmd(&format!("dontneed {name} 1000 1030"));
    w.cmd(&format!("unmap {name} 1800 1900"));
    w.cmd(&format!("unmap {name} 1024 1536"));
    w.cmd(&format!("touch {name} 120 130"));
}

/// Maps the ranges `shape` unmapped again, empty (MAP_FIXED_NOREPLACE at their old
/// addresses), and touches page 1124 in the region it unmapped whole. The snapshot has only
/// regions with a page in an anonymous VMA now, masked to those VMAs: only there can it show
/// a bit an unmap failed to clear.
pub fn remap_shape_holes(w: &mut Workload, name: &str) {
    w.cmd(&format!("remap {name} 1800 1900"));
    w.cmd(&format!("remap {name} 1024 1536"));
    w.cmd(&format!("touch {name} 1124 1125"));
}

/// `collapse trace --pid` on a workload, writing a snapshot at the end.
pub struct TracedWorkload {
    pub tracer: Tracer,
    dir: PathBuf,
    snap: PathBuf,
    pid: i32,
}

impl TracedWorkload {
    /// Starts tracing `w` (`extra`: more `trace` arguments) with a snapshot in a fresh
    /// temporary directory named after `test`.
    pub fn start(test: &str, w: &Workload, extra: &[&str]) -> Self {
        Self::start_with_env(test, w, extra, &[])
    }

    /// [`TracedWorkload::start`] with extra environment variables for the tracer.
    pub fn start_with_env(test: &str, w: &Workload, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = temp_dir(test);
        let snap = dir.join("snap.jsonl");
        let pid = w.pid.to_string();
        let mut args = vec!["--pid", &pid, "--interval", "0.2", "--snapshot"];
        args.push(snap.to_str().expect("UTF-8 temp path"));
        args.extend_from_slice(extra);
        let tracer = Tracer::start_with_env(&args, env);
        Self {
            tracer,
            dir,
            snap,
            pid: w.pid,
        }
    }

    /// Stops tracing (it must exit cleanly) and returns the workload's regions as traced, as
    /// pagemap has them now, and every line the tracer printed.
    pub fn finish(self) -> (Regions, Regions, Vec<Value>) {
        let Self {
            tracer,
            dir,
            snap,
            pid,
        } = self;
        let (status, seen) = tracer.stop();
        assert!(status.success(), "collapse trace exited with {status}");
        let traced = snapshot_regions(&snap, pid);
        let truth = truth(pid);
        let _ = std::fs::remove_dir_all(dir);
        (traced, truth, seen)
    }
}

/// The large-folio events of `pid` of `order` among the tracer's lines.
pub fn large_folio_events(seen: &[Value], pid: i32, order: u16) -> usize {
    seen.iter()
        .filter(|v| v["event"] == "large_folio_fault" && v["pid"] == pid && v["order"] == order)
        .count()
}

/// PTEs (4 KiB pages) in one PMD region.
pub const PAGES_PER_PMD: u64 = 512;

/// An area a workload child mapped: its name, start and size in pages.
#[derive(Clone, Copy, Debug)]
pub struct Area {
    pub name: &'static str,
    pub addr: u64,
    pub pages: u64,
}

impl Area {
    /// Maps `mib` MiB in `w` with `advice` (`huge`, `nohuge` or `plain`).
    pub fn map(w: &mut Workload, name: &'static str, mib: u64, advice: &str) -> Self {
        let addr = w.map_advised(name, mib, advice);
        Self {
            name,
            addr,
            pages: mib * 256,
        }
    }

    /// The start of each of its PMD regions.
    pub fn regions(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.pages / PAGES_PER_PMD).map(|r| self.addr + r * PMD_SIZE)
    }

    /// The start of its region `i`.
    pub fn region(&self, i: u64) -> u64 {
        self.addr + i * PMD_SIZE
    }
}

/// Whether the region at `addr` of `pid` is mapped by one PMD to a THP, from two sources that
/// must agree: pagemap (PAGEMAP_SCAN's PAGE_IS_HUGE, or the head page's kpageflags where the
/// ioctl is missing) and kpageflags alone (the folio order behind each of its 512 PTEs, from
/// the COMPOUND_HEAD / COMPOUND_TAIL run).
pub fn pmd_mapped(pid: i32, addr: u64) -> bool {
    let mapped = pagemap::read_region(pid, addr)
        .expect("read pagemap")
        .pmd_mapped;
    let orders = pagemap::folio_orders(pid, addr).expect("read kpageflags");
    let all_order_9 = orders.iter().all(|&o| o == 9);
    assert_eq!(
        mapped,
        all_order_9,
        "pid {pid} region {addr:#x}: pagemap says PMD-mapped {mapped}, kpageflags folio orders {:?}",
        orders
            .iter()
            .fold(BTreeMap::<i8, usize>::new(), |mut m, &o| {
                *m.entry(o).or_default() += 1;
                m
            })
    );
    mapped
}

/// Asserts that exactly the regions in `huge` of `areas` are PMD-mapped in `pid`, PMD by PMD.
pub fn assert_huge_exactly(what: &str, pid: i32, areas: &[Area], huge: &[u64]) {
    let mut wrong = Vec::new();
    for a in areas {
        for r in a.regions() {
            let is = pmd_mapped(pid, r);
            if is != huge.contains(&r) {
                wrong.push(format!("{} region {r:#x}: PMD-mapped {is}", a.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {}{}",
        wrong.join("; "),
        thp_changed()
    );
}

/// For a message about memory that became huge unexpectedly: what else may have done it.
pub fn thp_changed() -> String {
    skip::thp_not_madvise().map_or_else(String::new, |now| {
        format!(
            " ({now} now: another process changed it, so faults and khugepaged make THPs \
             behind the test's back)"
        )
    })
}

/// The layout of the main tests: 4 dense PMDs (512/512 pages), 4 at 40 % (205 pages), 4 sparse
/// (8 pages), and 2 dense PMDs under MADV_NOHUGEPAGE; every populated page filled with its own
/// contents. Returns the areas in that order.
pub fn populate(w: &mut Workload) -> Vec<Area> {
    let dense = Area::map(w, "dense", 8, "plain");
    let forty = Area::map(w, "forty", 8, "plain");
    let sparse = Area::map(w, "sparse", 8, "plain");
    let nh = Area::map(w, "nh", 4, "nohuge");
    w.cmd("fill dense 0 2048");
    for r in 0..4 {
        let base = r * PAGES_PER_PMD;
        w.cmd(&format!("fill forty {base} {}", base + 205));
        for k in 0..8 {
            let p = base + k * 64;
            w.cmd(&format!("fill sparse {p} {}", p + 1));
        }
    }
    w.cmd("fill nh 0 1024");
    vec![dense, forty, sparse, nh]
}

/// `checksum NAME 0 PAGES` of every area.
pub fn checksums(w: &mut Workload, areas: &[Area]) -> Vec<String> {
    areas
        .iter()
        .map(|a| w.cmd(&format!("checksum {} 0 {}", a.name, a.pages)))
        .collect()
}

/// Runs `collapse ARGS` to completion.
pub fn collapse_output(args: &[&str]) -> Output {
    Command::new(collapse_bin())
        .args(args)
        .output()
        .expect("run collapse")
}

/// Every stdout line of a `--json` command, parsed.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Exactly one stderr line, starting `collapse: ` and containing `needle`; empty stdout; a
/// non-zero exit status.
pub fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "exit status 0 for bad input; stderr {stderr:?}"
    );
    assert_eq!(stdout, "", "stdout must stay empty on error");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got {lines:?}");
    assert!(lines[0].starts_with("collapse: "), "{lines:?}");
    assert!(
        lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
}
