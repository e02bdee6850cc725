//! The figures of the evaluation plots: ROC, precision-recall, F1 against the threshold,
//! the confusion matrix and the probability distributions (each a [`Figure`] drawn by
//! [`super::save`]).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    Drawn, FONT, Figure, LEGEND_STRIP, Scores, caption_style, color, legend, legend_strip_colored, unit_chart,
};
use crate::eval::metrics::{column, one_vs_rest, precision_recall_curve, roc_curve};

pub(super) struct RocFigure<'a> {
    pub(super) title: &'a str,
    pub(super) scores: Scores<'a>,
}

impl Figure for RocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 800)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let s = &self.scores;
        let mut chart = unit_chart(root, self.title, "False Positive Rate (FPR)", "True Positive Rate (TPR)")?;
        chart.draw_series(DashedLineSeries::new([(0.0, 0.0), (1.0, 1.0)], 8, 6, BLACK.mix(0.4).into()))?;
        let mut drawn = 0;
        for c in 0..s.n_classes {
            let Some(roc) = roc_curve(&one_vs_rest(s.labels, c), &column(s.probs, s.n_classes, c)) else {
                continue;
            };
            drawn += 1;
            let mut label = format!("{} (AUC {:.3}", s.name(c), roc.auc());
            if s.n_classes == 2 && c == 1 {
                label += &format!(", EER {:.3}", roc.eer());
            }
            label += ")";
            let style = color(c).stroke_width(3);
            let points = roc.fpr.iter().copied().zip(roc.tpr.iter().copied());
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
        }
        if drawn == 0 {
            // A set of one class has no ROC curve: say so instead of an empty chart.
            let present: Vec<String> = (0..s.n_classes).filter(|c| s.labels.contains(c)).map(|c| s.name(c)).collect();
            let style = (FONT, 22).into_font().color(&BLACK.mix(0.7)).pos(Pos::new(HPos::Center, VPos::Center));
            chart.draw_series([Text::new(
                format!("No ROC curve: every sample is of class {}", present.join(", ")),
                (0.5, 0.55),
                style,
            )])?;
            return Ok(());
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

pub(super) struct PrFigure<'a> {
    pub(super) title: &'a str,
    pub(super) scores: Scores<'a>,
}

impl Figure for PrFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 800 + LEGEND_STRIP)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let s = &self.scores;
        root.fill(&WHITE)?;
        // The legend goes under the chart: inside, it covered the curves of poor classes.
        let (area, strip) = root.split_vertically(800);
        let mut chart = unit_chart(&area, self.title, "Recall", "Precision")?;
        let mut labels = Vec::new();
        // Iso-F1 curves: precision = f r / (2 r - f).
        for k in 1..=9 {
            let f = k as f64 / 10.0;
            let points: Vec<(f64, f64)> = (1..=200)
                .map(|i| i as f64 / 200.0)
                .filter(|&r| 2.0 * r > f)
                .map(|r| (r, f * r / (2.0 * r - f)))
                .filter(|&(_, p)| p <= 1.0)
                .collect();
            let end = points.last().copied();
            chart.draw_series(LineSeries::new(points, BLACK.mix(0.15)))?;
            if let Some((r, p)) = end {
                let at = (r - 0.07, p + 0.02);
                chart.draw_series([Text::new(
                    format!("F1={f:.1}"),
                    at,
                    (FONT, 14).into_font().color(&BLACK.mix(0.35)),
                )])?;
            }
        }
        for c in 0..s.n_classes {
            let y = one_vs_rest(s.labels, c);
            if !y.contains(&true) {
                continue;
            }
            let pr = precision_recall_curve(&y, &column(s.probs, s.n_classes, c));
            labels.push((c, format!("{} (AP {:.3})", s.name(c), pr.average_precision())));
            let style = color(c).stroke_width(3);
            let points = pr.recall.iter().copied().zip(pr.precision.iter().copied());
            chart.draw_series(LineSeries::new(points, style))?;
        }
        legend_strip_colored(&strip, &labels)
    }
}

pub(super) struct F1Figure<'a> {
    pub(super) title: &'a str,
    pub(super) scores: Scores<'a>,
}

impl Figure for F1Figure<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 800)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let s = &self.scores;
        let mut chart = unit_chart(root, self.title, "Threshold", "F1 score")?;
        for c in 0..s.n_classes {
            let y = one_vs_rest(s.labels, c);
            if !y.contains(&true) {
                continue;
            }
            let pr = precision_recall_curve(&y, &column(s.probs, s.n_classes, c));
            let f1 = pr.f1();
            let best = (0..f1.len()).max_by(|&a, &b| f1[a].total_cmp(&f1[b]));
            let label = match best {
                Some(i) => format!("{} (max F1 {:.3} at {:.3})", s.name(c), f1[i], pr.thresholds[i]),
                None => s.name(c),
            };
            let style = color(c).stroke_width(3);
            // F1 of "positive when p >= t" is a step function of t: f1[i] on (t[i-1], t[i]],
            // f1[0] below the lowest score, 0 above the highest. Drawn as such over [0, 1]
            // (joining the points directly drew near-vertical strokes between close scores).
            let t = &pr.thresholds;
            let mut points = Vec::with_capacity(2 * t.len() + 3);
            if let (Some(&first), Some(&last)) = (t.first(), t.last()) {
                points.push((0.0f64.min(first), f1[0]));
                for i in 0..t.len() {
                    points.push((t[i], f1[i]));
                    points.push((t[i], f1.get(i + 1).copied().unwrap_or(0.0)));
                }
                points.push((1.0f64.max(last), 0.0));
            }
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
            if let Some(i) = best {
                chart.draw_series([Circle::new((pr.thresholds[i], f1[i]), 5, color(c).filled())])?;
            }
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)
    }
}

