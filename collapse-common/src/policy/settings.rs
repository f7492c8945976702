//! Validation of the settings of policies.md and their defaults (the kernel's).

use super::{MAX_ORDER, MIN_ORDER, OrderSet, Settings, SettingsError};

/// Largest `max_ptes_none`, `max_ptes_swap` and `max_ptes_shared`: one PMD less one PTE, as
/// the kernel's sysfs stores accept (`mm/khugepaged.c`, `HPAGE_PMD_NR - 1`).
const MAX_PTES: u16 = 511;
/// Chunk orders `seed` accepts (policies.md "`seed`": m in 2..8).
const MIN_CHUNK_ORDER: u8 = MIN_ORDER;
const MAX_CHUNK_ORDER: u8 = MAX_ORDER - 1;

impl core::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::MaxPtesNone(n) => write!(f, "max_ptes_none {n} is outside 0..{MAX_PTES}"),
            Self::MaxPtesSwap(n) => write!(f, "max_ptes_swap {n} is outside 0..{MAX_PTES}"),
            Self::MaxPtesShared(n) => write!(f, "max_ptes_shared {n} is outside 0..{MAX_PTES}"),
            Self::Order(k) => write!(f, "order {k} is outside {MIN_ORDER}..{MAX_ORDER}"),
            Self::ChunkOrder(m) => {
                write!(
                    f,
                    "chunk order {m} is outside {MIN_CHUNK_ORDER}..{MAX_CHUNK_ORDER}"
                )
            }
        }
    }
}

impl core::error::Error for SettingsError {}

impl Default for Settings {
    /// The kernel's defaults: 511 / 64 / 256, PMD only, chunk order 3.
    fn default() -> Self {
        Self {
            max_ptes_none: 511,
            max_ptes_swap: 64,
            max_ptes_shared: 256,
            orders: OrderSet::PMD,
            chunk_order: 3,
        }
    }
}

impl Settings {
    /// Checks every value against its range in policies.md.
    ///
    /// An empty `orders` is accepted: like the kernel with every size disabled, every policy
    /// then simply makes no decision.
    pub fn new(
        max_ptes_none: u16,
        max_ptes_swap: u16,
        max_ptes_shared: u16,
        orders: OrderSet,
        chunk_order: u8,
    ) -> Result<Self, SettingsError> {
        if max_ptes_none > MAX_PTES {
            return Err(SettingsError::MaxPtesNone(max_ptes_none));
        }
        if max_ptes_swap > MAX_PTES {
            return Err(SettingsError::MaxPtesSwap(max_ptes_swap));
        }
        if max_ptes_shared > MAX_PTES {
            return Err(SettingsError::MaxPtesShared(max_ptes_shared));
        }
        if !(MIN_CHUNK_ORDER..=MAX_CHUNK_ORDER).contains(&chunk_order) {
            return Err(SettingsError::ChunkOrder(chunk_order));
        }
        Ok(Self {
            max_ptes_none,
            max_ptes_swap,
            max_ptes_shared,
            orders,
            chunk_order,
        })
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
    pub fn with_max_ptes_none(self, n: u16) -> Result<Self, SettingsError> {
        let Self {
            max_ptes_none: _,
            max_ptes_swap,
            max_ptes_shared,
            orders,
            chunk_order,
        } = self;
        Self::new(n, max_ptes_swap, max_ptes_shared, orders, chunk_order)
    }
    /// The same settings with the enabled orders replaced.
    pub fn with_orders(self, orders: OrderSet) -> Self {
        Self { orders, ..self }
    }
}
