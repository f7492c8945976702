//! `collapse bench`: the same workload under khugepaged and under collapse, and the report.

pub mod model;
pub mod workloads;

pub use self::model::*;
