//! `collapse plan` as a user runs it: the built binary over snapshot files. No root needed;
//! every setting is given as a flag, so the machine's THP sysfs does not matter (and is not
//! even read).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use collapse::snapshot::{SnapshotRegion, write_snapshot};
use collapse_common::{OccupancyBitmap, policy::RegionState};
use serde_json::Value;

/// Every setting explicit: the results cannot depend on the machine.
const SETTINGS: [&str; 10] = [
    "--max-ptes-none",
    "300",
    "--orders",
    "64K,2M",
    "--max-ptes-swap",
    "64",
    "--max-ptes-shared",
    "256",
    "--min-order",
    "32K",
];

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("collapse-plan-cli-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn present(runs: &[(usize, usize)]) -> RegionState {
    let mut bitmap = OccupancyBitmap::EMPTY;
    for &(start, end) in runs {
        bitmap.set_range(start, end);
    }
    RegionState::from_present(bitmap)
}

/// Worked example 1 of policies.md.
const EXAMPLE_1: [(usize, usize); 3] = [(21, 53), (243, 259), (383, 391)];
const EXAMPLE_1_ADDR: u64 = 0x7f3a_4020_0000;

/// Example 1 in the middle of two other regions, pids interleaved, so that input order is
/// not pid or address order.
fn regions() -> Vec<SnapshotRegion> {
    let mut with_swap = present(&[(0, 64), (300, 301)]);
    with_swap.swap = OccupancyBitmap::from_range(64, 70);
    vec![
        SnapshotRegion {
            pid: 77,
            addr: 0x7f00_0000_0000,
            state: with_swap,
        },
        SnapshotRegion {
            pid: 4242,
            addr: EXAMPLE_1_ADDR,
            state: present(&EXAMPLE_1),
        },
        SnapshotRegion {
            pid: 77,
            addr: 0x40_0000,
            state: present(&[(0, 512)]),
        },
    ]
}

fn snapshot_file(dir: &TempDir) -> PathBuf {
    let path = dir.0.join("snapshot.jsonl");
    write_snapshot(fs::File::create(&path).unwrap(), &regions()).unwrap();
    path
}

fn collapse(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_collapse"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the collapse binary");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `plan --input INPUT`, `extra` and the explicit settings, successful: its stdout.
fn plan(input: &Path, extra: &[&str]) -> String {
    let mut with_input = vec!["--input", input.to_str().unwrap()];
    with_input.extend(extra);
    let out = run(&args(&with_input));
    String::from_utf8(out.stdout).unwrap()
}

/// `collapse` with `args`, which must succeed.
fn run(args: &[String]) -> Output {
    let out = collapse(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect()
}

fn decisions(line: &Value) -> Vec<(u64, u64)> {
    line["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["offset"].as_u64().unwrap(), d["order"].as_u64().unwrap()))
        .collect()
}

#[test]
fn json_round_trip_and_worked_example_1() {
    let dir = TempDir::new("json");
    let input = snapshot_file(&dir);
    // Worked example 1 of policies.md: policy, decisions (offset, order), bloat pages.
    type Expected = (&'static str, &'static [(u64, u64)], u64);
    let expected: [Expected; 4] = [
        ("pmd", &[], 0),
        ("merged", &[(32, 4)], 0),
        ("scaled", &[(16, 4), (32, 4), (240, 4)], 8),
        ("seed", &[(16, 4), (32, 4), (48, 4), (240, 4), (384, 4)], 28),
    ];
    for (policy, want, want_bloat) in expected {
        let lines = json_lines(&plan(&input, &["--json", "--policy", policy]));
        assert_eq!(lines.len(), 4, "{policy}: three regions and a summary");
        let (region_lines, summary) = lines.split_at(3);
        for (line, region) in region_lines.iter().zip(regions()) {
            assert_eq!(line["type"], "region");
            assert_eq!(line["pid"], region.pid);
            assert_eq!(line["addr"], format!("{:#x}", region.addr));
        }
        let example = &region_lines[1];
        assert_eq!(decisions(example), want, "{policy}");
        assert_eq!(example["bloat_pages"], want_bloat, "{policy}");
        // The full region is a PMD under every policy (0 empty PTEs).
        assert_eq!(decisions(&region_lines[2]), [(0, 9)], "{policy}");

        let summary = &summary[0];
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["policy"], policy);
        assert_eq!(summary["settings"]["max_ptes_none"], 300);
        assert_eq!(summary["settings"]["orders"], serde_json::json!([4, 9]));
        assert_eq!(summary["settings"]["source"], "flags");
        let bloat: u64 = region_lines
            .iter()
            .map(|l| l["bloat_pages"].as_u64().unwrap())
            .sum();
        assert_eq!(summary["bloat_pages"], bloat);
        assert_eq!(summary["bloat_bytes"], bloat * 4096);
        assert_eq!(summary["regions"], 3);
        assert_eq!(summary["processes"], 2);
        // 65 + 6 swapped + 56 + 512.
        assert_eq!(summary["populated_pages"], 639);
        let all: Vec<(u64, u64)> = region_lines.iter().flat_map(decisions).collect();
        for order in [4, 9] {
            let n = all.iter().filter(|d| d.1 == order).count();
            assert_eq!(
                summary["decisions_per_order"][order.to_string()],
                n,
                "{policy} order {order}"
            );
            assert_eq!(
                summary["pages_per_order"][order.to_string()],
                n << order,
                "{policy} order {order}"
            );
        }
        let coverage = summary["coverage"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&coverage), "{coverage}");
        assert_eq!(
            summary["warnings"].as_array().unwrap().is_empty(),
            policy != "merged",
            "{summary}"
        );
    }
}

