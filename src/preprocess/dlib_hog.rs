//! dlib's HOG frontal face detector (`dlib::get_frontal_face_detector()`), ported from dlib 19.24:
//!
//! - the model: the base64 text in `frontal_face_detector.h` (Debian `libdlib-dev`), compressed
//!   by `compress_stream::kernel_1ea` (an order-4 PPM model, escape method D with Shkarin's
//!   information inheritance, over a 32-bit range coder), holding a serialised
//!   `object_detector<scan_fhog_pyramid<pyramid_down<6>>>`: five 10x10x31 HOG filters;
//! - detection as `detector(img, upsample)` in dlib's Python API: the image enlarged by
//!   `pyramid_up` (bilinear, 2x), a `pyramid_down<6>` image pyramid (bilinear resizes by 5/6 down
//!   to 64 px), Felzenszwalb HOG features (`extract_fhog_features`, 8 px cells) per level, each
//!   filter correlated with them, windows scoring at least the filter's threshold kept, and dlib's
//!   non-maximum suppression (`test_box_overlap`) over all five filters' windows.
//!
//! dlib correlates rank-reduced separable versions of the filters (an SVD keeping singular values
//! above 0.1% of the largest), as dfdet does; scores differ from dlib's only by float rounding
//! (see tests/preprocess_dlib.rs).

use std::path::Path;

use image::RgbImage;

use super::dlib::Reader;
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

/// `pyramid_down<6>` on an image: `(5 * size) / 6` (integer division), bilinear.
pub fn pyramid_down6(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() as u64, img.height() as u64);
    resize_bilinear(img, ((5 * w) / 6) as u32, ((5 * h) / 6) as u32)
}

/// `pyramid_up(img, pyramid_down<2>)`: a bilinear resize to `(2w + 2) x (2h + 1)`, the size of
/// `rect_up` of the image's rectangle.
pub fn pyramid_up(img: &RgbImage) -> RgbImage {
    if img.width() == 0 || img.height() == 0 {
        return RgbImage::new(0, 0);
    }
    resize_bilinear(img, 2 * img.width() + 2, 2 * img.height() + 1)
}

/// dlib's `resize_image` for RGB images with bilinear interpolation: four output columns at a
/// time in f32 (positions accumulated in f32, values truncated), the remaining columns in f64.
pub fn resize_bilinear(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let mut out = RgbImage::new(out_w, out_h);
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return out;
    }
    let raw = img.as_raw();
    let px = |x: i64, y: i64, c: usize| raw[3 * (y * in_w + x) as usize + c];
    let x_scale = (in_w - 1) as f64 / ((out_w as i64 - 1).max(1)) as f64;
    let y_scale = (in_h - 1) as f64 / ((out_h as i64 - 1).max(1)) as f64;
    let mut y = -y_scale;
    for r in 0..out_h as i64 {
        y += y_scale;
        let top = y.floor() as i64;
        let bottom = (top + 1).min(in_h - 1);
        let tb = y - top as f64;
        let (tb_f, inv_tb_f) = (tb as f32, (1.0 - tb) as f32);
        let x0 = -4.0 * x_scale;
        let step = (4.0 * x_scale) as f32;
        let mut lanes = [x0 as f32, (x0 + x_scale) as f32, (x0 + 2.0 * x_scale) as f32, (x0 + 3.0 * x_scale) as f32];
        let mut c: i64 = 0;
        loop {
            for l in &mut lanes {
                *l += step;
            }
            let left = lanes.map(|v| v as i64); // truncation, as _mm_cvttps_epi32
            let right = left.map(|v| v + 1);
            if right[3] >= in_w {
                break;
            }
            for k in 0..4 {
                let lr = lanes[k] - left[k] as f32;
                let inv_lr = 1.0 - lr;
                let (tlf, trf, blf, brf) = (inv_tb_f * inv_lr, inv_tb_f * lr, tb_f * inv_lr, tb_f * lr);
                let mut p = [0u8; 3];
                for (ch, v) in p.iter_mut().enumerate() {
                    let s = tlf * px(left[k], top, ch) as f32
                        + trf * px(right[k], top, ch) as f32
                        + blf * px(left[k], bottom, ch) as f32
                        + brf * px(right[k], bottom, ch) as f32;
                    *v = s as i32 as u8;
                }
                if c + (k as i64) < out_w as i64 {
                    out.put_pixel((c + k as i64) as u32, r as u32, image::Rgb(p));
                }
            }
            c += 4;
        }
        let mut x = -x_scale + c as f64 * x_scale;
        while c < out_w as i64 {
            x += x_scale;
            let left = x.floor() as i64;
            let right = (left + 1).min(in_w - 1);
            let lr = x - left as f64;
            let mut p = [0u8; 3];
            for (ch, v) in p.iter_mut().enumerate() {
                let f = |xx: i64, yy: i64| px(xx, yy, ch) as f64;
                let s = (1.0 - tb) * ((1.0 - lr) * f(left, top) + lr * f(right, top))
                    + tb * ((1.0 - lr) * f(left, bottom) + lr * f(right, bottom));
                *v = s.clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(c as u32, r as u32, image::Rgb(p));
            c += 1;
        }
    }
    out
}

