//! `collapse bench` end to end, CI-sized: the report, the checksums, the sysfs left as it was,
//! collapse ahead of khugepaged; and a bench killed with SIGKILL mid-arm, undone by the next
//! start of collapse.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use collapse::kernel::thp::read_value;
use common::{
    skip::{needs_root_tests, skip_if, thp_never},
    *,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// Every THP sysfs value a bench may change, as it is now.
fn thp_values() -> BTreeMap<PathBuf, String> {
    let mut files = vec![
        PathBuf::from(THP).join("enabled"),
        PathBuf::from(THP).join("defrag"),
    ];
    for k in [
        "scan_sleep_millisecs",
        "alloc_sleep_millisecs",
        "pages_to_scan",
        "max_ptes_none",
        "max_ptes_swap",
        "max_ptes_shared",
        "defrag",
    ] {
        files.push(PathBuf::from(THP).join("khugepaged").join(k));
    }
    for d in std::fs::read_dir(THP).unwrap().filter_map(Result::ok) {
        if d.file_name().to_string_lossy().starts_with("hugepages-") {
            files.push(d.path().join("enabled"));
        }
    }
    files
        .into_iter()
        .filter_map(|f| read_value(&f).ok().map(|v| (f, v)))
        .collect()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("collapse-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The first sample at which `arm`'s coverage reached `level`.
fn time_to(arm: &Value, level: f64) -> Option<f64> {
    arm["runs"][0]["samples"]
        .as_array()?
        .iter()
        .find(|s| s["coverage"].as_f64().unwrap_or(0.0) >= level)
        .and_then(|s| s["t_s"].as_f64())
}

#[test]
fn a_small_bench_writes_its_report_and_leaves_sysfs_as_it_was() {
    skip_if!(needs_root_tests().or_else(thp_never));
    let before = thp_values();
    let out = temp_dir("small");
    let status = Command::new(collapse_bin())
        .args([
            "bench",
            "--workload",
            "mixed",
            "--size",
            "64M",
            "--run-for",
            "3",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .expect("collapse bench");
    assert!(status.success(), "collapse bench: {status}");
    assert_eq!(thp_values(), before, "sysfs changed by the bench");
    for f in ["report.json", "report.md", "report.html"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let arms = report["arms"].as_array().expect("arms");
    let names: Vec<&str> = arms.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "none",
            "khugepaged",
            "khugepaged-fast",
            "collapse seed n=255",
            "collapse pmd n=511"
        ]
    );
    for a in arms {
        let run = &a["runs"][0];
        let samples = run["samples"].as_array().expect("samples");
        // About 4 a second over a 3 s measured phase.
        assert!(
            samples.len() >= 8,
            "{}: {} samples",
            a["name"],
            samples.len()
        );
        assert_eq!(run["figures"]["checksum_ok"], true, "{}", a["name"]);
        assert!(
            a["median"]["perf"].as_f64().unwrap_or(0.0) > 0.0,
            "{}",
            a["name"]
        );
    }
    assert!(!report["summary"].as_array().unwrap().is_empty());
    assert!(!report["modelled"].as_array().unwrap().is_empty());
    let sysfs = report["sysfs"].as_array().unwrap();
    assert!(sysfs.iter().any(|c| {
        c["path"]
            .as_str()
            .unwrap()
            .ends_with("scan_sleep_millisecs")
    }));
    assert!(sysfs.iter().all(|c| c["restored"] == true), "{sysfs:?}");
    // The none arm had THP off: nothing huge.
    assert!(arms[0]["median"]["final_coverage"].as_f64().unwrap() < 0.01);
    // Each collapse arm reached 90 % of its own final coverage before khugepaged (defaults)
    // reached that same coverage, if it ever did.
    let khugepaged = &arms[1];
    for a in &arms[3..] {
        let level = 0.9 * a["median"]["final_coverage"].as_f64().unwrap();
        assert!(level > 0.3, "{}: final coverage {level}", a["name"]);
        let ours = time_to(a, level).expect("reached its own 90 %");
        if let Some(theirs) = time_to(khugepaged, level) {
            assert!(
                ours < theirs,
                "{}: {ours} s, khugepaged {theirs} s",
                a["name"]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_bench_killed_mid_arm_is_undone_by_the_next_start() {
    skip_if!(needs_root_tests().or_else(thp_never));
    let knob = Path::new(THP).join("khugepaged/scan_sleep_millisecs");
    let before = thp_values();
    let out = temp_dir("killed");
    let mut bench = Command::new(collapse_bin())
        .args([
            "bench",
            "--arms",
            "khugepaged-fast,none",
            "--collapse",
            "pmd:511",
            "--size",
            "32M",
            "--run-for",
            "30",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collapse bench");
    let stderr = BufReader::new(bench.stderr.take().unwrap());
    let mut in_arm = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("khugepaged-fast") {
            in_arm = true;
            break;
        }
    }
    assert!(in_arm, "the bench never reached the khugepaged-fast arm");
    // Wait until the arm has changed the knob (it does so before starting its workload).
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_value(&knob).unwrap() != "0" {
        assert!(
            Instant::now() < deadline,
            "the arm did not set scan_sleep_millisecs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(bench.id() as i32), Signal::SIGKILL);
    let _ = bench.wait();
    assert_eq!(read_value(&knob).unwrap(), "0");
    // Any start of collapse restores it, and says so.
    let status = Command::new(collapse_bin())
        .args(["status", "--json"])
        .output()
        .expect("collapse status");
    let said = String::from_utf8_lossy(&status.stderr);
    let restored = thp_values();
    if restored != before {
        // Put the machine back before failing.
        for (f, v) in &before {
            let _ = std::fs::write(f, v);
        }
    }
    assert_eq!(restored, before, "not restored; collapse said: {said}");
    assert!(
        said.contains("restored") && said.contains("scan_sleep_millisecs"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
