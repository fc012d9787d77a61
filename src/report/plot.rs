use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One line of a plot: its name, its (x, y) points joined by a line, and optional single
/// observations drawn as hollow dots around it (e.g. each seed, with the line through the median).
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dots: Vec<(f64, f64)>,
}

/// An axis label and whether the axis is logarithmic.
#[derive(Clone, Debug)]
pub struct Axis {
    pub label: String,
    pub log: bool,
}

static FONT: Once = Once::new();

/// Distinguishable line colours (the "tab10" palette), cycled.
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The bitmap backend draws text with a font registered from bytes (no system fonts needed).
fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = epaint_default_fonts::UBUNTU_LIGHT;
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Draws `series` as lines with markers into `<stem>.png` and `<stem>.svg`.
pub fn line_plot(stem: &Path, title: &str, x: &Axis, y: &Axis, series: &[Series]) -> Result<()> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(
        BitMapBackend::new(&png, (1100, 600)).into_drawing_area(),
        title,
        x,
        y,
        series,
    )?;
    draw(
        SVGBackend::new(&svg, (1100, 600)).into_drawing_area(),
        title,
        x,
        y,
        series,
    )?;
    Ok(())
}

/// Room to the right of the plot for the legend, in pixels.
const LEGEND_WIDTH: u32 = 210;

/// A tick label: integers without decimals (1024, not 1024.0), else three significant digits.
fn tick(v: f64) -> String {
    if v.abs() >= 1.0 && (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn range(points: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in points.filter(|p| p.is_finite() && (!log || *p > 0.0)) {
        lo = lo.min(p);
        hi = hi.max(p);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad, hi + pad)
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the plot: {e:?}");
    area.fill(&WHITE).map_err(err)?;
    let all = || series.iter().flat_map(|s| s.points.iter().chain(&s.dots));
    let (x0, x1) = range(all().map(|p| p.0), x.log);
    let (y0, y1) = range(all().map(|p| p.1), y.log);
    let mut builder = ChartBuilder::on(&area);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .margin_right(LEGEND_WIDTH)
        .x_label_area_size(45)
        .y_label_area_size(70);
    // Four coordinate combinations have different types, hence the macro.
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x.label.as_str())
                .y_desc(y.label.as_str())
                .x_labels(8)
                .y_labels(8)
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(err)?;
            for (i, s) in series.iter().enumerate() {
                let (r, g, b) = COLOURS[i % COLOURS.len()];
                let color = RGBColor(r, g, b).to_rgba();
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| p.1.is_finite() && (!y.log || p.1 > 0.0))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
                let dots = s
                    .dots
                    .iter()
                    .copied()
                    .filter(|p| p.1.is_finite() && (!y.log || p.1 > 0.0));
                chart
                    .draw_series(dots.map(|p| Circle::new(p, 5, color.stroke_width(1))))
                    .map_err(err)?;
            }
            // The legend, in the margin right of the plot (drawn on the whole canvas, since the
            // chart clips to its plotting area).
            let (left, _) = chart.plotting_area().get_pixel_range();
            let x0 = left.end + 12;
            for (i, s) in series.iter().enumerate() {
                let (r, g, b) = COLOURS[i % COLOURS.len()];
                let color = RGBColor(r, g, b).to_rgba();
                let y = 70 + 24 * i as i32;
                area.draw(&PathElement::new(
                    vec![(x0, y), (x0 + 22, y)],
                    color.stroke_width(3),
                ))
                .map_err(err)?;
                area.draw(&Text::new(
                    s.name.as_str(),
                    (x0 + 28, y - 8),
                    ("sans-serif", 15),
                ))
                .map_err(err)?;
            }
        }};
    }
    match (x.log, y.log) {
        (false, false) => finish!(builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?),
        (false, true) => finish!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(err)?),
        (true, false) => finish!(builder
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(err)?),
        (true, true) => finish!(builder
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(err)?),
    }
    area.present().map_err(err)?;
    Ok(())
}
