//! tracefs on the running kernel: every format file parses, the tracepoints collapse uses are
//! there with the fields it reads, and tracefs gets mounted when it is missing (checked in a
//! private mount namespace, so the machine's own mount is never touched).

mod common;

use std::path::Path;

use collapse::kernel::tracefs::{self, TracepointFormat};
use common::{
    run_test_in_child,
    skip::{needs_root, skip_if},
    without_tracefs,
};

#[test]
fn every_format_file_parses() {
    skip_if!(needs_root());
    let root = tracefs::ensure_mounted().expect("tracefs");
    let mut parsed = 0;
    let mut symbolic = 0;
    for category in std::fs::read_dir(root.join("events")).unwrap().flatten() {
        if !category.path().is_dir() {
            continue;
        }
        let category_name = category.file_name().into_string().unwrap();
        for event in std::fs::read_dir(category.path()).unwrap().flatten() {
            if !event.path().join("format").is_file() {
                continue;
            }
            let name = event.file_name().into_string().unwrap();
            let format = TracepointFormat::read(&root, &category_name, &name)
                .unwrap_or_else(|e| panic!("{category_name}:{name}: {e}"));
            assert_eq!(format.name, name);
            assert!(
                format
                    .fields
                    .iter()
                    .any(|f| f.name == "common_type" && f.offset == 0 && f.size == 2)
            );
            for field in &format.fields {
                if let Some(table) = format.symbolic(&field.name) {
                    symbolic += usize::from(!table.is_empty());
                }
            }
            parsed += 1;
        }
    }
    assert!(parsed > 500, "only {parsed} format files");
    assert!(symbolic > 20, "only {symbolic} symbolic tables");
}

#[test]
fn tracepoints_collapse_uses() {
    skip_if!(needs_root());
    let root = tracefs::ensure_mounted().expect("tracefs");
    let fields: &[(&str, &str, &[&str])] = &[
        ("exceptions", "page_fault_user", &["address", "error_code"]),
        (
            "kmem",
            "mm_page_alloc",
            &["pfn", "order", "migratetype", "gfp_flags"],
        ),
        (
            "huge_memory",
            "mm_khugepaged_scan_pmd",
            &[
                "mm",
                "pfn",
                "referenced",
                "none_or_zero",
                "status",
                "unmapped",
            ],
        ),
        (
            "huge_memory",
            "mm_collapse_huge_page",
            &["mm", "isolated", "status"],
        ),
        (
            "huge_memory",
            "mm_collapse_huge_page_isolate",
            &["pfn", "none_or_zero", "referenced", "status"],
        ),
        (
            "huge_memory",
            "mm_collapse_huge_page_swapin",
            &["mm", "swapped_in", "referenced", "ret"],
        ),
        ("syscalls", "sys_enter_munmap", &["addr", "len"]),
        (
            "syscalls",
            "sys_enter_madvise",
            &["start", "len_in", "behavior"],
        ),
        (
            "syscalls",
            "sys_enter_mremap",
            &["addr", "old_len", "new_len", "flags", "new_addr"],
        ),
        ("syscalls", "sys_exit_mremap", &["ret"]),
        ("task", "task_newtask", &["pid", "clone_flags"]),
        ("sched", "sched_process_exit", &["pid"]),
    ];
    for (category, name, wanted) in fields {
        assert!(tracefs::exists(category, name), "{category}:{name}");
        let format = TracepointFormat::read(&root, category, name).unwrap();
        for field in *wanted {
            format.field(field).unwrap();
        }
    }
    // The status names of enum scan_result, straight from the kernel.
    let scan = TracepointFormat::read(&root, "huge_memory", "mm_khugepaged_scan_pmd").unwrap();
    let statuses = scan.symbolic("status").unwrap();
    assert_eq!(statuses[0], (0, "failed".to_owned()));
    assert_eq!(statuses[1], (1, "succeeded".to_owned()));
    assert!(statuses.iter().any(|(_, n)| n == "exceed_none_pte"));
    let collapse = TracepointFormat::read(&root, "huge_memory", "mm_collapse_huge_page").unwrap();
    assert_eq!(collapse.symbolic("status").unwrap(), statuses);

    assert!(!tracefs::exists("huge_memory", "no_such_tracepoint"));
    let err = TracepointFormat::read(&root, "huge_memory", "no_such_tracepoint").unwrap_err();
    assert!(
        err.to_string()
            .contains("huge_memory:no_such_tracepoint does not exist"),
        "{err}"
    );
}

const MOUNT_CHILD: &str = "COLLAPSE_TEST_TRACEFS_MOUNT_CHILD";

/// Runs `mount_child` in a new mount namespace from which tracefs has been unmounted.
#[test]
fn mounts_tracefs_when_missing() {
    skip_if!(needs_root());
    run_test_in_child("mount_child", MOUNT_CHILD, without_tracefs);
    // And the machine's tracefs is still where it was.
    assert!(Path::new("/sys/kernel/tracing/events").is_dir());
}

#[test]
fn mount_child() {
    if std::env::var_os(MOUNT_CHILD).is_none() {
        return; // Only meaningful inside `mounts_tracefs_when_missing`.
    }
    assert_eq!(
        tracefs::find(),
        None,
        "tracefs still visible in the child namespace"
    );
    assert!(!tracefs::exists("huge_memory", "mm_khugepaged_scan_pmd"));
    let (path, mounted) = tracefs::ensure_mounted_reporting().unwrap();
    assert_eq!(path, Path::new(tracefs::TRACEFS_PATH));
    assert!(mounted);
    assert!(tracefs::exists("huge_memory", "mm_khugepaged_scan_pmd"));
    // A second call finds it.
    assert_eq!(tracefs::ensure_mounted_reporting().unwrap(), (path, false));
}
