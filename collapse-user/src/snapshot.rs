//! The region snapshot format of DESIGN.md: one JSON object per line, written by
//! `collapse trace --snapshot` and read by `collapse plan --input`.
//!
//! ```text
//! {"pid": 4242, "addr": "0x7f3a40000000", "present": [[0, 64], [300, 301]], "swap": [], "shared": []}
//! ```
//!
//! `addr` is the PMD-aligned start of the region as a hex string; `present`, `swap` and
//! `shared` are sorted, non-overlapping, non-empty half-open PTE runs within 0..512 (`swap`
//! and `shared` may be omitted). Keys this reader does not know are ignored, so later
//! versions can add some.

use std::{
    collections::HashMap,
    fmt,
    io::{self, BufRead, Write},
};

use collapse_common::{
    OccupancyBitmap,
    consts::{PMD_SIZE, PTES_PER_PMD},
    policy::RegionState,
};
use serde::{Deserialize, Serialize};

/// One PMD region of one process and its occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRegion {
    pub pid: i32,
    /// PMD-aligned start address.
    pub addr: u64,
    pub state: RegionState,
}

/// A snapshot that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("line {line}: {problem}")]
    Invalid { line: usize, problem: LineError },
    #[error("line {line}: {source}")]
    Read { line: usize, source: io::Error },
}

/// What is wrong with one snapshot line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("pid {0} is not a process id")]
    Pid(i64),
    #[error("addr {0:?} is not a hex string like \"0x7f3a40000000\"")]
    AddrSyntax(String),
    #[error("addr {0:#x} is not 2 MiB aligned")]
    AddrAlignment(u64),
    #[error("run {run} is empty in {field}")]
    EmptyRun { field: RunField, run: Run },
    #[error("run {run} is outside 0..512 in {field}")]
    RunOutOfRange { field: RunField, run: Run },
    #[error("runs overlap: {first} and {second} in {field}")]
    RunsOverlap {
        field: RunField,
        first: Run,
        second: Run,
    },
    #[error("PTE {0} is both present and swap (a PTE maps a page or holds a swap entry)")]
    PresentAndSwap(u16),
    #[error("runs are not sorted: {first} comes before {second} in {field}")]
    RunsUnsorted {
        field: RunField,
        first: Run,
        second: Run,
    },
    #[error("pid {pid} addr {addr:#x} repeats line {first_line}")]
    Duplicate {
        pid: i32,
        addr: u64,
        first_line: usize,
    },
}

/// Which bitmap a run belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunField {
    Present,
    Swap,
    Shared,
}

impl fmt::Display for RunField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Present => "present",
            Self::Swap => "swap",
            Self::Shared => "shared",
        })
    }
}

/// A half-open PTE run `[start, end)` as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: i64,
    pub end: i64,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// The line as serde sees it; numbers are wide so that out-of-range values get a message
/// about the range rather than about the integer type.
#[derive(Deserialize)]
struct RawRegion {
    pid: i64,
    addr: String,
    present: Vec<(i64, i64)>,
    #[serde(default)]
    swap: Vec<(i64, i64)>,
    #[serde(default)]
    shared: Vec<(i64, i64)>,
}

#[derive(Serialize)]
struct WireRegion {
    pid: i32,
    addr: String,
    present: Vec<(u16, u16)>,
    swap: Vec<(u16, u16)>,
    shared: Vec<(u16, u16)>,
}

impl SnapshotRegion {
    /// Parses and validates one line (without its newline).
    pub fn from_json_line(line: &str) -> Result<Self, LineError> {
        let raw: RawRegion = serde_json::from_str(line)
            .map_err(|err| LineError::MalformedJson(json_message(&err)))?;
        let pid = i32::try_from(raw.pid)
            .ok()
            .filter(|&p| p > 0)
            .ok_or(LineError::Pid(raw.pid))?;
        let addr = parse_addr(&raw.addr)?;
        let state = RegionState {
            present: bitmap_from_runs(RunField::Present, &raw.present)?,
            swap: bitmap_from_runs(RunField::Swap, &raw.swap)?,
            shared: bitmap_from_runs(RunField::Shared, &raw.shared)?,
        };
        if let Some((pte, _)) = state.present.intersection(&state.swap).runs().next() {
            return Err(LineError::PresentAndSwap(pte));
        }
        Ok(Self { pid, addr, state })
    }

