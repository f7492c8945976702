//! One place for what people read: aligned tables, units and sizes, plurals, and SVG charts.
//! The live views, `status`, the plan reports and the charts all render through here.

mod chart;
mod table;

use collapse_common::consts::PAGE_SIZE;

pub use self::{
    chart::{
        Chart, ChartError, Mark, PixelBox, PlacedLabel, Segment, Series, Spread, chart_svg,
        place_labels, series_rgb, text_size,
    },
    table::Table,
};

/// Bytes in `pages` base pages.
pub fn bytes(pages: u64) -> u64 {
    pages * PAGE_SIZE
}

/// MiB in `pages` base pages.
pub fn mib(pages: u64) -> f64 {
    bytes(pages) as f64 / (1024.0 * 1024.0)
}

/// MiB in `bytes`.
pub fn mib_of_bytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `part / whole`, 0 when `whole` is 0.
pub fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `64K`, `2M`: a size in KiB as the THP sysfs names it (`hugepages-64kB`).
pub fn size_name_kib(kib: u64) -> String {
    if kib >= 1024 && kib.is_multiple_of(1024) {
        format!("{}M", kib / 1024)
    } else {
        format!("{kib}K")
    }
}

/// `64K`, `2M`: the size of a folio of `order`.
pub fn size_name(order: u8) -> String {
    size_name_kib(4u64 << order)
}

/// `1 region`, `3 regions`, `2 processes`.
pub fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {}", plural(noun)),
    }
}

/// `process` → `processes`, `region` → `regions`.
pub fn plural(noun: &str) -> String {
    if noun.ends_with('s') {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// An error and its sources on one line, `outer: inner`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// `yes` or `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_sizes_and_plurals() {
        assert_eq!(size_name_kib(16), "16K");
        assert_eq!(size_name_kib(2048), "2M");
        assert_eq!(size_name_kib(1024), "1M");
        assert_eq!(
            (2..=9).map(size_name).collect::<Vec<_>>(),
            ["16K", "32K", "64K", "128K", "256K", "512K", "1M", "2M"]
        );
        assert_eq!(fraction(1, 0), 0.0);
        assert_eq!(fraction(1, 4), 0.25);
        assert_eq!(bytes(2), 8192);
        assert_eq!(mib(256), 1.0);
        assert_eq!(mib_of_bytes(3 << 20), 3.0);
        assert_eq!(count(1, "region"), "1 region");
        assert_eq!(count(0, "region"), "0 regions");
        assert_eq!(count(2, "process"), "2 processes");
        assert_eq!(count(3, "pass"), "3 passes");
    }
}
