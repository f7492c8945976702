//! `cargo xtask kernels`: boots the LTS kernels collapse supports besides the one it runs on
//! (Debian's 6.1 and 6.12 cloud kernels, and any bzImage given with `--image`, such as a 6.6
//! built from source: Debian has none) in qemu, and runs `collapse status` and the tracer's
//! root tests inside each, with the programs loaded for real on that kernel.
//!
//! Everything comes from Debian: the kernel packages are downloaded (not installed: nothing
//! changes in /boot) and unpacked under `target/kernels/`; the guest is a busybox initramfs
//! holding the `collapse` binary, the test executables and the libraries they link. qemu runs
//! without KVM (TCG): this VM has /dev/kvm but no usable nested virtualisation.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{self, Workspace, say},
    setup,
};

/// The host tools the guest needs.
const HOST_PACKAGES: [&str; 3] = ["qemu-system-x86", "cpio", "busybox-static"];

/// A kernel to boot: its name and the Debian meta-package that depends on its newest build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    pub(crate) name: &'static str,
    meta: &'static str,
}

pub(crate) const KERNELS: [Kernel; 2] = [
    Kernel {
        name: "6.1",
        meta: "linux-image-cloud-amd64",
    },
    Kernel {
        name: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// The root test files run in each guest (those that exercise the tracer and the executor;
/// the bench and report tests need redis and chromium, which the guest does not have).
pub(crate) const GUEST_TESTS: [&str; 9] = [
    "tracer",
    "untracked",
    "khugepaged",
    "run",
    "executor",
    "exactness",
    "lifecycle",
    "lifetimes",
    "tick",
];

pub(crate) struct Settings {
    /// Kernel names (`6.1`, `6.12`); empty: all.
    pub(crate) kernels: Vec<String>,
    /// Test files to run; empty: [`GUEST_TESTS`].
    pub(crate) tests: Vec<String>,
    /// bzImages of the caller's own to boot too, by name.
    pub(crate) images: Vec<(String, PathBuf)>,
    /// One host thread for every vCPU (`-accel tcg,thread=single`).
    pub(crate) single_thread: bool,
    /// Seconds a guest may run.
    pub(crate) timeout: u64,
}

/// What one guest reported.
#[derive(Debug, Default)]
struct GuestResult {
    kernel: String,
    status_ok: bool,
    /// (test file, exit status, passed, failed).
    tests: Vec<(String, i32, u64, u64)>,
    finished: bool,
}

pub(crate) fn run(ws: &Workspace, settings: &Settings) -> Result<bool> {
    setup::setup(ws)?;
    setup::apt_install(ws, &HOST_PACKAGES)?;
    let dir = ws.target_dir().join("kernels");
    fs::create_dir_all(&dir)?;
    // Debian's kernels named with --kernel; without it all of them, unless images were given.
    let kernels: Vec<Kernel> = KERNELS
        .into_iter()
        .filter(|k| match settings.kernels.is_empty() {
            true => settings.images.is_empty(),
            false => settings.kernels.iter().any(|n| n == k.name),
        })
        .collect();
    if kernels.is_empty() && settings.images.is_empty() {
        bail!(
            "no such kernel among {}",
            KERNELS.map(|k| k.name).join(", ")
        );
    }
    let wanted: Vec<&str> = if settings.tests.is_empty() {
        GUEST_TESTS.to_vec()
    } else {
        settings.tests.iter().map(String::as_str).collect()
    };
    let collapse = ws.build_release_collapse()?;
    let tests = test_executables(ws, &wanted)?;
    let busybox = unpack(&dir, "busybox-static")?.join("bin/busybox");
    let initrd = dir.join("guest.cpio");
    initramfs(&initrd, &busybox, &collapse, &tests)?;
    let mut images = Vec::new();
    for kernel in kernels {
        images.push((kernel.name.to_owned(), kernel_image(&dir, kernel)?));
    }
    images.extend(settings.images.iter().cloned());
    let mut results = Vec::new();
    for (name, image) in images {
        say!("kernels: booting {name} ({})", image.display());
        let log = dir.join(format!("guest-{name}.log"));
        let started = Instant::now();
        let mut result = boot(
            &image,
            &initrd,
            &log,
            settings.single_thread,
            Duration::from_secs(settings.timeout),
        )?;
        say!(
            "kernels: {name} done in {:.0} s; its console is in {}",
            started.elapsed().as_secs_f64(),
            log.display()
        );
        result.kernel = name;
        results.push(result);
    }
    print!("{}", summary(&results));
    Ok(results.iter().all(|r| {
        r.finished
            && r.status_ok
            && r.tests.iter().all(|t| t.1 == 0)
            && r.tests.len() == tests.len()
    }))
}

/// Downloads (once) and unpacks `package`'s newest version under `dir`; returns the tree.
fn unpack(dir: &Path, package: &str) -> Result<PathBuf> {
    let tree = dir.join("unpacked").join(package);
    if tree.join(".done").exists() {
        return Ok(tree);
    }
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let download = |root: &Path| {
        cmd::run(
            setup::apt_get(&["download", package]).current_dir(&debs),
            root,
        )
    };
    if download(dir).is_err() {
        // Package lists older than the mirror: refresh them once.
        cmd::run(&mut setup::apt_get(&["update"]), dir)?;
        download(dir)?;
    }
    let deb = fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
        })
        .max()
        .with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                debs.display()
            )
        })?;
    fs::create_dir_all(&tree)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree), dir)?;
    fs::write(tree.join(".done"), "")?;
    Ok(tree)
}

