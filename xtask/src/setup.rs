//! `cargo xtask setup`: installs what building and testing need, skipping what is present.
//! Versions and the reasons for them: shared/design/toolchain.md.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, Workspace, say};

/// LLVM 22 for bpf-linker: nightly rustc emits LLVM 22 bitcode and bpf-linker must match it.
const APT_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Nightly builds the eBPF crate (`-Z build-std=core` needs rust-src) and formats and lints
/// (rustfmt.toml uses nightly-only options).
const NIGHTLY_COMPONENTS: [&str; 3] = ["rust-src", "rustfmt", "clippy"];
const TRACEFS: &str = "/sys/kernel/tracing";

pub(crate) fn setup(ws: &Workspace) -> Result<()> {
    apt_packages(ws).context("setup: apt packages")?;
    nightly(ws).context("setup: nightly toolchain")?;
    default_toolchain_components(ws).context("setup: clippy for the default toolchain")?;
    bpf_linker(ws).context("setup: bpf-linker")?;
    tracefs(ws);
    say!("setup: done");
    Ok(())
}

fn apt_packages(ws: &Workspace) -> Result<()> {
    apt_install(ws, &APT_PACKAGES)
}

/// Installs the Debian packages of `packages` that are missing (as root), saying what it does.
pub(crate) fn apt_install(ws: &Workspace, packages: &[&str]) -> Result<()> {
    say!("setup: checking apt packages {}", packages.join(" "));
    let mut missing = Vec::new();
    for &package in packages {
        let out = cmd::query(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))?;
        let Some(out) = out else {
            say!(
                "setup: dpkg-query not found (not a Debian-like system); skipping apt packages: \
                 install {} yourself",
                packages.join(" ")
            );
            return Ok(());
        };
        // "install ok installed"; an unknown package makes dpkg-query fail with nothing on stdout.
        if !(out.success && out.stdout.trim_end().ends_with(" installed")) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        say!("setup: apt packages: present");
        return Ok(());
    }
    let missing = missing.join(" ");
    if !cmd::is_root() {
        bail!("missing: {missing}; run `cargo xtask setup` as root to install them");
    }
    say!("setup: apt packages missing: {missing}; installing");
    cmd::run(&mut apt_get(&["update"]), &ws.root)?;
    let mut install = apt_get(&["install", "-y"]);
    install.args(missing.split(' '));
    cmd::run(&mut install, &ws.root)
}

/// `apt-get ARGS`, non-interactive.
pub(crate) fn apt_get(args: &[&str]) -> Command {
    let mut c = Command::new("apt-get");
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn rustup(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(args);
    c
}

/// A toolchain named plain `nightly` (`nightly-<host>`), not a dated one.
fn has_nightly() -> Result<bool> {
    let out = cmd::query(&mut rustup(&["toolchain", "list"]))?
        .context("rustup not found on PATH; install rustup (https://rustup.rs) first")?;
    Ok(out
        .stdout
        .lines()
        .any(|line| line.split_whitespace().next().is_some_and(is_plain_nightly)))
}

/// `nightly-x86_64-unknown-linux-gnu`, not `nightly-2025-01-01-x86_64-unknown-linux-gnu`.
fn is_plain_nightly(toolchain: &str) -> bool {
    toolchain
        .strip_prefix("nightly-")
        .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
}

/// Components listed by `rustup component list --installed` (`rust-src`, `clippy-<host>`).
fn missing_components<'a>(toolchain: Option<&str>, wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut c = rustup(&["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        c.args(["--toolchain", toolchain]);
    }
    let out = cmd::query(&mut c)?.context("rustup not found on PATH")?;
    if !out.success {
        bail!("`rustup component list --installed` failed");
    }
    Ok(wanted
        .iter()
        .copied()
        .filter(|want| !is_component_listed(&out.stdout, want))
        .collect())
}

/// The list names host-specific components with the host appended (`clippy-<host>`) and
/// others bare (`rust-src`).
fn is_component_listed(installed: &str, component: &str) -> bool {
    installed.lines().any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|host| host.starts_with('-'))
    })
}

fn nightly(ws: &Workspace) -> Result<()> {
    say!(
        "setup: checking nightly toolchain with {}",
        NIGHTLY_COMPONENTS.join(", ")
    );
    if !has_nightly()? {
        say!("setup: nightly toolchain missing; installing");
        // RUSTUP_AUTO_INSTALL=0 is set on these machines: nothing is installed implicitly.
        let mut install = rustup(&["toolchain", "install", "nightly", "--profile", "minimal"]);
        for component in NIGHTLY_COMPONENTS {
            install.args(["--component", component]);
        }
        return cmd::run(&mut install, &ws.root);
    }
    let missing = missing_components(Some("nightly"), &NIGHTLY_COMPONENTS)?;
    if missing.is_empty() {
        say!("setup: nightly toolchain and its components: present");
        return Ok(());
    }
    say!(
        "setup: nightly components missing: {}; adding",
        missing.join(" ")
    );
    let mut add = rustup(&["component", "add"]);
    add.args(&missing).args(["--toolchain", "nightly"]);
    cmd::run(&mut add, &ws.root)
}

