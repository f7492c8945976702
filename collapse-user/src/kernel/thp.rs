//! Transparent huge page settings in sysfs (`/sys/kernel/mm/transparent_hugepage`, see
//! `Documentation/admin-guide/mm/transhuge.rst` and `mm/huge_memory.c`, `mm/khugepaged.c`),
//! and a guard that changes one value and puts the previous one back.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    str::FromStr,
};

use super::journal::{Journal, JournalEntry, JournalError};

/// Where the kernel exposes THP settings.
pub const THP_ROOT: &str = "/sys/kernel/mm/transparent_hugepage";

/// Errors reading or writing THP sysfs; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ThpError {
    #[error(
        "{}: not found: this kernel has no transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("{}: unexpected value {value:?} (expected {expected})", path.display())]
    Parse {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },
    /// The change could not be journalled, so it was not made.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Global `enabled`: which VMAs get PMD-sized THP at fault time and from khugepaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThpEnabled {
    Always,
    Madvise,
    Never,
}

/// Per-size `hugepages-<size>kB/enabled`; `inherit` follows the global `enabled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SizeEnabled {
    Always,
    Inherit,
    Madvise,
    Never,
}

/// One `hugepages-<size>kB` directory that has an `enabled` file (the 8 kB one on some
/// kernels only has `shmem_enabled`, and is left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeSetting {
    pub size_kib: u64,
    /// log2 of the size in base pages: 16 kB is order 2, 2048 kB order 9.
    pub order: u8,
    pub enabled: SizeEnabled,
}

/// `khugepaged/*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KhugepagedSettings {
    pub pages_to_scan: u64,
    pub scan_sleep_millisecs: u64,
    pub alloc_sleep_millisecs: u64,
    pub max_ptes_none: u16,
    pub max_ptes_swap: u16,
    pub max_ptes_shared: u16,
    pub defrag: bool,
    pub pages_collapsed: u64,
    pub full_scans: u64,
}

/// A snapshot of the THP settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThpSettings {
    pub enabled: ThpEnabled,
    /// The selected word of the global `defrag` (always, defer, defer+madvise, madvise, never).
    pub defrag: String,
    /// Ascending by size.
    pub sizes: Vec<SizeSetting>,
    pub khugepaged: KhugepagedSettings,
}

impl ThpEnabled {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Madvise => "madvise",
            Self::Never => "never",
        }
    }
}

impl SizeEnabled {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Inherit => "inherit",
            Self::Madvise => "madvise",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for ThpEnabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for SizeEnabled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ThpEnabled {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "always" => Ok(Self::Always),
            "madvise" => Ok(Self::Madvise),
            "never" => Ok(Self::Never),
            _ => Err(()),
        }
    }
}

impl FromStr for SizeEnabled {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "always" => Ok(Self::Always),
            "inherit" => Ok(Self::Inherit),
            "madvise" => Ok(Self::Madvise),
            "never" => Ok(Self::Never),
            _ => Err(()),
        }
    }
}

impl SizeSetting {
    /// Whether the kernel may use this size for anonymous memory at all: `inherit` resolves to
    /// the global setting.
    pub fn is_on(&self, global: ThpEnabled) -> bool {
        match self.enabled {
            SizeEnabled::Never => false,
            SizeEnabled::Inherit => global != ThpEnabled::Never,
            SizeEnabled::Always | SizeEnabled::Madvise => true,
        }
    }
}

impl ThpSettings {
    /// Reads the running kernel's settings from [`THP_ROOT`].
    pub fn read() -> Result<Self, ThpError> {
        Self::read_from(Path::new(THP_ROOT))
    }

    /// Reads the settings from a directory laid out like [`THP_ROOT`].
    pub fn read_from(root: &Path) -> Result<Self, ThpError> {
        if !root.is_dir() {
            return Err(ThpError::Missing {
                path: root.to_path_buf(),
            });
        }
        let enabled = read_parsed(&root.join("enabled"), "always, madvise or never")?;
        let defrag = read_value(&root.join("defrag"))?;
        let sizes = read_sizes(root)?;
        let k = root.join("khugepaged");
        let khugepaged = KhugepagedSettings {
            pages_to_scan: read_parsed(&k.join("pages_to_scan"), "a number")?,
            scan_sleep_millisecs: read_parsed(&k.join("scan_sleep_millisecs"), "a number")?,
            alloc_sleep_millisecs: read_parsed(&k.join("alloc_sleep_millisecs"), "a number")?,
            max_ptes_none: read_parsed(&k.join("max_ptes_none"), "a number")?,
            max_ptes_swap: read_parsed(&k.join("max_ptes_swap"), "a number")?,
            max_ptes_shared: read_parsed(&k.join("max_ptes_shared"), "a number")?,
            defrag: read_bool(&k.join("defrag"))?,
            pages_collapsed: read_parsed(&k.join("pages_collapsed"), "a number")?,
            full_scans: read_parsed(&k.join("full_scans"), "a number")?,
        };
        Ok(Self {
            enabled,
            defrag,
            sizes,
            khugepaged,
        })
    }