/// HOG planes of one pyramid level, laid out as dlib's `extract_fhog_features` with filter
/// padding: 31 planes of `rows x cols`, zero around the valid cells.
#[derive(Debug, Clone)]
pub struct Fhog {
    pub planes: Vec<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
}

const DIRECTIONS: [[f32; 2]; 9] = [
    [1.0000, 0.0000],
    [0.9397, 0.3420],
    [0.7660, 0.6428],
    [0.500, 0.8660],
    [0.1736, 0.9848],
    [-0.1736, 0.9848],
    [-0.5000, 0.8660],
    [-0.7660, 0.6428],
    [-0.9397, 0.3420],
];

/// dlib's `impl_extract_fhog_features` for an RGB image (the colour channel with the strongest
/// gradient at each pixel), `cell` px cells, padded for a `pad_rows x pad_cols` filter.
pub fn fhog(img: &RgbImage, cell: usize, pad_rows: usize, pad_cols: usize) -> Fhog {
    let (nr, nc) = (img.height() as usize, img.width() as usize);
    let cells_nr = (nr as f32 / cell as f32 + 0.5) as usize;
    let cells_nc = (nc as f32 / cell as f32 + 0.5) as usize;
    let hog_nr = cells_nr.saturating_sub(2);
    let hog_nc = cells_nc.saturating_sub(2);
    if hog_nr == 0 || hog_nc == 0 {
        return Fhog { planes: vec![Vec::new(); 31], rows: 0, cols: 0 };
    }
    let (rows, cols) = (hog_nr + pad_rows - 1, hog_nc + pad_cols - 1);
    let (off_r, off_c) = ((pad_rows - 1) / 2, (pad_cols - 1) / 2);
    let hist_nc = cells_nc + 2;
    let mut hist = vec![[0f32; 18]; (cells_nr + 2) * hist_nc];
    let raw = img.as_raw();
    let at = |y: usize, x: usize, ch: usize| raw[3 * (y * nc + x) + ch] as i32;
    let visible_nr = (cells_nr * cell).min(nr) - 1;
    let visible_nc = (cells_nc * cell).min(nc) - 1;
    // The strongest channel's gradient. dlib's 8-wide path breaks ties towards the later channel
    // (`rlen > glen ? red : green`, then `tlen > blen ? that : blue`), its scalar path towards
    // the earlier one.
    let gradient = |y: usize, x: usize, simd: bool| -> (f32, f32, f32) {
        let g: [(i32, i32, i32); 3] = std::array::from_fn(|ch| {
            let gx = at(y, x + 1, ch) - at(y, x - 1, ch);
            let gy = at(y + 1, x, ch) - at(y - 1, x, ch);
            (gx, gy, gx * gx + gy * gy)
        });
        let best = if simd {
            let t = if g[0].2 > g[1].2 { g[0] } else { g[1] };
            if t.2 > g[2].2 { t } else { g[2] }
        } else {
            let mut b = g[0];
            for c in &g[1..] {
                if c.2 > b.2 {
                    b = *c;
                }
            }
            b
        };
        (best.0 as f32, best.1 as f32, best.2 as f32)
    };
    let orientation = |gx: f32, gy: f32| -> usize {
        let (mut best_dot, mut best_o) = (0f32, 0usize);
        for (o, d) in DIRECTIONS.iter().enumerate() {
            let dot = gx * d[0] + gy * d[1];
            if dot > best_dot {
                best_dot = dot;
                best_o = o;
            } else if -dot > best_dot {
                best_dot = -dot;
                best_o = o + 9;
            }
        }
        best_o
    };
    for y in 1..visible_nr {
        let yp = ((y as f64 + 0.5) / cell as f64 - 0.5) as f32;
        let iyp = yp.floor() as i64;
        let vy0 = yp - iyp as f32;
        let vy1 = (1.0 - vy0 as f64) as f32;
        let row = (iyp + 1) as usize;
        // dlib's 8-wide loop runs for x = 1, 9, 17, ... while x < visible_nc - 7.
        let simd_end = if visible_nc >= 9 { 1 + 8 * ((visible_nc - 9) / 8 + 1) } else { 1 };
        for x in 1..visible_nc {
            let (gx, gy, len) = gradient(y, x, x < simd_end);
            let o = orientation(gx, gy);
            let v = len.sqrt();
            let (col, w11, w01, w10, w00);
            if x < simd_end {
                // dlib's 8-wide path: xp = (x + 0.5) / cell + 0.5, truncated; weights times v first.
                let xp = (x as f32 + 0.5) / cell as f32 + 0.5;
                let ixp = xp as i64;
                let vx0 = xp - ixp as f32;
                let vx1 = 1.0f32 - vx0;
                let (vx1, vx0) = (vx1 * v, vx0 * v);
                col = ixp as usize;
                (w11, w01, w10, w00) = (vy1 * vx1, vy0 * vx1, vy1 * vx0, vy0 * vx0);
            } else {
                let xp = ((x as f64 + 0.5) / cell as f64 - 0.5) as f32;
                let ixp = xp.floor() as i64;
                let vx0 = xp - ixp as f32;
                let vx1 = (1.0 - vx0 as f64) as f32;
                col = (ixp + 1) as usize;
                (w11, w01, w10, w00) = (vy1 * vx1 * v, vy0 * vx1 * v, vy1 * vx0 * v, vy0 * vx0 * v);
            }
            hist[row * hist_nc + col][o] += w11;
            hist[(row + 1) * hist_nc + col][o] += w01;
            hist[row * hist_nc + col + 1][o] += w10;
            hist[(row + 1) * hist_nc + col + 1][o] += w00;
        }
    }
    let mut norm = vec![0f32; cells_nr * cells_nc];
    for r in 0..cells_nr {
        for c in 0..cells_nc {
            let h = &hist[(r + 1) * hist_nc + c + 1];
            for o in 0..9 {
                norm[r * cells_nc + c] += (h[o] + h[o + 9]) * (h[o] + h[o + 9]);
            }
        }
    }
    let n_at = |r: usize, c: usize| norm[r * cells_nc + c];
    let mut planes = vec![vec![0f32; rows * cols]; 31];
    let eps = 0.0001f32;
    for y in 0..hog_nr {
        for x in 0..hog_nc {
            // The four block norms, lane by lane as dlib's simd4f: ((z1 + z2) + z3) + z4 + eps.
            let zs = [
                [n_at(y + 1, x + 1), n_at(y, x + 1), n_at(y + 1, x), n_at(y, x)],
                [n_at(y + 1, x + 2), n_at(y, x + 2), n_at(y + 1, x + 1), n_at(y, x + 1)],
                [n_at(y + 2, x + 1), n_at(y + 1, x + 1), n_at(y + 2, x), n_at(y + 1, x)],
                [n_at(y + 2, x + 2), n_at(y + 1, x + 2), n_at(y + 2, x + 1), n_at(y + 1, x + 1)],
            ];
            let nn: [f32; 4] = std::array::from_fn(|lane| {
                0.2f32 * ((((zs[0][lane] + zs[1][lane]) + zs[2][lane]) + zs[3][lane]) + eps).sqrt()
            });
            let n: [f32; 4] = nn.map(|v| 0.1f32 / v);
            let h = &hist[(y + 2) * hist_nc + x + 2];
            let idx = (y + off_r) * cols + x + off_c;
            let mut t = [0f32; 4];
            let lanes = |v: f32| -> [f32; 4] { std::array::from_fn(|l| v.min(nn[l]) * n[l]) };
            let sum = |a: [f32; 4]| (a[0] + a[1]) + (a[2] + a[3]);
            for o in (0..18).step_by(3) {
                let (h0, h1, h2) = (lanes(h[o]), lanes(h[o + 1]), lanes(h[o + 2]));
                planes[o][idx] = sum(h0);
                planes[o + 1][idx] = sum(h1);
                planes[o + 2][idx] = sum(h2);
                for l in 0..4 {
                    t[l] += (h0[l] + h1[l]) + h2[l];
                }
            }
            for o in 0..9 {
                planes[o + 18][idx] = sum(lanes(h[o] + h[o + 9]));
            }
            let k = (2.0 * 0.2357) as f32;
            for l in 0..4 {
                planes[27 + l][idx] = t[l] * k;
            }
        }
    }
    Fhog { planes, rows, cols }
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

// --- the compressed model in frontal_face_detector.h ---------------------------------------

/// The bytes of the serialised detector in `frontal_face_detector.h`: its `sout << "..."`
/// base64 lines, decoded, then decompressed.
pub fn decode_header(text: &str) -> std::result::Result<Vec<u8>, String> {
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("sout << \"") {
            let end = rest.rfind('"').ok_or("unterminated string in the header")?;
            b64.push_str(&rest[..end]);
        }
    }
    if b64.is_empty() {
        return Err("no base64 model text (`sout << \"...\"` lines) found".into());
    }
    let compressed = base64_decode(&b64)?;
    decompress(&compressed)
}

fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = value(c) else {
            if c.is_ascii_whitespace() {
                continue;
            }
            return Err(format!("bad base64 character {:?}", c as char));
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// dlib's `entropy_decoder::kernel_2a`: a 32-bit range decoder.
struct RangeDecoder<'a> {
    data: &'a [u8],
    pos: usize,
    low: u32,
    high: u32,
    target: u32,
    r: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(data: &'a [u8]) -> Self {
        let mut d = Self { data, pos: 0, low: 1, high: 0xffff_ffff, target: 0, r: 0 };
        for _ in 0..4 {
            d.target = (d.target << 8) | d.next_byte() as u32;
        }
        d
    }

    fn next_byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn get_target(&mut self, total: u32) -> u32 {
        self.r = (self.high.wrapping_sub(self.low).wrapping_add(1)) / total;
        let t = self.target.wrapping_sub(self.low) / self.r;
        t.min(total - 1)
    }

    fn decode(&mut self, low_count: u32, high_count: u32) {
        self.high = self.low.wrapping_add(self.r.wrapping_mul(high_count)).wrapping_sub(1);
        self.low = self.low.wrapping_add(self.r.wrapping_mul(low_count));
        self.r = 0;
        loop {
            if (self.high & 0xFF00_0000) != (self.low & 0xFF00_0000) {
                if self.high.wrapping_sub(self.low) < 0x10000 {
                    if self.high.wrapping_sub(self.low) > 0x1000 {
                        self.high >>= 1;
                        self.low >>= 1;
                        self.high = self.high.wrapping_add(self.low);
                        self.low = self.high;
                        self.high = self.high.wrapping_add(0xFF);
                        self.low = self.low.wrapping_sub(0xFF);
                    } else {
                        self.high >>= 1;
                        self.low >>= 1;
                        self.high = self.high.wrapping_add(self.low);
                        self.low = self.high;
                    }
                } else {
                    break;
                }
            } else {
                let b = self.next_byte();
                self.target = (self.target << 8) | b as u32;
                self.high = (self.high << 8) | 0xFF;
                self.low <<= 8;
                if self.low == 0 {
                    self.low = 1;
                }
            }
        }
    }
}

