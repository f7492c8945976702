//! The order-selection engine: given one PMD region's occupancy and the settings, which
//! ranges to collapse and to which order. The contract is shared/design/policies.md.
//!
//! Pure, `no_std`, allocation-free: used by `collapse plan`, the live view and the executor.
//!
//! `merged`, `scaled` and `seed` all search the same binary tree of aligned ranges from
//! (0, 9) downwards and stop at the first range that qualifies, so a range is chosen iff its
//! order is enabled, it qualifies, and no enclosing range of an enabled order qualifies. The
//! engine ([`select`]) evaluates every order's threshold for all ranges at once with SWAR
//! popcounts and then picks the topmost qualifying ranges with masks, instead of walking the
//! tree range by range. The literal walks of policies.md live in the tests as references.

mod creep;
mod select;
mod settings;
#[cfg(test)]
mod tests;

use crate::{bitmap::OccupancyBitmap, consts::PTES_PER_PMD};

/// The most decisions one region can get: 128 ranges of order 2.
pub const MAX_DECISIONS: usize = 128;
/// Smallest and largest collapse order.
pub const MIN_ORDER: u8 = 2;
pub const MAX_ORDER: u8 = 9;

/// A set of orders within 2..=9 (bit k = order k).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrderSet(u16);

/// The four policies of policies.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    #[default]
    Seed,
    Merged,
    Scaled,
    Pmd,
}

/// One region's inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionState {
    pub present: OccupancyBitmap,
    pub swap: OccupancyBitmap,
    pub shared: OccupancyBitmap,
}

/// Validated settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    max_ptes_none: u16,
    max_ptes_swap: u16,
    max_ptes_shared: u16,
    orders: OrderSet,
    chunk_order: u8,
}

/// Collapse range `[offset, offset + 2^order)` to one folio of `order`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decision {
    pub offset: u16,
    pub order: u8,
}

/// A policy's decisions for one region, ascending, and their bloat.
///
/// Equality and `Debug` look at the decisions and the bloat only: slots past the decisions
/// may hold stale entries when a plan is reused by [`plan_into`].
#[derive(Clone, Copy)]
pub struct Plan {
    decisions: [Decision; MAX_DECISIONS],
    len: u16,
    bloat_pages: u32,
}

/// Settings outside their valid range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsError {
    MaxPtesNone(u16),
    MaxPtesSwap(u16),
    MaxPtesShared(u16),
    Order(u8),
    ChunkOrder(u8),
}

impl OrderSet {
    /// Every collapse order, 2..=9.
    pub const ALL: Self = Self(((1 << (MAX_ORDER + 1)) - 1) & !((1 << MIN_ORDER) - 1));
    /// The PMD order alone, the kernel's default.
    pub const PMD: Self = Self(1 << MAX_ORDER);

    pub const fn empty() -> Self {
        Self(0)
    }
    /// Errors on an order outside 2..=9.
    pub fn from_orders(orders: impl IntoIterator<Item = u8>) -> Result<Self, SettingsError> {
        let mut set = Self::empty();
        for order in orders {
            set.insert(order)?;
        }
        Ok(set)
    }
    pub fn contains(self, order: u8) -> bool {
        (MIN_ORDER..=MAX_ORDER).contains(&order) && self.0 >> order & 1 == 1
    }
    pub fn insert(&mut self, order: u8) -> Result<(), SettingsError> {
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            return Err(SettingsError::Order(order));
        }
        self.0 |= 1 << order;
        Ok(())
    }
    /// Ascending.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (MIN_ORDER..=MAX_ORDER).filter(move |&k| self.0 >> k & 1 == 1)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Bit k set for each order k in the set.
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// Whether an order below `order` is in the set.
    pub fn has_below(self, order: u8) -> bool {
        self.0 & ((1u16 << order.min(MAX_ORDER + 1)) - 1) != 0
    }
}

impl Policy {
    pub const ALL: [Self; 4] = [Self::Seed, Self::Merged, Self::Scaled, Self::Pmd];
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Merged => "merged",
            Self::Scaled => "scaled",
            Self::Pmd => "pmd",
        }
    }
    /// The policy called `name` exactly as [`Policy::name`] spells it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl core::fmt::Display for Policy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl RegionState {
    pub const fn from_present(present: OccupancyBitmap) -> Self {
        Self {
            present,
            swap: OccupancyBitmap::EMPTY,
            shared: OccupancyBitmap::EMPTY,
        }
    }

    /// PTEs that count as occupied: present or swap (policies.md "Terms": the kernel swaps
    /// such pages back in).
    pub fn occupied(&self) -> OccupancyBitmap {
        self.present.union(&self.swap)
    }

    /// PTEs that make a range below order 9 be refused: swap or shared (policies.md "Terms").
    pub fn refused_below_pmd(&self) -> OccupancyBitmap {
        self.swap.union(&self.shared)
    }

    /// The gate of policies.md: too many swap or shared PTEs and the kernel's PMD scan fails
    /// before any order is considered.
    pub fn passes_gate(&self, settings: &Settings) -> bool {
        self.swap.count() <= u32::from(settings.max_ptes_swap)
            && self.shared.count() <= u32::from(settings.max_ptes_shared)
    }
}

impl Decision {
    /// PTEs in the range.
    pub const fn pages(self) -> u32 {
        1 << self.order
    }
    /// One past the last PTE of the range.
    pub const fn end(self) -> u16 {
        self.offset + (1 << self.order)
    }
}

