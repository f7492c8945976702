//! The settings a plan runs with: the running kernel's (THP sysfs), each overridden by its
//! flag, validated before anything is read or printed.

use collapse_common::{
    consts::PMD_ORDER,
    policy::{MAX_ORDER, MIN_ORDER, OrderSet, Policy, Settings},
};

use super::error::PlanError;
use crate::kernel::thp::{ThpError, ThpSettings};

/// The kernel's defaults (`mm/khugepaged.c`: `khugepaged_max_ptes_none = HPAGE_PMD_NR - 1`,
/// `max_ptes_swap = HPAGE_PMD_NR / 8`, `max_ptes_shared = HPAGE_PMD_NR / 2`), PMD size only.
const DEFAULT_MAX_PTES_NONE: u16 = 511;
const DEFAULT_MAX_PTES_SWAP: u16 = 64;
const DEFAULT_MAX_PTES_SHARED: u16 = 256;
/// The `seed` design's `MTHP_MIN_ORDER`: chunks of 8 PTEs, one `u64` per PMD.
const DEFAULT_CHUNK_ORDER: u8 = 3;
/// Largest value of every `max_ptes_*` (`HPAGE_PMD_NR - 1`).
pub const MAX_PTES: u16 = 511;

/// The policy flags, parsed and range-checked; `None` means "the kernel's value".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub policy: Option<Policy>,
    pub max_ptes_none: Option<u16>,
    pub max_ptes_swap: Option<u16>,
    pub max_ptes_shared: Option<u16>,
    /// Ascending, no duplicates, each in 2..=9.
    pub orders: Option<Vec<u8>>,
    pub chunk_order: Option<u8>,
}

/// Where the values not given as flags came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// THP sysfs of the running kernel.
    Kernel,
    /// sysfs could not be read; the kernel's compiled-in defaults.
    Defaults { reason: String },
    /// Every kernel-derived value was given as a flag, so sysfs was not read.
    Flags,
}

/// Everything a plan needs to know about its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSettings {
    pub policy: Policy,
    pub settings: Settings,
    pub origin: Origin,
    /// The flags that overrode a kernel value, as typed (`--max-ptes-none`).
    pub flags: Vec<&'static str>,
    /// The kernel enables no collapse size in 16K..2M and `--orders` was not given.
    pub kernel_orders_empty: bool,
}

impl Overrides {
    /// Whether any value still has to come from the kernel (`sweeping`: max_ptes_none is
    /// the sweep's to set).
    fn needs_kernel(&self, sweeping: bool) -> bool {
        (self.max_ptes_none.is_none() && !sweeping)
            || self.max_ptes_swap.is_none()
            || self.max_ptes_shared.is_none()
            || self.orders.is_none()
    }

