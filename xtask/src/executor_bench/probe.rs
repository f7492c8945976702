//! What the bench reads off /proc and sysfs: a child's huge-page coverage, CPU time of a
//! process, a thread or khugepaged, free memory by block size, vmstat counters; and the
//! sampler that records coverage and CPU over an arm on a thread of its own.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::sysfs;

const PMD_ORDER: usize = 9;
const PAGE_SIZE: u64 = 4096;

/// vmstat counters kept per arm: how collapses allocated and how often compaction stalled.
pub(crate) const VMSTAT_KEYS: [&str; 5] = [
    "thp_collapse_alloc",
    "thp_collapse_alloc_failed",
    "compact_stall",
    "compact_fail",
    "compact_success",
];

/// khugepaged's own counters (`mm/khugepaged.c`: `pages_collapsed` counts only what
/// khugepaged collapsed, never MADV_COLLAPSE), so a delta over an arm says whether it worked.
pub(crate) const KHUGEPAGED_COUNTERS: [&str; 2] = ["pages_collapsed", "full_scans"];

/// A process's huge-page coverage: AnonHugePages (`/proc/PID/smaps_rollup`, PMD-mapped THP
/// only) over RssAnon (`/proc/PID/status`), both in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Coverage {
    pub(crate) anon_huge: u64,
    pub(crate) rss_anon: u64,
}

impl Coverage {
    pub(crate) fn of(pid: u32) -> Result<Self> {
        let rollup = format!("/proc/{pid}/smaps_rollup");
        let status = format!("/proc/{pid}/status");
        Ok(Self {
            anon_huge: kb_field(&rollup, "AnonHugePages:")? * 1024,
            rss_anon: kb_field(&status, "RssAnon:")? * 1024,
        })
    }

    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            anon_huge: self.anon_huge + other.anon_huge,
            rss_anon: self.rss_anon + other.rss_anon,
        }
    }

    pub(crate) fn fraction(self) -> f64 {
        if self.rss_anon == 0 {
            0.0
        } else {
            self.anon_huge as f64 / self.rss_anon as f64
        }
    }
}

fn kb_field(path: &str, key: &str) -> Result<u64> {
    let text = fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("{path} has no {key} line in kB"))
}

/// utime + stime of the task whose `stat` file this is, in seconds. For `/proc/PID/stat`
/// that is every thread of the process, exited ones included, and it contains the kernel
/// time charged to it for its system calls, process_madvise(MADV_COLLAPSE) among them.
pub(crate) fn cpu_seconds(stat: &Path) -> Result<f64> {
    let text = fs::read_to_string(stat).with_context(|| format!("read {}", stat.display()))?;
    // Fields after `(comm)`, which may itself hold spaces and parentheses: state is field 3,
    // utime 14, stime 15 (proc(5)).
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{}: no `)` after comm", stat.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("{}: field {} is not a number", stat.display(), i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The stat file of the calling thread (for the plain process_madvise loop, which runs on it).
pub(crate) fn this_thread_stat() -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/task/{}/stat",
        std::process::id(),
        nix::unistd::gettid()
    ))
}

/// The pid of the `khugepaged` kernel thread: comm `khugepaged`, parent kthreadd (pid 2). It
/// is only ever read, never signalled.
pub(crate) fn khugepaged_pid() -> Result<u32> {
    for entry in fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "khugepaged" {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(2) {
            return Ok(pid);
        }
    }
    bail!("no khugepaged kernel thread in /proc (is THP built into this kernel?)")
}

/// Free memory now: `MemAvailable`, and what /proc/buddyinfo holds in free blocks of a PMD
/// or larger (a THP can be allocated from those without compaction).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreeMemory {
    pub(crate) available: u64,
    pub(crate) free_pmd_blocks: u64,
}

impl FreeMemory {
    pub(crate) fn now() -> Result<Self> {
        let available = kb_field("/proc/meminfo", "MemAvailable:")? * 1024;
        let buddy = fs::read_to_string("/proc/buddyinfo").context("read /proc/buddyinfo")?;
        Ok(Self {
            available,
            free_pmd_blocks: free_pmd_blocks(&buddy),
        })
    }
}

/// Bytes in free blocks of order ≥ 9, from buddyinfo lines
/// `Node 0, zone   Normal   3796   2785 ...` (one count per order from 0).
fn free_pmd_blocks(buddyinfo: &str) -> u64 {
    buddyinfo
        .lines()
        .filter_map(|l| l.split_once("zone").map(|(_, rest)| rest))
        .flat_map(|rest| {
            rest.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|&(order, _)| order >= PMD_ORDER)
                .filter_map(|(order, n)| n.parse::<u64>().ok().map(|n| (n << order) * PAGE_SIZE))
        })
        .sum()
}

/// Whether a virtio-balloon device offers free page reporting (VIRTIO_BALLOON_F_REPORTING,
/// feature bit 5; device id 5): the guest then tells the host about free blocks of
/// `page_reporting_order` (2 MiB here) about two seconds after they are freed
/// (`mm/page_reporting.c`), the host drops their backing, and the next THP allocated there
/// is faulted in by the host again, which the guest sees as CPU time of whoever touches it.
pub(crate) fn free_page_reporting() -> bool {
    let Ok(devices) = fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
    })
}