const NIL: u32 = u32::MAX;
const ROOT: u32 = 0;
const ALPHABET: u32 = 257;
const TOTAL_NODES: usize = 200_000;
const ORDER: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Node {
    next: u32,
    child: u32,
    parent: u32,
    symbol: u16,
    count: u16,
    total: u16,
    escapes: u16,
}

const EMPTY: Node = Node { next: NIL, child: NIL, parent: NIL, symbol: 0, count: 0, total: 0, escapes: 0 };

/// dlib's `entropy_decoder_model_kernel_5<257, kernel_2a, 200000, 4>`: PPM (Moffat's
/// implementation strategy, escape method D, Shkarin's information inheritance).
struct Ppm {
    nodes: Vec<Node>,
    next_node: usize,
    cur: u32,
    cur_order: usize,
    exc: [u32; (ALPHABET as usize) / 32 + 1],
    exc_used: bool,
    stack: Vec<(u32, u32)>,
}

impl Ppm {
    fn new() -> Self {
        Self {
            nodes: vec![EMPTY; TOTAL_NODES],
            next_node: 1,
            cur: ROOT,
            cur_order: 0,
            exc: [0; (ALPHABET as usize) / 32 + 1],
            exc_used: false,
            stack: Vec::with_capacity(ORDER + 1),
        }
    }

