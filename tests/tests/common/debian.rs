//! Real parts the tests drive (chromium, prometheus), installed from Debian when missing.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// The first executable called `name` on PATH.
pub fn in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `binaries` from PATH, installing Debian's `package` first when one is missing (`test` names
/// the caller in the SETUP line). Panics, saying what to install, when that fails.
pub fn binaries(test: &str, package: &str, binaries: &[&str]) -> Vec<PathBuf> {
    let found = || {
        binaries
            .iter()
            .map(|b| in_path(b))
            .collect::<Option<Vec<_>>>()
    };
    if let Some(all) = found() {
        return all;
    }
    eprintln!(
        "SETUP {test}: {package} is missing; installing Debian's {package} (apt-get install -y {package})"
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed =
        apt(&["install", "-y", package]) || (apt(&["update"]) && apt(&["install", "-y", package]));
    match found() {
        Some(all) if installed => all,
        _ => panic!(
            "{package} is missing and `apt-get install -y {package}` failed: install Debian's \
             {package} by hand to run this test"
        ),
    }
}
