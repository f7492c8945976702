//! A report directory: `report.json`, `report.md`, `report.html`. Everything is rendered
//! before anything is written, and each file is written whole (a temporary file renamed over
//! it), so a failure never leaves half a report.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{ReportError, html, markdown};
use crate::bench::{BenchReport, REPORT_VERSION};

/// The files of one report directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
}

impl ReportFiles {
    /// The report files inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            html: dir.join("report.html"),
        }
    }
}

/// Writes `report.json`, `report.md` and `report.html` into `dir` (created if missing).
pub fn write(dir: &Path, report: &BenchReport) -> Result<ReportFiles, ReportError> {
    let files = ReportFiles::in_dir(dir);
    // A `BenchReport` is plain data with string map keys: serialising it cannot fail.
    let mut json = serde_json::to_string_pretty(report).expect("BenchReport serialises");
    json.push('\n');
    let (md, html) = render(report)?;
    create_dir(dir)?;
    write_whole(&files.json, &json)?;
    write_whole(&files.markdown, &md)?;
    write_whole(&files.html, &html)?;
    Ok(files)
}

/// Writes `report.md` and `report.html` into `dir` (created if missing) and leaves
/// `report.json` as it is: `collapse report DIR` after [`read`].
pub fn write_rendered(dir: &Path, report: &BenchReport) -> Result<ReportFiles, ReportError> {
    let files = ReportFiles::in_dir(dir);
    let (md, html) = render(report)?;
    create_dir(dir)?;
    write_whole(&files.markdown, &md)?;
    write_whole(&files.html, &html)?;
    Ok(files)
}

/// The report in `dir/report.json`.
pub fn read(dir: &Path) -> Result<BenchReport, ReportError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReportError::NoDir(dir.to_owned()));
        }
        Err(source) => {
            return Err(ReportError::Read {
                path: dir.to_owned(),
                source,
            });
        }
        Ok(meta) if !meta.is_dir() => return Err(ReportError::NotDir(dir.to_owned())),
        Ok(_) => {}
    }
    let path = ReportFiles::in_dir(dir).json;
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReportError::Missing(path)),
        Err(source) => return Err(ReportError::Read { path, source }),
    };
    // The version first: a report of another version is named as such, not as a missing key.
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(source) => return Err(ReportError::NotJson { path, source }),
    };
    match value.get("version").and_then(serde_json::Value::as_u64) {
        None => return Err(ReportError::NoVersion(path)),
        Some(found) if found != u64::from(REPORT_VERSION) => {
            return Err(ReportError::Version { path, found });
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|source| ReportError::NotReport { path, source })
}

fn render(report: &BenchReport) -> Result<(String, String), ReportError> {
    Ok((markdown::render(report), html::render(report)?))
}

fn create_dir(dir: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// `text` into `path` through a temporary file beside it.
fn write_whole(path: &Path, text: &str) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = fs::remove_file(&tmp);
            ReportError::Write {
                path: path.to_owned(),
                source,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::sample::{TempDir, sample_report};

    #[test]
    fn read_of_write_is_the_report() {
        let dir = TempDir::new("round-trip");
        let report = sample_report();
        let files = write(&dir.0, &report).unwrap();
        assert_eq!(files, ReportFiles::in_dir(&dir.0));
        for path in [&files.json, &files.markdown, &files.html] {
            assert!(path.is_file(), "{}", path.display());
        }
        assert_eq!(read(&dir.0).unwrap(), report);
        // No temporary file left behind.
        let names: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn write_rendered_leaves_the_json_alone() {
        let dir = TempDir::new("rendered");
        let files = ReportFiles::in_dir(&dir.0);
        fs::write(&files.json, "kept").unwrap();
        write_rendered(&dir.0, &sample_report()).unwrap();
        assert_eq!(fs::read_to_string(&files.json).unwrap(), "kept");
        assert!(
            fs::read_to_string(&files.markdown)
                .unwrap()
                .contains("| none |")
        );
    }

    #[test]
    fn bad_directories_and_files_name_the_file_and_the_problem() {
        let dir = TempDir::new("bad");
        let json = dir.0.join("report.json");
        let message = |dir: &Path| crate::render::error_chain(&read(dir).unwrap_err());

        let missing = dir.0.join("nope");
        assert_eq!(
            message(&missing),
            format!("{}: no such directory", missing.display())
        );
        assert!(matches!(read(&dir.0), Err(ReportError::Missing(p)) if p == json));
        fs::write(&json, "{").unwrap();
        assert_eq!(
            message(&json),
            format!("{}: not a directory", json.display())
        );
        let text = message(&dir.0);
        assert!(
            text.starts_with(&format!("{}: not JSON: EOF", json.display())),
            "{text}"
        );
        fs::write(&json, "{\"arms\": []}").unwrap();
        assert!(matches!(read(&dir.0), Err(ReportError::NoVersion(_))));
        fs::write(&json, "{\"version\": 2}").unwrap();
        assert_eq!(
            message(&dir.0),
            format!(
                "{}: report version 2, but this collapse reads version 1",
                json.display()
            )
        );
        fs::write(&json, "{\"version\": 1, \"arms\": 3}").unwrap();
        let text = message(&dir.0);
        assert!(
            text.starts_with(&format!(
                "{}: not a bench report of version 1: invalid type",
                json.display()
            )),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
