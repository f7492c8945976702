//! The one way a test says it cannot run here: `skip!("why {x}")` ends the test with
//! `SKIPPED <module::test>: <why>` on stderr, and `skip_if!(reason)` does so when `reason` is
//! `Some`; never a silent pass.
//! Shared by the root integration tests (`tests/`) and the kernel-interface tests
//! (`collapse-user/tests/`), which include this file.

/// Ends the calling test with a loud skip line saying why (format arguments).
macro_rules! skip {
    ($($why:tt)+) => {{
        fn here() {}
        let name = std::any::type_name_of_val(&here);
        $crate::common::skip::report(
            name.strip_suffix("::here").unwrap_or(name),
            &format_args!($($why)+),
        );
        return;
    }};
}
pub(crate) use skip;

/// Ends the calling test with a loud skip line when `$why` (an `Option` of something
/// printable) is `Some`.
macro_rules! skip_if {
    ($why:expr) => {
        if let Some(why) = $why {
            $crate::common::skip::skip!("{why}");
        }
    };
}
pub(crate) use skip_if;

/// Prints the skip line of `test`.
pub fn report(test: &str, why: &dyn std::fmt::Display) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Why a test that needs root cannot run: not root.
pub fn needs_root() -> Option<&'static str> {
    (!nix::unistd::geteuid().is_root()).then_some("needs root")
}

/// Why a test that loads the eBPF programs cannot run: they run only as root and through
/// `cargo xtask test`, which sets `COLLAPSE_ROOT_TESTS=1` and runs them one at a time (they
/// change khugepaged settings and tracefs mounts).
pub fn needs_root_tests() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root and eBPF (run `cargo xtask test` as root)");
    }
    std::env::var_os("COLLAPSE_ROOT_TESTS")
        .is_none_or(|v| v != "1")
        .then_some("root integration tests run through `cargo xtask test` (COLLAPSE_ROOT_TESTS=1)")
}

/// Why a test that needs transparent huge pages cannot run: THP is `never` here.
pub fn thp_never() -> Option<&'static str> {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    (enabled.is_empty() || enabled.contains("[never]"))
        .then_some("transparent_hugepage/enabled is never")
}

/// Why a test that relies on THP `enabled` being `madvise` cannot run: it is not (there,
/// memory without advice gets THPs at fault and khugepaged scans it, behind the test's back).
pub fn thp_not_madvise() -> Option<String> {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    (!enabled.contains("[madvise]")).then(|| {
        format!(
            "transparent_hugepage/enabled is {:?}, not madvise",
            enabled.trim()
        )
    })
}
