//! The search shared by `merged`, `scaled` and `seed`, done bit-parallel.
//!
//! All three search the aligned binary tree from (0, 9) and take a range as soon as it
//! qualifies (policies.md: `merged` step 1-3, the `scaled` stack, "same stack-driven search"
//! for `seed`), so the decisions are exactly the qualifying ranges of enabled orders that no
//! qualifying range of an enabled higher order encloses. This module evaluates a threshold
//! for every range of an order at once and selects those topmost ranges with masks.
//!
//! Bitmaps are kept "in PTE space": the qualification bit of range (o, k) is bit o, so the
//! bitmaps of all orders share one layout and can be combined with plain `&` and `|`.

use super::{MAX_ORDER, MIN_ORDER, Plan, Settings};
use crate::consts::{BITMAP_WORDS, PMD_ORDER};

/// A 512-bit bitmap as words, PTE 0 in bit 0 of word 0.
pub(super) type Words = [u64; BITMAP_WORDS];

/// Order of a 64-PTE word: orders above it span whole words.
const WORD_ORDER: u8 = 6;

/// Orders 2..=5 fit inside one word; for each, the SWAR constants of its ranges.
struct InWordOrder {
    order: u8,
    /// The lowest bit of every range of this order.
    lows: u64,
    /// Every bit of the first range (2^order low bits), to widen a start bit to its range.
    span: u64,
}

const IN_WORD: [InWordOrder; 4] = [
    InWordOrder {
        order: 2,
        lows: 0x1111_1111_1111_1111,
        span: 0xf,
    },
    InWordOrder {
        order: 3,
        lows: 0x0101_0101_0101_0101,
        span: 0xff,
    },
    InWordOrder {
        order: 4,
        lows: 0x0001_0001_0001_0001,
        span: 0xffff,
    },
    InWordOrder {
        order: 5,
        lows: 0x0000_0001_0000_0001,
        span: 0xffff_ffff,
    },
];

/// What a range of each order must reach to qualify, in the unit being counted (PTEs, or
/// utilised chunks for `seed`).
pub(super) struct Thresholds {
    /// `need[k]`: the least count for a range of order k; at least 1, at most the count a
    /// full range reaches.
    need: [u16; PMD_ORDER as usize + 1],
    /// Bit k: order k may be chosen.
    orders: u16,
}

impl Thresholds {
    /// policies.md "`merged`": order 9 allows n empty PTEs; orders below 9 allow 2^k - 1 if
    /// n = 511 and none otherwise (n = 0, or any other n, which the kernel warns about and
    /// treats as 0). "At least one occupied PTE" makes every need at least 1.
    pub(super) fn merged(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        let mut need = [0; PMD_ORDER as usize + 1];
        for (k, need) in need.iter_mut().enumerate() {
            let pages = 1u16 << k;
            *need = if k == usize::from(PMD_ORDER) {
                pages.saturating_sub(n)
            } else if n == 511 {
                1
            } else {
                pages
            }
            .max(1);
        }
        Self {
            need,
            orders: settings.orders.bits(),
        }
    }

    /// policies.md "`scaled`": order 9 allows n empty PTEs, order k < 9 allows
    /// min(n, 255) >> (9 - k).
    pub(super) fn scaled(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        let mut need = [0; PMD_ORDER as usize + 1];
        for (k, need) in need.iter_mut().enumerate() {
            let pages = 1u16 << k;
            let allowed = if k == usize::from(PMD_ORDER) {
                n
            } else {
                n.min(255) >> (usize::from(PMD_ORDER) - k)
            };
            *need = pages.saturating_sub(allowed).max(1);
        }
        Self {
            need,
            orders: settings.orders.bits(),
        }
    }

