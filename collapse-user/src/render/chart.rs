//! SVG charts (plotters' SVG backend): the sweep plot and the bench report's charts. A series
//! keeps its colour by its `color` index, so one arm or policy has one colour in every chart it
//! appears in. The legend sits in a column of its own beside the plot, and point labels are
//! placed where they meet no other label and no point ([`place_labels`]), so nothing a reader
//! needs is drawn over anything else.

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// The series colours, by `Series::color` (modulo its length): dark enough to read on white
/// and told apart by people with the common colour-vision deficiencies (Tableau 10, reordered
/// so that the first five are the most distinct).
const PALETTE: [[u8; 3]; 10] = [
    [0x1f, 0x77, 0xb4], // blue
    [0xff, 0x7f, 0x0e], // orange
    [0x2c, 0xa0, 0x2c], // green
    [0xd6, 0x27, 0x28], // red
    [0x94, 0x67, 0xbd], // purple
    [0x8c, 0x56, 0x4b], // brown
    [0xe3, 0x77, 0xc2], // pink
    [0x17, 0xbe, 0xcf], // cyan
    [0xbc, 0xbd, 0x22], // olive
    [0x7f, 0x7f, 0x7f], // grey
];

/// The RGB colour of palette index `index`: what `Series::color` draws in every chart.
pub fn series_rgb(index: usize) -> [u8; 3] {
    PALETTE[index % PALETTE.len()]
}

fn series_color(index: usize) -> RGBColor {
    let [r, g, b] = series_rgb(index);
    RGBColor(r, g, b)
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mark {
    /// A line through the points with a dot at each (the sweep plot).
    #[default]
    LineAndDots,
    /// A line only, `width` pixels wide; `faint` draws it half transparent (one arm's other
    /// runs, behind its median run).
    Line { width: u32, faint: bool },
    /// A dot at each point and no line (a scatter).
    Dots,
}

/// The spread of one point over runs: its smallest and largest x and y (drawn as whiskers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

/// One line or set of points of a chart.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The legend entry; an empty name has none (another run of a series already listed).
    pub name: String,
    /// Palette index: the same index gives the same colour in every chart.
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    /// A label per point (empty: no labels); an empty label draws none.
    pub labels: Vec<String>,
    /// Per point, its spread over runs (empty: none drawn).
    pub spreads: Vec<Spread>,
    pub mark: Mark,
}

/// A chart of series against two linear axes with units in their descriptions.
#[derive(Clone, Debug)]
pub struct Chart<'a> {
    pub title: &'a str,
    /// The axis descriptions, with units (`bloat (MiB of zero-filled pages)`).
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// The axis ranges; `None` fits the data, and 0 (the axis starts at 0 unless the data
    /// goes below it).
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub series: &'a [Series],
    pub size: (u32, u32),
}

/// Drawing failed (plotters' error, as text).
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart: {0}")]
pub struct ChartError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        Self(e.to_string())
    }
}

/// plotters divides a font size by 1.24 when it writes SVG (plotters-svg `draw_text`): these
/// are the sizes asked of it, for 19, 14.5, 13 and 13.7 px text in the SVG.
const TITLE_FONT: f64 = 24.0;
const AXIS_DESC_FONT: f64 = 18.0;
const TICK_FONT: f64 = 16.0;
const LABEL_FONT: f64 = 17.0;
const DOT_RADIUS: u32 = 3;
const SCATTER_DOT_RADIUS: u32 = 6;

/// The pixel size of `text` in the SVG at plotters font size `font`: a generous estimate
/// (DejaVu Sans, the widest common sans-serif, averages under 0.64 em a character), because
/// an SVG backend cannot measure text.
pub fn text_size(text: &str, font: f64) -> (f64, f64) {
    let em = font / 1.24;
    (text.chars().count() as f64 * em * 0.64, em * 1.25)
}

