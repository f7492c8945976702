//! The order-selection engine: given one PMD region's occupancy and the settings, which
//! ranges to collapse and to which order. The contract is shared/design/policies.md.
//!
//! Pure, `no_std`, allocation-free: used by `collapse plan`, the live view and the executor.
//!
//! API SKELETON — being implemented (see policies.md). Signatures are the contract for
//! collapse-user; keep them or update every caller.

use crate::bitmap::OccupancyBitmap;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl core::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let _ = f;
        unimplemented!()
    }
}

impl OrderSet {
    pub const fn empty() -> Self {
        Self(0)
    }
    /// Errors on an order outside 2..=9.
    pub fn from_orders(_orders: impl IntoIterator<Item = u8>) -> Result<Self, SettingsError> {
        unimplemented!()
    }
    pub fn contains(self, _order: u8) -> bool {
        unimplemented!()
    }
    pub fn insert(&mut self, _order: u8) -> Result<(), SettingsError> {
        unimplemented!()
    }
    /// Ascending.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (MIN_ORDER..=MAX_ORDER).filter(move |&k| self.0 >> k & 1 == 1)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
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
    pub fn from_name(_name: &str) -> Option<Self> {
        unimplemented!()
    }
}

impl RegionState {
    pub const fn from_present(present: OccupancyBitmap) -> Self {
        Self { present, swap: OccupancyBitmap::EMPTY, shared: OccupancyBitmap::EMPTY }
    }
}

impl Default for Settings {
    /// The kernel's defaults: 511 / 64 / 256, PMD only, chunk order 3.
    fn default() -> Self {
        unimplemented!()
    }
}

impl Settings {
    pub fn new(
        _max_ptes_none: u16,
        _max_ptes_swap: u16,
        _max_ptes_shared: u16,
        _orders: OrderSet,
        _chunk_order: u8,
    ) -> Result<Self, SettingsError> {
        unimplemented!()
    }
    pub fn max_ptes_none(&self) -> u16 {
        self.max_ptes_none
    }
    pub fn max_ptes_swap(&self) -> u16 {
        self.max_ptes_swap
    }
    pub fn max_ptes_shared(&self) -> u16 {
        self.max_ptes_shared
    }
    pub fn orders(&self) -> OrderSet {
        self.orders
    }
    pub fn chunk_order(&self) -> u8 {
        self.chunk_order
    }
    pub fn with_max_ptes_none(self, _n: u16) -> Result<Self, SettingsError> {
        unimplemented!()
    }
}

impl Plan {
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions[..self.len as usize]
    }
    pub fn bloat_pages(&self) -> u32 {
        self.bloat_pages
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// PTEs covered by decisions of `order`.
    pub fn pages_at_order(&self, _order: u8) -> u32 {
        unimplemented!()
    }
    /// PTEs covered by all decisions.
    pub fn covered_pages(&self) -> u32 {
        unimplemented!()
    }
}

/// Runs `policy` over one region.
pub fn plan(_policy: Policy, _region: &RegionState, _settings: &Settings) -> Plan {
    unimplemented!()
}

/// Whether `merged` would print the kernel's warning: max_ptes_none is neither 0 nor 511
/// while an order below 9 is enabled, so those orders get 0 allowed empty PTEs.
pub fn merged_warns(_settings: &Settings) -> bool {
    unimplemented!()
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

impl Creep {
    pub fn new(_region: &RegionState) -> Self {
        unimplemented!()
    }
    pub fn pass(&mut self, _policy: Policy, _settings: &Settings) -> CreepPass {
        unimplemented!()
    }
    pub fn state(&self) -> &RegionState {
        &self.current
    }
    pub fn original(&self) -> &RegionState {
        &self.original
    }
}
