//! Deterministic memory workloads for the integration tests, the demo and the benchmarks
//! (`collapse workload ...`, hidden from `--help`).
//!
//! - `storm`: the fault storm of `cargo xtask bench tracer` (touch SIZE in 4 KiB pages under
//!   MADV_NOHUGEPAGE, ns per fault per run).
//! - `script`: a process driven line by line over stdin, so a test can map, touch, unmap and
//!   then hold still while it compares the tracer with pagemap.
//! - `demo`: dense, sparse and half-full regions, populated over a few seconds.

use std::{
    collections::HashMap,
    io::{self, BufRead, Write},
    process::ExitCode,
    ptr::NonNull,
    time::{Duration, Instant},
};

use collapse_common::consts::{PAGE_SIZE, PMD_SIZE};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};

/// Which workload to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Touch `size` bytes of fresh anonymous memory in 4 KiB pages, `runs` times; print ns per
    /// fault. With `wait`, print `ready <pid>` and wait for a line on stdin before each run.
    Storm { size: u64, runs: u32, wait: bool },
    /// Read commands from stdin (see `Script::command`); print `ready <pid>` first.
    Script,
    /// The demo's memory: dense, sparse and half-full regions populated over time, then held
    /// for `hold` seconds.
    Demo { hold: u64 },
    /// A bench workload (`collapse bench`): see `bench::workloads`.
    Bench {
        kind: crate::bench::workloads::BuiltIn,
        size: u64,
        run_for: Duration,
        advice: crate::bench::workloads::Advice,
    },
}

