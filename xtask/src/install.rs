//! `cargo xtask install`: the release binary, the systemd unit and the example config.
//!
//! `--root DIR` installs into DIR instead of `/` (tests use it so that they write neither /usr
//! nor /etc); the unit then names the files where they went, so that `systemd-analyze verify`
//! checks the tree as installed. An existing config is never overwritten.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Workspace, say};

/// Where things go, relative to the root.
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    /// `/usr/local` by default: the binary goes to PREFIX/bin.
    pub(crate) prefix: PathBuf,
}

impl Layout {
    fn under_root(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    pub(crate) fn binary(&self) -> PathBuf {
        self.under_root(&self.prefix.join("bin/collapse"))
    }

    pub(crate) fn unit(&self) -> PathBuf {
        self.under_root(Path::new("/etc/systemd/system/collapse.service"))
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.under_root(Path::new("/etc/collapse/collapse.toml"))
    }
}

/// Builds the release binary, then installs it with the unit and the config.
pub(crate) fn install(ws: &Workspace, layout: &Layout, binary: Option<PathBuf>) -> Result<()> {
    if !layout.prefix.is_absolute() {
        bail!(
            "install: --prefix {} must be absolute",
            layout.prefix.display()
        );
    }
    let binary = match binary {
        Some(b) => b,
        None => ws.build_release_collapse()?,
    };
    install_files(&ws.root, layout, &binary)?;
    if layout.root == Path::new("/") {
        say!("install: now `systemctl daemon-reload && systemctl enable --now collapse`");
    }
    Ok(())
}

/// Copies `binary`, `contrib/collapse.service` (its paths made the installed ones) and
/// `contrib/collapse.toml` (unless one is there) into `layout`.
pub(crate) fn install_files(repo: &Path, layout: &Layout, binary: &Path) -> Result<()> {
    let copy = |from: &Path, to: &Path, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Through a temporary name: a running binary cannot be written over (ETXTBSY).
        let tmp = to.with_extension("new");
        fs::copy(from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        fs::rename(&tmp, to).with_context(|| format!("renaming to {}", to.display()))?;
        say!("install: {}", to.display());
        Ok(())
    };
    copy(binary, &layout.binary(), 0o755)?;
    let unit_src = repo.join("contrib/collapse.service");
    let unit =
        fs::read_to_string(&unit_src).with_context(|| format!("reading {}", unit_src.display()))?;
    let unit = unit
        .replace(
            "/usr/local/bin/collapse",
            &layout.binary().to_string_lossy(),
        )
        .replace(
            "/etc/collapse/collapse.toml",
            &layout.config().to_string_lossy(),
        );
    let staged = std::env::temp_dir().join(format!("collapse.service.{}", std::process::id()));
    fs::write(&staged, unit).with_context(|| format!("writing {}", staged.display()))?;
    let result = copy(&staged, &layout.unit(), 0o644);
    let _ = fs::remove_file(&staged);
    result?;
    if layout.config().exists() {
        say!(
            "install: {} is there already; left as it is",
            layout.config().display()
        );
    } else {
        copy(&repo.join("contrib/collapse.toml"), &layout.config(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_under_root_and_names_the_installed_paths_and_keeps_a_config() {
        let root = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let layout = Layout {
            root: root.clone(),
            prefix: "/usr/local".into(),
        };
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let fake_bin = root.join("collapse-built");
        fs::create_dir_all(&root).unwrap();
        fs::write(&fake_bin, "#!/bin/sh\n").unwrap();
        install_files(repo, &layout, &fake_bin).unwrap();
        assert!(root.join("usr/local/bin/collapse").is_file());
        let unit = fs::read_to_string(root.join("etc/systemd/system/collapse.service")).unwrap();
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            format!(
                "ExecStart={}/usr/local/bin/collapse run --config {}/etc/collapse/collapse.toml",
                root.display(),
                root.display()
            )
        );
        fs::write(
            root.join("etc/collapse/collapse.toml"),
            "policy = \"pmd\"\n",
        )
        .unwrap();
        install_files(repo, &layout, &fake_bin).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("etc/collapse/collapse.toml")).unwrap(),
            "policy = \"pmd\"\n"
        );
        let _ = fs::remove_dir_all(&root);
    }
}
