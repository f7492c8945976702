//! Struct layouts from the running kernel's BTF, checked against facts that do not come from
//! the same code path: fixed x86-64 layouts and members the kernel source declares adjacent.

mod common;

use collapse::kernel::btf::{self, BtfError, KernelBtf};
use common::skip::skip_if;

/// Why the BTF tests cannot run here.
fn btf_missing() -> Option<String> {
    (!btf::btf_available()).then(|| {
        format!(
            "{} missing (kernel without CONFIG_DEBUG_INFO_BTF)",
            btf::VMLINUX_BTF
        )
    })
}

#[test]
fn task_struct_mm() {
    skip_if!(btf_missing());
    let btf = KernelBtf::open().unwrap();
    let mm = btf::task_struct_mm_offset().unwrap();
    let size = btf.struct_size("task_struct").unwrap();
    eprintln!("task_struct.mm at {mm} of {size} bytes");
    assert_eq!(mm % 8, 0, "a pointer is 8-aligned");
    assert!(mm > 0 && mm + 8 <= size);
    assert_eq!(btf.member_offset("task_struct", "mm").unwrap(), mm);
    // include/linux/sched.h: `struct mm_struct *mm; struct mm_struct *active_mm;`, adjacent
    // whether or not the layout is randomized (they are in the same group).
    assert_eq!(
        btf.member_offset("task_struct", "active_mm").unwrap(),
        mm + 8
    );
    // x86-64 has CONFIG_THREAD_INFO_IN_TASK: thread_info comes first and `__state` right after.
    assert_eq!(btf.member_offset("task_struct", "thread_info").unwrap(), 0);
    assert_eq!(
        btf.member_offset("task_struct", "__state").unwrap(),
        btf.struct_size("thread_info").unwrap()
    );
    let comm = btf.member_offset("task_struct", "comm").unwrap();
    assert!(comm + 16 <= size && comm != mm);
}

#[test]
fn members_inside_anonymous_unions() {
    skip_if!(btf_missing());
    let btf = KernelBtf::open().unwrap();
    // struct page on x86-64 (include/linux/mm_types.h): flags at 0, then an anonymous union of
    // anonymous structs whose first one holds `lru` (16 bytes) and `mapping` at 24; the whole
    // struct is 64 bytes.
    assert_eq!(btf.struct_size("page").unwrap(), 64);
    assert_eq!(btf.member_offset("page", "flags").unwrap(), 0);
    assert_eq!(btf.member_offset("page", "lru").unwrap(), 8);
    assert_eq!(btf.member_offset("page", "mapping").unwrap(), 24);
    // struct folio mirrors struct page (the FOLIO_MATCH asserts in mm_types.h).
    assert_eq!(btf.member_offset("folio", "mapping").unwrap(), 24);
    // mm_struct keeps nearly everything in one anonymous struct.
    let pgd = btf.member_offset("mm_struct", "pgd").unwrap();
    assert!(pgd > 0 && pgd.is_multiple_of(8));
}

#[test]
fn errors_name_what_is_missing() {
    skip_if!(btf_missing());
    let btf = KernelBtf::open().unwrap();
    let err = btf
        .member_offset("task_struct", "no_such_member")
        .unwrap_err();
    assert!(matches!(err, BtfError::NoMember { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("`struct task_struct` has no member `no_such_member`"),
        "{err}"
    );
    let err = btf.member_offset("no_such_struct", "mm").unwrap_err();
    assert!(matches!(err, BtfError::NoStruct { .. }), "{err}");
    // `unsigned sched_reset_on_fork:1;` in task_struct.
    let err = btf
        .member_offset("task_struct", "sched_reset_on_fork")
        .unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err}");
    let err = KernelBtf::from_file(std::path::Path::new("/nonexistent/vmlinux"))
        .err()
        .unwrap();
    assert!(matches!(err, BtfError::Missing { .. }), "{err}");
}
