//! A `collapse workload script` child started with `clone3`, optionally at a chosen pid
//! (`set_tid`): how the tests reuse a pid on purpose.

use std::{
    io::{BufRead as _, BufReader},
    os::fd::FromRawFd as _,
    path::Path,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// `collapse workload script` started with `clone3` from a copy of the binary named `comm`
/// (so `--comm` finds only ours), optionally at a chosen pid (`set_tid`), without address-space
/// randomisation: a second child given the same commands maps the same addresses.
pub struct Cloned {
    pub pid: i32,
    stdin: std::fs::File,
    lines: BufReader<std::fs::File>,
    reaped: bool,
}

/// `struct clone_args` up to `set_tid_size` (include/uapi/linux/sched.h, CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

impl Cloned {
    /// `None` when `pid` is taken (by someone else, in the instant it was free).
    pub fn spawn(bin: &Path, pid: Option<i32>) -> Option<Self> {
        use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
        let bin = CString::new(bin.as_os_str().as_bytes()).expect("path");
        let argv = [
            bin.as_ptr(),
            c"workload".as_ptr(),
            c"script".as_ptr(),
            std::ptr::null(),
        ];
        let mut to_child = [0; 2];
        let mut from_child = [0; 2];
        // SAFETY: pipe2 fills the two-element arrays.
        unsafe {
            assert_eq!(libc::pipe2(to_child.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(from_child.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        let mut tid = [pid.unwrap_or(0)];
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: if pid.is_some() {
                tid.as_mut_ptr() as u64
            } else {
                0
            },
            set_tid_size: u64::from(pid.is_some()),
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM forks; the child only makes async-signal-safe calls
        // on memory prepared above, then execs or exits.
        let ret = unsafe {
            let ret = libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            );
            if ret == 0 {
                libc::dup2(to_child[0], 0);
                libc::dup2(from_child[1], 1);
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
                libc::execv(bin.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
            libc::close(to_child[0]);
            libc::close(from_child[1]);
            ret
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "clone3: {err}");
            // SAFETY: our own ends of the pipes, used by nothing else.
            unsafe {
                libc::close(to_child[1]);
                libc::close(from_child[0]);
            }
            return None;
        }
        // SAFETY: the parent's ends of the pipes, owned by nothing else.
        let (stdin, stdout) = unsafe {
            (
                std::fs::File::from_raw_fd(to_child[1]),
                std::fs::File::from_raw_fd(from_child[0]),
            )
        };
        let mut w = Self {
            pid: ret as i32,
            stdin,
            lines: BufReader::new(stdout),
            reaped: false,
        };
        let ready = w.line();
        assert_eq!(ready, format!("ready {}", w.pid));
        Some(w)
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).expect("read from child");
        line.trim_end().to_owned()
    }

    pub fn cmd(&mut self, line: &str) -> String {
        use std::io::Write as _;
        writeln!(self.stdin, "{line}").expect("write to child");
        let reply = self.line();
        assert!(
            !reply.is_empty() && !reply.starts_with("error"),
            "`{line}`: {reply:?}"
        );
        reply
    }

    /// Maps `mib` MiB without advice; its address.
    pub fn map(&mut self, name: &str, mib: u64) -> u64 {
        let reply = self.cmd(&format!("map {name} {mib} plain"));
        let addr = reply.split_whitespace().nth(2).expect("mapped NAME ADDR");
        u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex")
    }

    /// Maps and fills `mib` MiB without advice; its address.
    pub fn dense(&mut self, name: &str, mib: u64) -> u64 {
        let addr = self.map(name, mib);
        self.cmd(&format!("fill {name} 0 {}", mib * 256));
        addr
    }

    /// SIGKILL and reap: afterwards the pid is free for anyone.
    pub fn kill_and_reap(&mut self) {
        kill(Pid::from_raw(self.pid), Signal::SIGKILL).expect("kill our child");
        nix::sys::wait::waitpid(Pid::from_raw(self.pid), None).expect("reap");
        self.reaped = true;
    }
}

impl Drop for Cloned {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_and_reap();
        }
    }
}
