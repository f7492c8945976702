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
