//! policies.md "Creep": a policy applied again and again to its own output.

use super::{Creep, CreepPass, Plan, Policy, RegionState, Settings, plan};
use crate::consts::PTES_PER_PMD;

/// `folio_order` of a PTE that no pass has collapsed yet.
const NO_FOLIO: i8 = -1;

impl Creep {
    /// Starts from `region` with no collapsed folio: the model does not know which pages
    /// already sit in large folios, so every range is open to every order.
    pub fn new(region: &RegionState) -> Self {
        Self {
            original: *region,
            current: *region,
            folio_order: [NO_FOLIO; PTES_PER_PMD],
        }
    }

    /// Plans on the current state, drops each decision whose range already lies inside one
    /// folio of its order or larger (collapsing it again would change nothing), and applies
    /// the rest: the range becomes one resident, private folio of that order, so it is all
    /// present and holds no swap or shared PTE any more.
    ///
    /// Dropping after planning equals skipping during the search: a range inside a folio is
    /// fully present with no swap or shared PTE, so it qualifies whenever its order is
    /// enabled, and every range below it is inside the same folio.
    pub fn pass(&mut self, policy: Policy, settings: &Settings) -> CreepPass {
        let planned = plan(policy, &self.current, settings);
        let occupied = self.current.occupied();
        let mut new = Plan::EMPTY;
        for d in planned.decisions() {
            let start = usize::from(d.offset);
            let inside = self
                .folio_order
                .get(start)
                .is_some_and(|&folio| i16::from(folio) >= i16::from(d.order));
            if !inside {
                let held = occupied.count_aligned(start, 1 << d.order);
                new.push(d.offset, d.order, d.pages() - held);
            }
        }
        for d in new.decisions() {
            let (start, end) = (usize::from(d.offset), usize::from(d.end()));
            self.current.present.set_range(start, end);
            self.current.swap.clear_range(start, end);
            self.current.shared.clear_range(start, end);
            if let Some(folio) = self.folio_order.get_mut(start..end) {
                folio.fill(d.order as i8);
            }
        }
        CreepPass {
            plan: new,
            bloat_pages_total: self.bloat_pages(),
            fixed_point: new.is_empty(),
        }
    }

    pub fn state(&self) -> &RegionState {
        &self.current
    }

    pub fn original(&self) -> &RegionState {
        &self.original
    }

    /// Pages present now that were not occupied originally: the zeroes the passes so far
    /// have filled in.
    pub fn bloat_pages(&self) -> u32 {
        self.current
            .present
            .difference(&self.original.occupied())
            .count()
    }

    /// PTEs inside a folio collapsed by some pass.
    pub fn covered_pages(&self) -> u32 {
        self.folio_order.iter().filter(|&&f| f != NO_FOLIO).count() as u32
    }

    /// Order of the collapsed folio holding PTE `pte`, if a pass collapsed it.
    pub fn folio_order(&self, pte: usize) -> Option<u8> {
        self.folio_order
            .get(pte)
            .and_then(|&f| u8::try_from(f).ok())
    }
}