    /// policies.md "`seed`": a range of order k qualifies iff used = (utilised chunks) × c
    /// ≥ 2^k − (n >> (9 − k)) and used ≥ 1, i.e. iff its utilised chunks reach
    /// ceil((2^k − (n >> (9 − k))) / c), and at least one. Orders below m are never chosen.
    pub(super) fn seed(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        let m = settings.chunk_order;
        let mut need = [0; PMD_ORDER as usize + 1];
        for (k, need) in need.iter_mut().enumerate() {
            let pages = 1u16 << k;
            let fill = pages.saturating_sub(n >> (usize::from(PMD_ORDER).saturating_sub(k)));
            *need = fill.div_ceil(1 << m).max(1);
        }
        let below_m = (1u16 << m) - 1;
        Self {
            need,
            orders: settings.orders.bits() & !below_m,
        }
    }

    fn enabled(&self, order: u8) -> bool {
        self.orders >> order & 1 == 1
    }

    fn need(&self, order: u8) -> u32 {
        self.need
            .get(usize::from(order))
            .map_or(u32::MAX, |&n| u32::from(n))
    }
}

/// SWAR population counts of one word for orders 2..=5: the count of each range of order k
/// sits in that range's own 2^k bits.
#[inline(always)]
fn range_counts(x: u64) -> [u64; 4] {
    let c1 = x.wrapping_sub((x >> 1) & 0x5555_5555_5555_5555);
    let c2 = (c1 & 0x3333_3333_3333_3333) + ((c1 >> 2) & 0x3333_3333_3333_3333);
    let c3 = (c2 & 0x0f0f_0f0f_0f0f_0f0f) + ((c2 >> 4) & 0x0f0f_0f0f_0f0f_0f0f);
    let c4 = (c3 & 0x00ff_00ff_00ff_00ff) + ((c3 >> 8) & 0x00ff_00ff_00ff_00ff);
    let c5 = (c4 & 0x0000_ffff_0000_ffff) + ((c4 >> 16) & 0x0000_ffff_0000_ffff);
    [c2, c3, c4, c5]
}

/// Per range of `level`, whether its count (from [`range_counts`]) is at least `need`: the
/// bit at the range's start. Adding 2^(w−1) − need to each w-bit field sets the field's top
/// bit iff count ≥ need; counts ≤ 2^k < 2^(w−1) for w = 2^k ≥ 4, so no field carries into the
/// next one.
#[inline(always)]
fn at_least(counts: u64, level: &InWordOrder, need: u32) -> u64 {
    let top = (1u32 << level.order) - 1;
    let bias = (1u64 << top).saturating_sub(u64::from(need));
    (counts.wrapping_add(level.lows.wrapping_mul(bias)) >> top) & level.lows
}

/// Per range of orders 2..=5, whether it holds any set bit of `x`: the bit at its start.
#[inline(always)]
fn any_set(x: u64) -> [u64; 4] {
    let o1 = x | x >> 1;
    let o2 = o1 | o1 >> 2;
    let o3 = o2 | o2 >> 4;
    let o4 = o3 | o3 >> 8;
    let o5 = o4 | o4 >> 16;
    [o2, o3, o4, o5]
}

/// policies.md "`seed`": chunk i of c = 2^m PTEs is utilised iff c − occupied ≤
/// n >> (9 − m). The result has a bit at the start of each utilised chunk, so counting its
/// bits in a range counts that range's utilised chunks.
pub(super) fn chunk_utilisation(occupied: &Words, settings: &Settings) -> Words {
    let m = settings.chunk_order;
    let chunk = 1u32 << m;
    let need = chunk.saturating_sub(u32::from(settings.max_ptes_none >> (PMD_ORDER - m).min(15)));
    let mut out = [0; BITMAP_WORDS];
    if let Some(level) = IN_WORD.iter().find(|l| l.order == m) {
        for (out, &word) in out.iter_mut().zip(occupied) {
            let counts = range_counts(word);
            let counts = counts.get(usize::from(m - MIN_ORDER)).copied().unwrap_or(0);
            *out = at_least(counts, level, need);
        }
    } else {
        // Chunks of whole words (m = 6, 7, 8).
        let words = 1usize << m.saturating_sub(WORD_ORDER);
        for (out, occupied) in out
            .chunks_exact_mut(words)
            .zip(occupied.chunks_exact(words))
        {
            let count: u32 = occupied.iter().map(|w| w.count_ones()).sum();
            if let Some(first) = out.first_mut() {
                *first = u64::from(count >= need);
            }
        }
    }
    out
}

