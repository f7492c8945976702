//! The arms of the comparison and the workloads they run.

use collapse_common::policy::Policy;

use super::model::ArmKind;
use crate::workload::BuiltIn;

/// One arm of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmSpec {
    None,
    Khugepaged,
    KhugepagedFast,
    Collapse { policy: Policy, max_ptes_none: u16 },
}

impl ArmSpec {
    pub fn kind(self) -> ArmKind {
        match self {
            Self::None => ArmKind::None,
            Self::Khugepaged => ArmKind::Khugepaged,
            Self::KhugepagedFast => ArmKind::KhugepagedFast,
            Self::Collapse { .. } => ArmKind::Collapse,
        }
    }

    /// `none`, `khugepaged`, `khugepaged-fast`, `collapse seed n=255`.
    pub fn name(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Khugepaged => "khugepaged".into(),
            Self::KhugepagedFast => "khugepaged-fast".into(),
            Self::Collapse {
                policy,
                max_ptes_none,
            } => format!("collapse {} n={max_ptes_none}", policy.name()),
        }
    }
}

/// What runs in each arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BenchWorkload {
    BuiltIn(BuiltIn),
    /// A real redis-server on a loopback port, filled then read by redis-benchmark.
    Redis,
    /// Any program; its runtime is the metric.
    Command(Vec<String>),
}
