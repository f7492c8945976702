//! tracefs: where it is mounted (mounting it if we may), and the `format` file of each
//! tracepoint, so that field offsets and status names come from the running kernel rather
//! than from a table (Documentation/trace/events.rst, "Event formats").

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where tracefs lives on current kernels (Documentation/trace/ftrace.rst).
pub const TRACEFS_PATH: &str = "/sys/kernel/tracing";
/// Where it was before 4.1; debugfs automounts tracefs here.
pub const DEBUGFS_TRACING_PATH: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted at {TRACEFS_PATH}; run as root so collapse can mount it \
         (or mount it yourself: mount -t tracefs nodev {TRACEFS_PATH})"
    )]
    NotMounted,
    #[error("tracefs at {} is readable only by root: run collapse as root", path.display())]
    Unreadable { path: PathBuf },
    #[error(
        "mounting tracefs at {path} failed: {source}; mount it yourself: mount -t tracefs nodev {}",
        path.display()
    )]
    Mount {
        path: PathBuf,
        source: nix::errno::Errno,
    },
    #[error(
        "tracepoint {category}:{name} does not exist on this kernel ({} is missing)",
        path.display()
    )]
    NoTracepoint {
        category: String,
        name: String,
        path: PathBuf,
    },
    #[error("reading {} needs root: run collapse as root", path.display())]
    Permission { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: cannot parse {line:?}: {reason}", path.display())]
    Parse {
        path: PathBuf,
        line: String,
        reason: &'static str,
    },
    #[error(
        "tracepoint {category}:{name} has no field `{field}` (it has: {available}); \
         this kernel's tracepoint differs from the one collapse was written for"
    )]
    NoField {
        category: String,
        name: String,
        field: String,
        available: String,
    },
}

/// The tracefs mount point, if tracefs is mounted with events in it. Mounts nothing.
///
/// Looks at [`TRACEFS_PATH`], then [`DEBUGFS_TRACING_PATH`], then any other tracefs mount in
/// `/proc/self/mountinfo`.
pub fn find() -> Option<PathBuf> {
    let has_events = |p: &Path| p.join("events").is_dir();
    for candidate in [TRACEFS_PATH, DEBUGFS_TRACING_PATH] {
        let path = Path::new(candidate);
        if has_events(path) {
            return Some(path.to_path_buf());
        }
    }
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .ok()?;
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "tracefs")
        .map(|m| m.mount_point)
        .find(|p| has_events(p))
}

/// Where tracefs is mounted according to `/proc/self/mountinfo`, whether or not we may read
/// it (its root is mode 0700).
pub fn mount_point() -> Option<PathBuf> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .ok()?;
    let points: Vec<PathBuf> = mounts
        .into_iter()
        .filter(|m| m.fs_type == "tracefs")
        .map(|m| m.mount_point)
        .collect();
    points
        .iter()
        .find(|p| p.as_path() == Path::new(TRACEFS_PATH))
        .or(points.first())
        .cloned()
}

/// The tracefs root, mounting tracefs at [`TRACEFS_PATH`] first if it is not mounted anywhere
/// and we are root (a fresh boot of our machines has it unmounted).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    ensure_mounted_reporting().map(|(path, _)| path)
}

/// Like [`ensure_mounted`], and says whether this call did the mount.
pub fn ensure_mounted_reporting() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(path) = find() {
        return Ok((path, false));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(match mount_point() {
            Some(path) => TracefsError::Unreadable { path },
            None => TracefsError::NotMounted,
        });
    }
    let path = PathBuf::from(TRACEFS_PATH);
    use nix::mount::{MsFlags, mount};
    // The flags systemd's sys-kernel-tracing.mount uses.
    mount(
        Some("nodev"),
        &path,
        Some("tracefs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| TracefsError::Mount {
        path: path.clone(),
        source,
    })?;
    if !path.join("events").is_dir() {
        return Err(TracefsError::NotMounted);
    }
    Ok((path, true))
}