#[test]
fn merged_warns_about_intermediate_max_ptes_none() {
    let dir = TempDir::new("merged-warning");
    let input = snapshot_file(&dir);
    let warning = "max_ptes_none 300 is neither 0 nor 511: the kernel (7.2) warns and allows no empty PTEs below 2M";
    let lines = json_lines(&plan(&input, &["--json", "--policy", "merged"]));
    assert_eq!(lines[3]["warnings"], serde_json::json!([warning]));
    assert!(plan(&input, &["--policy", "merged"]).contains(warning));
    // Not for 0, 511, or PMD size alone.
    for extra in [
        ["--max-ptes-none", "0"],
        ["--max-ptes-none", "511"],
        ["--orders", "2M"],
    ] {
        let mut args = vec!["--policy", "merged"];
        args.extend(extra);
        assert!(
            !plan(&input, &args).contains("neither 0 nor 511"),
            "{extra:?}"
        );
    }
}

#[test]
fn stdin_input() {
    let text = "\n{\"pid\": 5, \"addr\": \"0x200000\", \"present\": [[0, 512]], \"swap\": [], \"shared\": []}\n\n";
    let mut args = vec!["plan", "--input", "-", "--json"];
    args.extend(SETTINGS);
    let out = collapse(&args, Some(text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 2);
    assert_eq!(decisions(&lines[0]), [(0, 9)]);
    assert_eq!(lines[1]["coverage"], 1.0);
}

#[test]
fn human_report() {
    let dir = TempDir::new("human");
    let input = snapshot_file(&dir);
    let out = plan(&input, &[]);
    assert!(
        out.starts_with(
            "settings  policy seed, max_ptes_none 300, max_ptes_swap 64, max_ptes_shared 256, orders 64K,2M, chunk 32K (seed)\n          from the command line\n"
        ),
        "{out}"
    );
    assert!(out.contains("3 regions, 2 processes"), "{out}");
    assert!(out.contains("\npid 77  2 regions"), "{out}");
    assert!(
        out.contains("\npid 4242  1 region, 0.22 MiB populated\n"),
        "{out}"
    );
    assert!(out.contains("\ntotal  2 processes, 3 regions"), "{out}");
    // pid 4242 is worked example 1: seed takes five 64K ranges with 28 pages of bloat.
    let block = out.split("\npid 4242").nth(1).unwrap();
    let rows: Vec<Vec<&str>> = block
        .lines()
        .skip(1)
        .take(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "size",
            "decisions",
            "covered",
            "MiB",
            "%",
            "of",
            "populated",
            "bloat",
            "pages",
            "bloat",
            "MiB"
        ]
    );
    assert_eq!(rows[1], ["64K", "5", "0.31", "92.9", "28", "0.11"]);
    assert_eq!(rows[2], ["2M", "0", "0.00", "0.0", "0", "0.00"]);
    assert_eq!(rows[3], ["all", "5", "0.31", "92.9", "28", "0.11"]);
    // Columns line up: every row of a table is as long as its header (right-aligned cells).
    let widths: Vec<usize> = block.lines().skip(1).take(4).map(str::len).collect();
    assert!(widths.iter().all(|&w| w == widths[0]), "{block}");
}