    fn clear(&mut self) {
        self.next_node = 1;
        let root = &mut self.nodes[ROOT as usize];
        root.child = NIL;
        root.escapes = 0;
        root.total = 0;
        self.cur = ROOT;
        self.cur_order = 0;
        self.stack.clear();
        self.clear_exclusions();
    }

    fn clear_exclusions(&mut self) {
        self.exc_used = false;
        self.exc = [0; (ALPHABET as usize) / 32 + 1];
    }

    fn exclude(&mut self, s: u16) {
        self.exc_used = true;
        self.exc[(s >> 5) as usize] |= 1 << (s & 0x1F);
    }

    fn excluded(&self, s: u16) -> bool {
        self.exc[(s >> 5) as usize] & (1 << (s & 0x1F)) != 0
    }

    fn alloc(&mut self) -> u32 {
        let n = self.next_node as u32;
        self.next_node += 1;
        n
    }

    fn scale_counts(&mut self, t: u32) {
        let node = &mut self.nodes[t as usize];
        if node.escapes > 1 {
            node.escapes >>= 1;
        }
        let mut total = node.escapes;
        let mut n = node.child;
        while n != NIL {
            let c = &mut self.nodes[n as usize];
            if c.count > 1 {
                c.count >>= 1;
            }
            total = total.wrapping_add(c.count);
            n = c.next;
        }
        self.nodes[t as usize].total = total;
    }

