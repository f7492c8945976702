//! SVG line charts (plotters' SVG backend): the sweep plot now, the bench report's charts next.
//! A series keeps its colour by its `color` index, so one arm or policy has one colour in every
//! chart it appears in.

use plotters::prelude::*;

/// One line (or set of points) of a chart.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    /// Palette index: the same index gives the same colour in every chart.
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    /// A label per point (empty: no labels); an empty label draws none.
    pub labels: Vec<String>,
}

/// A chart of series against two linear axes with units in their descriptions.
#[derive(Clone, Debug)]
pub struct LineChart<'a> {
    pub title: &'a str,
    /// The axis descriptions, with units (`bloat (MiB of zero-filled pages)`).
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// The y range; `None` fits the data.
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

/// The chart as an SVG document.
pub fn line_chart_svg(chart: &LineChart<'_>) -> Result<String, ChartError> {
    let all = || chart.series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(0.0, f64::max);
    let x_max = if x_max > 0.0 { x_max * 1.08 } else { 1.0 };
    let (y_min, y_max) = chart.y_range.unwrap_or_else(|| {
        let top = all().map(|p| p.1).fold(0.0, f64::max);
        (0.0, if top > 0.0 { top * 1.08 } else { 1.0 })
    });
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, chart.size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
        ctx.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .draw()?;
        for series in chart.series {
            let color = Palette99::pick(series.color).to_rgba();
            ctx.draw_series(LineSeries::new(
                series.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(series.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
            let labelled = series.points.iter().zip(
                series
                    .labels
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::repeat("")),
            );
            ctx.draw_series(labelled.map(|(&(x, y), label)| {
                EmptyElement::at((x, y))
                    + Circle::new((0, 0), 3, color.filled())
                    + Text::new(
                        label.to_owned(),
                        (5, -14),
                        ("sans-serif", 11).into_font().color(&color),
                    )
            }))?;
        }
        ctx.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
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
            },
            Series {
                name: "pmd".into(),
                color: 3,
                points: vec![(1.0, 20.0)],
                labels: Vec::new(),
            },
        ];
        let svg = line_chart_svg(&LineChart {
            title: "a chart",
            x_desc: "x (MiB)",
            y_desc: "y (%)",
            y_range: Some((0.0, 105.0)),
            series: &series,
            size: (640, 480),
        })
        .unwrap();
        for text in ["a chart", "x (MiB)", "y (%)", "seed", "pmd", "255-511"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(svg.matches("<circle").count(), 3);
    }
}
