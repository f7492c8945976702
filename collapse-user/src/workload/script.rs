//! A process driven over stdin, one command per line: the tests shape its memory.

use std::{
    collections::HashMap,
    ffi::CString,
    io::{self, BufRead, Write},
    process::ExitCode,
};

use collapse_common::consts::PAGE_SIZE;
use nix::sys::mman::MmapAdvise;

use super::{Area, WorkloadError};

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
/// uffd NAME START END          -> ok      (pages filled by UFFDIO_COPY: present without a fault)
/// madvise-any NAME START END   -> ok | errno ERRNO  (MADV_DONTNEED, its error reported, not
///                                          refused: a range with a hole gives ENOMEM)
/// race NAME START END ROUNDS   -> ok      (this thread writes every page of the range ROUNDS
///                                          times while a second one MADV_DONTNEEDs it in a
///                                          loop until the writes are done)
/// stride NAME REGIONS PAGES [US] -> ok    (starts a thread writing pages [0, PAGES) of each of
///                                          the first REGIONS PMD regions, interleaved: page 0
///                                          of every region, then page 1, ..., pausing US µs
///                                          between; `join NAME 0 0` waits for it)
/// join NAME 0 0                -> ok
/// touch-read NAME PAGE PATH    -> ok      (writes page PAGE, then read(2)s PATH into a buffer
///                                          already faulted in, without another syscall between)
/// thp off|on                   -> ok      (prctl(PR_SET_THP_DISABLE, 1 | 0))
/// fixed NAME START END         -> ok      (mmap MAP_FIXED over the pages: they are gone)
/// remap NAME START END         -> ok      (mmap MAP_FIXED_NOREPLACE where they were unmapped)
/// shrink NAME PAGES            -> ok      (mremap in place to the first PAGES pages)
/// fork IN OUT                  -> forked PID  (the child, with a copy of every area, takes
///                                          its commands from the FIFO IN and replies on the
///                                          FIFO OUT, starting with `ready PID`)
/// exec PATH                    -> (no reply: PATH, a `collapse` binary, runs `workload
///                                          script` in this process and says `ready PID`)
/// exit                         -> (exits 0, its areas unmapped first)
/// exit-mapped                  -> (exits 0 with its areas mapped, as most programs end)
/// ```
/// Errors reply `error <message>`, and the process keeps going.
#[derive(Default)]
pub struct Script {
    areas: HashMap<String, Area>,
    background: HashMap<String, std::thread::JoinHandle<()>>,
}

