//! The planner's hand-off to the executor: one region's decisions under one policy.

use collapse_common::{
    consts::PMD_ORDER,
    policy::{Decision, Plan, Planner, RegionState},
};

use crate::snapshot::SnapshotRegion;

/// What a policy decided for one PMD region of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    pub pid: i32,
    /// PMD-aligned start address.
    pub addr: u64,
    /// The occupancy the decisions were made on (from the tracer's bitmaps).
    pub state: RegionState,
    /// Ascending; empty when the policy collapses nothing here.
    pub decisions: Vec<Decision>,
    /// Zero-filled pages the decisions would add.
    pub bloat_pages: u32,
}

impl RegionPlan {
    /// Whether the policy collapses the whole region to one PMD-sized folio.
    pub fn is_pmd(&self) -> bool {
        self.decisions.iter().any(|d| d.order == PMD_ORDER)
    }

    /// Decisions below PMD size: reported as advice, never executed.
    pub fn below_pmd(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.order < PMD_ORDER)
    }
}

/// Every region's plan under `planner`, in input order (regions with no decision included).
pub fn plan_regions(planner: &Planner, regions: &[SnapshotRegion]) -> Vec<RegionPlan> {
    let mut p = Plan::EMPTY;
    regions
        .iter()
        .map(|r| {
            planner.plan_into(&r.state, &mut p);
            RegionPlan {
                pid: r.pid,
                addr: r.addr,
                state: r.state,
                decisions: p.decisions().to_vec(),
                bloat_pages: p.bloat_pages(),
            }
        })
        .collect()
}
