//! dlib's HOG frontal face detector (`dlib::get_frontal_face_detector()`), ported from dlib 19.24:
//! `object_detector<scan_fhog_pyramid<pyramid_down<6>>>` (`dlib/image_processing/`
//! `object_detector.h` and `scan_fhog_pyramid.h`).
//!
//! - the model: the serialised detector compressed in `frontal_face_detector.h` (Debian
//!   `libdlib-dev`, decompressed by [`super::ppm`]): five 10x10x31 HOG filters;
//! - detection as `detector(img, upsample)` in dlib's Python API: the image enlarged by
//!   `pyramid_up` (bilinear, 2x), a `pyramid_down<6>` image pyramid (bilinear resizes by 5/6 down
//!   to 64 px, [`super::pyramid`]), Felzenszwalb HOG features (`extract_fhog_features`, 8 px
//!   cells, [`super::fhog`]) per level, each filter correlated with them, windows scoring at least
//!   the filter's threshold kept, and dlib's non-maximum suppression (`test_box_overlap`) over all
//!   five filters' windows.
//!
//! dlib correlates rank-reduced separable versions of the filters (an SVD keeping singular values
//! above 0.1% of the largest), as dfdet does; scores differ from dlib's only by float rounding
//! (see tests/preprocess/dlib.rs).

use std::path::Path;

use image::RgbImage;

use super::fhog::{Fhog, fhog};
use super::ppm::decode_header;
use super::pyramid::{pyramid_down6, pyramid_up};
use super::serialize::Reader;
use crate::{Error, Result};

/// A point or rectangle corner in dlib's integer pixel coordinates.
type Rect = [i64; 4]; // left, top, right, bottom (inclusive)

/// One detection: dlib's rectangle and its confidence (score minus the filter's threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub rect: Rect,
    pub confidence: f64,
    /// Which of the detector's filters found it.
    pub filter: usize,
}

/// dlib's `object_detector<scan_fhog_pyramid<pyramid_down<6>>>`.
#[derive(Debug, Clone)]
pub struct HogDetector {
    cell_size: i64,
    padding: i64,
    window: [i64; 2],
    max_levels: usize,
    min_level_size: [i64; 2],
    /// `test_box_overlap`: IoU (over the bounding box of both) and covered-fraction thresholds.
    overlap: [f64; 2],
    /// Filter size in HOG cells (rows, cols).
    filter_size: [usize; 2],
    /// Per filter: its weights and threshold (bias).
    filters: Vec<(Bank, f64)>,
}

impl HogDetector {
    /// Reads the detector from dlib's `frontal_face_detector.h`.
    pub fn from_header(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bytes = decode_header(&text).map_err(|e| Error::format(path, e))?;
        Self::from_serialized(&bytes, path)
    }

    /// Reads a serialised `object_detector` (what dlib's `save()` writes).
    pub fn from_serialized(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut r = Reader { data: bytes, pos: 0, path };
        if r.int()? != 2 {
            return Err(r.err("expected an object_detector (version 2)"));
        }
        if r.int()? != 1 {
            return Err(r.err("expected a scan_fhog_pyramid (version 1)"));
        }
        // The feature pyramid of the last image: dlib::array's max_size and size, empty.
        let (_, loaded) = (r.len()?, r.len()?);
        if loaded != 0 {
            return Err(r.err("a detector saved with a loaded image"));
        }
        let cell_size = r.int()?;
        let padding = r.int()?;
        let window = [r.int()?, r.int()?];
        let max_levels = r.len()?;
        let min_level_size = [r.int()?, r.int()?];
        let _nuclear_norm = r.double()?;
        let dims = r.len()?;
        let iou = r.double()?;
        let covered = r.double()?;
        let n_filters = r.len()?;
        let mut det = Self {
            cell_size,
            padding,
            window,
            max_levels,
            min_level_size,
            overlap: [iou, covered],
            filter_size: [0, 0],
            filters: Vec::new(),
        };
        if cell_size <= 0 || window.iter().any(|&w| w <= 0) {
            return Err(r.err("bad scanner configuration"));
        }
        let [rows, cols] = det.fhog_window();
        det.filter_size = [rows, cols];
        if dims != rows * cols * 31 {
            return Err(r.err("filter size does not match the window"));
        }
        for _ in 0..n_filters {
            let (nr, nc) = (r.int()?.unsigned_abs() as usize, r.int()?.unsigned_abs() as usize);
            if nc != 1 || nr != dims + 1 {
                return Err(r.err("weight vector of the wrong size"));
            }
            let w: Vec<f64> = (0..nr).map(|_| r.double()).collect::<Result<_>>()?;
            // dlib's build_fhog_filterbank: per plane, an SVD keeping singular values of at least
            // max(1e-4, 0.001 * largest); it correlates with those separable parts unless they
            // outnumber a third of planes x min(rows, cols), and with the full filters otherwise.
            let full: Vec<&[f64]> = (0..31).map(|p| &w[p * rows * cols..(p + 1) * rows * cols]).collect();
            let parts: Vec<(usize, Vec<f32>, Vec<f32>)> = full
                .iter()
                .enumerate()
                .flat_map(|(p, f)| separable_parts(f, rows, cols).into_iter().map(move |(c, r)| (p, c, r)))
                .collect();
            let bank = if parts.len() as f64 > 31.0 * rows.min(cols) as f64 / 3.0 {
                Bank::Full(full.iter().map(|f| f.iter().map(|&v| v as f32).collect()).collect())
            } else {
                Bank::Separable(parts)
            };
            det.filters.push((bank, w[dims]));
        }
        Ok(det)
    }

