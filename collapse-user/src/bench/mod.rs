//! `collapse bench`: the same workload under khugepaged and under collapse, and the report.

pub mod model;
pub mod report;

pub use self::model::*;
