//! Process and cgroup helpers against processes and a cgroup this test creates (and removes).

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, Command},
};

mod common;

use collapse::kernel::procs::{self, ProcsError};
use common::skip::{needs_root, skip, skip_if};

/// Where cgroup v2 is mounted, from our mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = procfs::process::Process::myself().ok()?.mountinfo().ok()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// A `sleep` child, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Self {
        Self(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory, removed on drop (after its processes are gone).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The members are killed before this runs; rmdir fails while any remain, so retry a
        // little for the kernel to finish their exit.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.0.display());
    }
}

/// The cgroup id as the kernel's file handle for the directory carries it (what systemd and
/// bpftool use): independent of the inode number `procs::cgroup_id` reads.
fn cgroup_id_from_handle(path: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 64],
    }
    let mut h = Handle {
        handle_bytes: 64,
        handle_type: 0,
        f_handle: [0; 64],
    };
    let mut mount_id = 0;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `h` is a file_handle with room for 64 bytes of handle, as handle_bytes says.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c.as_ptr(),
            (&raw mut h).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(h.handle_bytes, 8);
    u64::from_ne_bytes(h.f_handle[..8].try_into().unwrap())
}

#[test]
fn cgroup_members_and_id() {
    skip_if!(needs_root());
    let Some(root) = cgroup2_root() else {
        skip!("cgroup v2 is not mounted");
    };
    let path = root.join(format!("collapse-test-{}", std::process::id()));
    std::fs::create_dir(&path).unwrap();
    let cgroup = TestCgroup(path.clone());
    let sleepers = [Sleeper::spawn(), Sleeper::spawn()];
    for s in &sleepers {
        std::fs::write(path.join("cgroup.procs"), s.pid().to_string()).unwrap();
    }
    let mut want: Vec<i32> = sleepers.iter().map(Sleeper::pid).collect();
    want.sort_unstable();
    assert_eq!(procs::cgroup_pids(&path).unwrap(), want);
    // Relative to the cgroup mount, as users write it.
    let relative = path.strip_prefix(&root).unwrap();
    assert_eq!(procs::cgroup_pids(relative).unwrap(), want);

    let id = procs::cgroup_id(&path).unwrap();
    assert_eq!(id, std::fs::metadata(&path).unwrap().ino());
    assert_eq!(id, cgroup_id_from_handle(&path));
    assert_ne!(id, procs::cgroup_id(&root).unwrap());

    // The cgroup's own processes are /proc-visible with the expected comm.
    for s in &sleepers {
        assert!(procs::exists(s.pid()));
        assert_eq!(procs::comm(s.pid()).unwrap(), "sleep");
        assert!(procs::pids_with_comm("sleep").unwrap().contains(&s.pid()));
        assert_eq!(procs::tgid(s.pid()).unwrap(), s.pid());
    }
    drop(sleepers);
    assert!(procs::cgroup_pids(&path).unwrap().is_empty());
    drop(cgroup);
    assert!(!path.exists());
}

#[test]
fn cgroup_v1_directory_is_refused_for_ids() {
    let Some(v1) = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| {
        nix::sys::statfs::statfs(*p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC)
    }) else {
        skip!("no cgroup v1 hierarchy mounted");
    };
    let err = procs::cgroup_id(v1).unwrap_err();
    assert!(matches!(err, ProcsError::NotCgroupV2 { .. }), "{err}");
    // Membership still reads from v1.
    assert!(procs::cgroup_pids(v1).is_ok());
}

#[test]
fn threads_map_to_their_process() {
    let me = std::process::id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tx.send(nix::unistd::gettid().as_raw()).unwrap();
        done_rx.recv().unwrap();
    });
    let live = rx.recv().unwrap();
    assert_ne!(live, me);
    assert_eq!(procs::tgid(live).unwrap(), me);
    assert!(procs::exists(live));
    // Thread ids are not listed as processes.
    assert!(!procs::user_processes().unwrap().contains(&live));
    done_tx.send(()).unwrap();
    t.join().unwrap();
}

#[test]
fn thp_coverage_of_a_huge_page() {
    skip_if!(needs_root());
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if enabled.is_empty() || enabled.contains("[never]") {
        skip!("transparent_hugepage/enabled is never");
    }
    let me = std::process::id() as i32;
    let before = procs::memory_coverage(me).unwrap();
    let len = 4 << 20;
    // SAFETY: a fresh anonymous mapping, unmapped below.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(raw, libc::MAP_FAILED);
    let aligned = (raw as usize).next_multiple_of(2 << 20);
    // SAFETY: inside the mapping.
    unsafe {
        assert_eq!(
            libc::madvise(aligned as *mut _, 2 << 20, libc::MADV_HUGEPAGE),
            0
        );
        std::ptr::write_volatile(aligned as *mut u8, 1);
    }
    let after = procs::memory_coverage(me).unwrap();
    // SAFETY: our mapping.
    unsafe { libc::munmap(raw, len) };
    if after.anon_huge_kb == before.anon_huge_kb {
        skip!("the kernel could not allocate a huge page");
    }
    assert_eq!(after.anon_huge_kb, before.anon_huge_kb + 2048);
    assert!(after.anon_rss_kb >= after.anon_huge_kb);
    assert!(after.coverage() > 0.0 && after.coverage() <= 1.0);
}