/// A box in pixels: left, top, width and height.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl PixelBox {
    /// The square around a dot of radius `r` at `(x, y)`.
    pub fn around((x, y): (f64, f64), r: f64) -> Self {
        Self {
            x: x - r,
            y: y - r,
            w: 2.0 * r,
            h: 2.0 * r,
        }
    }

    /// The boxes share some area (touching edges do not count).
    pub fn intersects(&self, other: &Self) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }

    /// `other` lies wholly inside.
    pub fn contains(&self, other: &Self) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.x + other.w <= self.x + self.w
            && other.y + other.h <= self.y + self.h
    }

    /// The point of the box nearest to `(x, y)`.
    fn nearest(&self, (x, y): (f64, f64)) -> (f64, f64) {
        (
            x.clamp(self.x, self.x + self.w),
            y.clamp(self.y, self.y + self.h),
        )
    }
}

/// How far out (in label heights) the search for a free place goes.
const LABEL_RINGS: usize = 8;

/// The directions tried around a point, counter-clockwise from the right, best first:
/// beside it, above and below, the diagonals, then the directions between.
const LABEL_ANGLES: [f64; 16] = [
    0.0, 180.0, 90.0, 270.0, 45.0, 315.0, 135.0, 225.0, 22.5, 337.5, 157.5, 202.5, 67.5, 112.5,
    247.5, 292.5,
];

/// How many orders [`place_labels`] tries at most.
const LABEL_ORDERS: usize = 64;

/// A line segment in pixels.
pub type Segment = ((f64, f64), (f64, f64));

/// Where one label goes: its box, and the leader line drawn from its point to the box when it
/// sits farther out than right beside the point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacedLabel {
    pub text_box: PixelBox,
    pub leader: Option<Segment>,
}