/// The bzImage of `kernel`'s newest Debian build.
fn kernel_image(dir: &Path, kernel: Kernel) -> Result<PathBuf> {
    let out = cmd::query(Command::new("apt-cache").args(["depends", kernel.meta]))?
        .context("apt-cache not found")?;
    let package = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .with_context(|| format!("apt-cache depends {}: no Depends line", kernel.meta))?
        .to_owned();
    let tree = unpack(dir, &package)?;
    let boot = tree.join("boot");
    fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no vmlinuz in {}", boot.display()))
}

/// Builds the root test files and returns (name, executable) for each of `wanted` that exists.
fn test_executables(ws: &Workspace, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let out = ws
        .cargo([
            "test",
            "-p",
            "collapse-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the root tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if is_test && wanted.contains(&name) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    if found.is_empty() {
        bail!("none of the root test files {wanted:?} exist");
    }
    Ok(found)
}

/// The guest's /init: mounts what the tracer needs, runs status and each test file, and
/// prints one `collapse-vm:` line per step for the host to read.
fn init_script(tests: &[(String, PathBuf)]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin:/sbin HOME=/root\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t tracefs nodev /sys/kernel/tracing; mount -t cgroup2 none /sys/fs/cgroup\n\
         mount -t bpf bpf /sys/fs/bpf; mount -t tmpfs tmp /tmp; mount -t tmpfs run /run\n\
         mkdir -p /root\n\
         # The wide-unmap test maps 20 GiB it barely touches; the 4 GiB guest's heuristic\n\
         # overcommit would refuse that one mapping, the 24 GiB host does not.\n\
         echo 1 > /proc/sys/vm/overcommit_memory\n\
         echo \"collapse-vm: kernel $(uname -r)\"\n\
         /collapse status; echo \"collapse-vm: status rc=$?\"\n",
    );
    for (name, _) in tests {
        let _ = writeln!(
            s,
            "echo \"collapse-vm: test {name} start\"\n\
             COLLAPSE_ROOT_TESTS=1 COLLAPSE_BIN=/collapse /tests/{name} --test-threads=1 2>&1\n\
             echo \"collapse-vm: test {name} rc=$?\""
        );
    }
    s.push_str("echo \"collapse-vm: done\"\npoweroff -f\n");
    s
}