/// Whether `category:name` exists in the mounted tracefs (false if tracefs is not mounted).
pub fn exists(category: &str, name: &str) -> bool {
    find().is_some_and(|root| exists_in(&root, category, name))
}

/// Whether `category:name` exists under the tracefs root `root`.
pub fn exists_in(root: &Path, category: &str, name: &str) -> bool {
    root.join("events").join(category).join(name).is_dir()
}

/// Whether khugepaged collapses to mTHP sizes on this kernel (7.2+): its
/// `mm_collapse_huge_page` event under `root` carries an `order` field.
pub fn khugepaged_collapses_mthp(root: &Path) -> bool {
    TracepointFormat::read(root, "huge_memory", "mm_collapse_huge_page")
        .is_ok_and(|f| f.field("order").is_ok())
}

/// One field of a tracepoint record, as its `format` file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C type as written, with any array suffix moved here: `struct mm_struct *`,
    /// `char[16]`, `__data_loc char[]`.
    pub c_type: String,
    /// Byte offset from the start of the record (which starts with the common header).
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl Field {
    /// A `common_*` header field shared by every event.
    pub fn is_common(&self) -> bool {
        self.name.starts_with("common_")
    }

    /// A `__data_loc` (or `__rel_loc`) field: the record holds a u32 whose low 16 bits are the
    /// offset and high 16 bits the length of the data (include/trace/stages/stage2_data_offsets.h).
    pub fn is_dynamic(&self) -> bool {
        self.c_type.starts_with("__data_loc") || self.c_type.starts_with("__rel_loc")
    }
}

/// The parsed `events/<category>/<name>/format` file of one tracepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointFormat {
    pub category: String,
    pub name: String,
    /// The event id (`ID:`), what `perf_event_open` and the record's `common_type` use.
    pub id: u32,
    /// Every field, common header first, in file order.
    pub fields: Vec<Field>,
    /// The `print fmt:` line after the colon, verbatim.
    pub print_fmt: String,
}

impl TracepointFormat {
    /// Reads and parses `<tracefs_root>/events/<category>/<name>/format`.
    pub fn read(tracefs_root: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let dir = tracefs_root.join("events").join(category).join(name);
        let path = dir.join("format");
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound if !dir.is_dir() => TracefsError::NoTracepoint {
                category: category.to_owned(),
                name: name.to_owned(),
                path: dir.clone(),
            },
            io::ErrorKind::PermissionDenied => TracefsError::Permission { path: path.clone() },
            _ => TracefsError::Read {
                path: path.clone(),
                source,
            },
        })?;
        Self::parse(category, text.as_str(), &path)
    }

    /// Parses the text of a `format` file; `path` only names it in errors.
    pub fn parse(category: &str, text: &str, path: &Path) -> Result<Self, TracefsError> {
        let parse_err = |line: &str, reason| TracefsError::Parse {
            path: path.to_path_buf(),
            line: line.to_owned(),
            reason,
        };
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = None;
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("name:") {
                name = Some(rest.trim().to_owned());
            } else if let Some(rest) = trimmed.strip_prefix("ID:") {
                id = Some(
                    rest.trim()
                        .parse::<u32>()
                        .map_err(|_| parse_err(line, "ID is not a number"))?,
                );
            } else if trimmed.starts_with("field:") {
                fields.push(
                    parse_field(trimmed).ok_or_else(|| parse_err(line, "malformed field line"))?,
                );
            } else if let Some(rest) = trimmed.strip_prefix("print fmt:") {
                print_fmt = Some(rest.trim().to_owned());
            }
        }
        let name = name.ok_or_else(|| parse_err("", "no `name:` line"))?;
        let id = id.ok_or_else(|| parse_err("", "no `ID:` line"))?;
        let print_fmt = print_fmt.ok_or_else(|| parse_err("", "no `print fmt:` line"))?;
        Ok(Self {
            category: category.to_owned(),
            name,
            id,
            fields,
            print_fmt,
        })
    }

    /// The field called `name`, or an error naming the tracepoint and the fields it has.
    pub fn field(&self, name: &str) -> Result<&Field, TracefsError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TracefsError::NoField {
                category: self.category.clone(),
                name: self.name.clone(),
                field: name.to_owned(),
                available: self
                    .fields
                    .iter()
                    .filter(|f| !f.is_common())
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Byte offset of field `name` in the record.
    pub fn offset(&self, name: &str) -> Result<u32, TracefsError> {
        self.field(name).map(|f| f.offset)
    }

    /// The value → name table of `__print_symbolic(REC-><field>, {v, "name"}, ...)` in the print
    /// format (e.g. `enum scan_result` in include/trace/events/huge_memory.h), in the order
    /// written. `None` if the print format has no such call for this field. Entries whose value
    /// is not an integer literal are left out.
    pub fn symbolic(&self, field_name: &str) -> Option<Vec<(i64, String)>> {
        const CALL: &str = "__print_symbolic(";
        let fmt = self.print_fmt.as_str();
        let mut from = 0;
        while let Some(pos) = fmt[from..].find(CALL) {
            let args_start = from + pos + CALL.len();
            let (args, len) = split_call_args(&fmt[args_start..])?;
            from = args_start + len;
            let Some((subject, entries)) = args.split_first() else {
                continue;
            };
            if !refers_to_field(subject, field_name) {
                continue;
            }
            return Some(
                entries
                    .iter()
                    .filter_map(|e| parse_symbolic_entry(e))
                    .collect(),
            );
        }
        None
    }
}