/// The decisions: every range of an enabled order whose count of `counted` bits reaches
/// its threshold, that holds no `refused` bit unless it is the whole PMD, and that no chosen
/// range of a higher order encloses. Bloat is measured against `occupied`.
pub(super) fn select(
    counted: &Words,
    occupied: &Words,
    refused: &Words,
    thresholds: &Thresholds,
) -> Plan {
    let mut out = Plan::EMPTY;
    let counts: [u32; BITMAP_WORDS] = counted.map(u64::count_ones);

    // Orders 9 down to 6 span whole words: a word is either inside one chosen range or
    // holds none of them.
    let mut big_order = [0u8; BITMAP_WORDS];
    let mut covered = 0u16;
    for order in (WORD_ORDER..=MAX_ORDER).rev() {
        if !thresholds.enabled(order) {
            continue;
        }
        let words = 1usize << (order - WORD_ORDER);
        let need = thresholds.need(order);
        let ranges = counts.chunks_exact(words).zip(refused.chunks_exact(words));
        for (i, ((counts, refused), big)) in
            ranges.zip(big_order.iter_mut().step_by(words)).enumerate()
        {
            let first = i * words;
            if covered >> first & 1 == 1 {
                continue;
            }
            // policies.md "Terms": below order 9 a range with a swap or shared PTE is
            // refused; at order 9 the gate has already bounded them.
            let clean = order == PMD_ORDER || refused.iter().all(|&w| w == 0);
            if clean && counts.iter().sum::<u32>() >= need {
                *big = order;
                covered |= ((1u16 << words) - 1) << first;
            }
        }
    }

    let small_orders = thresholds.orders & 0b11_1100;
    let words = counted.iter().zip(occupied).zip(refused).zip(big_order);
    for (w, (((&counted, &occupied_word), &refused), big)) in words.enumerate() {
        let base = (w * 64) as u16;
        if covered >> w & 1 == 1 {
            if big != 0 {
                let pages = 1u32 << big;
                let words = 1usize << (big - WORD_ORDER);
                let held: u32 = occupied
                    .iter()
                    .skip(w)
                    .take(words)
                    .map(|w| w.count_ones())
                    .sum();
                out.push(base, big, pages - held);
            }
            continue;
        }
        if small_orders == 0 || counted == 0 {
            continue;
        }
        let counts = range_counts(counted);
        let refusing = if refused == 0 {
            [0; 4]
        } else {
            any_set(refused)
        };
        // Within the word, orders 5 down to 2: `cover` holds the PTEs of ranges already
        // chosen, `plane0/1` encode (order − 2) at each chosen range's start.
        let (mut cover, mut starts, mut plane0, mut plane1) = (0u64, 0u64, 0u64, 0u64);
        let levels = IN_WORD.iter().zip(counts).zip(refusing);
        for ((level, counts), refusing) in levels.rev() {
            if small_orders >> level.order & 1 == 0 {
                continue;
            }
            let qualifies = at_least(counts, level, thresholds.need(level.order)) & !refusing;
            let chosen = qualifies & !cover;
            cover |= chosen.wrapping_mul(level.span);
            starts |= chosen;
            let code = level.order - MIN_ORDER;
            if code & 1 != 0 {
                plane0 |= chosen;
            }
            if code & 2 != 0 {
                plane1 |= chosen;
            }
        }
        out.bloat_pages += (cover & !occupied_word).count_ones();
        while starts != 0 {
            let bit = starts.trailing_zeros();
            let order = MIN_ORDER + (plane0 >> bit & 1) as u8 + 2 * (plane1 >> bit & 1) as u8;
            out.push(base + bit as u16, order, 0);
            starts &= starts - 1;
        }
    }
    out
}