pub(super) struct ConfusionFigure<'a> {
    pub(super) title: &'a str,
    pub(super) confusion: &'a [Vec<usize>],
    pub(super) names: Vec<String>,
    pub(super) normalize: bool,
}

/// matplotlib's "Blues" from its lightest to its darkest colour, `t` in [0, 1].
fn blues(t: f64) -> RGBColor {
    let (a, b) = ((247.0, 251.0, 255.0), (8.0, 48.0, 107.0));
    let mix = |a: f64, b: f64| (a + (b - a) * t.clamp(0.0, 1.0)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl Figure for ConfusionFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let n = self.confusion.len() as u32;
        let side = 500 + 70 * n.saturating_sub(2);
        (side + 200, side + 120)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let n = self.confusion.len();
        let values: Vec<Vec<f64>> = self
            .confusion
            .iter()
            .map(|row| {
                let total: usize = row.iter().sum();
                row.iter()
                    .map(|&v| match (self.normalize, total) {
                        (false, _) => v as f64,
                        (true, 0) => 0.0,
                        (true, t) => 100.0 * v as f64 / t as f64,
                    })
                    .collect()
            })
            .collect();
        let max = values.iter().flatten().copied().fold(0.0, f64::max).max(1e-12);
        let longest = self.names.iter().map(String::len).max().unwrap_or(1) as u32;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, caption_style())
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(60 + 10 * longest)
            .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc("Predicted")
            .y_desc("Actual")
            .axis_desc_style((FONT, 20))
            .draw()?;
        let font_size = if n <= 4 { 22 } else { 16 };
        for (r, row) in values.iter().enumerate() {
            let y = (n - 1 - r) as f64; // row 0 on top
            for (c, &v) in row.iter().enumerate() {
                let t = v / max;
                let x = c as f64;
                chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], blues(t).filled())])?;
                let text = if self.normalize { format!("{v:.2}") } else { format!("{v:.0}") };
                let ink = if t > 0.5 { WHITE } else { BLACK };
                let style = (FONT, font_size).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series([Text::new(text, (x + 0.5, y + 0.5), style)])?;
            }
        }
        // Class names beside the cells.
        let style: TextStyle = (FONT, 16).into_font().into();
        for (i, name) in self.names.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.clone(), (px, py + 8), style.pos(Pos::new(HPos::Center, VPos::Top))))?;
            let (px, py) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
            root.draw(&Text::new(name.clone(), (px - 8, py), style.pos(Pos::new(HPos::Right, VPos::Center))))?;
        }
        Ok(())
    }
}

pub(super) struct DistributionFigure<'a> {
    pub(super) title: &'a str,
    pub(super) scores: Scores<'a>,
    pub(super) bins: usize,
}

impl Figure for DistributionFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 80 + 330 * self.scores.n_classes as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let s = &self.scores;
        root.fill(&WHITE)?;
        let root = root.margin(14, 0, 0, 0).titled(self.title, caption_style())?;
        let panels = root.split_evenly((s.n_classes, 1));
        // Probabilities: the axis is always [0, 1], so that figures compare at a glance.
        let (lo, hi) = (0.0, 1.0);
        let width = (hi - lo) / self.bins as f64;
        // With two classes p(real) = 1 - p(fake) mirrors it: only p(fake) is drawn.
        let columns: Vec<usize> = if s.n_classes == 2 { vec![1] } else { (0..s.n_classes).collect() };
        let bin_of = |p: f64| (((p - lo) / width) as usize).min(self.bins - 1);
        for (true_class, panel) in panels.iter().enumerate() {
            let rows: Vec<&[f64]> = s
                .probs
                .chunks_exact(s.n_classes)
                .zip(s.labels)
                .filter(|&(_, &l)| l == true_class)
                .map(|(row, _)| row)
                .collect();
            // Fraction of the class's samples in each bin, per probability column.
            let hists: Vec<(usize, Vec<f64>)> = columns
                .iter()
                .map(|&c| {
                    let mut h = vec![0.0; self.bins];
                    for row in &rows {
                        h[bin_of(row[c])] += 1.0 / rows.len() as f64;
                    }
                    (c, h)
                })
                .collect();
            let top = hists.iter().flat_map(|(_, h)| h.iter()).copied().fold(0.0, f64::max).max(0.01) * 1.3;
            let samples = if rows.len() == 1 { "sample" } else { "samples" };
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!("True class: {} ({} {samples})", s.name(true_class), rows.len()),
                    (FONT, 20).into_font().color(&color(true_class)),
                )
                .margin(12)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(lo..hi, 0f64..top)?;
            chart
                .configure_mesh()
                .x_desc("Score")
                .y_desc("Fraction")
                .axis_desc_style((FONT, 16))
                .label_style((FONT, 14))
                .light_line_style(BLACK.mix(0.025))
                .bold_line_style(BLACK.mix(0.15))
                .draw()?;
            for &(c, ref h) in &hists {
                let x = |i: usize| lo + i as f64 * width;
                chart.draw_series(
                    h.iter()
                        .enumerate()
                        .map(|(i, &v)| Rectangle::new([(x(i), 0.0), (x(i + 1), v)], color(c).mix(0.2).filled())),
                )?;
                let step: Vec<(f64, f64)> =
                    h.iter().enumerate().flat_map(|(i, &v)| [(x(i), v), (x(i + 1), v)]).collect();
                let style = color(c).stroke_width(2);
                chart
                    .draw_series(LineSeries::new(step, style))?
                    .label(format!("p({})", s.name(c)))
                    .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], style.color.mix(0.5).filled()));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .draw()?;
        }
        Ok(())
    }
}
