//! `collapse report DIR` as a user runs it: the built binary re-renders report.md and
//! report.html from a report.json this test writes, and bad input gives one error line. No
//! root needed.

#[path = "../src/bench/report/sample.rs"]
mod sample;

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use self::sample::{TempDir, sample_report};

fn collapse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_collapse"))
        .args(args)
        .output()
        .expect("run the collapse binary")
}

fn report(dir: &Path) -> Output {
    collapse(&["report", dir.to_str().expect("UTF-8 temp path")])
}

#[test]
fn rerenders_markdown_and_html_from_report_json() {
    let dir = TempDir::new("cli-rerender");
    let bench = sample_report();
    let json = serde_json::to_string(&bench).unwrap();
    fs::write(dir.0.join("report.json"), &json).unwrap();
    // A stale rendering is replaced.
    fs::write(dir.0.join("report.md"), "stale").unwrap();

    let out = report(&dir.0);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // report.json is read, never rewritten.
    assert_eq!(fs::read_to_string(dir.0.join("report.json")).unwrap(), json);
    let md = fs::read_to_string(dir.0.join("report.md")).unwrap();
    let html = fs::read_to_string(dir.0.join("report.html")).unwrap();
    assert!(md.starts_with("# collapse bench: mixed\n"), "{md}");
    for arm in &bench.arms {
        assert!(md.contains(&format!("\n| {} | ", arm.name)), "{}", arm.name);
        assert!(html.contains(&arm.name), "{}", arm.name);
    }
    assert!(md.contains("% of THP memory overhead removed"), "{md}");
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(!html.contains("http"));

    // stdout: the summary table (names, units, a row per arm), then the files written.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].trim_start().starts_with("arm"), "{stdout}");
    assert!(lines[1].contains("lookups/s"), "{stdout}");
    for (line, arm) in lines[2..].iter().zip(&bench.arms) {
        assert!(line.trim_start().starts_with(&arm.name), "{stdout}");
    }
    let md_path = dir.0.join("report.md");
    let html_path = dir.0.join("report.html");
    assert_eq!(
        lines.last().copied(),
        Some(format!("wrote {} and {}", md_path.display(), html_path.display()).as_str()),
        "{stdout}"
    );
}

/// One line on stderr, `collapse: ` and `needle` in it; nothing on stdout; a failure status.
fn assert_one_error_line(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 for bad input: {stderr:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "stdout on error");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got {lines:?}");
    assert!(lines[0].starts_with("collapse: "), "{lines:?}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
}

#[test]
fn bad_input_is_one_error_line_and_writes_nothing() {
    let dir = TempDir::new("cli-bad");
    let json = dir.0.join("report.json");
    let json_name = json.display().to_string();

    assert_one_error_line(&collapse(&["report"]), "DIR");
    let missing = dir.0.join("nope");
    assert_one_error_line(
        &report(&missing),
        &format!("{}: no such directory", missing.display()),
    );
    assert_one_error_line(
        &report(&dir.0),
        &format!("{json_name}: missing (`collapse bench --out DIR` writes it)"),
    );
    fs::write(&json, "not json").unwrap();
    assert_one_error_line(&report(&json), &format!("{json_name}: not a directory"));
    assert_one_error_line(&report(&dir.0), &format!("{json_name}: not JSON: expected"));
    fs::write(&json, "{\"version\": 99, \"arms\": []}").unwrap();
    assert_one_error_line(
        &report(&dir.0),
        &format!("{json_name}: report version 99, but this collapse reads version 1"),
    );
    fs::write(&json, "{\"version\": 1, \"arms\": \"all\"}").unwrap();
    assert_one_error_line(
        &report(&dir.0),
        &format!("{json_name}: not a bench report of version 1: invalid type"),
    );
    // Nothing rendered from bad input.
    assert!(!dir.0.join("report.md").exists());
    assert!(!dir.0.join("report.html").exists());
}
