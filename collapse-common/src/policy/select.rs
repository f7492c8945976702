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

use super::{Decision, MAX_ORDER, MIN_ORDER, Plan, Settings};
use crate::consts::{BITMAP_WORDS, PMD_ORDER, PTES_PER_PMD};

/// A 512-bit bitmap as words, PTE 0 in bit 0 of word 0.
pub(super) type Words = [u64; BITMAP_WORDS];

/// Order of a 64-PTE word: orders above it span whole words.
const WORD_ORDER: u8 = 6;

/// Orders 2..=5 fit inside one word; for each, the SWAR constants of its ranges.
#[derive(Clone, Copy)]
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
/// utilised chunks for `seed`), prepared for [`select`]. An order that may not be chosen gets
/// a threshold no range reaches, so the search needs no branch on the enabled orders.
#[derive(Clone, Copy)]
pub(super) struct Thresholds {
    /// Orders 6..=9 (index order − 6): the least count, `u32::MAX` if disabled.
    whole_words: [u32; 4],
    /// Orders 2..=5 (index order − 2): 2^(w−1) − need in every w-bit field (w = 2^order),
    /// so that adding it sets a field's top bit iff its count reaches the need (see
    /// [`at_least`]); 0 if disabled, which no count ≤ 2^order < 2^(w−1) can push that far.
    in_word: [u64; 4],
    /// Whether every enabled order below 6 needs its range full (`merged` with n ≠ 511,
    /// `scaled` with small n), which an AND of shifted copies answers faster than counting.
    /// `seed` counts chunks, needing at most 2^(k−m) < 2^k, so it never takes this path,
    /// which would be wrong for its chunk-start bits.
    in_word_full: bool,
    /// Orders 2..=5: the start bit of every range if enabled, 0 if not.
    in_word_enabled: [u64; 4],
}

impl Thresholds {
    /// `need(k)`: the least count for a range of order k, at least 1 and at most what a full
    /// range counts; `orders`: bit k set iff order k may be chosen.
    #[inline(always)]
    fn new(orders: u16, need: impl Fn(u8) -> u16) -> Self {
        let enabled = |order: u8| orders >> order & 1 == 1;
        let whole_words = [6, 7, 8, 9].map(|order| {
            if enabled(order) {
                u32::from(need(order))
            } else {
                u32::MAX
            }
        });
        let in_word = IN_WORD.map(|level| {
            if enabled(level.order) {
                level
                    .lows
                    .wrapping_mul(bias(&level, u32::from(need(level.order))))
            } else {
                0
            }
        });
        let in_word_full = IN_WORD
            .iter()
            .all(|level| !enabled(level.order) || need(level.order) == 1 << level.order);
        let in_word_enabled =
            IN_WORD.map(|level| if enabled(level.order) { level.lows } else { 0 });
        Self {
            whole_words,
            in_word,
            in_word_full,
            in_word_enabled,
        }
    }

    /// policies.md "`merged`": order 9 allows n empty PTEs; orders below 9 allow 2^k - 1 if
    /// n = 511 and none otherwise (n = 0, or any other n, which the kernel warns about and
    /// treats as 0). "At least one occupied PTE" makes every need at least 1.
    pub(super) fn merged(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        Self::new(settings.orders.bits(), |k| {
            let pages = 1u16 << k;
            if k == PMD_ORDER {
                pages.saturating_sub(n).max(1)
            } else if n == 511 {
                1
            } else {
                pages
            }
        })
    }

    /// policies.md "`scaled`": order 9 allows n empty PTEs, order k < 9 allows
    /// min(n, 255) >> (9 - k).
    pub(super) fn scaled(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        Self::new(settings.orders.bits(), |k| {
            let allowed = if k == PMD_ORDER {
                n
            } else {
                n.min(255) >> (PMD_ORDER - k)
            };
            (1u16 << k).saturating_sub(allowed).max(1)
        })
    }

