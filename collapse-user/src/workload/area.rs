//! An anonymous private mapping whose start is 2 MiB aligned: the memory every workload
//! shapes.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _},
    ptr::NonNull,
};

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
    #[error("reading /proc/self/maps")]
    Maps(#[source] procfs::ProcError),
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

    /// Fills pages `[start, end)` with `UFFDIO_COPY` (Documentation/admin-guide/mm/userfaultfd.rst):
    /// the range is registered with a fresh userfaultfd in MISSING mode, each page copied in
    /// from a buffer, and the range unregistered. The pages become present without any fault of
    /// this process, as when a userfaultfd handler resolves a read fault.
    pub fn fill_by_uffd_copy(&self, start: u64, end: u64) -> Result<(), AreaError> {
        let dst = self.page_ptr(start)? as u64;
        self.page_ptr(end)?;
        let len = (end - start) * PAGE_SIZE;
        let errno = |call: &str| AreaError::Syscall {
            call: call.into(),
            source: nix::errno::Errno::last(),
        };
        // SAFETY: userfaultfd(2) with flags only.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(errno("userfaultfd"));
        }
        // SAFETY: a descriptor we own from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let raw = fd.as_raw_fd();
        let ioctl = |call: &'static str, r: nix::Result<libc::c_int>| {
            r.map(drop).map_err(|source| AreaError::Syscall {
                call: call.into(),
                source,
            })
        };
        let mut api = uffd::Api {
            api: uffd::API,
            ..Default::default()
        };
        // SAFETY: each ioctl gets its documented argument struct, alive for the call.
        ioctl("UFFDIO_API", unsafe { uffd::api(raw, &mut api) })?;
        let mut reg = uffd::Register {
            range: uffd::Range { start: dst, len },
            mode: uffd::REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl("UFFDIO_REGISTER", unsafe { uffd::register(raw, &mut reg) })?;
        let src = vec![0xa5u8; PAGE_SIZE as usize];
        for page in 0..end - start {
            let mut copy = uffd::Copy {
                dst: dst + page * PAGE_SIZE,
                src: src.as_ptr() as u64,
                len: PAGE_SIZE,
                mode: 0,
                copy: 0,
            };
            ioctl("UFFDIO_COPY", unsafe { uffd::copy(raw, &mut copy) })?;
        }
        let mut range = uffd::Range { start: dst, len };
        ioctl("UFFDIO_UNREGISTER", unsafe {
            uffd::unregister(raw, &mut range)
        })?;
        Ok(())
    }

    /// Moves the whole area to a fresh 2 MiB-aligned address with `mremap` (its pages move
    /// without a fault). Each mapped piece moves on its own, to the same offset: before 6.17
    /// one `mremap` moves one VMA only (EFAULT across a hole or a split), and the area may
    /// have both. Its holes stay holes at the new address.
    pub fn relocate(&mut self) -> Result<(), AreaError> {
        let target = Self::map(self.len as u64, None)?;
        let (from, to) = (self.base.as_ptr() as u64, target.base.as_ptr() as u64);
        // Unmaps the target's bytes `[start, end)` (offsets), a hole of the source.
        let hole = |start: u64, end: u64| match start < end {
            true => target.unmap((start - from) / PAGE_SIZE, (end - from) / PAGE_SIZE),
            false => Ok(()),
        };
        let mut mapped_to = from;
        for piece in self.mapped_pieces()? {
            hole(mapped_to, piece.start)?;
            let len = (piece.end - piece.start) as usize;
            // SAFETY: the piece is one VMA of our own mapping; MREMAP_FIXED replaces the
            // same-sized part of the fresh one, whose ownership passes to `self` below.
            let moved = unsafe {
                libc::mremap(
                    piece.start as *mut libc::c_void,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    (to + piece.start - from) as *mut libc::c_void,
                )
            };
            if moved == libc::MAP_FAILED {
                return Err(AreaError::Syscall {
                    call: "mremap".into(),
                    source: nix::errno::Errno::last(),
                });
            }
            mapped_to = piece.end;
        }
        hole(mapped_to, from + self.len as u64)?;
        self.base = target.base;
        std::mem::forget(target);
        Ok(())
    }

    /// The VMAs of this area as they are now (`/proc/self/maps`), clipped to it.
    fn mapped_pieces(&self) -> Result<Vec<std::ops::Range<u64>>, AreaError> {
        let (start, end) = (
            self.base.as_ptr() as u64,
            self.base.as_ptr() as u64 + self.len as u64,
        );
        let maps = procfs::process::Process::myself()
            .and_then(|me| me.maps())
            .map_err(AreaError::Maps)?;
        Ok(maps
            .into_iter()
            .map(|m| m.address.0.max(start)..m.address.1.min(end))
            .filter(|r| r.start < r.end)
            .collect())
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

/// The userfaultfd ioctls (include/uapi/linux/userfaultfd.h).
mod uffd {
    pub(super) const API: u64 = 0xaa;
    pub(super) const REGISTER_MODE_MISSING: u64 = 1;

    #[repr(C)]
    #[derive(Default)]
    pub(super) struct Api {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub(super) struct Range {
        pub start: u64,
        pub len: u64,
    }

    #[repr(C)]
    pub(super) struct Register {
        pub range: Range,
        pub mode: u64,
        pub ioctls: u64,
    }

    #[repr(C)]
    pub(super) struct Copy {
        pub dst: u64,
        pub src: u64,
        pub len: u64,
        pub mode: u64,
        pub copy: i64,
    }

    nix::ioctl_readwrite!(api, 0xaa, 0x3f, Api);
    nix::ioctl_readwrite!(register, 0xaa, 0x00, Register);
    nix::ioctl_read!(unregister, 0xaa, 0x01, Range);
    nix::ioctl_readwrite!(copy, 0xaa, 0x03, Copy);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `relocate` moves each piece of an area split by a hole and by an madvise to the same
    /// offset, with its contents, and the hole stays a hole.
    #[test]
    fn relocate_moves_every_piece_and_keeps_the_holes() {
        let mut a = Area::map(4 * PMD_SIZE, None).unwrap();
        let pages = a.pages();
        for page in [0, 299, 400, 700, pages - 1] {
            // SAFETY: inside the mapping.
            unsafe {
                a.page_ptr(page)
                    .unwrap()
                    .write_volatile((page % 251) as u8 + 1)
            };
        }
        a.unmap(300, 400).unwrap();
        let split = a.page_ptr(600).unwrap().cast::<libc::c_void>();
        // SAFETY: our own mapping; the advice only splits the VMA.
        unsafe {
            madvise(
                NonNull::new(split).unwrap(),
                (100 * PAGE_SIZE) as usize,
                MmapAdvise::MADV_NOHUGEPAGE,
            )
        }
        .unwrap();
        let old = a.addr();
        let offsets = |a: &Area| {
            let base = a.addr();
            a.mapped_pieces()
                .unwrap()
                .iter()
                .map(|r| (r.start - base) / PAGE_SIZE..(r.end - base) / PAGE_SIZE)
                .collect::<Vec<_>>()
        };
        let before = offsets(&a);
        assert_eq!(before.len(), 4, "{before:?}");
        a.relocate().unwrap();
        assert_ne!(a.addr(), old);
        assert_eq!(offsets(&a), before);
        for page in [0, 299, 400, 700, pages - 1] {
            // SAFETY: inside the mapping.
            assert_eq!(
                unsafe { a.page_ptr(page).unwrap().read_volatile() },
                (page % 251) as u8 + 1
            );
        }
        let me = procfs::process::Process::myself().unwrap();
        let left = me
            .maps()
            .unwrap()
            .into_iter()
            .any(|m| m.address.0 < old + a.len as u64 && m.address.1 > old);
        assert!(
            !left,
            "something is still mapped at the old address {old:#x}"
        );
    }
}
