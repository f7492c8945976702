//! The workloads of `collapse bench`, run as `collapse workload mixed|sparse-stride` children.
//! Each populates its memory with 4 KiB pages (no advice, THP `enabled` at `madvise`), says
//! `populated`, waits for `go` on stdin, then (with `--advise huge`) marks its memory
//! MADV_HUGEPAGE so khugepaged may collapse it,
//! runs its measured phase for `--run-for` seconds printing `progress F` lines, verifies its
//! data, prints `result ops N ops_per_s X checksum ok|bad`, and exits at `exit` (or EOF), so
//! the bench can take a last sample while the memory is still mapped.
//!
//! `--thp off` disables THP for the whole process first (prctl PR_SET_THP_DISABLE): the `none`
//! arm.

use std::{
    io::{self, BufRead as _},
    time::{Duration, Instant},
};

use collapse_common::consts::{PAGE_SIZE, PMD_SIZE};
use nix::sys::mman::MmapAdvise;

use super::{Area, AreaError, WorkloadError};

/// PTEs of a PMD.
const PTES: u64 = PMD_SIZE / PAGE_SIZE;

/// What the workload does with THP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// No madvise: only an explicit MADV_COLLAPSE (collapse arms) makes it huge.
    None,
    /// MADV_HUGEPAGE once populated: khugepaged may collapse it.
    Huge,
    /// prctl(PR_SET_THP_DISABLE) from the start: nothing ever becomes huge.
    ThpOff,
}

/// Which built-in workload, sized and timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltIn {
    /// A hot dense array read by random pointer chasing (half the size), beside cold sparse
    /// regions (a quarter, ~10 % of pages in islands of 4) and mid-density regions (a quarter,
    /// 40, 50 and 60 % in islands of 16 pages).
    Mixed,
    /// Every `stride`-th page of the whole size touched, then read over and over.
    SparseStride { stride: u64 },
}

/// A small, fast generator (xorshift64*): the workloads must not depend on a crate's RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The word written at the start of each touched page of the cold and mid regions.
fn pattern(area: u64, page: u64) -> u64 {
    (area << 40 ^ page).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// Pages of a region touched by the mixed workload's cold and mid parts.
fn touched_pages(kind: u8, region: u64) -> Vec<u64> {
    match kind {
        // Cold: 4 pages every 40: 10 %.
        0 => (0..PTES).filter(|p| p % 40 < 4).collect(),
        // Mid: 40, 50 or 60 % of the region's 32 islands of 16 pages, spread evenly.
        _ => {
            let fraction = [0.4, 0.5, 0.6][(region % 3) as usize];
            let islands = (32.0 * fraction) as u64;
            (0..islands)
                .flat_map(|i| {
                    let island = i * 32 / islands;
                    island * 16..island * 16 + 16
                })
                .collect()
        }
    }
}

fn line(out: &mut impl io::Write, text: &str) -> io::Result<()> {
    writeln!(out, "{text}")?;
    out.flush()
}

/// Waits for `word` on stdin (EOF counts as `exit`).
fn wait_for(word: &str) -> io::Result<bool> {
    let mut l = String::new();
    loop {
        l.clear();
        if io::stdin().lock().read_line(&mut l)? == 0 {
            return Ok(false);
        }
        if l.trim() == word {
            return Ok(true);
        }
    }
}

/// Runs `kind` over `size` bytes for `run_for`, as the module says.
pub fn run(
    kind: BuiltIn,
    size: u64,
    run_for: Duration,
    advice: Advice,
) -> Result<(), WorkloadError> {
    let mut out = io::stdout().lock();
    if advice == Advice::ThpOff {
        // SAFETY: a prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
            return Err(WorkloadError::Script(format!(
                "prctl(PR_SET_THP_DISABLE): {}",
                io::Error::last_os_error()
            )));
        }
    }
    line(&mut out, &format!("ready {}", std::process::id()))?;
    let size = size.max(4 * PMD_SIZE).div_ceil(4 * PMD_SIZE) * 4 * PMD_SIZE;
    // No advice: with THP `enabled` at `madvise` (the bench makes sure) faults map 4 KiB
    // pages, khugepaged leaves the memory alone until it is registered, and MADV_COLLAPSE
    // takes it (it refuses MADV_NOHUGEPAGE memory).
    let no_huge = None;
    match kind {
        BuiltIn::Mixed => {
            let mut hot = Area::map(size / 2, no_huge)?;
            let mut cold = Area::map(size / 4, no_huge)?;
            let mut mid = Area::map(size / 4, no_huge)?;
            let words = hot.words_mut();
            let len = words.len() as u64;
            // Sattolo's algorithm: one cycle through every word, so the chase visits them all.
            for (i, w) in words.iter_mut().enumerate() {
                *w = i as u64;
            }
            let mut rng = Rng(0x5EED_1234_5678_9ABC);
            for i in (1..len).rev() {
                let j = rng.below(i);
                words.swap(i as usize, j as usize);
            }
            let mut touched = 0u64;
            for (a, area) in [(0u8, &mut cold), (1u8, &mut mid)] {
                let regions = area.pages() / PTES;
                let w = area.words_mut();
                for r in 0..regions {
                    for p in touched_pages(a, r) {
                        let page = r * PTES + p;
                        w[(page * PAGE_SIZE / 8) as usize] = pattern(u64::from(a), page);
                        touched += 1;
                    }
                }
            }
            line(
                &mut out,
                &format!("populated {}", size / 2 + touched * PAGE_SIZE),
            )?;
            if !wait_for("go")? {
                return Ok(());
            }
            register(advice, [&hot, &cold, &mid])?;
            // The measured phase: dependent loads over the hot array.
            let words = hot.words_mut();
            let mut i = 0usize;
            let (ops, secs) = measured_phase(&mut out, run_for, || {
                for _ in 0..100_000 {
                    i = words[i] as usize;
                }
                100_000
            })?;
            // A permutation of 0..len: its sum and the touched patterns say the data is intact.
            let sum: u128 = words.iter().map(|&w| u128::from(w)).sum();
            let mut ok = sum == u128::from(len) * u128::from(len - 1) / 2 && i < len as usize;
            for (a, area) in [(0u8, &mut cold), (1u8, &mut mid)] {
                let regions = area.pages() / PTES;
                let w = area.words_mut();
                for r in 0..regions {
                    for p in touched_pages(a, r) {
                        let page = r * PTES + p;
                        ok &= w[(page * PAGE_SIZE / 8) as usize] == pattern(u64::from(a), page);
                    }
                }
            }
            finish(&mut out, ops, secs, ok)
        }
        BuiltIn::SparseStride { stride } => {
            let stride = stride.max(1);
            let mut area = Area::map(size, no_huge)?;
            let pages = area.pages();
            let w = area.words_mut();
            for page in (0..pages).step_by(stride as usize) {
                w[(page * PAGE_SIZE / 8) as usize] = pattern(2, page);
            }
            line(
                &mut out,
                &format!("populated {}", pages.div_ceil(stride) * PAGE_SIZE),
            )?;
            if !wait_for("go")? {
                return Ok(());
            }
            register(advice, [&area])?;
            let w = area.words_mut();
            let mut acc = 0u64;
            let (ops, secs) = measured_phase(&mut out, run_for, || {
                let mut n = 0;
                for page in (0..pages).step_by(stride as usize) {
                    acc = acc.wrapping_add(w[(page * PAGE_SIZE / 8) as usize]);
                    n += 1;
                }
                n
            })?;
            std::hint::black_box(acc);
            let ok = (0..pages)
                .step_by(stride as usize)
                .all(|page| w[(page * PAGE_SIZE / 8) as usize] == pattern(2, page));
            finish(&mut out, ops, secs, ok)
        }
    }
}

