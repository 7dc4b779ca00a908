//! Line charts with a log2 x axis (plotters, bitmap backend, embedded font): the PNG plots of
//! the scale check ([`crate::scale_check::plot_reports`]) and of the sweeps
//! ([`crate::sweep::Sweep::report`]).

use plotters::prelude::*;

use crate::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans.LICENSE).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One panel: a title, axis labels and named series of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// The caption above the chart.
    pub title: String,
    /// The x axis' description.
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// Named series of `(x, y)` points (points with x ≤ 0 or a non-finite y, or y ≤ 0 on a log
    /// axis, are left out).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Log scale on the y axis (the x axis is always log2).
    pub log_y: bool,
    /// Show a legend (off for panels with many series).
    pub legend: bool,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("plot: {e}"))
}

/// Draws `panels` into a PNG at `path`, `cols` panels per row (each panel 520 × 420 pixels; a
/// panel without a drawable point stays blank).
pub fn draw(path: &std::path::Path, panels: &[Panel], cols: usize) -> Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| err("cannot load the embedded font"))?;
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let root = BitMapBackend::new(path, (520 * cols as u32, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for (panel, area) in panels.iter().zip(areas) {
        let pts = || panel.series.iter().flat_map(|(_, p)| p.iter().copied());
        let fin = |v: f64| v.is_finite() && (!panel.log_y || v > 0.0);
        let xs: Vec<f64> = pts().map(|p| p.0).filter(|v| *v > 0.0).collect();
        let ys: Vec<f64> = pts().map(|p| p.1).filter(|v| fin(*v)).collect();
        if xs.is_empty() || ys.is_empty() {
            continue;
        }
        let (x0, x1) = (
            xs.iter().cloned().fold(f64::MAX, f64::min),
            xs.iter().cloned().fold(f64::MIN, f64::max),
        );
        let (y0, y1) = (
            ys.iter().cloned().fold(f64::MAX, f64::min),
            ys.iter().cloned().fold(f64::MIN, f64::max),
        );
        let (lx0, lx1) = (x0.log2() - 0.25, x1.log2() + 0.25);
        let (ly0, ly1) = if panel.log_y {
            (y0.log10() - 0.1, y1.log10() + 0.1)
        } else {
            let pad = (y1 - y0).max(1e-3) * 0.05;
            (y0 - pad, y1 + pad)
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(lx0..lx1, ly0..ly1)
            .map_err(err)?;
        let log_y = panel.log_y;
        chart
            .configure_mesh()
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .x_label_formatter(&|v| {
                // Label powers of two only.
                if (v - v.round()).abs() < 0.05 {
                    let x = 2f64.powf(v.round());
                    if x >= 1.0 {
                        format!("{x}")
                    } else {
                        format!("2^{}", v.round())
                    }
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| {
                if log_y {
                    let y = 10f64.powf(*v);
                    if (0.01..1000.0).contains(&y) {
                        format!("{y:.3}")
                    } else {
                        format!("{y:.1e}")
                    }
                } else {
                    format!("{v:.2}")
                }
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        for (i, (name, points)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|(x, y)| *x > 0.0 && fin(*y))
                .map(|(x, y)| (x.log2(), if log_y { y.log10() } else { *y }))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let s = chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?;
            if panel.legend {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        if panel.legend {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}
