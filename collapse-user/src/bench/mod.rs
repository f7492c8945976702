//! `collapse bench`: the same workload under khugepaged and under collapse, and the report.

pub mod model;

pub use self::model::*;
