//! Evaluation plots, as PNG or SVG (chosen by the file's extension).
//!
//! The plots of yermandy/deepfake-detection `src/plots.py`: one-vs-rest ROC and PR curves,
//! F1 against the threshold, the confusion matrix raw and row-normalised, and the
//! distribution of every probability column per true class.
//!
//! Text is drawn with a TrueType font read at run time: `$DFDET_FONT` if set, else a common
//! sans-serif font of the system (DejaVu Sans, Liberation Sans, Noto Sans, Arial...), else any
//! `.ttf` under the usual font folders. Without one, plotting fails with an error naming
//! `DFDET_FONT`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{argmax_rows, check_inputs, confusion_matrix};
use crate::{Error, Result};

mod figures;
pub mod study;
use figures::{ConfusionFigure, DistributionFigure, F1Figure, PrFigure, RocFigure};

/// The environment variable naming the TrueType/OpenType font used for text.
pub const FONT_ENV: &str = "DFDET_FONT";
const FONT: &str = "sans-serif";

/// Class colours (matplotlib's tab10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(c: usize) -> RGBColor {
    PALETTE[c % PALETTE.len()]
}

/// The font file plots will use, if one is found (see the module docs).
pub fn find_font() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(FONT_ENV) {
        return Some(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> =
        ["/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "/System/Library/Fonts", "C:\\Windows\\Fonts"]
            .iter()
            .map(PathBuf::from)
            .collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/share/fonts"));
        dirs.push(Path::new(&home).join(".fonts"));
    }
    let mut found = Vec::new();
    for dir in dirs {
        collect_fonts(&dir, 4, &mut found);
    }
    const PREFERRED: [&str; 8] = [
        "DejaVuSans.ttf",
        "LiberationSans-Regular.ttf",
        "NotoSans-Regular.ttf",
        "Arial.ttf",
        "arial.ttf",
        "FreeSans.ttf",
        "Roboto-Regular.ttf",
        "Ubuntu-R.ttf",
    ];
    let file_name = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    PREFERRED
        .iter()
        .find_map(|want| found.iter().find(|p| file_name(p).as_deref() == Some(want)))
        .or_else(|| found.first())
        .cloned()
}

fn collect_fonts(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if depth > 0 {
                collect_fonts(&path, depth - 1, out);
            }
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
            out.push(path);
        }
    }
}

/// Registers the font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = find_font()
                .ok_or_else(|| format!("plots need a TrueType font: none found, set {FONT_ENV}=/path/to/font.ttf"))?;
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // plotters keeps fonts for the process's lifetime.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a TrueType/OpenType font", path.display()))
        })
        .clone()
        .map_err(|reason| Error::config(FONT_ENV, reason))
}

type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure that can be drawn on any plotters backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB>;
}

/// Draws `figure` to `path`: SVG for a `.svg` extension, PNG otherwise. Creates the folder.
fn save(figure: &impl Figure, path: &Path) -> Result<()> {
    ensure_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let (w, h) = figure.size();
    let plot_error = |e: String| Error::output(path, format!("cannot draw plot: {e}"));
    let svg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if svg {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
            figure.draw(&root).map_err(|e| plot_error(e.to_string()))?;
            root.present().map_err(|e| plot_error(e.to_string()))?;
        }
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    } else {
        let mut pixels = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            figure.draw(&root).map_err(|e| plot_error(e.to_string()))?;
            root.present().map_err(|e| plot_error(e.to_string()))?;
        }
        let image = image::RgbImage::from_raw(w, h, pixels).expect("buffer of w * h * 3 bytes");
        image.save_with_format(path, image::ImageFormat::Png).map_err(|e| Error::output(path, e.to_string()))
    }
}

/// Probabilities, labels and class names of one split at one level (see
/// [`super::metrics`] for the row-major layout).
#[derive(Debug, Clone, Copy)]
pub struct Scores<'a> {
    /// Row-major probabilities, `n_classes` per sample.
    pub probs: &'a [f64],
    /// Class index of each sample.
    pub labels: &'a [usize],
    /// Probability columns.
    pub n_classes: usize,
    /// Display name of each class; missing names show as the class index.
    pub class_names: &'a [&'a str],
}

impl Scores<'_> {
    fn name(&self, c: usize) -> String {
        match self.class_names.get(c) {
            Some(name) => format!("{c}: {name}"),
            None => c.to_string(),
        }
    }

    fn check(&self) -> Result<()> {
        check_inputs(self.probs, self.labels, self.n_classes)
    }
}

fn caption_style() -> TextStyle<'static> {
    (FONT, 26).into_font().into()
}

/// A chart with f64 axes.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, position: SeriesLabelPosition) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 18))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .draw()
}

/// Height of the legend row under a figure, in pixels.
const LEGEND_STRIP: u32 = 44;

/// One row of legend entries (a line, or with `boxes` a filled box, in the series' colour and
/// its label), centred in `area`: outside the charts, so that it never hides data.
fn legend_strip<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, labels: &[&str], boxes: bool) -> Drawn<DB> {
    let entries: Vec<(usize, String)> = labels.iter().enumerate().map(|(k, l)| (k, l.to_string())).collect();
    legend_row(area, &entries, boxes)
}

/// [`legend_strip`] with lines whose colours are given (`(colour index, label)`).
fn legend_strip_colored<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(usize, String)]) -> Drawn<DB> {
    legend_row(area, entries, false)
}

fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(usize, String)],
    boxes: bool,
) -> Drawn<DB> {
    let labels: Vec<&str> = entries.iter().map(|(_, l)| l.as_str()).collect();
    let font: TextStyle = (FONT, 17).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let widths: Vec<i32> = labels
        .iter()
        .map(|l| area.estimate_text_size(l, &font).map_or(8 * l.len() as i32, |(w, _)| w as i32) + 56)
        .collect();
    let (w, h) = area.dim_in_pixel();
    let mut x = (w as i32 - widths.iter().sum::<i32>()).max(0) / 2;
    let y = h as i32 / 2;
    for ((k, label), width) in entries.iter().map(|(k, l)| (*k, l)).zip(&widths) {
        if boxes {
            area.draw(&Rectangle::new([(x, y - 8), (x + 20, y + 8)], color(k).filled()))?;
        } else {
            area.draw(&PathElement::new([(x, y), (x + 28, y)], color(k).stroke_width(3)))?;
            area.draw(&Circle::new((x + 14, y), 4, color(k).filled()))?;
        }
        area.draw(&Text::new(label.to_string(), (x + 34, y), font.clone()))?;
        x += width;
    }
    Ok(())
}

/// A unit-square chart with grid, axis names and a caption.
fn unit_chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
) -> std::result::Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, caption_style())
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.02f64..1.02f64, -0.02f64..1.02f64)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FONT, 20))
        .label_style((FONT, 16))
        .light_line_style(BLACK.mix(0.025))
        .bold_line_style(BLACK.mix(0.15))
        .draw()?;
    Ok(chart)
}

/// One-vs-rest ROC curve of every class with a defined curve, AUROC (and for 2 classes the
/// EER) in the legend.
///
/// # Errors
/// Invalid scores, no font, or a file that cannot be written.
pub fn roc_plot(path: &Path, title: &str, scores: Scores) -> Result<()> {
    scores.check()?;
    save(&RocFigure { title, scores }, path)
}

/// One-vs-rest precision-recall curve of every class with samples, AP in the legend, iso-F1
/// curves in grey.
///
/// # Errors
/// Invalid scores, no font, or a file that cannot be written.
pub fn pr_plot(path: &Path, title: &str, scores: Scores) -> Result<()> {
    scores.check()?;
    save(&PrFigure { title, scores }, path)
}

/// One-vs-rest F1 against the threshold on the class's probability, the best point marked.
///
/// # Errors
/// Invalid scores, no font, or a file that cannot be written.
pub fn f1_plot(path: &Path, title: &str, scores: Scores) -> Result<()> {
    scores.check()?;
    save(&F1Figure { title, scores }, path)
}

/// The confusion matrix (rows actual, columns predicted) with annotated cells; with
/// `normalize`, each row in percent of its total.
///
/// # Errors
/// A matrix that is not square, no font, or a file that cannot be written.
pub fn confusion_plot(
    path: &Path,
    title: &str,
    confusion: &[Vec<usize>],
    class_names: &[&str],
    normalize: bool,
) -> Result<()> {
    let n = confusion.len();
    if n == 0 || confusion.iter().any(|row| row.len() != n) {
        return Err(Error::Invalid(format!("{}: confusion matrix is not square", path.display())));
    }
    let names =
        (0..n).map(|c| class_names.get(c).map_or_else(|| c.to_string(), |name| format!("{c}: {name}"))).collect();
    save(&ConfusionFigure { title, confusion, names, normalize }, path)
}

/// For each true class, histograms (fraction of the class's samples, 30 bins) of every
/// probability column.
///
/// # Errors
/// Invalid scores, no font, or a file that cannot be written.
pub fn distribution_plot(path: &Path, title: &str, scores: Scores) -> Result<()> {
    scores.check()?;
    save(&DistributionFigure { title, scores, bins: 30 }, path)
}

/// Writes every plot of one split at one level into `dir` with the original's file names
/// (`{stage}_roc_{level}`, `{stage}_pr_curve`, `{stage}_f1_curve`, `{stage}_confusion`,
/// `{stage}_confusion_norm`, `{stage}_probs_distribution`), as PNG and, with `svg`, also SVG.
/// Titles read e.g. "Test ROC (video-level)". Returns the files written.
///
/// # Errors
/// As the single plots.
pub fn write_plots(dir: &Path, stage: &str, level: &str, scores: Scores, svg: bool) -> Result<Vec<PathBuf>> {
    scores.check()?;
    let mut stage_title = stage.to_string();
    if let Some(first) = stage_title.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let preds = argmax_rows(scores.probs, scores.n_classes);
    let confusion = confusion_matrix(scores.labels, &preds, scores.n_classes);
    let extensions: &[&str] = if svg { &["png", "svg"] } else { &["png"] };
    let mut written = Vec::new();
    for ext in extensions {
        let file = |name: &str| dir.join(format!("{stage}_{name}.{ext}"));
        let title = |what: &str| format!("{stage_title} {what} ({level}-level)");
        let path = file(&format!("roc_{level}"));
        roc_plot(&path, &title("ROC"), scores)?;
        written.push(path);
        let path = file("pr_curve");
        pr_plot(&path, &title("PR Curve"), scores)?;
        written.push(path);
        let path = file("f1_curve");
        f1_plot(&path, &title("F1 Curve"), scores)?;
        written.push(path);
        // The predicted class is the argmax (ties to the lower class): for two classes, fake
        // when p(fake) > 0.5. The title says so.
        let rule = if scores.n_classes == 2 { "fake if p(fake) > 0.5" } else { "predicted = argmax" };
        let path = file("confusion");
        confusion_plot(&path, &title(&format!("Confusion Matrix, {rule}")), &confusion, scores.class_names, false)?;
        written.push(path);
        let path = file("confusion_norm");
        let norm_title = title(&format!("Confusion Matrix, % of row, {rule}"));
        confusion_plot(&path, &norm_title, &confusion, scores.class_names, true)?;
        written.push(path);
        let path = file("probs_distribution");
        distribution_plot(&path, &title("Probability Distribution"), scores)?;
        written.push(path);
    }
    Ok(written)
}