    /// The per-size setting of `order`, if this kernel has one.
    pub fn size(&self, order: u8) -> Option<&SizeSetting> {
        self.sizes.iter().find(|s| s.order == order)
    }

    /// Whether anonymous THP of `order` may be used. PMD size (order 9) follows the global
    /// `enabled` on kernels without per-size directories (before 6.8).
    pub fn order_on(&self, order: u8) -> bool {
        match self.size(order) {
            Some(s) => s.is_on(self.enabled),
            None => {
                order == collapse_common::consts::PMD_ORDER && self.enabled != ThpEnabled::Never
            }
        }
    }
}

/// The `hugepages-<size>kB` directories with an `enabled` file, ascending by size.
fn read_sizes(root: &Path) -> Result<Vec<SizeSetting>, ThpError> {
    let entries = fs::read_dir(root).map_err(|source| ThpError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let mut sizes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ThpError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        let Some(size_kib) = size_dir_kib(&entry.file_name()) else {
            continue;
        };
        let path = entry.path().join("enabled");
        if !path.exists() {
            continue;
        }
        let pages = size_kib / 4;
        if size_kib % 4 != 0 || !pages.is_power_of_two() {
            return Err(ThpError::Parse {
                path: entry.path(),
                value: format!("{size_kib} kB"),
                expected: "a power-of-two multiple of 4 kB",
            });
        }
        let order = pages.trailing_zeros() as u8;
        let enabled = read_parsed(&path, "always, inherit, madvise or never")?;
        sizes.push(SizeSetting {
            size_kib,
            order,
            enabled,
        });
    }
    sizes.sort_by_key(|s| s.size_kib);
    Ok(sizes)
}

/// The size in KiB a `hugepages-<size>kB` directory is for.
pub fn size_dir_kib(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()?
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()
}

/// The current value of a sysfs file: the bracketed word of a selection file
/// (`always [madvise] never`), otherwise the trimmed contents.
pub fn read_value(path: &Path) -> Result<String, ThpError> {
    let text = fs::read_to_string(path).map_err(|source| ThpError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(selected(&text).to_owned())
}

fn selected(text: &str) -> &str {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or_else(|| text.trim())
}

fn read_parsed<T: FromStr>(path: &Path, expected: &'static str) -> Result<T, ThpError> {
    let value = read_value(path)?;
    value.parse().map_err(|_| ThpError::Parse {
        path: path.to_path_buf(),
        value,
        expected,
    })
}

fn read_bool(path: &Path) -> Result<bool, ThpError> {
    let value = read_value(path)?;
    match value.as_str() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(ThpError::Parse {
            path: path.to_path_buf(),
            value,
            expected: "0 or 1",
        }),
    }
}

/// One sysfs value changed by us; the previous value is written back by [`Self::restore`] or,
/// failing that, on drop (errors there are reported on stderr, since drop cannot return them).
#[derive(Debug)]
#[must_use = "dropping the guard restores the previous value at once"]
pub struct SysfsGuard {
    path: PathBuf,
    previous: String,
    restored: bool,
}