#[test]
fn passes() {
    let dir = TempDir::new("passes");
    let input = snapshot_file(&dir);
    for (policy, max) in [("seed", 10), ("scaled", 2), ("merged", 10)] {
        let max_s = max.to_string();
        let lines = json_lines(&plan(
            &input,
            &["--json", "--policy", policy, "--passes", &max_s],
        ));
        let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        let passes: Vec<&Value> = lines.iter().filter(|l| l["type"] == "pass").collect();
        let n = passes.len();
        assert!((1..=max).contains(&n), "{policy}: {n}");
        assert_eq!(kinds[..3], ["region"; 3], "{policy}");
        assert!(kinds[3..3 + n].iter().all(|&k| k == "pass"), "{policy}");
        assert_eq!(kinds[3 + n..], ["summary"], "{policy}");
        assert_eq!(lines[3 + n]["passes"], n);
        // Pass 1 is the plan itself.
        let first: usize = lines[..3].iter().map(|l| decisions(l).len()).sum();
        assert_eq!(passes[0]["pass"], 1);
        assert_eq!(passes[0]["decisions"], first, "{policy}");
        assert_eq!(
            passes[0]["bloat_pages"],
            lines[3 + n]["bloat_pages"],
            "{policy}"
        );
        // Bloat only grows; a fixed point ends the passes and adds nothing.
        for pair in passes.windows(2) {
            assert!(
                pair[0]["bloat_pages"].as_u64() <= pair[1]["bloat_pages"].as_u64(),
                "{policy}"
            );
            assert_eq!(pair[0]["fixed_point"], false, "{policy}");
        }
        let last = passes[n - 1];
        if last["fixed_point"] == true {
            assert_eq!(last["decisions"], 0, "{policy}");
        } else {
            assert_eq!(n, max, "{policy}");
        }
        if policy == "merged" {
            // policies.md: merged never creeps.
            assert_eq!(n, 2);
            assert_eq!(last["fixed_point"], true);
        }
    }
    let out = plan(&input, &["--passes", "10"]);
    assert!(
        out.contains("\ncreep  seed applied to its own output: "),
        "{out}"
    );
    assert!(out.contains("fixed point"), "{out}");
}

