//! Totals over many regions' decisions: per order, bloat, coverage.

use std::collections::BTreeMap;

use collapse_common::{
    OccupancyBitmap,
    policy::{Decision, OrderSet, RegionState},
};

use crate::render::fraction;

/// Orders 0..=9 are indexable; only 2..=9 are ever used.
const ORDERS: usize = 10;

/// Decisions of one order, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderTally {
    pub decisions: u64,
    /// PTEs inside those decisions (2^order each): the memory the folios take.
    pub pages: u64,
    /// Of those, PTEs that were occupied (present or swap) before the collapse.
    pub occupied: u64,
}

/// Decisions of any number of regions, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub regions: u64,
    /// Occupied (present or swap) PTEs of those regions.
    pub populated: u64,
    /// Pages the decisions fill with zeroes.
    pub bloat: u64,
    orders: [OrderTally; ORDERS],
}

impl Tally {
    /// Adds one region, its decisions, and their bloat as the engine counts it.
    pub fn add_region(&mut self, state: &RegionState, decisions: &[Decision], bloat_pages: u32) {
        let occ = state.occupied();
        self.regions += 1;
        self.populated += u64::from(occ.count());
        self.add_decisions(&occ, decisions);
        self.bloat += u64::from(bloat_pages);
    }

    /// Adds decisions (without their region or bloat) against the occupancy `occ`.
    pub fn add_decisions(&mut self, occ: &OccupancyBitmap, decisions: &[Decision]) {
        for &Decision { offset, order } in decisions {
            let len = 1usize << order;
            let t = &mut self.orders[usize::from(order)];
            t.decisions += 1;
            t.pages += len as u64;
            t.occupied += u64::from(occ.count_aligned(usize::from(offset), len));
        }
    }

    pub fn order(&self, order: u8) -> OrderTally {
        self.orders
            .get(usize::from(order))
            .copied()
            .unwrap_or_default()
    }

    pub fn decisions(&self) -> u64 {
        self.orders.iter().map(|t| t.decisions).sum()
    }

    /// PTEs inside any decision.
    pub fn covered_pages(&self) -> u64 {
        self.orders.iter().map(|t| t.pages).sum()
    }

    /// Occupied PTEs inside any decision.
    pub fn covered_occupied(&self) -> u64 {
        self.orders.iter().map(|t| t.occupied).sum()
    }

    /// Share of the populated PTEs that end up inside a decision (0 when nothing is populated).
    pub fn coverage(&self) -> f64 {
        fraction(self.covered_occupied(), self.populated)
    }

    /// Share of the populated PTEs inside decisions of `order`.
    pub fn coverage_at(&self, order: u8) -> f64 {
        fraction(self.order(order).occupied, self.populated)
    }

    /// `{"4": 3, "9": 1}`: decisions per enabled order (zeros included, so keys are stable).
    pub fn decisions_per_order(&self, orders: OrderSet) -> BTreeMap<u8, u64> {
        orders
            .iter()
            .map(|k| (k, self.order(k).decisions))
            .collect()
    }

    /// PTEs covered per enabled order.
    pub fn pages_per_order(&self, orders: OrderSet) -> BTreeMap<u8, u64> {
        orders.iter().map(|k| (k, self.order(k).pages)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_order() {
        let mut present = OccupancyBitmap::from_range(21, 53);
        present.set_range(243, 259);
        present.set_range(383, 391);
        let state = RegionState {
            present,
            swap: OccupancyBitmap::from_range(0, 2),
            shared: OccupancyBitmap::from_range(21, 22),
        };
        let mut t = Tally::default();
        // seed's decisions for worked example 1 (policies.md), with two swap PTEs added.
        let decisions = [16, 32, 48, 240, 384].map(|offset| Decision { offset, order: 4 });
        t.add_region(&state, &decisions, 28);
        t.add_region(&RegionState::default(), &[], 0);
        assert_eq!(t.regions, 2);
        assert_eq!(t.populated, 58);
        assert_eq!(
            t.order(4),
            OrderTally {
                decisions: 5,
                pages: 80,
                occupied: 52
            }
        );
        assert_eq!(t.order(9), OrderTally::default());
        assert_eq!(t.covered_pages(), 80);
        assert_eq!(t.bloat, 28);
        assert!((t.coverage() - 52.0 / 58.0).abs() < 1e-12);
    }
}