/// Whether segment `a`–`b` passes through box `r` (Liang–Barsky clipping).
fn segment_meets((a, b): Segment, r: &PixelBox) -> bool {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0_f64, 1.0_f64);
    for (p, q) in [
        (-dx, a.0 - r.x),
        (dx, r.x + r.w - a.0),
        (-dy, a.1 - r.y),
        (dy, r.y + r.h - a.1),
    ] {
        if p == 0.0 {
            if q <= 0.0 {
                return false;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    t0 < t1
}

/// Where each label goes, in order: label `i` has size `sizes[i]` and belongs to
/// `points[i]` (points past `sizes.len()` have no label but are kept clear). It takes the
/// first of a few places around its point (right, left, above, below, the four diagonals,
/// the directions between; then the same one label height farther out, ...) whose box stays
/// inside
/// `bounds` and meets no label placed before it, no leader line, and no point's dot (radius
/// `dot_radius`); a label set farther out than the first ring gets a leader line from its
/// point, which must not cross a placed label either. `None`: no free place within reach; the
/// caller then draws no label (the legend still names the series).
pub fn place_labels(
    points: &[(f64, f64)],
    sizes: &[(f64, f64)],
    dot_radius: f64,
    bounds: PixelBox,
) -> Vec<Option<PlacedLabel>> {
    // Greedy placement can wall a label in with its neighbours' labels and leaders. Placing
    // the labels left without room first usually frees them; failing that, a few shuffled
    // orders (a fixed sequence: the same chart always gets the same labels). The best kept.
    let labels = sizes.len().min(points.len());
    let missing = |placed: &[Option<PlacedLabel>]| placed.iter().filter(|p| p.is_none()).count();
    let mut order: Vec<usize> = (0..labels).collect();
    let mut last = place_in_order(points, sizes, dot_radius, bounds, &order);
    let mut best = last.clone();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for attempt in 0..LABEL_ORDERS {
        if missing(&best) == 0 {
            break;
        }
        if attempt % 2 == 0 {
            let (first, rest): (Vec<usize>, Vec<usize>) =
                order.iter().partition(|&&i| last[i].is_none());
            order = first.into_iter().chain(rest).collect();
        } else {
            // Fisher–Yates with a xorshift generator.
            for i in (1..order.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(i, (seed % (i as u64 + 1)) as usize);
            }
        }
        last = place_in_order(points, sizes, dot_radius, bounds, &order);
        if missing(&last) < missing(&best) {
            best = last.clone();
        }
    }
    best
}

/// One greedy pass of [`place_labels`], taking the labels in `order`; the result is by label.
fn place_in_order(
    points: &[(f64, f64)],
    sizes: &[(f64, f64)],
    dot_radius: f64,
    bounds: PixelBox,
    order: &[usize],
) -> Vec<Option<PlacedLabel>> {
    let dots: Vec<PixelBox> = points
        .iter()
        .map(|&p| PixelBox::around(p, dot_radius))
        .collect();
    let mut placed: Vec<PlacedLabel> = Vec::new();
    let mut out = vec![None; order.len()];
    for &i in order {
        let ((px, py), (w, h)) = (points[i], sizes[i]);
        out[i] = {
            let free = |label: &PlacedLabel| {
                let b = &label.text_box;
                bounds.contains(b)
                    && !dots.iter().any(|d| d.intersects(b))
                    && !placed.iter().any(|p| {
                        p.text_box.intersects(b)
                            || p.leader.is_some_and(|l| segment_meets(l, b))
                            || label.leader.is_some_and(|l| segment_meets(l, &p.text_box))
                    })
                    // A leader crosses no other dot, except those its own dot touches (it
                    // cannot get out without).
                    && label.leader.is_none_or(|l| {
                        dots.iter()
                            .all(|d| d.intersects(&dots[i]) || !segment_meets(l, d))
                    })
            };
            let found = candidates((px, py), (w, h), dot_radius)
                .map(|(text_box, away)| PlacedLabel {
                    text_box,
                    leader: away.then(|| ((px, py), text_box.nearest((px, py)))),
                })
                .find(free);
            if let Some(label) = found {
                placed.push(label);
            }
            found
        };
    }
    out
}

/// The places tried for a label of size `(w, h)` at point `(px, py)`, best first, each with
/// whether it is away from the point (and needs a leader line): the 8 directions right beside
/// the dot; then, ring by ring one label height farther out, 16 directions, and stacks of
/// places above and below those right and left of the point (where crowded labels line up).
fn candidates(
    (px, py): (f64, f64),
    (w, h): (f64, f64),
    dot_radius: f64,
) -> impl Iterator<Item = (PixelBox, bool)> {
    let around = move |d: f64, degrees: f64| {
        let (sin, cos) = f64::to_radians(degrees).sin_cos();
        // The box's side (or corner) nearest the point faces it, `d` away.
        let (ax, ay) = (px + d * cos, py - d * sin);
        let x = if cos > 0.3 {
            ax
        } else if cos < -0.3 {
            ax - w
        } else {
            ax - w / 2.0
        };
        let y = if sin > 0.3 {
            ay - h
        } else if sin < -0.3 {
            ay
        } else {
            ay - h / 2.0
        };
        PixelBox { x, y, w, h }
    };
    let step = h + 2.0;
    let beside = LABEL_ANGLES[..8]
        .iter()
        .map(move |&a| (around(dot_radius + 3.0, a), false));
    let farther = (1..LABEL_RINGS).flat_map(move |ring| {
        let d = dot_radius + 3.0 + ring as f64 * step;
        let ring_places = LABEL_ANGLES.map(|a| around(d, a));
        let stacks = (1..=LABEL_RINGS as i32).flat_map(move |row| {
            [-row, row].into_iter().flat_map(move |row| {
                let y = py - h / 2.0 + f64::from(row) * step;
                [
                    PixelBox { x: px + d, y, w, h },
                    PixelBox {
                        x: px - d - w,
                        y,
                        w,
                        h,
                    },
                ]
            })
        });
        ring_places.into_iter().chain(stacks).map(|b| (b, true))
    });
    beside.chain(farther)
}

/// Fits a range to `values` and 0, with a margin beyond the data.
fn fit(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((0.0_f64, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi - lo <= 0.0 {
        return (0.0, 1.0);
    }
    let pad = (hi - lo) * 0.08;
    (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad)
}

/// A tick value without trailing zeros: `0`, `2.5`, `1024`.
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// The chart as an SVG document.
pub fn chart_svg(chart: &Chart<'_>) -> Result<String, ChartError> {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let spread_x = |s: &Series| {
        s.spreads
            .iter()
            .flat_map(|r| [r.x.0, r.x.1])
            .collect::<Vec<_>>()
    };
    let spread_y = |s: &Series| {
        s.spreads
            .iter()
            .flat_map(|r| [r.y.0, r.y.1])
            .collect::<Vec<_>>()
    };
    let (x_min, x_max) = chart.x_range.unwrap_or_else(|| {
        fit(chart
            .series
            .iter()
            .flat_map(|s| finite(s).into_iter().map(|p| p.0).chain(spread_x(s))))
    });
    let (y_min, y_max) = chart.y_range.unwrap_or_else(|| {
        fit(chart
            .series
            .iter()
            .flat_map(|s| finite(s).into_iter().map(|p| p.1).chain(spread_y(s))))
    });
    let legend: Vec<&Series> = chart.series.iter().filter(|s| !s.name.is_empty()).collect();
    let legend_width = legend
        .iter()
        .map(|s| text_size(&s.name, LABEL_FONT).0)
        .fold(0.0, f64::max)
        .ceil() as u32
        + 56;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, chart.size).into_drawing_area();
        root.fill(&WHITE)?;
        let below_title = root.titled(chart.title, ("sans-serif", TITLE_FONT))?;
        let (plot_area, legend_area) =
            below_title.split_horizontally(chart.size.0.saturating_sub(legend_width));
        let mut ctx = ChartBuilder::on(&plot_area)
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)?;
        let tick_label = |v: &f64| tick(*v);
        ctx.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .axis_desc_style(("sans-serif", AXIS_DESC_FONT))
            .label_style(("sans-serif", TICK_FONT))
            .x_label_formatter(&tick_label)
            .y_label_formatter(&tick_label)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .bold_line_style(RGBColor(0xd0, 0xd0, 0xd0))
            .draw()?;
        // Faint lines first, so every median run is drawn over all the other runs.
        let mut order: Vec<&Series> = chart.series.iter().collect();
        order.sort_by_key(|s| !matches!(s.mark, Mark::Line { faint: true, .. }));
        for series in &order {
            draw_series(&mut ctx, series, &finite(series))?;
        }
        let (xs, ys) = ctx.plotting_area().get_pixel_range();
        let bounds = PixelBox {
            x: f64::from(xs.start),
            y: f64::from(ys.start),
            w: f64::from(xs.end - xs.start),
            h: f64::from(ys.end - ys.start),
        };
        draw_labels(&root, &ctx, chart.series, bounds)?;
        draw_legend(&root, &legend_area, &legend, bounds.y)?;
        root.present()?;
    }
    Ok(svg)
}