#[test]
fn sweep_table_json_and_plot() {
    let dir = TempDir::new("sweep");
    let input = snapshot_file(&dir);
    let svg = dir.0.join("sweep.svg");
    let out = run(&args(&[
        "--input",
        input.to_str().unwrap(),
        "--sweep",
        "--plot",
        svg.to_str().unwrap(),
    ]));
    let table = String::from_utf8(out.stdout).unwrap();
    let header = table
        .lines()
        .find(|l| l.trim_start().starts_with("policy"))
        .expect(&table);
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "policy",
            "max_ptes_none",
            "all",
            "%",
            "64K",
            "%",
            "2M",
            "%",
            "covered",
            "MiB",
            "bloat",
            "pages",
            "bloat",
            "MiB"
        ]
    );
    for policy in ["seed", "merged", "scaled", "pmd"] {
        let rows = table
            .lines()
            .filter(|l| {
                l.trim_start()
                    .strip_prefix(policy)
                    .is_some_and(|rest| rest.starts_with(['*', ' ']))
            })
            .count();
        assert_eq!(rows, 11, "{policy}: {table}");
    }

    let text = fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "{text}"
    );
    assert_eq!(
        text.matches("<text").count(),
        text.matches("</text>").count()
    );
    for policy in ["seed", "merged", "scaled", "pmd"] {
        assert!(
            text.contains(&format!("\n{policy}\n</text>")),
            "legend entry for {policy}"
        );
    }
    assert!(text.contains("<polyline"));

    let out = run(&args(&[
        "--input",
        input.to_str().unwrap(),
        "--sweep",
        "--json",
        "--sweep-values",
        "511,0,300",
    ]));
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    let points: Vec<(String, u64)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["type"], "sweep");
            assert_eq!(l["populated_pages"], 639);
            (
                l["policy"].as_str().unwrap().to_owned(),
                l["max_ptes_none"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = ["seed", "merged", "scaled", "pmd"]
        .into_iter()
        .flat_map(|p| [0, 300, 511].map(|n| (p.to_owned(), n)))
        .collect();
    assert_eq!(points, want);
    // n = 511: everything occupied is in a 2M folio under every policy.
    for line in lines.iter().filter(|l| l["max_ptes_none"] == 511) {
        assert_eq!(line["coverage"], 1.0, "{line}");
        assert_eq!(line["pages_per_order"]["9"], 3 * 512, "{line}");
    }
}

#[test]
fn bad_input_is_one_line_and_no_output() {
    let dir = TempDir::new("bad");
    let good = snapshot_file(&dir);
    let good = good.to_str().unwrap();
    let line = r#"{"pid": 1, "addr": "0x200000", "present": [[0, 1]]}"#;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            snapshot_args(&dir, &format!("{line}\nnot json\n")),
            "line 2: malformed JSON",
        ),
        (
            snapshot_args(&dir, &format!("{line}\n{line}\n")),
            "line 2: pid 1 addr 0x200000 repeats line 1",
        ),
        (
            snapshot_args(
                &dir,
                &format!(
                    "{line}\n\n{}\n",
                    r#"{"pid": 1, "addr": "0x0", "present": [[10, 20], [15, 30]]}"#
                ),
            ),
            "line 3: runs overlap: [10, 20) and [15, 30) in present",
        ),
        (
            snapshot_args(
                &dir,
                r#"{"pid": 1, "addr": "0x0", "present": [[500, 600]]}"#,
            ),
            "line 1: run [500, 600) is outside 0..512 in present",
        ),
        (
            snapshot_args(
                &dir,
                r#"{"pid": 1, "addr": "0x0", "present": [[0, 8]], "swap": [[7, 9]]}"#,
            ),
            "line 1: PTE 7 is both present and swap",
        ),
        (
            snapshot_args(&dir, r#"{"pid": 1, "addr": "0x1000", "present": []}"#),
            "line 1: addr 0x1000 is not 2 MiB aligned",
        ),
        (
            args(&["--input", good, "--policy", "greedy"]),
            "unknown policy \"greedy\"",
        ),
        (
            args(&["--input", good, "--max-ptes-none", "512"]),
            "--max-ptes-none 512 is outside 0..511",
        ),
        (
            args(&["--input", good, "--max-ptes-shared", "600"]),
            "--max-ptes-shared 600 is outside 0..511",
        ),
        (
            args(&["--input", good, "--orders", "64K,48K"]),
            "48K is not a power-of-two multiple of 4K",
        ),
        (
            args(&["--input", good, "--orders", "8K,2M"]),
            "8K is not a collapse size",
        ),
        (
            args(&["--input", good, "--orders", "64Q"]),
            "64Q is not a size",
        ),
        (
            args(&["--input", good, "--min-order", "2M"]),
            "--min-order 2M: the seed chunk must be 16K..1M",
        ),
        (
            args(&["--input", good, "--plot", "x.svg"]),
            "--plot needs --sweep",
        ),
        (
            args(&["--input", good, "--sweep", "--sweep-values", "0,512"]),
            "512 is outside 0..511",
        ),
        (
            args(&["--input", good, "--passes", "0"]),
            "--passes must be at least 1",
        ),
        (args(&["--input", good, "--pid", "1"]), "not both"),
        (
            args(&[]),
            "plan: give --input FILE or a target (--pid, --cgroup, --comm, --all, -- CMD)",
        ),
        (
            args(&["--input", dir.0.join("missing.jsonl").to_str().unwrap()]),
            "missing.jsonl",
        ),
    ];
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = collapse(&args, None);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} wrote to stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("collapse: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: {stderr:?} should say {message:?}"
        );
    }
    // --json changes nothing about errors.
    let out = collapse(
        &["plan", "--json", "--input", good, "--policy", "nope"],
        None,
    );
    assert!(!out.status.success() && out.stdout.is_empty());
}

/// `plan`, `extra`, and each explicit setting that `extra` does not give (clap refuses a
/// flag given twice; `--sweep` sets max_ptes_none itself).
fn args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["plan".into()];
    v.extend(extra.iter().map(|s| s.to_string()));
    for pair in SETTINGS.chunks(2) {
        let swept = pair[0] == "--max-ptes-none" && extra.contains(&"--sweep");
        if !extra.contains(&pair[0]) && !swept {
            v.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    v
}

/// `plan --input FILE` over a snapshot with `text`, in a file of its own.
fn snapshot_args(dir: &TempDir, text: &str) -> Vec<String> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.file(&format!("bad-{n}.jsonl"), text);
    args(&["--input", path.to_str().unwrap()])
}

#[test]
fn demo_comparison() {
    // What `collapse demo` prints after tracing; here over the test regions: every policy at
    // max_ptes_none 0 and 255 at least (and the kernel's value), every size enabled.
    let mut out = Vec::new();
    collapse::demo::write_comparison(&mut out, &regions()).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("every collapse size enabled"), "{text}");
    assert!(text.contains("16K,32K,64K,128K,256K,512K,1M,2M"), "{text}");
    for policy in ["seed", "merged", "scaled", "pmd"] {
        for n in ["0", "255"] {
            assert!(
                text.lines().any(|l| {
                    let mut w = l.split_whitespace();
                    w.next().map(|p| p.trim_end_matches('*')) == Some(policy) && w.next() == Some(n)
                }),
                "no {policy} row at max_ptes_none {n}: {text}"
            );
        }
    }
}
