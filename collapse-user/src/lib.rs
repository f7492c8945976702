//! `collapse`: watch how processes populate memory, decide which ranges deserve a huge page
//! and of which size, collapse them on demand, and compare with khugepaged. See
//! shared/design/DESIGN.md.
//!
//! One module per stage of the data flow, each with a typed input and output:
//! `kernel` (interfaces to the running kernel) ← `tracer` (`TargetSpec` → `Session` →
//! `Vec<SnapshotRegion>`) → `planner` (`&[SnapshotRegion]` → `RegionPlan`s and a `Tally`) →
//! `executor` (`&[RegionPlan]` → `CollapseOutcome`s and `Advice`). `snapshot` is the region
//! format between them, `render` what people read, `demo` the main job, `status` the machine
//! report and `workload` the built-in test and bench workloads. The command line lives in the
//! binary; nothing here knows it.

// The report's sample (bench/report/sample.rs) names the library `collapse` wherever it is
// included, its own unit tests too.
#[cfg(test)]
extern crate self as collapse;

pub mod bench;
pub mod demo;
pub mod executor;
pub mod kernel;
pub mod metrics;
pub mod pipeline;
pub mod planner;
pub mod render;
pub mod snapshot;
pub mod status;
pub mod tracer;
pub mod workload;