    pub fn num_filters(&self) -> usize {
        self.filters.len()
    }

    /// `compute_fhog_window_size`: the detection window in HOG cells, plus padding.
    fn fhog_window(&self) -> [usize; 2] {
        let rect = centered_rect([0, 0], self.window[0], self.window[1]);
        let r = image_to_fhog_rect(rect, self.cell_size, 1, 1);
        let r = [r[0] - self.padding, r[1] - self.padding, r[2] + self.padding, r[3] + self.padding];
        [(r[3] - r[1] + 1) as usize, (r[2] - r[0] + 1) as usize]
    }

    /// `detector(image, upsample)`: faces, best first.
    pub fn detect(&self, image: &RgbImage, upsample: u32) -> Vec<Detection> {
        let mut img = image.clone();
        for _ in 0..upsample {
            img = pyramid_up(&img);
        }
        let mut dets = self.detect_at_scale(&img);
        for d in &mut dets {
            // pyramid_down<2>::rect_down(rect, upsample): p / 2 - (1.25, 0.75) per level.
            let mut r = d.rect.map(|v| v as f64);
            for _ in 0..upsample {
                r = [r[0] / 2.0 - 1.25, r[1] / 2.0 - 0.75, r[2] / 2.0 - 1.25, r[3] / 2.0 - 0.75];
            }
            d.rect = round_rect(r);
        }
        dets
    }

    /// `object_detector::operator()` on an image as given.
    fn detect_at_scale(&self, img: &RgbImage) -> Vec<Detection> {
        let [rows, cols] = self.filter_size;
        // The pyramid's levels: shrink the image rectangle until it is below the minimum size.
        let mut levels = 0;
        let mut rect: Rect = [0, 0, img.width() as i64 - 1, img.height() as i64 - 1];
        loop {
            rect = round_rect(pyramid6_rect_down(rect));
            levels += 1;
            let (w, h) = (rect[2] - rect[0] + 1, rect[3] - rect[1] + 1);
            if !(w >= self.min_level_size[0] && h >= self.min_level_size[1] && levels < self.max_levels) {
                break;
            }
        }
        let mut feats = Vec::with_capacity(levels);
        let mut level_img = img.clone();
        for l in 0..levels {
            if l > 0 {
                level_img = pyramid_down6(&level_img);
            }
            feats.push(fhog(&level_img, self.cell_size as usize, rows, cols));
        }
        let det_box = [self.window_cells(cols), self.window_cells(rows)];
        let mut all = Vec::new();
        for (fi, (bank, thresh)) in self.filters.iter().enumerate() {
            let mut dets: Vec<(f64, Rect)> = Vec::new();
            for (l, f) in feats.iter().enumerate() {
                let (saliency, area) = match bank {
                    Bank::Full(planes) => correlate(f, planes, rows, cols),
                    Bank::Separable(parts) => correlate_separable(f, parts, rows, cols),
                };
                let Some([left, top, right, bottom]) = area else { continue };
                for r in top..=bottom {
                    for c in left..=right {
                        let s = saliency[r as usize * f.cols + c as usize];
                        if s as f64 >= *thresh {
                            let window = centered_rect([c, r], det_box[0], det_box[1]);
                            let rect = fhog_to_image_rect(window, self.cell_size, rows as i64, cols as i64);
                            let mut up = rect.map(|v| v as f64);
                            for _ in 0..l {
                                up = up.map(|v| v * 6.0 / 5.0 + 0.3);
                            }
                            dets.push((s as f64, round_rect(up)));
                        }
                    }
                }
            }
            // std::sort(rbegin, rend): best first.
            dets.sort_by(|a, b| b.0.total_cmp(&a.0));
            all.extend(dets.into_iter().map(|(s, rect)| Detection { rect, confidence: s - thresh, filter: fi }));
        }
        if self.filters.len() > 1 {
            all.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        }
        let mut kept: Vec<Detection> = Vec::new();
        for d in all {
            if !kept.iter().any(|k| self.boxes_overlap(&k.rect, &d.rect)) {
                kept.push(d);
            }
        }
        kept
    }