impl Script {
    pub(super) fn run(mut self) -> Result<ExitCode, WorkloadError> {
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
            if line == "exit-mapped" {
                out.flush()?;
                std::process::exit(0);
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
        if verb == "fork" {
            let output = words
                .get(2)
                .ok_or_else(|| WorkloadError::Script("expected: fork IN OUT".into()))?;
            return fork_with_channel(name, output);
        }
        if verb == "exec" {
            let path = CString::new(name)
                .map_err(|_| WorkloadError::Script("NUL in the exec path".into()))?;
            let argv = [path.clone(), c"workload".into(), c"script".into()];
            // Only returns on failure; stdout was flushed after the last reply.
            let err = nix::unistd::execv(&path, &argv).unwrap_err();
            refuse!("execv {name}: {err}");
        }
        if verb == "map" {
            let advice = match words.get(3).copied() {
                Some("huge") => Some(MmapAdvise::MADV_HUGEPAGE),
                Some("nohuge") | None => Some(MmapAdvise::MADV_NOHUGEPAGE),
                // Whatever the THP settings give a VMA without advice.
                Some("plain") => None,
                Some(other) => refuse!("unknown advice {other}"),
            };
            // The old area of that name goes first: mapped after it was unmapped, the new one
            // may reuse its address, and dropping the old one then would unmap the new one.
            self.areas.remove(name);
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
        if verb == "shrink" {
            a.shrink(num(2)?)?;
            return Ok("ok".into());
        }
        if verb == "join" {
            if let Some(handle) = self.background.remove(name) {
                handle
                    .join()
                    .map_err(|_| WorkloadError::Script("thread panicked".into()))?;
            }
            return Ok("ok".into());
        }
        if verb == "touch-read" {
            let page = num(2)?;
            let path = words
                .get(3)
                .ok_or_else(|| WorkloadError::Script("missing PATH".into()))?;
            let file = std::fs::File::open(path)?;
            let mut buf = vec![1u8; 1 << 16];
            let p = a.page_ptr(page)?;
            a.page_ptr(page + 1)?;
            // SAFETY: inside the mapping (checked above).
            unsafe { p.write_volatile(1) };
            use std::io::Read as _;
            let mut file = file;
            while file.read(&mut buf)? > 0 {}
            return Ok("ok".into());
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
            "uffd" => a.fill_by_uffd_copy(start, end)?,
            "fixed" => a.map_over(start, end, false)?,
            "remap" => a.map_over(start, end, true)?,
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
            "madvise-any" => {
                let ptr = a.page_ptr(start)?;
                // SAFETY: DONTNEED on our own address range; parts of it may be unmapped,
                // which is what this command is for.
                let ret = unsafe {
                    libc::madvise(
                        ptr.cast(),
                        ((end - start) * PAGE_SIZE) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                if ret != 0 {
                    let errno = nix::errno::Errno::last();
                    return Ok(format!("errno {errno:?}"));
                }
            }
            "race" => {
                let rounds = num(4)?;
                let (base, len) = (a.page_ptr(start)? as usize, (end - start) * PAGE_SIZE);
                a.page_ptr(end)?;
                let writing = std::sync::atomic::AtomicBool::new(true);
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        // Until the writer is done, so the last purges overlap its last writes.
                        while writing.load(std::sync::atomic::Ordering::Relaxed) {
                            // SAFETY: our own anonymous memory; its pages read back as zeroes.
                            unsafe {
                                libc::madvise(
                                    base as *mut libc::c_void,
                                    len as usize,
                                    libc::MADV_DONTNEED,
                                )
                            };
                        }
                    });
                    for _ in 0..rounds {
                        for page in 0..end - start {
                            // SAFETY: inside the mapping (checked above).
                            unsafe {
                                ((base + (page * PAGE_SIZE) as usize) as *mut u8).write_volatile(1)
                            };
                        }
                    }
                    writing.store(false, std::sync::atomic::Ordering::Relaxed);
                });
            }
            "stride" => {
                let (regions, pages) = (start, end.min(512));
                let pause = std::time::Duration::from_micros(num(4).unwrap_or(0));
                let base = a.page_ptr(0)? as usize;
                a.page_ptr(regions * 512)?;
                let handle = std::thread::spawn(move || {
                    for i in 0..pages {
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                        for r in 0..regions {
                            let page = r * 512 + i;
                            // SAFETY: inside the mapping (checked above); the area stays
                            // mapped until `join`.
                            unsafe {
                                ((base + (page * PAGE_SIZE) as usize) as *mut u8).write_volatile(1)
                            };
                        }
                    }
                });
                self.background.insert(name.to_owned(), handle);
            }
            other => refuse!("unknown command {other}"),
        }
        Ok("ok".into())
    }
}

/// `fork IN OUT`: forks; the child swaps its stdin and stdout for the FIFOs `input` and
/// `output` (so the test drives it like any workload) and goes on with the same script loop
/// and a copy of every area.
fn fork_with_channel(input: &str, output: &str) -> Result<String, WorkloadError> {
    use std::os::fd::AsRawFd as _;

    use nix::{fcntl::OFlag, sys::stat::Mode, unistd::ForkResult};
    // Nobody waits for the child: the kernel reaps it (inherited across exec, harmless for a
    // script that starts no other processes).
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    // SAFETY: this process is single-threaded here (the toucher threads are joined, and a
    // `churn` thread only calls madvise); the child goes on with its own copy.
    match unsafe { nix::unistd::fork() } {
        Err(err) => refuse!("fork: {err}"),
        Ok(ForkResult::Parent { child }) => Ok(format!("forked {child}")),
        Ok(ForkResult::Child) => {
            // O_RDWR: a FIFO opened so does not wait for the other end (Linux `fifo(7)`).
            let open = |path: &str| nix::fcntl::open(path, OFlag::O_RDWR, Mode::empty());
            match (open(input), open(output)) {
                (Ok(i), Ok(o)) => {
                    // SAFETY: plain descriptor calls on fds we own.
                    unsafe {
                        libc::dup2(i.as_raw_fd(), libc::STDIN_FILENO);
                        libc::dup2(o.as_raw_fd(), libc::STDOUT_FILENO);
                    }
                    Ok(format!("ready {}", std::process::id()))
                }
                (i, o) => {
                    // Not on stdout, which is still the parent's channel.
                    eprintln!(
                        "collapse workload: forked child cannot open {input} or {output}: {:?} {:?}",
                        i.err(),
                        o.err()
                    );
                    std::process::exit(1)
                }
            }
        }
    }
}