impl Plan {
    /// No decision.
    pub const EMPTY: Self = Self {
        decisions: [Decision {
            offset: 0,
            order: 0,
        }; MAX_DECISIONS],
        len: 0,
        bloat_pages: 0,
    };

    pub fn decisions(&self) -> &[Decision] {
        self.decisions
            .get(..usize::from(self.len))
            .unwrap_or_default()
    }
    pub fn bloat_pages(&self) -> u32 {
        self.bloat_pages
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// PTEs covered by decisions of `order`.
    pub fn pages_at_order(&self, order: u8) -> u32 {
        self.decisions()
            .iter()
            .filter(|d| d.order == order)
            .map(|d| d.pages())
            .sum()
    }
    /// PTEs covered by all decisions.
    pub fn covered_pages(&self) -> u32 {
        self.decisions().iter().map(|d| d.pages()).sum()
    }

    /// Appends a decision that leaves `bloat` pages of zeroes. Callers append in ascending
    /// offset order; there is room for every non-overlapping set of ranges of order ≥ 2, so
    /// the capacity check never drops one.
    #[inline]
    fn push(&mut self, offset: u16, order: u8, bloat: u32) {
        if let Some(slot) = self.decisions.get_mut(usize::from(self.len)) {
            *slot = Decision { offset, order };
            self.len += 1;
            self.bloat_pages += bloat;
        }
    }
}

impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        self.decisions() == other.decisions() && self.bloat_pages == other.bloat_pages
    }
}

impl Eq for Plan {}

impl core::fmt::Debug for Plan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Plan")
            .field("decisions", &self.decisions())
            .field("bloat_pages", &self.bloat_pages)
            .finish()
    }
}

impl Default for Plan {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Runs `policy` over one region.
#[inline]
pub fn plan(policy: Policy, region: &RegionState, settings: &Settings) -> Plan {
    // Inlined so that the 520-byte plan is built in the caller's own variable, not built
    // locally and copied out.
    let mut out = Plan::EMPTY;
    plan_into(policy, region, settings, &mut out);
    out
}

/// [`plan`] into a `Plan` that a loop over many regions reuses: it is reset, not rebuilt.
pub fn plan_into(policy: Policy, region: &RegionState, settings: &Settings, out: &mut Plan) {
    Planner::new(policy, *settings).plan_into(region, out);
}

/// A policy and its settings with the per-order thresholds worked out once, for planning many
/// regions (a snapshot, a sweep): [`plan`] works them out again for every region.
#[derive(Clone, Copy)]
pub struct Planner {
    policy: Policy,
    settings: Settings,
    /// `None` for `pmd`, which has one candidate and no search.
    thresholds: Option<select::Thresholds>,
}

impl Planner {
    pub fn new(policy: Policy, settings: Settings) -> Self {
        let thresholds = match policy {
            Policy::Pmd => None,
            Policy::Merged => Some(select::Thresholds::merged(&settings)),
            Policy::Scaled => Some(select::Thresholds::scaled(&settings)),
            Policy::Seed => Some(select::Thresholds::seed(&settings)),
        };
        Self {
            policy,
            settings,
            thresholds,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    #[inline]
    pub fn plan(&self, region: &RegionState) -> Plan {
        let mut out = Plan::EMPTY;
        self.plan_into(region, &mut out);
        out
    }

    /// See [`plan_into`].
    pub fn plan_into(&self, region: &RegionState, out: &mut Plan) {
        out.len = 0;
        out.bloat_pages = 0;
        let settings = &self.settings;
        let occupied = region.occupied();
        // "A decision needs at least one occupied PTE."
        if !region.passes_gate(settings) || occupied.is_empty() {
            return;
        }
        let Some(thresholds) = &self.thresholds else {
            return pmd(&occupied, settings, out);
        };
        let counted = match self.policy {
            Policy::Seed => select::chunk_utilisation(&occupied.words, settings),
            _ => occupied.words,
        };
        let refused = region.refused_below_pmd();
        // One call site per variant, so that the search is inlined twice only.
        if thresholds.in_word_full() {
            select::select::<true>(&counted, &occupied.words, &refused.words, thresholds, out);
        } else {
            select::select::<false>(&counted, &occupied.words, &refused.words, thresholds, out);
        }
    }
}

/// policies.md "`pmd`": the one candidate (0, 9).
fn pmd(occupied: &OccupancyBitmap, settings: &Settings, out: &mut Plan) {
    let occupied = occupied.count();
    if settings.orders.contains(MAX_ORDER)
        && occupied >= 1
        && PTES_PER_PMD as u32 - occupied <= u32::from(settings.max_ptes_none)
    {
        out.push(0, MAX_ORDER, PTES_PER_PMD as u32 - occupied);
    }
}

/// Whether `merged` would print the kernel's warning: max_ptes_none is neither 0 nor 511
/// while an order below 9 is enabled, so those orders get 0 allowed empty PTEs.
pub fn merged_warns(settings: &Settings) -> bool {
    !matches!(settings.max_ptes_none, 0 | 511) && settings.orders.has_below(MAX_ORDER)
}

/// The creep model of policies.md: a policy applied repeatedly to its own output.
#[derive(Clone, Debug)]
pub struct Creep {
    original: RegionState,
    current: RegionState,
    /// Order of the folio each PTE is in after the passes so far (-1: none).
    folio_order: [i8; 512],
}

/// One creep pass: the new decisions, total bloat against the original occupancy, and
/// whether nothing changed (a fixed point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreepPass {
    pub plan: Plan,
    pub bloat_pages_total: u32,
    pub fixed_point: bool,
}