/// Writes the initramfs: busybox, collapse, the tests, their libraries, and /init.
fn initramfs(
    out: &Path,
    busybox: &Path,
    collapse: &Path,
    tests: &[(String, PathBuf)],
) -> Result<()> {
    let root = out.with_extension("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "tests",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    let mut binaries = vec![(collapse.to_path_buf(), root.join("collapse"))];
    for (name, exe) in tests {
        binaries.push((exe.clone(), root.join("tests").join(name)));
    }
    for (from, to) in &binaries {
        // Without debug info: the test executables are debug builds of 60 MB and more.
        cmd::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(to),
            &root,
        )?;
        for lib in linked_libraries(from)? {
            let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !dest.exists() {
                fs::create_dir_all(dest.parent().context("library path")?)?;
                fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
            }
        }
    }
    let init = root.join("init");
    fs::write(&init, init_script(tests))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let file = fs::File::create(out)?;
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet"])
        .current_dir(&root)
        .stdout(file)
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("cpio failed ({status})");
    }
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// The shared libraries `exe` loads, as ldd resolves them here (the loader included).
fn linked_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::query(Command::new("ldd").arg(exe))?.context("ldd not found")?;
    Ok(out
        .stdout
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Boots `image` with `initrd`, the console going to `log`, and reads the guest's lines.
/// With `single_thread`, qemu runs both vCPUs on one host thread: slower, but a kernel's
/// cross-modifying code (text_poke_bp enabling a tracepoint) cannot meet a stale translation
/// on the other vCPU.
fn boot(
    image: &Path,
    initrd: &Path,
    log: &Path,
    single_thread: bool,
    timeout: Duration,
) -> Result<GuestResult> {
    let console = fs::File::create(log)?;
    let accel = if single_thread {
        "tcg,thread=single"
    } else {
        "tcg"
    };
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-cpu", "max", "-smp", "2", "-m", "4096"])
        .args(["-accel", accel])
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init transparent_hugepage=madvise",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > timeout {
            say!(
                "kernels: the guest ran past {} s: stopping it",
                timeout.as_secs()
            );
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if status.is_some_and(|s| !s.success()) {
        say!("kernels: qemu exited with {status:?}");
    }
    Ok(parse_console(&fs::read_to_string(log)?))
}

/// Reads the `collapse-vm:` lines and the tests' `test result:` lines of a guest's console.
fn parse_console(text: &str) -> GuestResult {
    let mut r = GuestResult::default();
    let mut counts = cmd::TestCounts::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("collapse-vm: ") {
            if let Some(rc) = rest.strip_prefix("status rc=") {
                r.status_ok = rc.trim() == "0";
            } else if rest.starts_with("test ") && rest.ends_with(" start") {
                counts = cmd::TestCounts::default();
            } else if let Some(t) = rest.strip_prefix("test ") {
                if let Some((name, rc)) = t.split_once(" rc=") {
                    let rc = rc.trim().parse().unwrap_or(-1);
                    r.tests
                        .push((name.to_owned(), rc, counts.passed, counts.failed));
                }
            } else if rest == "done" {
                r.finished = true;
            }
        } else {
            counts.add_line(line);
        }
    }
    r
}

fn summary(results: &[GuestResult]) -> String {
    let mut s = String::from("\nkernel  status  test file     passed  failed  exit\n");
    for r in results {
        let status = if r.status_ok { "ok" } else { "FAILED" };
        if r.tests.is_empty() {
            let _ = writeln!(s, "{:<7} {status:<7} (no test ran)", r.kernel);
        }
        for (name, rc, passed, failed) in &r.tests {
            let _ = writeln!(
                s,
                "{:<7} {status:<7} {name:<13} {passed:>6}  {failed:>6}  {rc}",
                r.kernel
            );
        }
        if !r.finished {
            let _ = writeln!(
                s,
                "{:<7} the guest did not finish (see its console log)",
                r.kernel
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_guest_console() {
        let text = "noise\r\ncollapse-vm: kernel 6.1.0\ncollapse-vm: status rc=0\n\
                    collapse-vm: test tracer start\nrunning 3 tests\n\
                    test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
                    collapse-vm: test tracer rc=0\ncollapse-vm: test run start\n\
                    test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n\
                    collapse-vm: test run rc=101\n";
        let r = parse_console(text);
        assert!(r.status_ok);
        assert!(!r.finished);
        assert_eq!(
            r.tests,
            vec![("tracer".into(), 0, 3, 0), ("run".into(), 101, 1, 2)]
        );
        let r = parse_console("collapse-vm: status rc=1\ncollapse-vm: done\n");
        assert!(!r.status_ok && r.finished && r.tests.is_empty());
    }

    #[test]
    fn init_runs_every_test_file() {
        let init = init_script(&[("tracer".into(), "/x/tracer-1".into())]);
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains("COLLAPSE_ROOT_TESTS=1 COLLAPSE_BIN=/collapse /tests/tracer "));
        assert!(init.contains("collapse-vm: test tracer rc=$?"));
        assert!(init.trim_end().ends_with("poweroff -f"));
    }
}