    /// policies.md "`seed`": a range of order k qualifies iff used = (utilised chunks) × c
    /// ≥ 2^k − (n >> (9 − k)) and used ≥ 1, i.e. iff its utilised chunks reach
    /// ceil((2^k − (n >> (9 − k))) / c), and at least one. Orders below m are never chosen.
    pub(super) fn seed(settings: &Settings) -> Self {
        let n = settings.max_ptes_none;
        let m = settings.chunk_order;
        let below_m = (1u16 << m) - 1;
        Self::new(settings.orders.bits() & !below_m, |k| {
            let fill = (1u16 << k).saturating_sub(n >> (PMD_ORDER - k));
            fill.div_ceil(1 << m).max(1)
        })
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

/// The addend that makes a w-bit field's top bit say "count ≥ need": 2^(w−1) − need.
fn bias(level: &InWordOrder, need: u32) -> u64 {
    (1u64 << ((1u32 << level.order) - 1)).saturating_sub(u64::from(need))
}

/// Per range of `level`, whether its count (from [`range_counts`]) reached the need that
/// `addend` (`level.lows` × [`bias`]) encodes: the bit at the range's start. Counts are at
/// most 2^k < 2^(w−1) for w = 2^k ≥ 4, so no field carries into the next one.
#[inline(always)]
fn at_least(counts: u64, level: &InWordOrder, addend: u64) -> u64 {
    (counts.wrapping_add(addend) >> ((1u32 << level.order) - 1)) & level.lows
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

/// Per range of orders 2..=5, whether every bit of `x` in it is set: the bit at its start
/// (not yet masked to range starts).
#[inline(always)]
fn all_set(x: u64) -> [u64; 4] {
    let a1 = x & x >> 1;
    let a2 = a1 & a1 >> 2;
    let a3 = a2 & a2 >> 4;
    let a4 = a3 & a3 >> 8;
    let a5 = a4 & a4 >> 16;
    [a2, a3, a4, a5]
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
            *out = at_least(counts, level, level.lows.wrapping_mul(bias(level, need)));
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

/// Gathers bits 0, 4, 8, .., 60 of `x` into bits 0..16: range starts of order ≥ 2 are
/// multiples of 4, so a region's starts fit one `u128` of 4-PTE slots.
#[inline(always)]
fn gather_slots(x: u64) -> u64 {
    let x = x & 0x1111_1111_1111_1111;
    let x = (x | x >> 3) & 0x0303_0303_0303_0303;
    let x = (x | x >> 6) & 0x000f_000f_000f_000f;
    let x = (x | x >> 12) & 0x0000_00ff_0000_00ff;
    (x | x >> 24) & 0xffff
}

/// `u8` with bit `i` set for each true `bits[i]`.
#[inline(always)]
fn mask_of<const N: usize>(bits: [bool; N]) -> u8 {
    bits.iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | u8::from(b) << i)
}

/// The decisions: every range of an enabled order whose count of `counted` bits reaches
/// its threshold, that holds no `refused` bit unless it is the whole PMD, and that no chosen
/// range of a higher order encloses, appended to `out`. Bloat is measured against
/// `occupied`.
#[inline(always)]
pub(super) fn select<const FULL: bool>(
    counted: &Words,
    occupied: &Words,
    refused: &Words,
    thresholds: &Thresholds,
    out: &mut Plan,
) {
    let [need6, need7, need8, need9] = thresholds.whole_words;
    let c = counted.map(u64::count_ones);
    let q = [c[0] + c[1], c[2] + c[3], c[4] + c[5], c[6] + c[7]];
    let h = [q[0] + q[1], q[2] + q[3]];

    // Order 9 first: it takes the whole region, and the gate has bounded swap and shared.
    if h[0] + h[1] >= need9 {
        let held: u32 = occupied.iter().map(|w| w.count_ones()).sum();
        out.push(0, MAX_ORDER, PTES_PER_PMD as u32 - held);
        return;
    }

    // Orders 8, 7, 6 span whole words: per word, bit w of `big*` says word w is inside a
    // chosen range of that order. policies.md "Terms": below order 9 a range holding a swap
    // or shared PTE is refused.
    let r = mask_of(refused.map(|w| w != 0));
    // A range of order 8 or 7 is chosen with all its words: (count, words) per range.
    let chosen_words = |ranges: &[(u32, u8)], need: u32| {
        ranges
            .iter()
            .filter(|&&(count, words)| count >= need && r & words == 0)
            .fold(0u8, |chosen, &(_, words)| chosen | words)
    };
    let big8 = chosen_words(&[(h[0], 0x0f), (h[1], 0xf0)], need8);
    let quarters = [(q[0], 0x03), (q[1], 0x0c), (q[2], 0x30), (q[3], 0xc0)];
    let big7 = chosen_words(&quarters, need7) & !big8;
    let big6 = mask_of(c.map(|c| c >= need6)) & !r & !(big8 | big7);
    let covered = big8 | big7 | big6;
    // Start words of those ranges, and their order − 2 in three bit planes (6 → 4, 7 → 5,
    // 8 → 6).
    let (start8, start7) = (big8 & 0x11, big7 & 0x55);
    let big_starts = start8 | start7 | big6;

    let mut slots = 0u128;
    let mut plane = [[0u64; BITMAP_WORDS]; 3];
    let words = counted.iter().zip(occupied).zip(refused);
    for (w, ((&counted, &occupied), &refused)) in words.enumerate() {
        let big_start = u64::from(big_starts >> w & 1);
        let mut cover = 0u64.wrapping_sub(u64::from(covered >> w & 1));
        let mut starts = big_start;
        let mut p0 = big_start & u64::from(start7 >> w & 1);
        let mut p1 = big_start & u64::from(start8 >> w & 1);
        let p2 = big_start;

        // Orders 5 down to 2 within the word; `cover` holds the PTEs already chosen.
        let qualify = if FULL {
            let full = all_set(counted);
            let [e2, e3, e4, e5] = thresholds.in_word_enabled;
            [full[0] & e2, full[1] & e3, full[2] & e4, full[3] & e5]
        } else {
            let counts = range_counts(counted);
            let [l2, l3, l4, l5] = &IN_WORD;
            let [a2, a3, a4, a5] = thresholds.in_word;
            [
                at_least(counts[0], l2, a2),
                at_least(counts[1], l3, a3),
                at_least(counts[2], l4, a4),
                at_least(counts[3], l5, a5),
            ]
        };
        let refusing = if refused == 0 {
            [0; 4]
        } else {
            any_set(refused)
        };
        let [l2, l3, l4, l5] = &IN_WORD;
        let chosen = qualify[3] & !refusing[3] & !cover;
        cover |= chosen.wrapping_mul(l5.span);
        (starts, p0, p1) = (starts | chosen, p0 | chosen, p1 | chosen);
        let chosen = qualify[2] & !refusing[2] & !cover;
        cover |= chosen.wrapping_mul(l4.span);
        (starts, p1) = (starts | chosen, p1 | chosen);
        let chosen = qualify[1] & !refusing[1] & !cover;
        cover |= chosen.wrapping_mul(l3.span);
        (starts, p0) = (starts | chosen, p0 | chosen);
        let chosen = qualify[0] & !refusing[0] & !cover;
        cover |= chosen.wrapping_mul(l2.span);
        starts |= chosen;

        out.bloat_pages += (cover & !occupied).count_ones();
        slots |= u128::from(gather_slots(starts)) << (16 * w);
        for (plane, bits) in plane.iter_mut().zip([p0, p1, p2]) {
            if let Some(word) = plane.get_mut(w) {
                *word = bits;
            }
        }
    }

    // Ascending, one loop per half region. Chosen ranges are disjoint and at least 4 PTEs
    // long, so there are at most 128 and every one has a slot.
    let [p0, p1, p2] = plane;
    let mut len = usize::from(out.len);
    for (half, mut slots) in [slots as u64, (slots >> 64) as u64].into_iter().enumerate() {
        while slots != 0 {
            let pte = half * 256 + slots.trailing_zeros() as usize * 4;
            let (w, bit) = (pte / 64 % BITMAP_WORDS, pte % 64);
            let code = (p0[w] >> bit & 1) | (p1[w] >> bit & 1) << 1 | (p2[w] >> bit & 1) << 2;
            if let Some(slot) = out.decisions.get_mut(len) {
                *slot = Decision {
                    offset: pte as u16,
                    order: MIN_ORDER + code as u8,
                };
                len += 1;
            }
            slots &= slots - 1;
        }
    }
    out.len = len as u16;
}

impl Thresholds {
    /// Whether [`select`] may use its full-range shortcut for these thresholds.
    pub(super) fn in_word_full(&self) -> bool {
        self.in_word_full
    }
}
