//! Where the workspace is, and running commands so that the user sees each one before it runs.

use std::{
    env,
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Prints one progress line on stderr, prefixed so it stands apart from cargo's own output.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("xtask: {}", format_args!($($arg)*))
    };
}
pub(crate) use say;

/// The workspace: its root (the parent of xtask's manifest directory, whatever the cwd) and
/// the cargo target directory the commands build into.
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    /// `CARGO_TARGET_DIR` made absolute, when it is set; children get it in that form so a
    /// relative value keeps meaning what it meant in the user's cwd.
    target_dir_override: Option<PathBuf>,
}

impl Workspace {
    pub(crate) fn locate() -> Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .ok_or_else(|| {
                anyhow!(
                    "xtask manifest dir {} has no parent",
                    manifest_dir.display()
                )
            })?
            .to_path_buf();
        let target_dir_override = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                Some(if dir.is_absolute() {
                    dir
                } else {
                    env::current_dir().context("current dir")?.join(dir)
                })
            }
            _ => None,
        };
        Ok(Self {
            root,
            target_dir_override,
        })
    }

    /// Where cargo puts build output: `CARGO_TARGET_DIR` if set, else `<root>/target`
    /// (a `build.target-dir` in a cargo config file is not looked at).
    pub(crate) fn target_dir(&self) -> PathBuf {
        self.target_dir_override
            .clone()
            .unwrap_or_else(|| self.root.join("target"))
    }

    /// The `collapse` binary of the given profile, as `cargo build -p collapse-user` leaves it.
    pub(crate) fn collapse_bin(&self, release: bool) -> PathBuf {
        let profile = if release { "release" } else { "debug" };
        self.target_dir().join(profile).join("collapse")
    }

    /// Builds the release `collapse` binary (the benches measure it) and returns its path.
    pub(crate) fn build_release_collapse(&self) -> anyhow::Result<PathBuf> {
        run(
            &mut self.cargo([
                "build",
                "--release",
                "-p",
                "collapse-user",
                "--bin",
                "collapse",
            ]),
            &self.root,
        )?;
        Ok(self.collapse_bin(true))
    }

    /// `cargo ARGS` run from the workspace root. `cargo` is the rustup proxy on PATH, so that
    /// `+nightly` works.
    pub(crate) fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("cargo");
        cmd.args(args).current_dir(&self.root);
        if let Some(dir) = &self.target_dir_override {
            cmd.env("CARGO_TARGET_DIR", dir);
        }
        cmd
    }
}

/// The command as a shell line: env overrides, program, args, and the directory when it is
/// not the workspace root.
pub(crate) fn describe(cmd: &Command, root: &Path) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            // CARGO_TARGET_DIR is set on every cargo child only to pin a relative value.
            (k != "CARGO_TARGET_DIR")
                .then(|| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
                .flatten()
        })
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    let mut line = parts.join(" ");
    if let Some(dir) = cmd.get_current_dir()
        && dir != root
    {
        let shown = dir.strip_prefix(root).unwrap_or(dir);
        line.push_str(&format!("   (in {}/)", shown.display()));
    }
    line
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./,:@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints the command, runs it with inherited stdio, and returns its exit status.
pub(crate) fn status(cmd: &mut Command, root: &Path) -> Result<ExitStatus> {
    let line = describe(cmd, root);
    say!("$ {line}");
    cmd.status()
        .with_context(|| format!("could not start `{line}`"))
}

/// Like [`status`], but a non-zero exit is an error.
pub(crate) fn run(cmd: &mut Command, root: &Path) -> Result<()> {
    let line = describe(cmd, root);
    let status = status(cmd, root)?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a query command quietly and returns its stdout, or `None` when the program is not
/// installed. A query that runs but fails returns `Some` with whatever it printed; callers
/// look for what they need in it.
pub(crate) fn query(cmd: &mut Command) -> Result<Option<QueryOutput>> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ok(Some(QueryOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err)
            .with_context(|| format!("could not run {}", cmd.get_program().to_string_lossy())),
    }
}

pub(crate) struct QueryOutput {
    pub(crate) success: bool,
    pub(crate) stdout: String,
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first executable called `name` on PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Tests counted from `cargo test`'s `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TestCounts {
    pub(crate) passed: u64,
    pub(crate) failed: u64,
    pub(crate) ignored: u64,
}

impl TestCounts {
    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    pub(crate) fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Like [`status`] for `cargo test`: its stdout is passed through line by line and the
/// `test result:` lines are counted.
pub(crate) fn test_status(
    cmd: &mut Command,
    root: &Path,
    counts: &mut TestCounts,
) -> Result<ExitStatus> {
    use std::io::{BufRead as _, Write as _};
    let line = describe(cmd, root);
    say!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut out = io::stdout().lock();
    for l in io::BufReader::new(stdout).lines() {
        let l = l.context("reading cargo test output")?;
        counts.add_line(&l);
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn counts_test_result_lines() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 19 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        c.add_line("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.94s");
        c.add_line("running 3 tests");
        c.add_line("test foo ... ok");
        assert_eq!(
            c,
            TestCounts {
                passed: 22,
                failed: 1,
                ignored: 2
            }
        );
    }
}