/// The counters of [`VMSTAT_KEYS`] now.
pub(crate) fn vmstat() -> Result<BTreeMap<&'static str, u64>> {
    let text = fs::read_to_string("/proc/vmstat").context("read /proc/vmstat")?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if let Some(&k) = VMSTAT_KEYS.iter().find(|&&k| k == key)
            && let Ok(v) = value.trim().parse()
        {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// khugepaged's [`KHUGEPAGED_COUNTERS`] now.
pub(crate) fn khugepaged_counters() -> Result<BTreeMap<&'static str, u64>> {
    KHUGEPAGED_COUNTERS
        .iter()
        .map(|&k| Ok((k, sysfs::read_u64(&sysfs::thp(&format!("khugepaged/{k}")))?)))
        .collect()
}

/// Counters after minus before.
pub(crate) fn delta(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(k, a)| (*k, a.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .collect()
}

/// One sample: the children's coverage together, and CPU seconds used since the arm started.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Seconds since the arm started acting.
    pub(crate) t: f64,
    pub(crate) coverage: Coverage,
    /// The arm's own actor: the `collapse run` process or the plain loop's thread.
    pub(crate) cpu_own: f64,
    pub(crate) cpu_khugepaged: f64,
}

/// What the sampler watches.
pub(crate) struct Watch {
    pub(crate) children: Vec<u32>,
    /// The stat file of the arm's actor, if it has one besides khugepaged.
    pub(crate) own: Option<PathBuf>,
    pub(crate) khugepaged: PathBuf,
    pub(crate) interval: Duration,
}

/// Samples [`Watch`] every interval on a thread of its own, from a start instant given by
/// the arm, until stopped.
pub(crate) struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    error: Arc<Mutex<Option<anyhow::Error>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Reads the CPU baselines here, before returning, so they belong to `start`; the first
    /// sample is taken at once.
    pub(crate) fn start(watch: Watch, start: Instant) -> Result<Self> {
        let own0 = watch.own.as_deref().map(cpu_seconds).transpose()?;
        let kh0 = cpu_seconds(&watch.khugepaged)?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, error, stop) = (samples.clone(), error.clone(), stop.clone());
            thread::spawn(move || {
                let mut next = start;
                while !stop.load(Ordering::SeqCst) {
                    match take(&watch, start, own0, kh0) {
                        Ok(s) => samples.lock().expect("sampler lock").push(s),
                        Err(e) => {
                            *error.lock().expect("sampler lock") = Some(e);
                            return;
                        }
                    }
                    next += watch.interval;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    } else {
                        // Late (a slow smaps_rollup walk, a busy machine): keep the rhythm
                        // from now rather than sampling in a burst.
                        next = now;
                    }
                }
            })
        };
        Ok(Self {
            samples,
            error,
            stop,
            thread: Some(thread),
        })
    }

    /// The samples so far, or the error that stopped the sampler.
    pub(crate) fn samples(&self) -> Result<Vec<Sample>> {
        if let Some(e) = self.error.lock().expect("sampler lock").take() {
            return Err(e.context("sampling coverage"));
        }
        Ok(self.samples.lock().expect("sampler lock").clone())
    }

    /// Stops sampling and returns every sample.
    pub(crate) fn finish(mut self) -> Result<Vec<Sample>> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

fn take(watch: &Watch, start: Instant, own0: Option<f64>, kh0: f64) -> Result<Sample> {
    let t = start.elapsed().as_secs_f64();
    let mut coverage = Coverage::default();
    for &pid in &watch.children {
        coverage = coverage.add(Coverage::of(pid)?);
    }
    let cpu_own = match (&watch.own, own0) {
        (Some(stat), Some(base)) => cpu_seconds(stat)? - base,
        _ => 0.0,
    };
    Ok(Sample {
        t,
        coverage,
        cpu_own,
        cpu_khugepaged: cpu_seconds(&watch.khugepaged)? - kh0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buddyinfo_counts_blocks_of_a_pmd_and_larger() {
        let text = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n\
                    Node 0, zone   Normal   3796   2785   1988    928    694    893    962    586    298    135    286 \n";
        // DMA: 1 block of order 9 and 3 of order 10; Normal: 135 and 286.
        let pmd = 2 << 20;
        assert_eq!(free_pmd_blocks(text), (1 + 3 * 2 + 135 + 286 * 2) * pmd);
    }

    #[test]
    fn cpu_seconds_reads_utime_and_stime_after_the_comm() {
        let dir = std::env::temp_dir().join(format!("xtask-stat-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let stat = dir.join("stat");
        // A comm with a space and a parenthesis; utime 150, stime 50 ticks.
        fs::write(
            &stat,
            "38 (kh (x) y) S 2 0 0 0 -1 2097216 0 0 0 0 150 50 0 0 39 19 1 0 12 0 0",
        )
        .unwrap();
        let s = cpu_seconds(&stat).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!((s - 200.0 / clock_ticks_per_second()).abs() < 1e-9, "{s}");
    }
}
