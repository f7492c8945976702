//! An anonymous private mapping whose start is 2 MiB aligned: the memory every workload
//! shapes.

use std::ptr::NonNull;

use collapse_common::consts::{PAGE_SIZE, PMD_SIZE};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};

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

    pub(super) fn page_ptr(&self, page: u64) -> Result<*mut u8, AreaError> {
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

    /// Maps fresh, empty anonymous memory over pages `[start, end)` at their own address:
    /// `MAP_FIXED` replaces whatever is there (its pages are gone); with `noreplace`,
    /// `MAP_FIXED_NOREPLACE` maps only where nothing is (a range unmapped before).
    pub fn map_over(&self, start: u64, end: u64, noreplace: bool) -> Result<(), AreaError> {
        let ptr = self.page_ptr(start)?;
        self.page_ptr(end)?;
        let len = ((end - start) * PAGE_SIZE) as usize;
        let (flag, call) = if noreplace {
            (libc::MAP_FIXED_NOREPLACE, "mmap(MAP_FIXED_NOREPLACE)")
        } else {
            (libc::MAP_FIXED, "mmap(MAP_FIXED)")
        };
        // SAFETY: the range lies inside this area; nothing holds references into it, and
        // MAP_FIXED only replaces our own pages there.
        let got = unsafe {
            libc::mmap(
                ptr.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flag,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(AreaError::Syscall {
                call: format!("{call} pages {start}..{end}"),
                source: nix::errno::Errno::last(),
            });
        }
        if got != ptr.cast() {
            // A kernel before 4.17 takes MAP_FIXED_NOREPLACE as a hint and maps elsewhere.
            // SAFETY: the mapping just made, nothing refers to it.
            unsafe { libc::munmap(got, len) };
            return Err(AreaError::Syscall {
                call: format!("{call} pages {start}..{end} (mapped elsewhere)"),
                source: nix::errno::Errno::EEXIST,
            });
        }
        Ok(())
    }

    /// Shrinks the area in place to its first `pages` pages with `mremap` (the tail's pages
    /// are unmapped).
    pub fn shrink(&mut self, pages: u64) -> Result<(), AreaError> {
        let new_len = (pages * PAGE_SIZE) as usize;
        if new_len == 0 || new_len > self.len {
            return Err(AreaError::Outside {
                page: pages,
                pages: self.pages(),
            });
        }
        // SAFETY: our own mapping, shrunk in place (no MREMAP_MAYMOVE): nothing moves.
        let got = unsafe { libc::mremap(self.base.as_ptr(), self.len, new_len, 0) };
        if got == libc::MAP_FAILED {
            return Err(AreaError::Syscall {
                call: "mremap (shrink)".into(),
                source: nix::errno::Errno::last(),
            });
        }
        self.len = new_len;
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