    /// One JSON object in the snapshot format, without a newline.
    pub fn to_json_line(&self) -> String {
        let runs = |b: &OccupancyBitmap| b.runs().collect::<Vec<_>>();
        let wire = WireRegion {
            pid: self.pid,
            addr: format!("{:#x}", self.addr),
            present: runs(&self.state.present),
            swap: runs(&self.state.swap),
            shared: runs(&self.state.shared),
        };
        serde_json::to_string(&wire).expect("a struct of integers and strings always serialises")
    }
}

/// Reads a whole snapshot; empty lines are skipped. The first bad line is the error.
pub fn read_snapshot(reader: impl BufRead) -> Result<Vec<SnapshotRegion>, SnapshotError> {
    let mut regions = Vec::new();
    let mut seen: HashMap<(i32, u64), usize> = HashMap::new();
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|source| SnapshotError::Read {
            line: line_no,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |problem| SnapshotError::Invalid {
            line: line_no,
            problem,
        };
        let region = SnapshotRegion::from_json_line(&line).map_err(invalid)?;
        if let Some(&first_line) = seen.get(&(region.pid, region.addr)) {
            return Err(invalid(LineError::Duplicate {
                pid: region.pid,
                addr: region.addr,
                first_line,
            }));
        }
        seen.insert((region.pid, region.addr), line_no);
        regions.push(region);
    }
    Ok(regions)
}

/// Writes `regions` one per line.
pub fn write_snapshot(mut w: impl Write, regions: &[SnapshotRegion]) -> io::Result<()> {
    for region in regions {
        writeln!(w, "{}", region.to_json_line())?;
    }
    w.flush()
}

/// serde_json's message without its "at line 1 column N" (the snapshot line is one JSON line;
/// the caller names the snapshot line).
fn json_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&suffix) {
        Some(message) if err.line() != 0 => format!("{message} at column {}", err.column()),
        _ => full,
    }
}

fn parse_addr(text: &str) -> Result<u64, LineError> {
    let syntax = || LineError::AddrSyntax(text.to_owned());
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .ok_or_else(syntax)?;
    // from_str_radix accepts a leading '+'; the format does not.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(syntax());
    }
    let addr = u64::from_str_radix(digits, 16).map_err(|_| syntax())?;
    if addr % PMD_SIZE != 0 {
        return Err(LineError::AddrAlignment(addr));
    }
    Ok(addr)
}