/// After `go`, with `Huge`: the memory is registered with khugepaged (MADV_HUGEPAGE).
fn register<const N: usize>(advice: Advice, areas: [&Area; N]) -> Result<(), AreaError> {
    if advice == Advice::Huge {
        for a in areas {
            a.advise(0, a.pages(), MmapAdvise::MADV_HUGEPAGE)?;
        }
    }
    Ok(())
}

/// Runs `batch` (which returns the operations it did) over and over for `run_for`, printing
/// `progress F` about 4 times a second; the operations done and the seconds taken.
fn measured_phase(
    out: &mut impl io::Write,
    run_for: Duration,
    mut batch: impl FnMut() -> u64,
) -> io::Result<(u64, f64)> {
    let started = Instant::now();
    let (mut ops, mut shown) = (0u64, Instant::now());
    while started.elapsed() < run_for {
        ops += batch();
        if shown.elapsed() >= Duration::from_millis(250) {
            shown = Instant::now();
            let f = started.elapsed().as_secs_f64() / run_for.as_secs_f64();
            line(out, &format!("progress {:.3}", f.min(1.0)))?;
        }
    }
    Ok((ops, started.elapsed().as_secs_f64()))
}

fn finish(out: &mut impl io::Write, ops: u64, secs: f64, ok: bool) -> Result<(), WorkloadError> {
    line(
        out,
        &format!(
            "result ops {ops} ops_per_s {:.1} checksum {}",
            ops as f64 / secs.max(1e-9),
            if ok { "ok" } else { "bad" }
        ),
    )?;
    wait_for("exit")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densities() {
        assert_eq!(touched_pages(0, 0).len(), 52);
        let mids: Vec<usize> = (0..3).map(|r| touched_pages(1, r).len()).collect();
        assert_eq!(mids, [192, 256, 304]);
        for r in 0..3 {
            let p = touched_pages(1, r);
            assert!(p.windows(2).all(|w| w[0] < w[1]) && *p.last().unwrap() < PTES);
        }
    }
}