/// `cargo clippy` for the host crates runs on the workspace's default toolchain.
fn default_toolchain_components(ws: &Workspace) -> Result<()> {
    say!("setup: checking clippy for the default toolchain");
    let missing = missing_components(None, &["clippy"])?;
    if missing.is_empty() {
        say!("setup: clippy: present");
        return Ok(());
    }
    say!("setup: clippy missing; adding");
    cmd::run(&mut rustup(&["component", "add", "clippy"]), &ws.root)
}

fn bpf_linker(ws: &Workspace) -> Result<()> {
    say!("setup: checking bpf-linker {BPF_LINKER_VERSION}");
    match cmd::query(Command::new("bpf-linker").arg("--version"))? {
        Some(out) if is_wanted_bpf_linker(&out.stdout) => {
            say!("setup: bpf-linker: present ({})", out.stdout.trim());
            return Ok(());
        }
        Some(out) => say!(
            "setup: bpf-linker is {}, want {BPF_LINKER_VERSION}; installing",
            out.stdout.trim()
        ),
        None => say!("setup: bpf-linker not found on PATH; installing (takes a few minutes)"),
    }
    if !Path::new(LLVM_PREFIX).join("lib").is_dir() {
        bail!("{LLVM_PREFIX}/lib is missing; llvm-22-dev must be installed to build bpf-linker");
    }
    // Without LLVM_PREFIX its build script looks in /usr/lib64 ("unable to find library
    // -lLLVM"); its default feature wants LLVM 23.
    let install = |locked: bool| {
        let mut c = ws.cargo(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            c.arg("--locked");
        }
        c.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX);
        c
    };
    if let Err(err) = cmd::run(&mut install(true), &ws.root) {
        say!("setup: {err:#}; retrying without --locked");
        cmd::run(&mut install(false), &ws.root)?;
    }
    match cmd::query(Command::new("bpf-linker").arg("--version"))? {
        Some(out) if is_wanted_bpf_linker(&out.stdout) => Ok(()),
        _ => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not find it; \
             add ~/.cargo/bin to PATH"
        ),
    }
}

/// `bpf-linker 0.13.0`: any 0.13 release links for LLVM 22.
fn is_wanted_bpf_linker(version_output: &str) -> bool {
    let minor = BPF_LINKER_VERSION
        .rsplit_once('.')
        .map_or(BPF_LINKER_VERSION, |(major_minor, _)| major_minor);
    version_output
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v == minor || v.strip_prefix(minor).is_some_and(|p| p.starts_with('.')))
}

/// Tracing needs tracefs (tracepoint ids and format files); it is not mounted at boot here.
/// A missing tracefs does not stop building, so this only warns when it cannot mount it.
fn tracefs(ws: &Workspace) {
    say!("setup: checking tracefs at {TRACEFS}");
    if Path::new(TRACEFS).join("events").is_dir() {
        say!("setup: tracefs: mounted");
        return;
    }
    if !cmd::is_root() {
        say!(
            "setup: tracefs is not mounted at {TRACEFS}; tracing and the root tests need it: \
             run `cargo xtask setup` as root to mount it"
        );
        return;
    }
    say!("setup: tracefs is not mounted; mounting it");
    let mut mount = Command::new("mount");
    mount.args(["-t", "tracefs", "nodev", TRACEFS]);
    if let Err(err) = cmd::run(&mut mount, &ws.root) {
        say!("setup: warning: {err:#}; tracing will not work until tracefs is mounted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_toolchain_names() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly(
            "nightly-2025-06-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly("nightly"));
    }

    #[test]
    fn components_as_rustup_lists_them() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n\
                         rustfmt-x86_64-unknown-linux-gnu\n";
        assert!(is_component_listed(installed, "rust-src"));
        assert!(is_component_listed(installed, "rustfmt"));
        assert!(!is_component_listed(installed, "clippy"));
        assert!(!is_component_listed(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(!is_component_listed("rustfmt-preview\n", "rust"));
    }

    #[test]
    fn bpf_linker_versions() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.0\n"));
        assert!(is_wanted_bpf_linker("bpf-linker 0.13.2"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.12.9"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.130.0"));
        assert!(!is_wanted_bpf_linker(""));
    }
}