    pub fn flags(&self) -> Vec<&'static str> {
        let Self {
            policy,
            max_ptes_none,
            max_ptes_swap,
            max_ptes_shared,
            orders,
            chunk_order,
        } = self;
        [
            ("--policy", policy.is_some()),
            ("--max-ptes-none", max_ptes_none.is_some()),
            ("--orders", orders.is_some()),
            ("--min-order", chunk_order.is_some()),
            ("--max-ptes-swap", max_ptes_swap.is_some()),
            ("--max-ptes-shared", max_ptes_shared.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// Kernel values (or defaults) overridden by the flags. `read_kernel` is only called if some
/// value is not given as a flag.
pub fn resolve(
    overrides: &Overrides,
    sweeping: bool,
    read_kernel: impl FnOnce() -> Result<ThpSettings, ThpError>,
) -> Result<PlanSettings, PlanError> {
    let (origin, kernel) = if overrides.needs_kernel(sweeping) {
        match read_kernel() {
            Ok(thp) => (Origin::Kernel, Some(thp)),
            Err(err) => (
                Origin::Defaults {
                    reason: err.to_string(),
                },
                None,
            ),
        }
    } else {
        (Origin::Flags, None)
    };
    let (base_none, base_swap, base_shared, base_orders) = match &kernel {
        Some(thp) => {
            let k = &thp.khugepaged;
            (
                k.max_ptes_none,
                k.max_ptes_swap,
                k.max_ptes_shared,
                kernel_orders(thp),
            )
        }
        None => (
            DEFAULT_MAX_PTES_NONE,
            DEFAULT_MAX_PTES_SWAP,
            DEFAULT_MAX_PTES_SHARED,
            vec![PMD_ORDER],
        ),
    };
    let kernel_orders_empty = overrides.orders.is_none() && base_orders.is_empty();
    let orders = overrides.orders.clone().unwrap_or(base_orders);
    // A sweep sets max_ptes_none itself: the kernel's is neither used nor checked.
    let max_ptes_none = match (overrides.max_ptes_none, sweeping) {
        (Some(n), _) => n,
        (None, true) => DEFAULT_MAX_PTES_NONE,
        (None, false) => base_none,
    };
    let max_ptes_swap = overrides.max_ptes_swap.unwrap_or(base_swap);
    let max_ptes_shared = overrides.max_ptes_shared.unwrap_or(base_shared);
    // Kernel values are bounded by the kernel itself; a fake or future sysfs might not be.
    for (name, value) in [
        ("max_ptes_none", max_ptes_none),
        ("max_ptes_swap", max_ptes_swap),
        ("max_ptes_shared", max_ptes_shared),
    ] {
        if value > MAX_PTES {
            return Err(PlanError::KernelValue {
                name,
                value,
                max: MAX_PTES,
            });
        }
    }
    let order_set = OrderSet::from_orders(orders.iter().copied()).map_err(PlanError::Orders)?;
    let chunk_order = overrides.chunk_order.unwrap_or(DEFAULT_CHUNK_ORDER);
    let settings = Settings::new(
        max_ptes_none,
        max_ptes_swap,
        max_ptes_shared,
        order_set,
        chunk_order,
    )
    .map_err(PlanError::Settings)?;
    Ok(PlanSettings {
        policy: overrides.policy.unwrap_or_default(),
        settings,
        origin,
        flags: overrides.flags(),
        kernel_orders_empty,
    })
}

/// The collapse orders the kernel enables for anonymous memory: every per-size `enabled` that
/// is not `never` (`inherit` resolves to the global `enabled`), within 2..=9 (8 kB, order 1,
/// is not a collapse size).
pub fn kernel_orders(thp: &ThpSettings) -> Vec<u8> {
    (MIN_ORDER..=MAX_ORDER)
        .filter(|&k| thp.order_on(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::kernel::thp::{KhugepagedSettings, SizeEnabled, SizeSetting, ThpEnabled};

    fn thp(global: ThpEnabled, sizes: &[(u64, SizeEnabled)]) -> ThpSettings {
        ThpSettings {
            enabled: global,
            defrag: "madvise".into(),
            sizes: sizes
                .iter()
                .map(|&(size_kib, enabled)| SizeSetting {
                    size_kib,
                    order: (size_kib / 4).trailing_zeros() as u8,
                    enabled,
                })
                .collect(),
            khugepaged: KhugepagedSettings {
                pages_to_scan: 4096,
                scan_sleep_millisecs: 10000,
                alloc_sleep_millisecs: 60000,
                max_ptes_none: 100,
                max_ptes_swap: 10,
                max_ptes_shared: 20,
                defrag: true,
                pages_collapsed: 0,
                full_scans: 0,
            },
        }
    }

    #[test]
    fn kernel_orders_follow_sysfs() {
        use SizeEnabled::*;
        let t = thp(
            ThpEnabled::Madvise,
            &[
                (8, Always),
                (16, Never),
                (64, Always),
                (1024, Madvise),
                (2048, Inherit),
            ],
        );
        assert_eq!(kernel_orders(&t), [4, 8, 9]);
        let t = thp(ThpEnabled::Never, &[(64, Inherit), (2048, Inherit)]);
        assert_eq!(kernel_orders(&t), [] as [u8; 0]);
        let t = thp(ThpEnabled::Always, &[]);
        assert_eq!(kernel_orders(&t), [9]);
    }

    #[test]
    fn flags_override_the_kernel() {
        let t = thp(
            ThpEnabled::Madvise,
            &[(64, SizeEnabled::Always), (2048, SizeEnabled::Inherit)],
        );
        let o = Overrides {
            max_ptes_none: Some(300),
            ..Overrides::default()
        };
        let p = resolve(&o, false, || Ok(t.clone())).unwrap();
        assert_eq!(p.origin, Origin::Kernel);
        assert_eq!(p.policy, Policy::Seed);
        assert_eq!(p.settings.max_ptes_none(), 300);
        assert_eq!(p.settings.max_ptes_swap(), 10);
        assert_eq!(p.settings.max_ptes_shared(), 20);
        assert_eq!(p.settings.orders().iter().collect::<Vec<_>>(), [4, 9]);
        assert_eq!(p.settings.chunk_order(), 3);
        assert!(!p.kernel_orders_empty);
    }

    #[test]
    fn kernel_not_read_when_every_value_is_given() {
        let o = Overrides {
            max_ptes_none: Some(1),
            max_ptes_swap: Some(2),
            max_ptes_shared: Some(3),
            orders: Some(vec![2]),
            ..Overrides::default()
        };
        let p = resolve(&o, false, || {
            panic!("sysfs read although every value was given")
        })
        .unwrap();
        assert_eq!(p.origin, Origin::Flags);
        assert_eq!(p.settings.orders().iter().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn defaults_without_sysfs_and_empty_kernel_set() {
        let p = resolve(&Overrides::default(), false, || {
            Err(ThpError::Missing {
                path: PathBuf::from("/nope"),
            })
        })
        .unwrap();
        assert!(matches!(p.origin, Origin::Defaults { ref reason } if reason.contains("/nope")));
        assert_eq!(
            (
                p.settings.max_ptes_none(),
                p.settings.max_ptes_swap(),
                p.settings.max_ptes_shared()
            ),
            (511, 64, 256)
        );
        assert_eq!(p.settings.orders().iter().collect::<Vec<_>>(), [9]);

        let t = thp(ThpEnabled::Never, &[(2048, SizeEnabled::Inherit)]);
        let p = resolve(&Overrides::default(), false, || Ok(t)).unwrap();
        assert!(p.kernel_orders_empty);
        assert!(p.settings.orders().is_empty());
    }
}
