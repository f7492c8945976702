//! sysfs values a bench changes, written back when the guard is dropped: at the end, on an
//! error, on a panic, and after Ctrl-C (see `interrupt`). xtask keeps its own guard rather
//! than `collapse::kernel::thp::SysfsGuard`: depending on collapse-user would build the eBPF
//! crate as part of xtask, before `cargo xtask setup` could install the toolchain for it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::cmd::say;

pub(crate) const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// `rel` (e.g. `khugepaged/scan_sleep_millisecs`) under the THP sysfs directory.
pub(crate) fn thp(rel: &str) -> PathBuf {
    Path::new(THP).join(rel)
}

/// The value of a sysfs file as it would be written back: the selected word of a choice
/// file (`always [madvise] never` gives `madvise`), the trimmed text otherwise.
pub(crate) fn read(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(selected(&text))
}

fn selected(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(text.trim())
        .to_owned()
}

pub(crate) fn read_u64(path: &Path) -> Result<u64> {
    let value = read(path)?;
    value
        .parse()
        .with_context(|| format!("{}: {value:?} is not a number", path.display()))
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

/// One changed value; the previous one is written back on drop.
#[must_use = "dropping the guard restores the previous value at once"]
pub(crate) struct SysfsGuard {
    path: PathBuf,
    previous: String,
    written: String,
}

impl SysfsGuard {
    /// Remembers the value of `path` and writes `value`; nothing is changed if either fails.
    pub(crate) fn set(path: PathBuf, value: &str) -> Result<Self> {
        let previous = read(&path)?;
        write(&path, value)?;
        say!("set {} to {value} (was {previous})", path.display());
        Ok(Self {
            path,
            previous,
            written: value.to_owned(),
        })
    }
}

impl Drop for SysfsGuard {
    fn drop(&mut self) {
        // Other engineers share this machine: say so when someone else changed the value
        // meanwhile, and restore ours anyway, since ours is what was there before.
        if let Ok(now) = read(&self.path)
            && now != self.written
        {
            say!(
                "warning: {} was changed to {now} by someone else while the bench held it at {}",
                self.path.display(),
                self.written
            );
        }
        match write(&self.path, &self.previous) {
            Ok(()) => say!("restored {} to {}", self.path.display(), self.previous),
            Err(err) => say!("warning: could not restore: {err:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::selected;

    #[test]
    fn choice_files_give_their_selected_word() {
        assert_eq!(selected("always [madvise] never\n"), "madvise");
        assert_eq!(selected("[always] inherit madvise never"), "always");
        assert_eq!(selected("10000\n"), "10000");
    }
}