    fn window_cells(&self, filter: usize) -> i64 {
        filter as i64 - 2 * self.padding
    }

    /// `test_box_overlap`: the intersection over the bounding box of both, or over either box.
    fn boxes_overlap(&self, a: &Rect, b: &Rect) -> bool {
        let area = |r: &Rect| ((r[2] - r[0] + 1).max(0) * (r[3] - r[1] + 1).max(0)) as f64;
        let inter = [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])];
        let inner = if inter[2] < inter[0] || inter[3] < inter[1] { 0.0 } else { area(&inter) };
        if inner == 0.0 {
            return false;
        }
        let outer = area(&[a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]);
        inner / outer > self.overlap[0] || inner / area(a) > self.overlap[1] || inner / area(b) > self.overlap[1]
    }
}

/// A detector filter: 31 planes of `rows x cols` weights (row-major), or their separable parts
/// `(plane, column filter, row filter)`.
#[derive(Debug, Clone)]
enum Bank {
    Full(Vec<Vec<f32>>),
    Separable(Vec<(usize, Vec<f32>, Vec<f32>)>),
}

/// dlib's separable parts of a filter `f` (`rows x cols`, row-major): for each singular value
/// `s` of at least `max(1e-4, 0.001 * largest)`, largest first, the column filter `u sqrt(s)` and
/// the row filter `v sqrt(s)` (singular vectors from a Jacobi eigendecomposition of `f^T f`).
fn separable_parts(f: &[f64], rows: usize, cols: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    let n = cols;
    // a = f^T f (n x n, symmetric); v accumulates the rotations.
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..rows).map(|r| f[r * cols + i] * f[r * cols + j]).sum();
        }
    }
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let sv: Vec<f64> = (0..n).map(|i| a[i * n + i].max(0.0).sqrt()).collect();
    let largest = sv.iter().copied().fold(0.0, f64::max);
    let thresh = (largest * 0.001).max(1e-4);
    let mut kept: Vec<usize> = (0..n).filter(|&j| sv[j] >= thresh).collect();
    kept.sort_by(|&a, &b| sv[b].total_cmp(&sv[a]));
    kept.into_iter()
        .map(|j| {
            let root = sv[j].sqrt();
            // u sqrt(s) = f v / sqrt(s)
            let col = (0..rows).map(|r| ((0..cols).map(|k| f[r * cols + k] * v[k * n + j]).sum::<f64>() / root) as f32);
            let row = (0..cols).map(|c| (v[c * n + j] * root) as f32);
            (col.collect(), row.collect())
        })
        .collect()
}

fn centered_rect(p: [i64; 2], w: i64, h: i64) -> Rect {
    let (l, t) = (p[0] - w / 2, p[1] - h / 2);
    [l, t, l + w - 1, t + h - 1]
}

/// dlib's `image_to_fhog` on both corners (C++ integer division truncates towards zero).
fn image_to_fhog_rect(r: Rect, cell: i64, rows_pad: i64, cols_pad: i64) -> Rect {
    let f = |x: i64, pad: i64| (x - 1) / cell - 1 + (pad - 1) / 2;
    [f(r[0], cols_pad), f(r[1], rows_pad), f(r[2], cols_pad), f(r[3], rows_pad)]
}

/// dlib's `fhog_to_image` on both corners: to the cell's centre in image space.
fn fhog_to_image_rect(r: Rect, cell: i64, rows_pad: i64, cols_pad: i64) -> Rect {
    let point = |x: i64, y: i64| {
        let px = (x + 1 - (cols_pad - 1) / 2) * cell + 1;
        let py = (y + 1 - (rows_pad - 1) / 2) * cell + 1;
        let ox = if px >= 0 { cell / 2 } else { -(cell / 2) };
        let oy = if py >= 0 { cell / 2 } else { -(cell / 2) };
        [px + ox, py + oy]
    };
    let (a, b) = (point(r[0], r[1]), point(r[2], r[3]));
    [a[0], a[1], b[0], b[1]]
}

