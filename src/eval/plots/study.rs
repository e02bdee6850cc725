//! Comparison figures of a study: line charts in side-by-side panels (training curves, a metric
//! against the data fraction) and grouped bars (methods per test set).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Drawn, FONT, Figure, LEGEND_STRIP, caption_style, color, legend_strip, save};
use crate::Result;

/// One line: a label and its points, `x` ascending; a `None` value is a gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, Option<f64>)>,
}

/// One chart of a [`line_panels`] figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_desc: String,
    /// Fix the y axis to [0, 1] (metrics); else it spans the data.
    pub unit_y: bool,
    pub series: Vec<Series>,
}

/// Panels side by side sharing `x_desc`; one legend under them when every panel shows the same
/// series labels, else a legend under each panel. PNG or SVG by extension.
///
/// # Errors
/// No font, or a file that cannot be written.
pub fn line_panels(path: &Path, title: &str, x_desc: &str, panels: &[Panel]) -> Result<()> {
    save(&PanelsFigure { title, x_desc, panels }, path)
}

/// Bars of `members` (e.g. methods) grouped by `groups` (e.g. test sets) on [0, 1];
/// `values[g][m]`, `None` for a bar with no value. PNG or SVG by extension.
///
/// # Errors
/// No font, or a file that cannot be written.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    members: &[String],
    values: &[Vec<Option<f64>>],
) -> Result<()> {
    save(&BarsFigure { title, y_desc, groups, members, values }, path)
}

struct PanelsFigure<'a> {
    title: &'a str,
    x_desc: &'a str,
    panels: &'a [Panel],
}

impl Figure for PanelsFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (620 * self.panels.len().max(1) as u32, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let root = root.titled(self.title, caption_style())?;
        let (_, h) = root.dim_in_pixel();
        let (charts, strip) = root.split_vertically(h.saturating_sub(LEGEND_STRIP));
        let areas = charts.split_evenly((1, self.panels.len().max(1)));
        let integral_x = self
            .panels
            .iter()
            .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)))
            .all(|x| (x - x.round()).abs() < 1e-9);
        for (panel, area) in self.panels.iter().zip(&areas) {
            let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
            let ys: Vec<f64> = panel.series.iter().flat_map(|s| s.points.iter().filter_map(|p| p.1)).collect();
            let (x0, x1) = span(xs, 0.0, 1.0);
            let (y0, y1) = if panel.unit_y { (0.0, 1.0) } else { span(ys.iter().copied(), 0.0, 1.0) };
            let (xpad, ypad) = ((x1 - x0) * 0.04, (y1 - y0) * 0.05);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 22))
                .margin(18)
                .x_label_area_size(50)
                .y_label_area_size(70)
                .build_cartesian_2d(x0 - xpad..x1 + xpad, y0 - ypad..y1 + ypad)?;
            let x_format = |x: &f64| {
                if !integral_x {
                    format!("{x}")
                } else if (x - x.round()).abs() < 1e-9 {
                    format!("{}", x.round())
                } else {
                    String::new()
                }
            };
            chart
                .configure_mesh()
                .x_desc(self.x_desc)
                .x_label_formatter(&x_format)
                .y_desc(&panel.y_desc)
                .axis_desc_style((FONT, 18))
                .label_style((FONT, 15))
                .light_line_style(BLACK.mix(0.025))
                .bold_line_style(BLACK.mix(0.15))
                .draw()?;
            for (k, s) in panel.series.iter().enumerate() {
                let style = color(k).stroke_width(3);
                // Consecutive defined points form a line; a gap breaks it.
                let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
                for &(x, y) in &s.points {
                    match y {
                        Some(y) => runs.last_mut().expect("one run").push((x, y)),
                        None => runs.push(Vec::new()),
                    }
                }
                for run in runs.iter().filter(|r| r.len() > 1) {
                    chart.draw_series(LineSeries::new(run.iter().copied(), style))?;
                }
                let dots = s.points.iter().filter_map(|&(x, y)| y.map(|y| (x, y)));
                chart.draw_series(dots.map(|p| Circle::new(p, 4, color(k).filled())))?;
            }
        }
        // One legend for all panels when they show the same series, else one under each.
        fn labels(p: &Panel) -> Vec<&str> {
            p.series.iter().map(|s| s.label.as_str()).collect()
        }
        let first = self.panels.first().map(labels).unwrap_or_default();
        if self.panels.iter().all(|p| labels(p) == first) {
            return legend_strip(&strip, &first, false);
        }
        for (panel, area) in self.panels.iter().zip(strip.split_evenly((1, self.panels.len()))) {
            legend_strip(&area, &labels(panel), false)?;
        }
        Ok(())
    }
}