type Ctx<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(
    ctx: &mut Ctx<'_, '_>,
    series: &Series,
    points: &[(f64, f64)],
) -> Result<(), ChartError> {
    let color = series_color(series.color);
    match series.mark {
        Mark::LineAndDots => {
            ctx.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?;
        }
        Mark::Line { width, faint } => {
            let style = if faint {
                color.mix(0.45).stroke_width(width)
            } else {
                color.stroke_width(width)
            };
            ctx.draw_series(LineSeries::new(points.iter().copied(), style))?;
        }
        Mark::Dots => {}
    }
    // Whiskers through each point: its range over runs, on both axes.
    for (&(x, y), spread) in points.iter().zip(&series.spreads) {
        let style = color.mix(0.7).stroke_width(1);
        ctx.draw_series([
            PathElement::new(vec![(spread.x.0, y), (spread.x.1, y)], style),
            PathElement::new(vec![(x, spread.y.0), (x, spread.y.1)], style),
        ])?;
    }
    let radius = match series.mark {
        Mark::LineAndDots => Some(DOT_RADIUS),
        Mark::Dots => Some(SCATTER_DOT_RADIUS),
        Mark::Line { .. } => None,
    };
    if let Some(r) = radius {
        ctx.draw_series(points.iter().map(|&p| Circle::new(p, r, color.filled())))?;
    }
    Ok(())
}

