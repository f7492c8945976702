//! `collapse`: watch how processes populate memory, decide which ranges deserve a huge page
//! and of which size, and compare with khugepaged. See shared/design/DESIGN.md.
//!
//! One module per stage of the data flow: `kernel` (interfaces to the running kernel),
//! `tracer` (eBPF programs → region occupancy), `snapshot` (the region snapshot format),
//! `planner` (policies over snapshots), plus `status` and the test/demo `workload`.

pub mod cli;
pub mod executor;
pub mod kernel;
pub mod planner;
pub mod snapshot;
pub mod status;
pub mod tracer;
pub mod workload;
