//! The 512-bit occupancy bitmap of one PMD region: bit i set means PTE i maps a page.

use crate::consts::{BITMAP_WORDS, PTES_PER_PMD};

/// One bit per PTE of a PMD region, PTE 0 in bit 0 of word 0.
///
/// This is the value type of the BPF region map, so its layout is the wire format.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OccupancyBitmap {
    pub words: [u64; BITMAP_WORDS],
}

const _: () = assert!(core::mem::size_of::<OccupancyBitmap>() == 64);

impl OccupancyBitmap {
    pub const EMPTY: Self = Self {
        words: [0; BITMAP_WORDS],
    };
    pub const FULL: Self = Self {
        words: [u64::MAX; BITMAP_WORDS],
    };

    /// Bits `[start, end)` set; `end` is clamped to 512.
    pub fn from_range(start: usize, end: usize) -> Self {
        let mut b = Self::EMPTY;
        b.set_range(start, end);
        b
    }

    #[inline]
    pub fn get(&self, i: usize) -> bool {
        i < PTES_PER_PMD && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    #[inline]
    pub fn set(&mut self, i: usize) {
        if i < PTES_PER_PMD {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    #[inline]
    pub fn clear(&mut self, i: usize) {
        if i < PTES_PER_PMD {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Sets bits `[start, end)`, clamped to 512.
    pub fn set_range(&mut self, start: usize, end: usize) {
        self.apply_range(start, end, |w, m| *w |= m);
    }

    /// Clears bits `[start, end)`, clamped to 512.
    pub fn clear_range(&mut self, start: usize, end: usize) {
        self.apply_range(start, end, |w, m| *w &= !m);
    }

    fn apply_range(&mut self, start: usize, end: usize, f: impl Fn(&mut u64, u64)) {
        let end = if end > PTES_PER_PMD {
            PTES_PER_PMD
        } else {
            end
        };
        let mut i = start;
        while i < end {
            let word = i / 64;
            let lo = i % 64;
            let hi = if end - word * 64 >= 64 {
                64
            } else {
                end - word * 64
            };
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            f(&mut self.words[word], mask);
            i = word * 64 + hi;
        }
    }

    /// Set bits in `[start, start + len)`; `len` a power of two and `start` aligned to it,
    /// as every range of an order is.
    #[inline]
    pub fn count_aligned(&self, start: usize, len: usize) -> u32 {
        if len >= 64 {
            let mut n = 0;
            let mut w = start / 64;
            while w < (start + len) / 64 {
                n += self.words[w].count_ones();
                w += 1;
            }
            n
        } else {
            let mask = if len == 64 {
                u64::MAX
            } else {
                (1u64 << len) - 1
            };
            ((self.words[start / 64] >> (start % 64)) & mask).count_ones()
        }
    }

    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn union(&self, other: &Self) -> Self {
        let mut out = *self;
        for (o, w) in out.words.iter_mut().zip(other.words.iter()) {
            *o |= *w;
        }
        out
    }

    pub fn intersection(&self, other: &Self) -> Self {
        let mut out = *self;
        for (o, w) in out.words.iter_mut().zip(other.words.iter()) {
            *o &= *w;
        }
        out
    }

    pub fn difference(&self, other: &Self) -> Self {
        let mut out = *self;
        for (o, w) in out.words.iter_mut().zip(other.words.iter()) {
            *o &= !*w;
        }
        out
    }

    /// Maximal runs of set bits as half-open `[start, end)` pairs, ascending.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            bitmap: self,
            pos: 0,
        }
    }
}

/// Iterator over the runs of set bits of an [`OccupancyBitmap`].
pub struct Runs<'a> {
    bitmap: &'a OccupancyBitmap,
    pos: usize,
}

impl Iterator for Runs<'_> {
    type Item = (u16, u16);

    fn next(&mut self) -> Option<Self::Item> {
        let mut i = self.pos;
        while i < PTES_PER_PMD && !self.bitmap.get(i) {
            // Skip whole empty words quickly.
            if i.is_multiple_of(64) && self.bitmap.words[i / 64] == 0 {
                i += 64;
            } else {
                i += 1;
            }
        }
        if i >= PTES_PER_PMD {
            self.pos = PTES_PER_PMD;
            return None;
        }
        let start = i;
        while i < PTES_PER_PMD && self.bitmap.get(i) {
            if i.is_multiple_of(64) && self.bitmap.words[i / 64] == u64::MAX {
                i += 64;
            } else {
                i += 1;
            }
        }
        self.pos = i;
        Some((start as u16, i as u16))
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for OccupancyBitmap {}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    #[test]
    fn ranges_and_runs() {
        let mut b = OccupancyBitmap::EMPTY;
        b.set_range(21, 53);
        b.set_range(243, 259);
        b.set_range(383, 391);
        assert_eq!(b.count(), 56);
        assert_eq!(
            b.runs().collect::<Vec<_>>(),
            [(21, 53), (243, 259), (383, 391)]
        );
        assert_eq!(b.count_aligned(32, 16), 16);
        assert_eq!(b.count_aligned(0, 512), 56);
        assert_eq!(b.count_aligned(256, 4), 3);
        b.clear_range(0, 250);
        assert_eq!(b.runs().collect::<Vec<_>>(), [(250, 259), (383, 391)]);
        assert_eq!(OccupancyBitmap::FULL.runs().collect::<Vec<_>>(), [(0, 512)]);
        assert_eq!(OccupancyBitmap::from_range(0, 600), OccupancyBitmap::FULL);
    }
}