/// Every series' point labels, where [`place_labels`] finds room, with a thin leader line
/// from the point when the label had to move away from it.
fn draw_labels(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    ctx: &Ctx<'_, '_>,
    series: &[Series],
    bounds: PixelBox,
) -> Result<(), ChartError> {
    let pixel = |p: &(f64, f64)| {
        let (x, y) = ctx.backend_coord(p);
        (f64::from(x), f64::from(y))
    };
    // Every dot is an obstacle; only labelled points get a label.
    let mut points = Vec::new();
    let mut sizes = Vec::new();
    let mut texts = Vec::new();
    let mut obstacles = Vec::new();
    for s in series {
        let dot = match s.mark {
            Mark::LineAndDots => f64::from(DOT_RADIUS),
            Mark::Dots => f64::from(SCATTER_DOT_RADIUS),
            Mark::Line { .. } => 0.0,
        };
        for (i, p) in s.points.iter().enumerate() {
            if !(p.0.is_finite() && p.1.is_finite()) {
                continue;
            }
            let label = s.labels.get(i).map_or("", String::as_str);
            if label.is_empty() {
                if dot > 0.0 {
                    obstacles.push(pixel(p));
                }
                continue;
            }
            points.push(pixel(p));
            sizes.push(text_size(label, LABEL_FONT));
            texts.push((label, s.color));
        }
    }
    let radius = f64::from(SCATTER_DOT_RADIUS.max(DOT_RADIUS));
    points.extend(&obstacles);
    // The unlabelled dots take part as points without a label (a zero-size label never
    // placed: `sizes` is shorter than `points`).
    let placed = place_labels(&points, &sizes, radius, bounds);
    for (label, &(text, color)) in placed.iter().zip(&texts) {
        let Some(PlacedLabel {
            text_box: b,
            leader,
        }) = label
        else {
            continue;
        };
        let color = series_color(color);
        if let Some((from, to)) = leader {
            root.draw(&PathElement::new(
                vec![
                    (from.0.round() as i32, from.1.round() as i32),
                    (to.0.round() as i32, to.1.round() as i32),
                ],
                color.mix(0.8).stroke_width(1),
            ))?;
        }
        // Centred on the box's middle: the SVG's `dy="0.5ex"` puts the x-height there.
        root.draw(&Text::new(
            text.to_owned(),
            (b.x.round() as i32, (b.y + b.h / 2.0).round() as i32),
            TextStyle::from(("sans-serif", LABEL_FONT).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

/// The legend, in its own column beside the plot: per named series a swatch in its mark and
/// colour, then its name.
fn draw_legend(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    legend: &[&Series],
    top: f64,
) -> Result<(), ChartError> {
    let (xs, _) = area.get_pixel_range();
    let x = xs.start + 8;
    let (_, h) = text_size("M", LABEL_FONT);
    let step = (h + 8.0).ceil() as i32;
    for (i, series) in legend.iter().enumerate() {
        let y = top as i32 + 4 + i as i32 * step;
        let mid = y + (h / 2.0) as i32;
        let color = series_color(series.color);
        match series.mark {
            Mark::Dots => {
                root.draw(&Circle::new(
                    (x + 12, mid),
                    SCATTER_DOT_RADIUS,
                    color.filled(),
                ))?;
            }
            Mark::LineAndDots | Mark::Line { .. } => {
                root.draw(&PathElement::new(
                    vec![(x, mid), (x + 24, mid)],
                    color.stroke_width(4),
                ))?;
            }
        }
        root.draw(&Text::new(
            series.name.clone(),
            (x + 32, mid),
            TextStyle::from(("sans-serif", LABEL_FONT).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_label() {
        let series = [
            Series {
                name: "seed".into(),
                color: 0,
                points: vec![(0.0, 10.0), (2.0, 50.0)],
                labels: vec!["0".into(), "255-511".into()],
                ..Series::default()
            },
            Series {
                name: "pmd".into(),
                color: 3,
                points: vec![(1.0, 20.0)],
                ..Series::default()
            },
        ];
        let svg = chart_svg(&Chart {
            title: "a chart",
            x_desc: "x (MiB)",
            y_desc: "y (%)",
            x_range: None,
            y_range: Some((0.0, 105.0)),
            series: &series,
            size: (640, 480),
        })
        .unwrap();
        for text in ["a chart", "x (MiB)", "y (%)", "seed", "pmd", "255-511"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 3);
        for color in [0, 3] {
            let [r, g, b] = series_rgb(color);
            assert!(
                svg.contains(&format!("#{r:02X}{g:02X}{b:02X}")),
                "colour {color}"
            );
        }
    }

    fn overlaps(boxes: &[PixelBox]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for i in 0..boxes.len() {
            for j in i + 1..boxes.len() {
                if boxes[i].intersects(&boxes[j]) {
                    out.push((i, j));
                }
            }
        }
        out
    }

    #[test]
    fn crowded_labels_never_overlap_labels_or_points() {
        // Six arms with nearly the same figures (dots overlapping), three with the same.
        let mut points: Vec<(f64, f64)> = (0..6)
            .map(|i| {
                (
                    400.0 + f64::from(i % 3) * 8.0,
                    250.0 + f64::from(i / 3) * 8.0,
                )
            })
            .collect();
        points.extend([(100.0, 100.0); 3]);
        let labels = check_placement(&points);
        assert!(
            labels.iter().all(Option::is_some),
            "room for every label: {labels:?}"
        );
        assert!(
            labels.iter().flatten().any(|l| l.leader.is_some()),
            "crowded, some labels move out: {labels:?}"
        );
    }

    #[test]
    fn labels_never_overlap_even_where_some_find_no_room() {
        // Sixteen dots in a 12-pixel square: not every label fits, none that is drawn overlaps.
        let points: Vec<(f64, f64)> = (0..16)
            .map(|i| {
                (
                    400.0 + f64::from(i % 4) * 4.0,
                    250.0 + f64::from(i / 4) * 4.0,
                )
            })
            .collect();
        let labels = check_placement(&points);
        assert!(labels.iter().flatten().count() >= 8, "{labels:?}");
    }

    /// Places a label per point in an 800 × 500 chart and checks what placement promises:
    /// inside the chart, the label's size, no two labels meet, no label covers a dot, and no
    /// leader line crosses another label.
    fn check_placement(points: &[(f64, f64)]) -> Vec<Option<PlacedLabel>> {
        let bounds = PixelBox {
            x: 0.0,
            y: 0.0,
            w: 800.0,
            h: 500.0,
        };
        let sizes: Vec<(f64, f64)> = (0..points.len())
            .map(|i| text_size(&format!("collapse seed n={i}"), LABEL_FONT))
            .collect();
        let placed = place_labels(points, &sizes, 6.0, bounds);
        assert_eq!(placed.len(), points.len());
        let boxes: Vec<(usize, PixelBox)> = placed
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.map(|l| (i, l.text_box)))
            .collect();
        let only: Vec<PixelBox> = boxes.iter().map(|b| b.1).collect();
        assert_eq!(overlaps(&only), [], "{boxes:?}");
        for &(i, b) in &boxes {
            assert!(bounds.contains(&b), "label {i} outside: {b:?}");
            assert_eq!((b.w, b.h), sizes[i]);
            for (j, &p) in points.iter().enumerate() {
                assert!(
                    !b.intersects(&PixelBox::around(p, 6.0)),
                    "label {i} covers point {j}"
                );
            }
        }
        for (i, l) in placed.iter().enumerate() {
            let Some(leader) = l.and_then(|l| l.leader) else {
                continue;
            };
            assert_eq!(leader.0, points[i]);
            for &(j, b) in &boxes {
                assert!(
                    j == i || !segment_meets(leader, &b),
                    "leader {i} crosses label {j}"
                );
            }
        }
        placed
    }

    #[test]
    fn segments_through_boxes() {
        let b = PixelBox {
            x: 10.0,
            y: 10.0,
            w: 10.0,
            h: 10.0,
        };
        assert!(segment_meets(((0.0, 15.0), (30.0, 15.0)), &b), "across");
        assert!(
            segment_meets(((15.0, 15.0), (40.0, 40.0)), &b),
            "from inside"
        );
        assert!(segment_meets(((0.0, 0.0), (30.0, 30.0)), &b), "diagonal");
        assert!(!segment_meets(((0.0, 0.0), (9.0, 30.0)), &b), "left of it");
        assert!(!segment_meets(((0.0, 25.0), (30.0, 25.0)), &b), "below it");
        assert!(!segment_meets(((0.0, 10.0), (8.0, 0.0)), &b), "short of it");
    }

    #[test]
    fn labels_stay_inside_and_give_up_when_there_is_no_room() {
        let bounds = PixelBox {
            x: 0.0,
            y: 0.0,
            w: 300.0,
            h: 100.0,
        };
        // Alone, a label takes the first place: right of its point, centred on it.
        let size = text_size("none", LABEL_FONT);
        let placed = place_labels(&[(100.0, 50.0)], &[size], 3.0, bounds);
        assert_eq!(
            placed,
            [Some(PlacedLabel {
                text_box: PixelBox {
                    x: 106.0,
                    y: 50.0 - size.1 / 2.0,
                    w: size.0,
                    h: size.1
                },
                leader: None
            })]
        );
        // Near the right edge: the label goes left of its point.
        let size = text_size("khugepaged-fast", LABEL_FONT);
        let placed = place_labels(&[(295.0, 50.0)], &[size], 3.0, bounds);
        let b = placed[0].unwrap().text_box;
        assert!(bounds.contains(&b));
        assert!(b.x + b.w <= 295.0 - 3.0, "{b:?}");
        // A label wider than the chart has nowhere to go.
        let wide = text_size(&"x".repeat(60), LABEL_FONT);
        assert_eq!(place_labels(&[(150.0, 50.0)], &[wide], 3.0, bounds), [None]);
    }

    #[test]
    fn scatter_draws_dots_whiskers_and_legend_only_for_named_series() {
        let series = [
            Series {
                name: "a".into(),
                color: 1,
                points: vec![(1.0, 2.0)],
                labels: vec!["a".into()],
                spreads: vec![Spread {
                    x: (0.5, 1.5),
                    y: (1.0, 3.0),
                }],
                mark: Mark::Dots,
            },
            Series {
                name: String::new(),
                color: 2,
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                mark: Mark::Line {
                    width: 1,
                    faint: true,
                },
                ..Series::default()
            },
        ];
        let svg = chart_svg(&Chart {
            title: "t",
            x_desc: "x",
            y_desc: "y",
            x_range: None,
            y_range: None,
            series: &series,
            size: (640, 480),
        })
        .unwrap();
        // The dot and the legend's dot; no dot for the line.
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        assert_eq!(
            svg.matches(">\na\n</text>").count(),
            2,
            "label and legend entry"
        );
    }
}