/// `field:<decl>;\toffset:N;\tsize:N;\tsigned:N;` (kernel/trace/trace_events.c, f_show).
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let decl = decl?;
    // `char comm[16]`: the array suffix belongs to the type. (`__data_loc char[] filename`
    // already has its brackets on the type.)
    let mut base = decl;
    while base.ends_with(']') {
        base = &base[..matching_open_bracket(base)?];
    }
    let (decl, array) = (base, &decl[base.len()..]);
    let name_start = decl.rfind(|c: char| !is_ident_char(c)).map_or(0, |i| i + 1);
    let name = &decl[name_start..];
    if name.is_empty() {
        return None;
    }
    let c_type = format!("{}{array}", decl[..name_start].trim_end());
    Some(Field {
        name: name.to_owned(),
        c_type,
        offset: offset?,
        size: size?,
        signed,
    })
}

/// Index of the `[` matching the `]` that ends `s`.
fn matching_open_bracket(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices().rev() {
        match c {
            ']' => depth += 1,
            '[' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits the arguments of a call whose opening parenthesis has been consumed, at top-level
/// commas, up to the matching `)`. Returns the trimmed arguments and the bytes consumed
/// (including the `)`), or `None` if the parentheses do not balance.
fn split_call_args(s: &str) -> Option<(Vec<&str>, usize)> {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '{' | '[' => depth += 1,
            ')' if depth == 0 => {
                let last = s[start..i].trim();
                if !last.is_empty() || !args.is_empty() {
                    args.push(last);
                }
                return Some((args, i + 1));
            }
            ')' | '}' | ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                args.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

/// Whether expression `expr` reads `REC-><field>` (possibly under a cast).
fn refers_to_field(expr: &str, field: &str) -> bool {
    let needle = format!("REC->{field}");
    expr.match_indices(&needle)
        .any(|(i, _)| !expr[i + needle.len()..].starts_with(is_ident_char))
}

/// `{5, "exceed_none_pte"}` → (5, "exceed_none_pte").
fn parse_symbolic_entry(entry: &str) -> Option<(i64, String)> {
    let inner = entry.trim().strip_prefix('{')?.strip_suffix('}')?;
    // Reuse the call splitter: it stops at a closing parenthesis we add.
    let padded = format!("{inner})");
    let (parts, _) = split_call_args(&padded)?;
    let [value, name] = parts.as_slice() else {
        return None;
    };
    Some((parse_c_int(value)?, parse_c_string(name)?))
}

/// An integer literal, possibly negative, hex or octal, with `U`/`L` suffixes, in redundant
/// parentheses or under casts: `1`, `-12`, `0x10UL`, `((unsigned int)3)`.
fn parse_c_int(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('(') {
        let (parts, len) = split_call_args(inner)?;
        let rest = inner[len..].trim();
        return if rest.is_empty() {
            // `(expr)`
            match parts.as_slice() {
                [one] => parse_c_int(one),
                _ => None,
            }
        } else {
            // `(type)expr`
            parse_c_int(rest)
        };
    }
    if let Some(rest) = s.strip_prefix('-') {
        return parse_c_int(rest)?.checked_neg();
    }
    let digits = s.trim_end_matches(['u', 'U', 'l', 'L']);
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    // Values above i64::MAX (e.g. `-1UL`-style masks) keep their bit pattern.
    Some(value as i64)
}

/// `"name"` → `name`, with `\"` and `\\` unescaped.
fn parse_c_string(s: &str) -> Option<String> {
    let inner = s.trim().strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next()?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Copied from /sys/kernel/tracing/events/huge_memory/mm_khugepaged_scan_pmd/format on
    // Linux 6.18.
    const SCAN_PMD: &str = r#"name: mm_khugepaged_scan_pmd
ID: 759
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:struct mm_struct * mm;	offset:8;	size:8;	signed:0;
	field:unsigned long pfn;	offset:16;	size:8;	signed:0;
	field:int referenced;	offset:24;	size:4;	signed:1;
	field:int none_or_zero;	offset:28;	size:4;	signed:1;
	field:int status;	offset:32;	size:4;	signed:1;
	field:int unmapped;	offset:36;	size:4;	signed:1;

print fmt: "mm=%p, scan_pfn=0x%lx, referenced=%d, none_or_zero=%d, status=%s, unmapped=%d", REC->mm, REC->pfn, REC->referenced, REC->none_or_zero, __print_symbolic(REC->status, {0, "failed"}, {1, "succeeded"}, {2, "pmd_null"}, {3, "pmd_none"}, {4, "page_pmd_mapped"}, {5, "exceed_none_pte"}, {6, "exceed_swap_pte"}, {7, "exceed_shared_pte"}, {8, "pte_non_present"}, {9, "pte_uffd_wp"}, {10, "pte_mapped_hugepage"}, {11, "lack_referenced_page"}, {12, "page_null"}, {13, "scan_aborted"}, {14, "not_suitable_page_count"}, {15, "page_not_in_lru"}, {16, "page_locked"}, {17, "page_not_anon"}, {18, "page_compound"}, {19, "no_process_for_page"}, {20, "vma_null"}, {21, "vma_check_failed"}, {22, "not_suitable_address_range"}, {23, "could_not_delete_page_from_lru"}, {24, "alloc_huge_page_failed"}, {25, "ccgroup_charge_failed"}, {26, "truncated"}, {27, "page_has_private"}, {28, "store_failed"}, {29, "copy_poisoned_page"}, {30, "page_filled"}), REC->unmapped
"#;

    // Copied from /sys/kernel/tracing/events/kmem/mm_page_alloc/format on Linux 6.18.
    const PAGE_ALLOC: &str = r#"name: mm_page_alloc
ID: 653
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:unsigned long pfn;	offset:8;	size:8;	signed:0;
	field:unsigned int order;	offset:16;	size:4;	signed:0;
	field:unsigned long gfp_flags;	offset:24;	size:8;	signed:0;
	field:int migratetype;	offset:32;	size:4;	signed:1;

print fmt: "page=%p pfn=0x%lx order=%d migratetype=%d gfp_flags=%s", REC->pfn != -1UL ? (((struct page *)vmemmap_base) + (REC->pfn)) : ((void *)0), REC->pfn != -1UL ? REC->pfn : 0, REC->order, REC->migratetype, (REC->gfp_flags) ? __print_flags(REC->gfp_flags, "|", {( unsigned long)(((((((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7))) | (( gfp_t)((((1UL))) << (20)))) | (( gfp_t)((((1UL))) << (1)))) | (( gfp_t)((((1UL))) << (3))) | (( gfp_t)0)) | (( gfp_t)((((1UL))) << (18))) | (( gfp_t)((((1UL))) << (19))) | (( gfp_t)((((1UL))) << (13)))) & ~(( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11))))) | (( gfp_t)((((1UL))) << (10)))), "GFP_TRANSHUGE"}, {( unsigned long)((((((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7))) | (( gfp_t)((((1UL))) << (20)))) | (( gfp_t)((((1UL))) << (1)))) | (( gfp_t)((((1UL))) << (3))) | (( gfp_t)0)) | (( gfp_t)((((1UL))) << (18))) | (( gfp_t)((((1UL))) << (19))) | (( gfp_t)((((1UL))) << (13)))) & ~(( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11))))), "GFP_TRANSHUGE_LIGHT"}, {( unsigned long)((((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7))) | (( gfp_t)((((1UL))) << (20)))) | (( gfp_t)((((1UL))) << (1)))) | (( gfp_t)((((1UL))) << (3))) | (( gfp_t)0)), "GFP_HIGHUSER_MOVABLE"}, {( unsigned long)(((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7))) | (( gfp_t)((((1UL))) << (20)))) | (( gfp_t)((((1UL))) << (1)))), "GFP_HIGHUSER"}, {( unsigned long)((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7))) | (( gfp_t)((((1UL))) << (20)))), "GFP_USER"}, {( unsigned long)(((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7)))) | (( gfp_t)((((1UL))) << (22)))), "GFP_KERNEL_ACCOUNT"}, {( unsigned long)((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6))) | (( gfp_t)((((1UL))) << (7)))), "GFP_KERNEL"}, {( unsigned long)((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))) | (( gfp_t)((((1UL))) << (6)))), "GFP_NOFS"}, {( unsigned long)((( gfp_t)((((1UL))) << (5)))|(( gfp_t)((((1UL))) << (11)))), "GFP_ATOMIC"}, {( unsigned long)((( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11))))), "GFP_NOIO"}, {( unsigned long)((( gfp_t)((((1UL))) << (11))) | (( gfp_t)((((1UL))) << (13)))), "GFP_NOWAIT"}, {( unsigned long)(( gfp_t)((((1UL))) << (0))), "GFP_DMA"}, {( unsigned long)(( gfp_t)((((1UL))) << (2))), "GFP_DMA32"}, {( unsigned long)(( gfp_t)(((((1UL))) << (10))|((((1UL))) << (11)))), "__GFP_RECLAIM"}, {( unsigned long)(( gfp_t)((((1UL))) << (0))), "__GFP_DMA"}, {( unsigned long)(( gfp_t)((((1UL))) << (1))), "__GFP_HIGHMEM"}, {( unsigned long)(( gfp_t)((((1UL))) << (2))), "__GFP_DMA32"}, {( unsigned long)(( gfp_t)((((1UL))) << (3))), "__GFP_MOVABLE"}, {( unsigned long)(( gfp_t)((((1UL))) << (4))), "__GFP_RECLAIMABLE"}, {( unsigned long)(( gfp_t)((((1UL))) << (5))), "__GFP_HIGH"}, {( unsigned long)(( gfp_t)((((1UL))) << (6))), "__GFP_IO"}, {( unsigned long)(( gfp_t)((((1UL))) << (7))), "__GFP_FS"}, {( unsigned long)(( gfp_t)((((1UL))) << (8))), "__GFP_ZERO"}, {( unsigned long)(( gfp_t)((((1UL))) << (10))), "__GFP_DIRECT_RECLAIM"}, {( unsigned long)(( gfp_t)((((1UL))) << (11))), "__GFP_KSWAPD_RECLAIM"}, {( unsigned long)(( gfp_t)((((1UL))) << (12))), "__GFP_WRITE"}, {( unsigned long)(( gfp_t)((((1UL))) << (13))), "__GFP_NOWARN"}, {( unsigned long)(( gfp_t)((((1UL))) << (14))), "__GFP_RETRY_MAYFAIL"}, {( unsigned long)(( gfp_t)((((1UL))) << (15))), "__GFP_NOFAIL"}, {( unsigned long)(( gfp_t)((((1UL))) << (16))), "__GFP_NORETRY"}, {( unsigned long)(( gfp_t)((((1UL))) << (17))), "__GFP_MEMALLOC"}, {( unsigned long)(( gfp_t)((((1UL))) << (18))), "__GFP_COMP"}, {( unsigned long)(( gfp_t)((((1UL))) << (19))), "__GFP_NOMEMALLOC"}, {( unsigned long)(( gfp_t)((((1UL))) << (20))), "__GFP_HARDWALL"}, {( unsigned long)(( gfp_t)((((1UL))) << (21))), "__GFP_THISNODE"}, {( unsigned long)(( gfp_t)((((1UL))) << (22))), "__GFP_ACCOUNT"}, {( unsigned long)(( gfp_t)((((1UL))) << (23))), "__GFP_ZEROTAGS"}, {( unsigned long)(( gfp_t)((((1UL))) << (24))), "__GFP_NO_OBJ_EXT"}, { 0, ((void *)0) } ) : "none"
"#;

    // Copied from /sys/kernel/tracing/events/sched/sched_process_exec/format on Linux 6.18.
    const PROCESS_EXEC: &str = r#"name: sched_process_exec
