//! The sysfs restore journal: every value a run is about to change is written to a file first,
//! so that a run killed with SIGKILL (nothing of it runs any more) is undone by the next start
//! of `collapse`, which says so.
//!
//! One file per process, `/run/collapse/sysfs-<pid>-<starttime>.json` (a tmpfs: a reboot,
//! which resets sysfs anyway, clears it), rewritten whole and synced before each change and
//! removed once everything is restored. `COLLAPSE_JOURNAL_DIR` moves it (tests).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where the journals live unless `COLLAPSE_JOURNAL_DIR` says otherwise.
const JOURNAL_DIR: &str = "/run/collapse";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("restore journal {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("restore journal {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One value changed: what to write back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub path: PathBuf,
    pub previous: String,
    pub value: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    pid: u32,
    /// The writer's start time (clock ticks since boot, /proc/PID/stat field 22): a reused pid
    /// is not the writer.
    start_time: u64,
    /// In the order the values were changed.
    entries: Vec<JournalEntry>,
}

/// This process's journal. Every journalled change of the process goes to the one file, so
/// several restorers (a bench and its arms) share it: see [`Journal::shared`].
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: JournalFile,
}

/// The process's journal, made at its first use.
static SHARED: std::sync::Mutex<Option<Journal>> = std::sync::Mutex::new(None);

/// What [`recover`] did with one journal left by a process that is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The process that wrote it.
    pub pid: u32,
    /// The values written back (newest first), and those that could not be (with why).
    pub restored: Vec<JournalEntry>,
    pub failed: Vec<(JournalEntry, String)>,
}

fn dir() -> PathBuf {
    std::env::var_os("COLLAPSE_JOURNAL_DIR")
        .map_or_else(|| PathBuf::from(JOURNAL_DIR), PathBuf::from)
}

fn start_time(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// The journal of this process (nothing is written until the first [`Journal::record`]).
    pub fn for_this_process() -> Self {
        let pid = std::process::id();
        let start_time = start_time(pid).unwrap_or(0);
        Self {
            path: dir().join(format!("sysfs-{pid}-{start_time}.json")),
            file: JournalFile {
                pid,
                start_time,
                entries: Vec::new(),
            },
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the process's one journal (a poisoned lock still holds a usable journal).
    pub fn shared<T>(f: impl FnOnce(&mut Journal) -> T) -> T {
        let mut guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.get_or_insert_with(Journal::for_this_process))
    }

    /// Notes, durably, that `path` is about to change from `previous` to `value`.
    pub fn record(&mut self, entry: JournalEntry) -> Result<(), JournalError> {
        self.file.entries.push(entry);
        self.write()
    }

    /// Drops the newest entry for `path` (it was restored).
    pub fn forget(&mut self, path: &Path) -> Result<(), JournalError> {
        if let Some(i) = self.file.entries.iter().rposition(|e| e.path == path) {
            self.file.entries.remove(i);
        }
        if self.file.entries.is_empty() {
            return match fs::remove_file(&self.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&self.path)(e)),
            };
        }
        self.write()
    }

    /// Rewrites the file whole: a temporary file, synced, renamed over it.
    fn write(&self) -> Result<(), JournalError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(&self.file).expect("a journal serialises");
        let write = || -> io::Result<()> {
            let f = fs::File::create(&tmp)?;
            io::Write::write_all(&mut &f, &text)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(io_err(&self.path))
    }
}

/// Restores what every journal of a process that is gone says, newest change first, and
/// removes those journals. Journals of live processes (another collapse at work) are left.
pub fn recover() -> Result<Vec<Recovered>, JournalError> {
    let dir = dir();
    let listing = match fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = listing
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sysfs-") && n.ends_with(".json"))
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = fs::read(&path).map_err(io_err(&path))?;
        let file: JournalFile =
            serde_json::from_slice(&text).map_err(|source| JournalError::Parse {
                path: path.clone(),
                source,
            })?;
        let alive = start_time(file.pid).is_some_and(|t| t == file.start_time);
        if alive {
            continue;
        }
        let mut rec = Recovered {
            pid: file.pid,
            restored: Vec::new(),
            failed: Vec::new(),
        };
        for entry in file.entries.into_iter().rev() {
            match fs::write(&entry.path, &entry.previous) {
                Ok(()) => rec.restored.push(entry),
                Err(e) => rec.failed.push((entry, e.to_string())),
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writers_journal_is_restored_and_removed() {
        let root = std::env::temp_dir().join(format!("collapse-journal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let knob = root.join("scan_sleep_millisecs");
        let other = root.join("max_ptes_none");
        fs::write(&knob, "0").unwrap();
        fs::write(&other, "7").unwrap();
        // A journal of a process that does not exist any more (pid 0 never runs collapse).
        let dead = JournalFile {
            pid: 0,
            start_time: 1,
            entries: vec![
                JournalEntry {
                    path: knob.clone(),
                    previous: "10000".into(),
                    value: "0".into(),
                },
                JournalEntry {
                    path: other.clone(),
                    previous: "511".into(),
                    value: "7".into(),
                },
            ],
        };
        let jpath = root.join("sysfs-0-1.json");
        fs::write(&jpath, serde_json::to_vec(&dead).unwrap()).unwrap();
        // And one of a live process (ourselves): left alone.
        let me = std::process::id();
        let live = JournalFile {
            pid: me,
            start_time: start_time(me).unwrap(),
            entries: vec![JournalEntry {
                path: root.join("untouched"),
                previous: "x".into(),
                value: "y".into(),
            }],
        };
        let lpath = root.join(format!("sysfs-{me}-live.json"));
        fs::write(&lpath, serde_json::to_vec(&live).unwrap()).unwrap();

        // SAFETY: this test alone reads the variable, and sets it before any thread does.
        unsafe { std::env::set_var("COLLAPSE_JOURNAL_DIR", &root) };
        let rec = recover().unwrap();
        unsafe { std::env::remove_var("COLLAPSE_JOURNAL_DIR") };
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].pid, 0);
        assert_eq!(rec[0].restored.len(), 2);
        // Newest first.
        assert_eq!(rec[0].restored[0].path, other);
        assert_eq!(fs::read_to_string(&knob).unwrap(), "10000");
        assert_eq!(fs::read_to_string(&other).unwrap(), "511");
        assert!(!jpath.exists());
        assert!(lpath.exists());
        assert!(!root.join("untouched").exists());
        let _ = fs::remove_dir_all(&root);
    }
}