impl SysfsGuard {
    /// Remembers the current value of `path` and writes `value`. Nothing is changed (and no
    /// guard returned) if either step fails.
    pub fn set(path: impl Into<PathBuf>, value: &str) -> Result<Self, ThpError> {
        let path = path.into();
        let previous = read_value(&path)?;
        write_value(&path, value)?;
        Ok(Self {
            path,
            previous,
            restored: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value that [`Self::restore`] writes back.
    pub fn previous(&self) -> &str {
        &self.previous
    }

    /// Writes the previous value back.
    pub fn restore(mut self) -> Result<(), ThpError> {
        self.restore_now()
    }

    fn restore_now(&mut self) -> Result<(), ThpError> {
        if self.restored {
            return Ok(());
        }
        // Marked first: a failed restore is reported once, not retried on drop.
        self.restored = true;
        write_value(&self.path, &self.previous)
    }
}

impl Drop for SysfsGuard {
    fn drop(&mut self) {
        if let Err(err) = self.restore_now() {
            eprintln!("collapse: warning: could not restore {err}");
        }
    }
}

/// Several sysfs changes, restored in reverse order of change. [`SysfsRestore::journalled`]
/// also writes each change to the restore journal before making it, so that a run killed
/// with SIGKILL is undone by the next start of collapse.
#[derive(Debug, Default)]
#[must_use = "dropping it restores every value at once"]
pub struct SysfsRestore {
    guards: Vec<SysfsGuard>,
    /// Changes go to the process's restore journal first.
    journalled: bool,
}

impl SysfsRestore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Changes are journalled before they are made.
    pub fn journalled() -> Self {
        Self {
            guards: Vec::new(),
            journalled: true,
        }
    }

    /// Changes `path` to `value`, to be restored with the rest.
    pub fn set(&mut self, path: impl Into<PathBuf>, value: &str) -> Result<(), ThpError> {
        let path = path.into();
        if self.journalled {
            let previous = read_value(&path)?;
            Journal::shared(|j| {
                j.record(JournalEntry {
                    path: path.clone(),
                    previous,
                    value: value.to_owned(),
                })
            })
            .map_err(ThpError::Journal)?;
        }
        match SysfsGuard::set(&path, value) {
            Ok(guard) => {
                self.guards.push(guard);
                Ok(())
            }
            Err(err) => {
                if self.journalled {
                    let _ = Journal::shared(|j| j.forget(&path));
                }
                Err(err)
            }
        }
    }

    /// Changes `rel` (e.g. `khugepaged/scan_sleep_millisecs`) under [`THP_ROOT`].
    pub fn set_thp(&mut self, rel: &str, value: &str) -> Result<(), ThpError> {
        self.set(Path::new(THP_ROOT).join(rel), value)
    }

    pub fn is_empty(&self) -> bool {
        self.guards.is_empty()
    }

    /// What was changed: (path, previous value), oldest first.
    pub fn changes(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.guards.iter().map(|g| (g.path(), g.previous()))
    }

    /// Restores every value, newest first; tries all of them and returns the first error.
    pub fn restore(mut self) -> Result<(), ThpError> {
        self.restore_all()
    }

    fn restore_all(&mut self) -> Result<(), ThpError> {
        let mut first = Ok(());
        while let Some(guard) = self.guards.pop() {
            let path = guard.path().to_owned();
            let result = guard.restore();
            // A value that could not be written back stays in the journal for the next start.
            if result.is_ok()
                && self.journalled
                && let Err(err) = Journal::shared(|j| j.forget(&path))
            {
                eprintln!("collapse: warning: {err}");
            }
            if let Err(err) = result
                && first.is_ok()
            {
                first = Err(err);
            }
        }
        first
    }
}

impl Drop for SysfsRestore {
    fn drop(&mut self) {
        if let Err(err) = self.restore_all() {
            eprintln!("collapse: warning: could not restore {err}");
        }
    }
}

fn write_value(path: &Path, value: &str) -> Result<(), ThpError> {
    fs::write(path, value).map_err(|source| ThpError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake THP tree under the temp dir, removed on drop.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("collapse-thp-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let fake = Self(root);
            fake.write("enabled", "always [madvise] never\n");
            fake.write("defrag", "always defer defer+madvise [madvise] never\n");
            for (size, value) in [
                (16, "always inherit madvise [never]"),
                (64, "[always] inherit madvise never"),
                (2048, "always [inherit] madvise never"),
                (1024, "always inherit [madvise] never"),
            ] {
                fake.write(&format!("hugepages-{size}kB/enabled"), value);
            }
            // Like the 8 kB directory of 6.18: shmem only.
            fake.write(
                "hugepages-8kB/shmem_enabled",
                "always inherit advise [never]",
            );
            for (name, value) in [
                ("pages_to_scan", "4096"),
                ("scan_sleep_millisecs", "10000"),
                ("alloc_sleep_millisecs", "60000"),
                ("max_ptes_none", "511"),
                ("max_ptes_swap", "64"),
                ("max_ptes_shared", "256"),
                ("defrag", "1"),
                ("pages_collapsed", "12"),
                ("full_scans", "3"),
            ] {
                fake.write(&format!("khugepaged/{name}"), &format!("{value}\n"));
            }
            fake
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.0.join(rel)).unwrap()
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_every_setting() {
        let fake = FakeSysfs::new("read");
        let thp = ThpSettings::read_from(&fake.0).unwrap();
        assert_eq!(thp.enabled, ThpEnabled::Madvise);
        assert_eq!(thp.defrag, "madvise");
        assert_eq!(
            thp.sizes,
            [
                SizeSetting {
                    size_kib: 16,
                    order: 2,
                    enabled: SizeEnabled::Never
                },
                SizeSetting {
                    size_kib: 64,
                    order: 4,
                    enabled: SizeEnabled::Always
                },
                SizeSetting {
                    size_kib: 1024,
                    order: 8,
                    enabled: SizeEnabled::Madvise
                },
                SizeSetting {
                    size_kib: 2048,
                    order: 9,
                    enabled: SizeEnabled::Inherit
                },
            ]
        );
        assert_eq!(
            thp.khugepaged,
            KhugepagedSettings {
                pages_to_scan: 4096,
                scan_sleep_millisecs: 10000,
                alloc_sleep_millisecs: 60000,
                max_ptes_none: 511,
                max_ptes_swap: 64,
                max_ptes_shared: 256,
                defrag: true,
                pages_collapsed: 12,
                full_scans: 3,
            }
        );
        let on: Vec<u8> = (0..=9).filter(|&k| thp.order_on(k)).collect();
        assert_eq!(on, [4, 8, 9]);
    }

    #[test]
    fn inherit_follows_global_never() {
        let fake = FakeSysfs::new("never");
        fake.write("enabled", "always madvise [never]\n");
        let thp = ThpSettings::read_from(&fake.0).unwrap();
        assert!(!thp.order_on(9));
        assert!(thp.order_on(4));
    }

    #[test]
    fn pmd_follows_global_without_size_directories() {
        let fake = FakeSysfs::new("old");
        fs::remove_dir_all(fake.0.join("hugepages-2048kB")).unwrap();
        let thp = ThpSettings::read_from(&fake.0).unwrap();
        assert!(thp.order_on(9));
        assert!(thp.size(9).is_none());
    }

    #[test]
    fn errors_name_the_file() {
        let fake = FakeSysfs::new("errors");
        fake.write("khugepaged/max_ptes_none", "lots\n");
        let err = ThpSettings::read_from(&fake.0).unwrap_err().to_string();
        assert!(err.contains("khugepaged/max_ptes_none"), "{err}");
        assert!(err.contains("\"lots\""), "{err}");

        fake.write("khugepaged/max_ptes_none", "511\n");
        fs::remove_file(fake.0.join("khugepaged/full_scans")).unwrap();
        let err = ThpSettings::read_from(&fake.0).unwrap_err();
        assert!(
            matches!(&err, ThpError::Read { path, .. } if path.ends_with("khugepaged/full_scans")),
            "{err}"
        );

        fake.write("enabled", "[sometimes]\n");
        let err = ThpSettings::read_from(&fake.0).unwrap_err().to_string();
        assert!(
            err.contains("enabled: unexpected value \"sometimes\""),
            "{err}"
        );

        let missing = fake.0.join("nope");
        assert!(matches!(
            ThpSettings::read_from(&missing),
            Err(ThpError::Missing { .. })
        ));
    }

    #[test]
    fn guard_restores_on_drop_and_explicitly() {
        let fake = FakeSysfs::new("guard");
        let path = fake.0.join("enabled");
        {
            let guard = SysfsGuard::set(&path, "always").unwrap();
            assert_eq!(guard.previous(), "madvise");
            assert_eq!(fake.read("enabled"), "always");
        }
        assert_eq!(fake.read("enabled"), "madvise");

        let guard = SysfsGuard::set(fake.0.join("khugepaged/max_ptes_none"), "0").unwrap();
        assert_eq!(fake.read("khugepaged/max_ptes_none"), "0");
        guard.restore().unwrap();
        assert_eq!(fake.read("khugepaged/max_ptes_none"), "511");
    }

    #[test]
    fn guard_restore_reports_errors() {
        let fake = FakeSysfs::new("guard-error");
        let guard = SysfsGuard::set(fake.0.join("khugepaged/defrag"), "0").unwrap();
        // The file's directory disappears: the restore cannot write.
        fs::remove_dir_all(fake.0.join("khugepaged")).unwrap();
        let err = guard.restore().unwrap_err();
        assert!(
            matches!(&err, ThpError::Write { path, value, .. } if path.ends_with("khugepaged/defrag") && value == "1")
        );
        // Nothing is changed when the current value cannot be read.
        assert!(SysfsGuard::set(fake.0.join("khugepaged/defrag"), "0").is_err());
    }

    #[test]
    fn restore_set_undoes_newest_first() {
        let fake = FakeSysfs::new("restore");
        let path = fake.0.join("khugepaged/scan_sleep_millisecs");
        let mut restore = SysfsRestore::new();
        restore.set(&path, "100").unwrap();
        restore.set(&path, "0").unwrap();
        restore
            .set(fake.0.join("hugepages-64kB/enabled"), "never")
            .unwrap();
        assert_eq!(fake.read("khugepaged/scan_sleep_millisecs"), "0");
        restore.restore().unwrap();
        // Newest first: 0 → 100 → 10000.
        assert_eq!(fake.read("khugepaged/scan_sleep_millisecs"), "10000");
        assert_eq!(fake.read("hugepages-64kB/enabled"), "always");

        let mut restore = SysfsRestore::new();
        restore.set(&path, "5").unwrap();
        restore.set(&path, "6").unwrap();
        drop(restore);
        assert_eq!(fake.read("khugepaged/scan_sleep_millisecs"), "10000");
    }
}
