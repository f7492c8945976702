//! `build`, `test`, `run`, `lint` and `bench policies`: cargo invocations in order, each
//! printed before it runs.

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt as _,
    process::{Command, ExitCode, ExitStatus},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::{
    cmd::{self, Workspace, say},
    setup::setup,
};

/// Packages that build for the host; collapse-ebpf builds only for the BPF target, through
/// collapse-user's build.rs.
const EBPF_PACKAGE: &str = "collapse-ebpf";
/// The integration tests that load the real programs; they run only as root, one at a time.
const ROOT_TESTS_PACKAGE: &str = "collapse-tests";

pub(crate) fn build(ws: &Workspace, release: bool) -> Result<()> {
    setup(ws)?;
    let mut build = ws.cargo(["build", "--workspace", "--exclude", EBPF_PACKAGE]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build, &ws.root)
}

pub(crate) fn test(ws: &Workspace) -> Result<ExitCode> {
    setup(ws)?;
    say!("test: host tests (unit, property, integration tests that need no root)");
    let mut counts = cmd::TestCounts::default();
    let host = cmd::test_status(
        &mut ws.cargo([
            "test",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            "--exclude",
            ROOT_TESTS_PACKAGE,
            "--no-fail-fast",
        ]),
        &ws.root,
        &mut counts,
    )?;
    let root = if cmd::is_root() {
        // The root tests drive the `collapse` binary itself: build it, whatever the host
        // phase left behind.
        cmd::run(
            &mut ws.cargo(["build", "-p", "collapse-user", "--bin", "collapse"]),
            &ws.root,
        )?;
        say!("test: root integration tests ({ROOT_TESTS_PACKAGE}, one test at a time)");
        let mut root_tests = ws.cargo([
            "test",
            "-p",
            ROOT_TESTS_PACKAGE,
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ]);
        // The root tests skip themselves (saying so) unless this is set, so a plain
        // `cargo test --workspace` stays harmless.
        root_tests.env("COLLAPSE_ROOT_TESTS", "1");
        Some(cmd::test_status(&mut root_tests, &ws.root, &mut counts)?)
    } else {
        say!("skipping root integration tests: not root");
        None
    };
    let verdict = |status: &ExitStatus| {
        if status.success() {
            "passed".to_owned()
        } else {
            format!("FAILED ({status})")
        }
    };
    say!(
        "test: summary: host tests {}; root integration tests {}",
        verdict(&host),
        root.as_ref()
            .map_or_else(|| "skipped (not root)".to_owned(), verdict)
    );
    let passed = host.success() && root.is_none_or(|s| s.success());
    // The plain closing line CI reads: every test of both phases. A phase that failed to
    // build counts one failure, so a red run never reads as `0 failed`.
    let build_failures = u64::from(!passed && counts.failed == 0);
    println!(
        "test: {} passed, {} failed, {} skipped",
        counts.passed,
        counts.failed + build_failures,
        counts.ignored
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn run(ws: &Workspace, release: bool, args: Vec<OsString>) -> Result<ExitCode> {
    setup(ws)?;
    // The main job measures: it runs the release build.
    let release = release || args.is_empty();
    let mut build = ws.cargo(["build", "-p", "collapse-user", "--bin", "collapse"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build, &ws.root)?;

    let bin = ws.collapse_bin(release);
    let args = if args.is_empty() {
        let out = ws.root.join("target").join("collapse-report");
        say!(
            "run: the main job: `collapse bench --workload mixed --quick`, khugepaged against collapse on the same workload (about two minutes); the report goes to {}",
            out.display()
        );
        ["bench", "--workload", "mixed", "--quick", "--out"]
            .into_iter()
            .map(OsString::from)
            .chain([out.into_os_string()])
            .collect()
    } else {
        args
    };
    // Loading eBPF programs needs root. Only the built binary goes through sudo, never cargo,
    // so the target directory stays owned by the user.
    let mut collapse = if cmd::is_root() {
        Command::new(&bin)
    } else if let Some(sudo) = cmd::find_in_path("sudo") {
        say!("run: not root; running collapse through sudo");
        let mut c = Command::new(sudo);
        c.arg("-E").arg(&bin);
        c
    } else {
        bail!(
            "collapse needs root to load its eBPF programs, and sudo is not installed; run as root"
        );
    };
    collapse.args(&args).current_dir(&ws.root);

    // Ctrl-C reaches the whole foreground process group; collapse handles it (stops tracing,
    // restores sysfs) and xtask must still be there to report its exit status. A handler that
    // does nothing, rather than SIG_IGN, because exec resets caught signals to the default
    // but leaves ignored ones ignored, and collapse must see the SIGINT.
    let noop = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: on_sigint does nothing, so it is async-signal-safe.
    let previous = unsafe { sigaction(Signal::SIGINT, &noop) }.context("sigaction(SIGINT)")?;
    let status = cmd::status(&mut collapse, &ws.root);
    // SAFETY: restores the disposition that was in place before.
    unsafe { sigaction(Signal::SIGINT, &previous) }.context("sigaction(SIGINT)")?;
    Ok(exit_code_of(status?))
}

extern "C" fn on_sigint(_: nix::libc::c_int) {}

/// The child's exit code, or 128 + signal number when a signal ended it (as a shell reports).
fn exit_code_of(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

pub(crate) fn lint(ws: &Workspace) -> Result<()> {
    setup(ws)?;
    // rustfmt.toml uses nightly-only options (group_imports, imports_granularity).
    let fmt = ws.cargo(["+nightly", "fmt", "--all", "--check"]);
    // `cargo clippy --workspace` fails on the eBPF crate (duplicate panic handler: it is
    // `no_std` and only builds for the BPF target), so it is linted on its own below.
    let host_clippy = ws.cargo([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let mut ebpf_clippy = ws.cargo([
        "+nightly",
        "clippy",
        "-p",
        EBPF_PACKAGE,
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    // The cfg aya-build passes when it builds the crate (aya-build 0.2.0 `build_ebpf`), so
    // arch-specific code is linted as it is built.
    ebpf_clippy.current_dir(ws.root.join(EBPF_PACKAGE)).env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );

    let mut failed = Vec::new();
    for (name, mut check) in [
        ("rustfmt", fmt),
        ("clippy (host crates)", host_clippy),
        ("clippy (eBPF crate)", ebpf_clippy),
    ] {
        say!("lint: {name}");
        if !cmd::status(&mut check, &ws.root)?.success() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    say!("lint: rustfmt and clippy clean");
    Ok(())
}

/// Pure policy code needs no eBPF toolchain, so this does not run setup.
pub(crate) fn bench_policies(ws: &Workspace, args: Vec<OsString>) -> Result<()> {
    let mut bench = ws.cargo(["bench", "-p", "collapse-common", "--bench", "policies"]);
    if !args.is_empty() {
        bench.arg("--").args(args);
    }
    cmd::run(&mut bench, &ws.root)
}
