//! THP sysfs as a test needs it, whatever it was: each value that differs is set through a
//! `SysfsGuard` and written back when the setup drops (also when an assertion fails).

use std::path::{Path, PathBuf};

use collapse::kernel::thp::{SysfsGuard, read_value, size_dir_kib};

pub const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// The sysfs values a test changed, restored in reverse order on drop.
#[derive(Default)]
#[must_use = "dropping it restores the values at once"]
pub struct ThpSetup {
    guards: Vec<SysfsGuard>,
}

impl ThpSetup {
    /// Sets `path` to `value` unless it has that value already.
    pub fn set(&mut self, path: impl Into<PathBuf>, value: &str) {
        let path = path.into();
        let now = read_value(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if now != value {
            self.guards.push(
                SysfsGuard::set(&path, value)
                    .unwrap_or_else(|e| panic!("set {} to {value}: {e}", path.display())),
            );
        }
    }

    /// PMD-size THPs at fault time in MADV_HUGEPAGE memory, which khugepaged may build too:
    /// `hugepages-2048kB/enabled` set to `madvise` unless it allows that already (`always`,
    /// `madvise`, or `inherit` with a global setting other than `never`).
    pub fn pmd_in_advised_memory(mut self) -> Self {
        let global = read_value(&Path::new(THP).join("enabled")).expect("read THP enabled");
        let pmd = Path::new(THP).join("hugepages-2048kB/enabled");
        if !pmd.exists() {
            // Before 6.8 the global setting is the only one.
            if global == "never" {
                self.set(Path::new(THP).join("enabled"), "madvise");
            }
            return self;
        }
        let now = read_value(&pmd).expect("read hugepages-2048kB/enabled");
        let allowed = match now.as_str() {
            "always" | "madvise" => true,
            "inherit" => global != "never",
            _ => false,
        };
        if !allowed {
            self.set(pmd, "madvise");
        }
        self
    }

    /// Folios of `kib` KiB at every fault of plain memory and no other size, whatever the
    /// global setting (which only sizes set to `inherit` follow): that size `always`, every
    /// other size `never`. `None` when the kernel has no such size (no mTHP before 6.8).
    pub fn only_size_always(mut self, kib: u64) -> Option<Self> {
        let sizes = size_knobs();
        if !sizes.iter().any(|(k, _)| *k == kib) {
            return None;
        }
        for (k, knob) in sizes {
            self.set(knob, if k == kib { "always" } else { "never" });
        }
        Some(self)
    }

    /// khugepaged scanning every 100 ms and retrying a failed huge page allocation after
    /// 100 ms (defaults: 10 s and 60 s), so a test does not wait on its timers.
    pub fn fast_khugepaged(mut self) -> Self {
        let k = Path::new(THP).join("khugepaged");
        self.set(k.join("scan_sleep_millisecs"), "100");
        self.set(k.join("alloc_sleep_millisecs"), "100");
        self
    }
}

impl Drop for ThpSetup {
    fn drop(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
    }
}

/// Every `hugepages-<size>kB/enabled` knob, by size in KiB.
pub fn size_knobs() -> Vec<(u64, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(THP) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|d| Some((size_dir_kib(&d.file_name())?, d.path().join("enabled"))))
        .filter(|(_, p)| p.exists())
        .collect();
    out.sort();
    out
}