pub fn run(workload: Workload) -> Result<ExitCode, WorkloadError> {
    match workload {
        Workload::Storm { size, runs, wait } => storm(size, runs, wait),
        Workload::Script => Script::default().run(),
        Workload::Demo { hold } => demo(hold),
        Workload::Bench {
            kind,
            size,
            run_for,
            advice,
        } => {
            crate::bench::workloads::run(kind, size, run_for, advice)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A workload program failed: an area operation, its stdin/stdout, or a bad script line.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Area(#[from] AreaError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Bench(#[from] crate::bench::workloads::WorkloadError),
    /// A script line the workload cannot carry out (it replies `error ...` and goes on).
    #[error("{0}")]
    Script(String),
}

/// `Err(WorkloadError::Script(...))` from a format string.
macro_rules! refuse {
    ($($arg:tt)+) => {
        return Err(WorkloadError::Script(format!($($arg)+)))
    };
}

/// A system call on an [`Area`] failed, or a page lies outside it.
#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error("empty mapping")]
    Empty,
    #[error("null mapping")]
    Null,
    #[error("page {page} is outside the area of {pages} pages")]
    Outside { page: u64, pages: u64 },
    #[error("toucher thread panicked")]
    Panicked,
    #[error("{call}")]
    Syscall {
        call: String,
        #[source]
        source: nix::errno::Errno,
    },
}

fn syscall(call: &'static str) -> impl Fn(nix::errno::Errno) -> AreaError {
    move |source| AreaError::Syscall {
        call: call.into(),
        source,
    }
}

/// An anonymous private mapping whose start is 2 MiB aligned, unmapped on drop (what is left
/// of it).
pub struct Area {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl Area {
    /// Maps `len` bytes (rounded up to 2 MiB) at a 2 MiB-aligned address.
    pub fn map(len: u64, advice: Option<MmapAdvise>) -> Result<Self, AreaError> {
        let len = len.div_ceil(PMD_SIZE) * PMD_SIZE;
        let over = (len + PMD_SIZE) as usize;
        let nz = std::num::NonZeroUsize::new(over).ok_or(AreaError::Empty)?;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let raw = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(syscall("mmap"))?;
        let start = raw.as_ptr() as usize;
        let aligned = start.next_multiple_of(PMD_SIZE as usize);
        // Trim the unaligned head and the tail so the area is exactly [aligned, aligned + len).
        // SAFETY: both pieces lie inside the mapping just made.
        unsafe {
            if aligned > start {
                munmap(raw, aligned - start).map_err(syscall("munmap head"))?;
            }
            let tail = aligned + len as usize;
            let end = start + over;
            if end > tail {
                munmap(NonNull::new_unchecked(tail as *mut _), end - tail)
                    .map_err(syscall("munmap tail"))?;
            }
        }
        let area = Self {
            base: NonNull::new(aligned as *mut libc::c_void).ok_or(AreaError::Null)?,
            len: len as usize,
        };
        if let Some(advice) = advice {
            area.advise(0, area.pages(), advice)?;
        }
        Ok(area)
    }

    pub fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    pub fn pages(&self) -> u64 {
        self.len as u64 / PAGE_SIZE
    }

    /// The whole area as 64-bit words (reading a page never written maps the zero page).
    pub fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is ours, readable and writable, page aligned, and borrowed
        // exclusively for as long as the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().cast(), self.len / 8) }
    }

    fn page_ptr(&self, page: u64) -> Result<*mut u8, AreaError> {
        if page > self.pages() {
            return Err(AreaError::Outside {
                page,
                pages: self.pages(),
            });
        }
        // SAFETY: within the mapping (checked above).
        Ok(unsafe { (self.base.as_ptr() as *mut u8).add((page * PAGE_SIZE) as usize) })
    }

    /// Writes one byte in each page of `[start, end)`.
    pub fn touch(&self, start: u64, end: u64) -> Result<(), AreaError> {
        self.page_ptr(end)?;
        for page in start..end {
            // SAFETY: inside the mapping, which is readable and writable.
            unsafe { self.page_ptr(page)?.write_volatile(1) };
        }
        Ok(())
    }

    /// Like `touch`, with page `i` written by thread `i % cpus`, each thread pinned to its CPU.
    pub fn touch_on_every_cpu(&self, start: u64, end: u64) -> Result<(), AreaError> {
        self.page_ptr(end)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let base = self.page_ptr(0)? as usize;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..cpus)
                .map(|cpu| {
                    scope.spawn(move || -> Result<(), AreaError> {
                        let mut set = nix::sched::CpuSet::new();
                        set.set(cpu as usize).map_err(syscall("CpuSet::set"))?;
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                            .map_err(syscall("sched_setaffinity"))?;
                        for page in (start..end).filter(|p| p % cpus == cpu) {
                            // SAFETY: inside the mapping (checked above); threads write
                            // disjoint pages.
                            unsafe {
                                ((base + (page * PAGE_SIZE) as usize) as *mut u8).write_volatile(1)
                            };
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().map_err(|_| AreaError::Panicked)?)
        })
    }

    /// Reads one byte in each page of `[start, end)` (maps the zero page where nothing is).
    pub fn read(&self, start: u64, end: u64) -> Result<u64, AreaError> {
        self.page_ptr(end)?;
        let mut sum = 0u64;
        for page in start..end {
            // SAFETY: as `touch`.
            sum += u64::from(unsafe { self.page_ptr(page)?.read_volatile() });
        }
        Ok(sum)
    }

    pub fn advise(&self, start: u64, end: u64, advice: MmapAdvise) -> Result<(), AreaError> {
        let ptr = self.page_ptr(start)?;
        self.page_ptr(end)?;
        // SAFETY: the range lies inside the mapping.
        unsafe {
            madvise(
                NonNull::new_unchecked(ptr.cast()),
                ((end - start) * PAGE_SIZE) as usize,
                advice,
            )
        }
        .map_err(|source| AreaError::Syscall {
            call: format!("madvise({advice:?}) pages {start}..{end}"),
            source,
        })
    }

    /// Moves the whole area to a fresh 2 MiB-aligned address with `mremap` (its pages move
    /// without a fault).
    pub fn relocate(&mut self) -> Result<(), AreaError> {
        let target = Self::map(self.len as u64, None)?;
        // SAFETY: both ranges are our own mappings of the same length; MREMAP_FIXED replaces
        // the fresh one, whose ownership passes to `self` below.
        let moved = unsafe {
            libc::mremap(
                self.base.as_ptr(),
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.base.as_ptr(),
            )
        };
        if moved == libc::MAP_FAILED {
            return Err(AreaError::Syscall {
                call: "mremap".into(),
                source: nix::errno::Errno::last(),
            });
        }
        self.base = target.base;
        std::mem::forget(target);
        Ok(())
    }

    /// mlock then munlock pages `[start, end)`: the kernel populates them (GUP, no fault).
    pub fn lock(&self, start: u64, end: u64) -> Result<(), AreaError> {
        let ptr = self.page_ptr(start)?;
        self.page_ptr(end)?;
        let len = ((end - start) * PAGE_SIZE) as usize;
        // SAFETY: the range lies inside the mapping.
        unsafe {
            if libc::mlock(ptr.cast(), len) != 0 {
                return Err(AreaError::Syscall {
                    call: "mlock".into(),
                    source: nix::errno::Errno::last(),
                });
            }
            libc::munlock(ptr.cast(), len);
        }
        Ok(())
    }

    /// Unmaps pages `[start, end)`; the area's drop later unmaps the rest (munmap of an
    /// already unmapped range is a no-op).
    pub fn unmap(&self, start: u64, end: u64) -> Result<(), AreaError> {
        let ptr = self.page_ptr(start)?;
        self.page_ptr(end)?;
        // SAFETY: the range lies inside the mapping; nothing holds references into it.
        unsafe {
            munmap(
                NonNull::new_unchecked(ptr.cast()),
                ((end - start) * PAGE_SIZE) as usize,
            )
        }
        .map_err(|source| AreaError::Syscall {
            call: format!("munmap pages {start}..{end}"),
            source,
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: our own mapping; munmap ignores holes.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

fn storm(size: u64, runs: u32, wait: bool) -> Result<ExitCode, WorkloadError> {
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    if wait {
        writeln!(out, "ready {}", std::process::id())?;
        out.flush()?;
    }
    let mut best = f64::INFINITY;
    for run in 1..=runs {
        if wait {
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                refuse!("stdin closed before run {run}");
            }
        }
        let area = Area::map(size, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
        let pages = area.pages();
        let t0 = Instant::now();
        area.touch(0, pages)?;
        let ns = t0.elapsed().as_nanos() as f64 / pages as f64;
        drop(area);
        best = best.min(ns);
        writeln!(out, "run {run} ns_per_fault {ns:.1}")?;
        out.flush()?;
    }
    writeln!(out, "best ns_per_fault {best:.1}")?;
    Ok(ExitCode::SUCCESS)
}

/// A process driven over stdin, one command per line, one reply line per command:
///
/// ```text
/// map NAME MIB [huge|nohuge|plain] -> mapped NAME 0xADDR PAGES
/// touch NAME START END         -> ok      (write one byte per page, pages [START, END))
/// threads NAME START END       -> ok      (the same, page i by thread i % CPUs, each pinned to
///                                          its CPU: faults of one region on every CPU)
/// read NAME START END          -> ok      (read: maps the zero page)
/// dontneed|free NAME START END -> ok      (madvise)
/// huge|nohuge NAME START END   -> ok      (MADV_HUGEPAGE / MADV_NOHUGEPAGE)
/// unmap NAME START END         -> ok
/// populate NAME START END      -> ok      (MADV_POPULATE_WRITE: pages without faults)
/// lock NAME START END          -> ok      (mlock, then munlock: populated without faults)
/// move NAME                    -> moved NAME 0xADDR   (mremap to a new address)
/// fill NAME START END          -> ok      (write every byte of each page, distinct per page)
/// checksum NAME START END      -> sum HEX (FNV-1a over the pages' words; reads map the zero page)
/// churn NAME START END         -> ok      (a thread MADV_DONTNEEDs the range in a loop until exit)
/// thp off|on                   -> ok      (prctl(PR_SET_THP_DISABLE, 1 | 0))
/// exit                         -> (exits 0)
/// ```
/// Errors reply `error <message>`, and the process keeps going.
#[derive(Default)]
pub struct Script {
    areas: HashMap<String, Area>,
}

impl Script {
    fn run(mut self) -> Result<ExitCode, WorkloadError> {
        let mut out = io::stdout().lock();
        writeln!(out, "ready {}", std::process::id())?;
        out.flush()?;
        for line in io::stdin().lock().lines() {
            let line = line?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line == "exit" {
                break;
            }
            match self.command(line) {
                Ok(reply) => writeln!(out, "{reply}")?,
                Err(err) => writeln!(out, "error {}", crate::render::error_chain(&err))?,
            }
            out.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    }

    fn command(&mut self, line: &str) -> Result<String, WorkloadError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, name) = match words.as_slice() {
            [verb, name, ..] => (*verb, *name),
            _ => refuse!("expected: VERB NAME [ARGS]"),
        };
        let num = |i: usize| -> Result<u64, WorkloadError> {
            words
                .get(i)
                .ok_or_else(|| WorkloadError::Script(format!("missing argument {i}")))?
                .parse()
                .map_err(|_| WorkloadError::Script(format!("argument {i}: not a number")))
        };
        if verb == "thp" {
            let disable = match name {
                "off" => 1,
                "on" => 0,
                other => refuse!("expected thp off|on, not {other}"),
            };
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, 0, 0, 0) } != 0 {
                refuse!("prctl(PR_SET_THP_DISABLE): {}", io::Error::last_os_error());
            }
            return Ok("ok".into());
        }
        if verb == "map" {
            let advice = match words.get(3).copied() {
                Some("huge") => Some(MmapAdvise::MADV_HUGEPAGE),
                Some("nohuge") | None => Some(MmapAdvise::MADV_NOHUGEPAGE),
                // Whatever the THP settings give a VMA without advice.
                Some("plain") => None,
                Some(other) => refuse!("unknown advice {other}"),
            };
            let a = Area::map(num(2)? << 20, advice)?;
            let reply = format!("mapped {name} {:#x} {}", a.addr(), a.pages());
            self.areas.insert(name.to_owned(), a);
            return Ok(reply);
        }
        let a = self
            .areas
            .get_mut(name)
            .ok_or_else(|| WorkloadError::Script(format!("no area {name}")))?;
        if verb == "move" {
            a.relocate()?;
            return Ok(format!("moved {name} {:#x}", a.addr()));
        }
        let (start, end) = (num(2)?, num(3)?);
        if start > end {
            refuse!("empty range {start}..{end}");
        }
        match verb {
            "touch" => a.touch(start, end)?,
            "threads" => a.touch_on_every_cpu(start, end)?,
            "read" => {
                a.read(start, end)?;
            }
            "dontneed" => a.advise(start, end, MmapAdvise::MADV_DONTNEED)?,
            "free" => a.advise(start, end, MmapAdvise::MADV_FREE)?,
            "huge" => a.advise(start, end, MmapAdvise::MADV_HUGEPAGE)?,
            "nohuge" => a.advise(start, end, MmapAdvise::MADV_NOHUGEPAGE)?,
            "populate" => a.advise(start, end, MmapAdvise::MADV_POPULATE_WRITE)?,
            "unmap" => a.unmap(start, end)?,
            "lock" => a.lock(start, end)?,
            "fill" => {
                a.page_ptr(end)?;
                for page in start..end {
                    let p = a.page_ptr(page)?.cast::<u64>();
                    for w in 0..PAGE_SIZE / 8 {
                        // SAFETY: inside the mapping (checked above), 8-byte aligned.
                        unsafe { p.add(w as usize).write_volatile(page << 32 | w) };
                    }
                }
            }
            "checksum" => {
                a.page_ptr(end)?;
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for page in start..end {
                    let p = a.page_ptr(page)?.cast::<u64>();
                    for w in 0..PAGE_SIZE as usize / 8 {
                        // SAFETY: as `fill`.
                        h = (h ^ unsafe { p.add(w).read_volatile() }).wrapping_mul(0x100_0000_01b3);
                    }
                }
                return Ok(format!("sum {h:016x}"));
            }
            "churn" => {
                let (ptr, len) = (a.page_ptr(start)? as usize, (end - start) * PAGE_SIZE);
                a.page_ptr(end)?;
                std::thread::spawn(move || {
                    loop {
                        // SAFETY: DONTNEED only drops pages of our own anonymous memory
                        // (they read back as zeroes); once the area is gone it fails with
                        // ENOMEM. Re-mapping NAME while it churns would churn the new one.
                        unsafe {
                            libc::madvise(
                                ptr as *mut libc::c_void,
                                len as usize,
                                libc::MADV_DONTNEED,
                            )
                        };
                    }
                });
            }
            other => refuse!("unknown command {other}"),
        }
        Ok("ok".into())
    }
}

/// The demo's layout, in 2 MiB regions: 8 dense (every page), 8 sparse (one page in 32),
/// 8 half-full (first half of each region), populated one region set per second so the live
/// view moves; then MADV_HUGEPAGE so khugepaged may collapse what its rules allow.
fn demo(hold: u64) -> Result<ExitCode, WorkloadError> {
    const REGIONS: u64 = 8;
    let per_region = PMD_SIZE / PAGE_SIZE;
    let dense = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    let sparse = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    let half = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    for r in 0..REGIONS {
        let base = r * per_region;
        dense.touch(base, base + per_region)?;
        for p in (base..base + per_region).step_by(32) {
            sparse.touch(p, p + 1)?;
        }
        half.touch(base, base + per_region / 2)?;
        std::thread::sleep(Duration::from_millis(400));
    }
    for a in [&dense, &sparse, &half] {
        a.advise(0, a.pages(), MmapAdvise::MADV_HUGEPAGE)?;
    }
    std::thread::sleep(Duration::from_secs(hold));
    Ok(ExitCode::SUCCESS)
}