/// The range of `values`, widened when empty or flat.
fn span(values: impl Iterator<Item = f64>, lo: f64, hi: f64) -> (f64, f64) {
    let (mut a, mut b) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        a = a.min(v);
        b = b.max(v);
    }
    if a > b {
        return (lo, hi);
    }
    if b - a < 1e-9 {
        return (a - 0.5, b + 0.5);
    }
    (a, b)
}

struct BarsFigure<'a> {
    title: &'a str,
    y_desc: &'a str,
    groups: &'a [String],
    members: &'a [String],
    values: &'a [Vec<Option<f64>>],
}

impl Figure for BarsFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let per_group = 70 * self.members.len().max(1) as u32 + 60;
        ((per_group * self.groups.len().max(1) as u32 + 200).max(900), 650)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let (_, h) = root.dim_in_pixel();
        let (top, strip) = root.split_vertically(h.saturating_sub(LEGEND_STRIP));
        let n_groups = self.groups.len().max(1) as f64;
        let m = self.members.len().max(1) as f64;
        // Group g spans [g, g + 1); its bars fill the middle 80 %.
        let mut chart = ChartBuilder::on(&top)
            .caption(self.title, caption_style())
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n_groups, 0.0..1.08)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_desc)
            .y_label_formatter(&|y| if *y <= 1.0 + 1e-9 { format!("{y:.1}") } else { String::new() })
            .axis_desc_style((FONT, 20))
            .label_style((FONT, 16))
            .light_line_style(BLACK.mix(0.025))
            .bold_line_style(BLACK.mix(0.15))
            .draw()?;
        // Group names under the axis, in pixels (plotters places numeric labels only).
        for (g, name) in self.groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            let style = (FONT, 18).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
            top.draw(&Text::new(name.clone(), (x, y + 10), style))?;
        }
        let width = 0.8 / m;
        for k in 0..self.members.len() {
            let bars: Vec<(f64, f64)> = (0..self.groups.len())
                .filter_map(|g| {
                    let v = self.values.get(g)?.get(k).copied().flatten()?;
                    Some((g as f64 + 0.1 + width * k as f64, v))
                })
                .collect();
            let fill = color(k).filled();
            chart.draw_series(bars.iter().map(|&(x, v)| Rectangle::new([(x, 0.0), (x + width * 0.92, v)], fill)))?;
            let above = Pos::new(HPos::Center, VPos::Bottom);
            chart.draw_series(bars.iter().map(|&(x, v)| {
                let style = (FONT, 13).into_font().color(&BLACK.mix(0.8)).pos(above);
                Text::new(format!("{v:.3}"), (x + width * 0.46, v + 0.01), style)
            }))?;
        }
        let labels: Vec<&str> = self.members.iter().map(String::as_str).collect();
        legend_strip(&strip, &labels, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_figures_render_with_gaps_and_missing_bars() {
        if super::super::find_font().is_none() {
            eprintln!("no font: skipped");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let series = |label: &str, shift: f64| Series {
            label: label.into(),
            points: vec![(25.0, Some(0.5 + shift)), (50.0, None), (75.0, Some(0.7 + shift)), (100.0, Some(0.9))],
        };
        let panel = |t: &str| Panel {
            title: t.into(),
            y_desc: "AUROC".into(),
            unit_y: true,
            series: vec![series("a", 0.0), series("b", 0.05)],
        };
        for ext in ["png", "svg"] {
            let path = tmp.path().join(format!("lines.{ext}"));
            line_panels(&path, "AUROC vs data", "training videos (%)", &[panel("FF"), panel("CDF")]).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 1000);
            let path = tmp.path().join(format!("bars.{ext}"));
            let groups = vec!["FF".to_string(), "CDF".to_string()];
            let members = vec!["m1".to_string(), "m2".to_string(), "m3".to_string()];
            let values = vec![vec![Some(0.9), None, Some(0.5)], vec![Some(0.6), Some(0.7), Some(0.8)]];
            grouped_bars(&path, "AUROC at 100 %", "AUROC", &groups, &members, &values).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        }
    }
}