ID: 365
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;
	field:pid_t pid;	offset:12;	size:4;	signed:1;
	field:pid_t old_pid;	offset:16;	size:4;	signed:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
"#;

    fn parse(category: &str, text: &str) -> TracepointFormat {
        TracepointFormat::parse(category, text, Path::new("test")).unwrap()
    }

    fn field(name: &str, c_type: &str, offset: u32, size: u32, signed: bool) -> Field {
        Field {
            name: name.into(),
            c_type: c_type.into(),
            offset,
            size,
            signed,
        }
    }

    #[test]
    fn scan_pmd_fields_and_statuses() {
        let f = parse("huge_memory", SCAN_PMD);
        assert_eq!(
            (f.category.as_str(), f.name.as_str(), f.id),
            ("huge_memory", "mm_khugepaged_scan_pmd", 759)
        );
        assert_eq!(f.fields.len(), 10);
        assert_eq!(
            f.fields[0],
            field("common_type", "unsigned short", 0, 2, false)
        );
        assert_eq!(f.fields[3], field("common_pid", "int", 4, 4, true));
        assert_eq!(
            *f.field("mm").unwrap(),
            field("mm", "struct mm_struct *", 8, 8, false)
        );
        assert_eq!(
            *f.field("pfn").unwrap(),
            field("pfn", "unsigned long", 16, 8, false)
        );
        let offsets: Vec<_> = ["referenced", "none_or_zero", "status", "unmapped"]
            .iter()
            .map(|n| f.offset(n).unwrap())
            .collect();
        assert_eq!(offsets, [24, 28, 32, 36]);
        assert!(f.print_fmt.starts_with("\"mm=%p, scan_pfn=0x%lx"));
        assert!(f.print_fmt.ends_with("REC->unmapped"));

        let statuses = f.symbolic("status").unwrap();
        assert_eq!(statuses.len(), 31);
        for (i, (value, _)) in statuses.iter().enumerate() {
            assert_eq!(*value, i as i64);
        }
        assert_eq!(statuses[0].1, "failed");
        assert_eq!(statuses[5].1, "exceed_none_pte");
        assert_eq!(statuses[25].1, "ccgroup_charge_failed");
        assert_eq!(statuses[30].1, "page_filled");
        // Fields that are printed plainly have no table.
        assert_eq!(f.symbolic("unmapped"), None);
        assert_eq!(f.symbolic("referenced"), None);
    }

    #[test]
    fn missing_field_error_names_tracepoint_and_field() {
        let f = parse("huge_memory", SCAN_PMD);
        let err = f.field("order").unwrap_err().to_string();
        assert!(err.contains("huge_memory:mm_khugepaged_scan_pmd"), "{err}");
        assert!(err.contains("`order`"), "{err}");
        assert!(
            err.contains("mm, pfn, referenced, none_or_zero, status, unmapped"),
            "{err}"
        );
    }

    #[test]
    fn page_alloc_with_huge_print_fmt() {
        let f = parse("kmem", PAGE_ALLOC);
        assert_eq!(f.id, 653);
        assert_eq!(f.fields.len(), 8);
        assert_eq!(
            *f.field("order").unwrap(),
            field("order", "unsigned int", 16, 4, false)
        );
        assert_eq!(
            *f.field("gfp_flags").unwrap(),
            field("gfp_flags", "unsigned long", 24, 8, false)
        );
        assert_eq!(
            *f.field("migratetype").unwrap(),
            field("migratetype", "int", 32, 4, true)
        );
        assert!(f.print_fmt.ends_with(": \"none\""));
        // __print_flags is not __print_symbolic: no table, and no choking on the nesting.
        for name in ["gfp_flags", "order", "pfn", "migratetype"] {
            assert_eq!(f.symbolic(name), None);
        }
    }

    #[test]
    fn process_exec_data_loc() {
        let f = parse("sched", PROCESS_EXEC);
        let filename = f.field("filename").unwrap();
        assert_eq!(
            *filename,
            field("filename", "__data_loc char[]", 8, 4, false)
        );
        assert!(filename.is_dynamic());
        assert!(!f.field("pid").unwrap().is_dynamic());
        assert_eq!(
            *f.field("old_pid").unwrap(),
            field("old_pid", "pid_t", 16, 4, true)
        );
        assert!(f.fields[..4].iter().all(Field::is_common));
    }

    #[test]
    fn array_fields() {
        let f = parse_field("field:char comm[16];\toffset:8;\tsize:16;\tsigned:0;").unwrap();
        assert_eq!(f, field("comm", "char[16]", 8, 16, false));
        let f = parse_field(
            "field:__u8 saddr[sizeof(struct sockaddr_in6)];\toffset:12;\tsize:28;\tsigned:0;",
        );
        assert_eq!(
            f.unwrap(),
            field("saddr", "__u8[sizeof(struct sockaddr_in6)]", 12, 28, false)
        );
    }

    #[test]
    fn symbolic_values() {
        let fmt = |print_fmt: &str| TracepointFormat {
            category: "c".into(),
            name: "n".into(),
            id: 1,
            fields: vec![],
            print_fmt: print_fmt.into(),
        };
        let f = fmt(
            r#""x=%s y=%s", __print_symbolic(REC->x_y, {1, "a"}), __print_symbolic((unsigned long)REC->x, { -12, "neg, with comma" }, {0x10UL, "hex"}, {((int)3), "cast"}, {FOO, "unparsed"}, {4, "q\"uote)"})"#,
        );
        assert_eq!(f.symbolic("x_y"), Some(vec![(1, "a".into())]));
        assert_eq!(
            f.symbolic("x"),
            Some(vec![
                (-12, "neg, with comma".into()),
                (16, "hex".into()),
                (3, "cast".into()),
                (4, "q\"uote)".into())
            ])
        );
        assert_eq!(f.symbolic("y"), None);
        // Unbalanced text never panics.
        assert_eq!(
            fmt("__print_symbolic(REC->x, {1, \"a\"").symbolic("x"),
            None
        );
    }

    #[test]
    fn malformed_files() {
        assert!(TracepointFormat::parse("c", "name: x\nformat:\n", Path::new("p")).is_err());
        let bad = "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\nprint fmt: \"\"\n";
        let err = TracepointFormat::parse("c", bad, Path::new("p"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed field line"), "{err}");
    }
}