    fn n(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn decode(&mut self, coder: &mut RangeDecoder) -> u32 {
        let mut temp = self.cur;
        self.cur = NIL;
        let mut new_node = NIL;
        let mut local_order = self.cur_order;
        // c = the decoded symbol's count, t = its context's total (for the inheritance below).
        let (c, t): (u16, u16);
        let symbol: u32;
        if self.exc_used {
            self.clear_exclusions();
        }
        loop {
            let mut high_count: u32 = 0;
            if self.next_node < TOTAL_NODES {
                let mut total_count = self.nodes[temp as usize].total as u32;
                if total_count > 0 {
                    if total_count > 10000 {
                        self.scale_counts(temp);
                        total_count = self.nodes[temp as usize].total as u32;
                    }
                    if self.exc_used {
                        let mut n = self.nodes[temp as usize].child;
                        total_count = self.nodes[temp as usize].escapes as u32;
                        loop {
                            let node = self.nodes[n as usize];
                            if !self.excluded(node.symbol) {
                                total_count += node.count as u32;
                            }
                            if node.next == NIL {
                                break;
                            }
                            n = node.next;
                        }
                    }
                    let target = coder.get_target(total_count);
                    let mut n = self.nodes[temp as usize].child;
                    let mut last = NIL;
                    loop {
                        let node = self.nodes[n as usize];
                        if !self.excluded(node.symbol) {
                            high_count += node.count as u32;
                            self.exclude(node.symbol);
                        }
                        if high_count > target || node.next == NIL {
                            break;
                        }
                        last = n;
                        n = node.next;
                    }
                    if high_count > target {
                        let low_count = high_count - self.nodes[n as usize].count as u32;
                        if new_node != NIL {
                            self.n(new_node).parent = n;
                        }
                        let s = self.nodes[n as usize].symbol as u32;
                        coder.decode(low_count, high_count);
                        self.n(n).count = self.nodes[n as usize].count.wrapping_add(8);
                        c = self.nodes[n as usize].count;
                        self.n(temp).total = self.nodes[temp as usize].total.wrapping_add(8);
                        t = self.nodes[temp as usize].total;
                        if last != NIL {
                            // Move to the front of its context set.
                            self.n(last).next = self.nodes[n as usize].next;
                            self.n(n).next = self.nodes[temp as usize].child;
                            self.n(temp).child = n;
                        }
                        if self.cur == NIL {
                            if local_order < ORDER {
                                self.cur_order = local_order + 1;
                                self.cur = n;
                            } else {
                                self.cur = self.nodes[n as usize].parent;
                                self.cur_order = local_order;
                            }
                        }
                        symbol = s;
                        break;
                    } else {
                        if new_node != NIL {
                            let a = self.alloc();
                            self.n(new_node).parent = a;
                            new_node = a;
                        } else {
                            new_node = self.alloc();
                        }
                        self.n(n).next = new_node;
                        coder.decode(high_count, total_count);
                    }
                } else {
                    if new_node != NIL {
                        let a = self.alloc();
                        self.n(new_node).parent = a;
                        new_node = a;
                    } else {
                        new_node = self.alloc();
                    }
                    self.n(temp).child = new_node;
                }
                if self.cur == NIL && local_order < ORDER {
                    self.cur = new_node;
                    self.cur_order = local_order + 1;
                }
                {
                    let nn = self.n(new_node);
                    nn.child = NIL;
                    nn.escapes = 0;
                    nn.next = NIL;
                }
                self.stack.push((new_node, temp));
                self.n(new_node).total = 0;
                if temp != ROOT {
                    temp = self.nodes[temp as usize].parent;
                    local_order -= 1;
                    continue;
                }
                t = 2056;
                c = 8;
                let target = coder.get_target(ALPHABET);
                self.n(new_node).parent = ROOT;
                coder.decode(target, target + 1);
                symbol = target;
                if self.cur == NIL {
                    self.cur = ROOT;
                    self.cur_order = 0;
                }
                break;
            } else {
                self.clear();
                temp = self.cur;
                local_order = self.cur_order;
                self.cur = NIL;
                new_node = NIL;
            }
        }
        while let Some((n, nc)) = self.stack.pop() {
            self.n(n).symbol = symbol as u16;
            let ncn = self.nodes[nc as usize];
            if ncn.total != 0 {
                let temp2 = (t as i64 - c as i64 + ncn.total as i64 - 2 * ncn.escapes as i64) as u64;
                let mut v = (ncn.total as u64 * c as u64) / (temp2 | 1) + 2;
                if v > 50000 {
                    v = 50000;
                }
                self.n(n).count = v as u16;
                let x = self.n(nc);
                x.escapes = x.escapes.wrapping_add(4);
                x.total = x.total.wrapping_add((v as u16).wrapping_add(4));
            } else {
                let count = (3 + 5 * c as i64 / (t as i64 - c as i64)) as u16;
                self.n(n).count = count;
                let x = self.n(nc);
                x.escapes = 4;
                x.total = count.wrapping_add(4);
            }
            while self.nodes[nc as usize].total > 10000 {
                self.scale_counts(nc);
            }
        }
        symbol
    }
}

/// dlib's `compress_stream::kernel_1ea` decompression: PPM symbols until the end symbol (256),
/// then the CRC-32 of the output, with a synchronisation check every 20000 symbols.
pub fn decompress(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut coder = RangeDecoder::new(data);
    let mut model = Ppm::new();
    let mut out = Vec::new();
    let mut count = 0;
    loop {
        if count == 20000 {
            if coder.get_target(8000) != 1500 {
                return Err("corrupt compressed data (synchronisation check failed)".into());
            }
            count = 0;
            coder.decode(1500, 1501);
        }
        count += 1;
        let s = model.decode(&mut coder);
        if s != 256 {
            out.push(s as u8);
            if coder.pos > data.len() + 8 {
                return Err("compressed data ended early".into());
            }
            continue;
        }
        let mut checksum = 0u32;
        for _ in 0..4 {
            checksum = (checksum << 8) | (model.decode(&mut coder) & 0xFF);
        }
        if checksum != crc32(&out) {
            return Err("corrupt compressed data (CRC mismatch)".into());
        }
        return Ok(out);
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_crc() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn fhog_mapping_round_trips() {
        // An 80x80 window at 8 px cells is 10x10 cells (dlib: padding 0).
        let r = image_to_fhog_rect(centered_rect([0, 0], 80, 80), 8, 1, 1);
        assert_eq!(r[2] - r[0] + 1, 10);
        // (0 + 1 - 4) * 8 + 1 = -23, then half a cell outwards.
        assert_eq!(fhog_to_image_rect([0, 0, 0, 0], 8, 10, 10), [-27, -27, -27, -27]);
    }
}