/// `drectangle` -> `rectangle`: each coordinate to `floor(v + 0.5)`.
fn round_rect(r: [f64; 4]) -> Rect {
    r.map(|v| (v + 0.5).floor() as i64)
}

/// `pyramid_down<6>::rect_down`: `(p - 0.3) * 5/6` on both corners.
fn pyramid6_rect_down(r: Rect) -> [f64; 4] {
    r.map(|v| (v as f64 - 0.3) * (5.0 / 6.0))
}

/// dlib's `float_spatially_filter_image_separable` summed over the separable parts: each row
/// filter along the rows of its plane, then the column filter down the result.
fn correlate_separable(
    f: &Fhog,
    parts: &[(usize, Vec<f32>, Vec<f32>)],
    fr: usize,
    fc: usize,
) -> (Vec<f32>, Option<Rect>) {
    let (rows, cols) = (f.rows, f.cols);
    let mut out = vec![0f32; rows * cols];
    if rows < fr || cols < fc {
        return (out, None);
    }
    let (first_row, first_col) = (fr / 2, fc / 2);
    let (last_row, last_col) = (rows - (fr - 1) / 2, cols - (fc - 1) / 2);
    if last_row <= first_row || last_col <= first_col {
        return (out, None);
    }
    // Written as row-wise multiply-adds (vectorisable); the sums are the same, in another order.
    let width = last_col - first_col;
    let mut scratch = vec![0f32; rows * width];
    let mut acc = vec![0f32; width];
    for (plane, col, row) in parts {
        let feat = &f.planes[*plane];
        for r in 0..rows {
            let dst = &mut scratch[r * width..(r + 1) * width];
            dst.fill(0.0);
            for (n, &w) in row.iter().enumerate() {
                let src = &feat[r * cols + n..r * cols + n + width];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s * w;
                }
            }
        }
        for r in first_row..last_row {
            acc.fill(0.0);
            for (m, &w) in col.iter().enumerate() {
                let src = &scratch[(r - first_row + m) * width..(r - first_row + m + 1) * width];
                for (a, s) in acc.iter_mut().zip(src) {
                    *a += s * w;
                }
            }
            for (o, a) in out[r * cols + first_col..r * cols + last_col].iter_mut().zip(&acc) {
                *o += a;
            }
        }
    }
    let area = [first_col as i64, first_row as i64, last_col as i64 - 1, last_row as i64 - 1];
    (out, Some(area))
}

/// The sum over planes of each filter plane correlated with the features (dlib's
/// `spatially_filter_image`: the filter's centre at `(rows / 2, cols / 2)`), and the valid area.
fn correlate(f: &Fhog, planes: &[Vec<f32>], fr: usize, fc: usize) -> (Vec<f32>, Option<Rect>) {
    let (rows, cols) = (f.rows, f.cols);
    let mut out = vec![0f32; rows * cols];
    let (first_row, first_col) = (fr / 2, fc / 2);
    if rows < fr || cols < fc {
        return (out, None);
    }
    let last_row = rows - (fr - 1) / 2;
    let last_col = cols - (fc - 1) / 2;
    if last_row <= first_row || last_col <= first_col {
        return (out, None);
    }
    let width = last_col - first_col;
    for (p, weights) in planes.iter().enumerate() {
        let feat = &f.planes[p];
        for r in first_row..last_row {
            let dst = &mut out[r * cols + first_col..r * cols + last_col];
            for m in 0..fr {
                let src_row = r - first_row + m;
                for n in 0..fc {
                    let w = weights[m * fc + n];
                    if w == 0.0 {
                        continue;
                    }
                    let src = &feat[src_row * cols + n..src_row * cols + n + width];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += w * s;
                    }
                }
            }
        }
    }
    let area = [first_col as i64, first_row as i64, last_col as i64 - 1, last_row as i64 - 1];
    (out, Some(area))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhog_mapping_round_trips() {
        // An 80x80 window at 8 px cells is 10x10 cells (dlib: padding 0).
        let r = image_to_fhog_rect(centered_rect([0, 0], 80, 80), 8, 1, 1);
        assert_eq!(r[2] - r[0] + 1, 10);
        // (0 + 1 - 4) * 8 + 1 = -23, then half a cell outwards.
        assert_eq!(fhog_to_image_rect([0, 0, 0, 0], 8, 10, 10), [-27, -27, -27, -27]);
    }
}
