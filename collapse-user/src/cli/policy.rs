//! The POLICY flags (DESIGN.md) parsed and range-checked into the planner's [`Overrides`].

use anyhow::{Context as _, bail};
use collapse::planner::{MAX_PTES, Overrides};
use collapse_common::{
    consts::PMD_ORDER,
    policy::{MAX_ORDER, MIN_ORDER, Policy},
};

use super::args::PolicyArgs;

/// The policy flags as the planner takes them; `None` stays "the kernel's value".
pub(crate) fn overrides(args: &PolicyArgs) -> anyhow::Result<Overrides> {
    let PolicyArgs {
        policy,
        max_ptes_none,
        orders,
        min_order,
        max_ptes_swap,
        max_ptes_shared,
    } = args;
    let policy = policy.as_deref().map(parse_policy).transpose()?;
    let orders = orders.as_deref().map(parse_orders).transpose()?;
    let chunk_order = min_order
        .as_deref()
        .map(|text| {
            let order = parse_size(text).with_context(|| format!("--min-order {text}"))?;
            if !(MIN_ORDER..PMD_ORDER).contains(&order) {
                bail!("--min-order {text}: the seed chunk must be 16K..1M (orders 2..8)");
            }
            Ok(order)
        })
        .transpose()?;
    Ok(Overrides {
        policy,
        max_ptes_none: check_ptes("--max-ptes-none", *max_ptes_none)?,
        max_ptes_swap: check_ptes("--max-ptes-swap", *max_ptes_swap)?,
        max_ptes_shared: check_ptes("--max-ptes-shared", *max_ptes_shared)?,
        orders,
        chunk_order,
    })
}

fn parse_policy(name: &str) -> anyhow::Result<Policy> {
    Policy::ALL
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
        .with_context(|| format!("unknown policy {name:?} (seed, merged, scaled or pmd)"))
}

pub(crate) fn check_ptes(flag: &str, value: Option<u16>) -> anyhow::Result<Option<u16>> {
    match value {
        Some(v) if v > MAX_PTES => bail!("{flag} {v} is outside 0..{MAX_PTES}"),
        _ => Ok(value),
    }
}

/// `--orders`: comma-separated sizes (16K..2M) or order numbers (2..9).
pub(crate) fn parse_orders(list: &str) -> anyhow::Result<Vec<u8>> {
    let mut orders = Vec::new();
    for item in list.split(',') {
        let order = parse_size(item).with_context(|| format!("--orders {list}"))?;
        if !(MIN_ORDER..=MAX_ORDER).contains(&order) {
            bail!(
                "--orders {list}: {} is not a collapse size (16K..2M)",
                item.trim()
            );
        }
        orders.push(order);
    }
    orders.sort_unstable();
    orders.dedup();
    Ok(orders)
}

/// A size (`64K`, `64kB`, `1M`, case-insensitive) or an order number (`4`), as an order.
pub(crate) fn parse_size(text: &str) -> anyhow::Result<u8> {
    let item = text.trim();
    if item.is_empty() {
        bail!("a size is empty");
    }
    let upper = item.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, unit) = upper.split_at(digits_end);
    let bad = || anyhow::anyhow!("{item} is not a size like 64K or 2M, nor an order 2..9");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let kib = match unit {
        "" => {
            return u8::try_from(number)
                .ok()
                .filter(|k| (MIN_ORDER..=MAX_ORDER).contains(k))
                .ok_or_else(bad);
        }
        "K" | "KB" | "KIB" => number,
        "M" | "MB" | "MIB" => number.checked_mul(1024).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if kib < 4 || kib % 4 != 0 || !(kib / 4).is_power_of_two() {
        bail!("{item} is not a power-of-two multiple of 4K");
    }
    u8::try_from((kib / 4).trailing_zeros()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut PolicyArgs)) -> PolicyArgs {
        let mut a = PolicyArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn sizes_and_orders() {
        for (text, order) in [
            ("16K", 2),
            ("32k", 3),
            ("64KB", 4),
            ("128kib", 5),
            ("256K", 6),
            ("512K", 7),
            ("1M", 8),
            ("2m", 9),
            (" 4 ", 4),
        ] {
            assert_eq!(parse_size(text).unwrap(), order, "{text}");
        }
        assert_eq!(parse_size("8K").unwrap(), 1);
        for bad in ["", "48K", "2G", "K", "1", "10", "-4", "x"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_orders("2M,64K,16k,64K").unwrap(), [2, 4, 9]);
        assert_eq!(parse_orders("2,9").unwrap(), [2, 9]);
        let err = format!("{:#}", parse_orders("64K,8K").unwrap_err());
        assert_eq!(err, "--orders 64K,8K: 8K is not a collapse size (16K..2M)");
        assert!(parse_orders("64K,,2M").is_err());
        assert!(parse_orders("4M").is_err());
    }

    #[test]
    fn flags_are_checked() {
        let o = overrides(&args(|a| {
            a.policy = Some("Merged".into());
            a.min_order = Some("64K".into());
            a.max_ptes_none = Some(0);
        }))
        .unwrap();
        assert_eq!(o.policy, Some(Policy::Merged));
        assert_eq!(o.chunk_order, Some(4));
        assert_eq!(o.flags(), ["--policy", "--max-ptes-none", "--min-order"]);

        let err = |a: PolicyArgs| format!("{:#}", overrides(&a).unwrap_err());
        assert_eq!(
            err(args(|a| a.policy = Some("greedy".into()))),
            "unknown policy \"greedy\" (seed, merged, scaled or pmd)"
        );
        assert_eq!(
            err(args(|a| a.max_ptes_none = Some(512))),
            "--max-ptes-none 512 is outside 0..511"
        );
        assert_eq!(
            err(args(|a| a.max_ptes_swap = Some(600))),
            "--max-ptes-swap 600 is outside 0..511"
        );
        assert_eq!(
            err(args(|a| a.max_ptes_shared = Some(999))),
            "--max-ptes-shared 999 is outside 0..511"
        );
        assert!(err(args(|a| a.min_order = Some("2M".into()))).contains("16K..1M"));
        assert!(err(args(|a| a.min_order = Some("8K".into()))).contains("16K..1M"));
    }
}