fn bitmap_from_runs(field: RunField, runs: &[(i64, i64)]) -> Result<OccupancyBitmap, LineError> {
    let mut bitmap = OccupancyBitmap::EMPTY;
    let mut previous: Option<Run> = None;
    for &(start, end) in runs {
        let run = Run { start, end };
        if start < 0 || end > PTES_PER_PMD as i64 {
            return Err(LineError::RunOutOfRange { field, run });
        }
        if start >= end {
            return Err(LineError::EmptyRun { field, run });
        }
        if let Some(first) = previous {
            if start < first.start {
                return Err(LineError::RunsUnsorted {
                    field,
                    first,
                    second: run,
                });
            }
            if start < first.end {
                return Err(LineError::RunsOverlap {
                    field,
                    first,
                    second: run,
                });
            }
        }
        bitmap.set_range(start as usize, end as usize);
        previous = Some(run);
    }
    Ok(bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<SnapshotRegion>, SnapshotError> {
        read_snapshot(text.as_bytes())
    }

    fn error(text: &str) -> String {
        read(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_the_design_example() {
        let regions = read(
            "{\"pid\": 4242, \"addr\": \"0x7f3a40000000\", \"present\": [[0, 64], [300, 301]], \
             \"swap\": [], \"shared\": []}\n\n{\"pid\": 7, \"addr\": \"0x200000\", \"present\": [], \
             \"swap\": [[1, 3]]}\n",
        )
        .unwrap();
        assert_eq!(regions.len(), 2);
        let a = &regions[0];
        assert_eq!((a.pid, a.addr), (4242, 0x7f3a_4000_0000));
        assert_eq!(
            a.state.present.runs().collect::<Vec<_>>(),
            [(0, 64), (300, 301)]
        );
        assert!(a.state.swap.is_empty() && a.state.shared.is_empty());
        let b = &regions[1];
        assert_eq!((b.pid, b.addr), (7, 0x20_0000));
        assert!(b.state.present.is_empty());
        assert_eq!(b.state.swap.runs().collect::<Vec<_>>(), [(1, 3)]);
    }

    #[test]
    fn round_trip() {
        let mut present = OccupancyBitmap::from_range(21, 53);
        present.set_range(243, 259);
        present.set_range(383, 512);
        let regions = [
            SnapshotRegion {
                pid: 1,
                addr: 0x7fff_ffe0_0000,
                state: RegionState {
                    present,
                    swap: OccupancyBitmap::from_range(0, 1),
                    shared: OccupancyBitmap::from_range(30, 40),
                },
            },
            SnapshotRegion {
                pid: 99,
                addr: 0,
                state: RegionState::from_present(OccupancyBitmap::FULL),
            },
        ];
        let mut out = Vec::new();
        write_snapshot(&mut out, &regions).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            r#"{"pid":1,"addr":"0x7fffffe00000","present":[[21,53],[243,259],[383,512]],"swap":[[0,1]],"shared":[[30,40]]}"#
        );
        assert_eq!(read(&text).unwrap(), regions);
    }

    #[test]
    fn adjacent_runs_are_fine() {
        let regions = read(r#"{"pid": 1, "addr": "0x0", "present": [[0, 10], [10, 20]]}"#).unwrap();
        assert_eq!(
            regions[0].state.present.runs().collect::<Vec<_>>(),
            [(0, 20)]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let good = r#"{"pid": 1, "addr": "0x200000", "present": [[0, 1]]}"#;
        assert_eq!(
            error(&format!(
                "{good}\n\n{}",
                r#"{"pid": 1, "addr": "0x400000", "present": [[10, 20], [15, 30]]}"#
            )),
            "line 3: runs overlap: [10, 20) and [15, 30) in present"
        );
        assert_eq!(
            error("{\"pid\": 1,"),
            "line 1: malformed JSON: EOF while parsing a value at column 10"
        );
        assert!(
            error(r#"{"pid": 1, "addr": "0x200000"}"#)
                .starts_with("line 1: malformed JSON: missing field `present`")
        );
        assert_eq!(
            error(&format!(
                "{good}\n{}",
                r#"{"pid": 1, "addr": "0x1000", "present": []}"#
            )),
            "line 2: addr 0x1000 is not 2 MiB aligned"
        );
        for (line, message) in [
            (
                r#"{"pid": 1, "addr": "200000", "present": []}"#,
                r#"line 1: addr "200000" is not a hex string"#,
            ),
            (
                r#"{"pid": 1, "addr": "0x+200000", "present": []}"#,
                r#"line 1: addr "0x+200000" is not a hex"#,
            ),
            (
                r#"{"pid": 1, "addr": "0x1ffffffffffffffff", "present": []}"#,
                "line 1: addr \"0x1ffffffffffffffff\"",
            ),
            (
                r#"{"pid": 0, "addr": "0x0", "present": []}"#,
                "line 1: pid 0 is not a process id",
            ),
            (
                r#"{"pid": 1, "addr": "0x0", "present": [[500, 513]]}"#,
                "line 1: run [500, 513) is outside 0..512 in present",
            ),
            (
                r#"{"pid": 1, "addr": "0x0", "swap": [[-1, 3]], "present": []}"#,
                "line 1: run [-1, 3) is outside 0..512 in swap",
            ),
            (
                r#"{"pid": 1, "addr": "0x0", "present": [], "shared": [[5, 5]]}"#,
                "line 1: run [5, 5) is empty in shared",
            ),
            (
                r#"{"pid": 1, "addr": "0x0", "present": [[30, 40], [10, 20]]}"#,
                "line 1: runs are not sorted: [30, 40) comes before [10, 20) in present",
            ),
            (
                r#"{"pid": 1, "addr": "0x0", "present": [[1, 2, 3]]}"#,
                "line 1: malformed JSON: ",
            ),
            (r#"[1, 2]"#, "line 1: malformed JSON: "),
        ] {
            let err = error(line);
            assert!(err.starts_with(message), "{line}: {err}");
        }
        assert_eq!(
            error(&format!("{good}\n{good}")),
            "line 2: pid 1 addr 0x200000 repeats line 1"
        );
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let regions =
            read(r#"{"pid": 1, "addr": "0x0", "present": [[0, 1]], "comm": "x"}"#).unwrap();
        assert_eq!(regions.len(), 1);
    }
}
