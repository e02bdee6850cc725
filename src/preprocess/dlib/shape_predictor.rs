//! dlib's 68-point ERT shape predictor (Kazemi & Sullivan 2014), as `dlib::shape_predictor`
//! reads and runs it (`dlib/image_processing/shape_predictor.h`): the cascades of regression
//! trees of Debian `libdlib-data`'s `shape_predictor_68_face_landmarks.dat`, feature pixels placed
//! relative to the current shape by a similarity transform, dlib's integer rounding and pixel
//! intensity.

use std::path::Path;

use image::RgbImage;

use super::serialize::Reader;
use crate::preprocess::align;
use crate::{Error, Result};

/// One regression tree: complete binary, `splits.len() + 1` leaves.
#[derive(Debug, Clone)]
struct Tree {
    /// `(idx1, idx2, threshold)`: go left when `pixel[idx1] - pixel[idx2] > threshold`.
    splits: Vec<(usize, usize, f32)>,
    leaves: Vec<Vec<f32>>,
}

/// dlib's `shape_predictor`.
#[derive(Debug, Clone)]
pub struct ShapePredictor {
    /// Mean shape, `[x0, y0, x1, y1, ...]` relative to the box ((0,0) top-left, (1,1) bottom-right).
    initial: Vec<f32>,
    forests: Vec<Vec<Tree>>,
    anchors: Vec<Vec<usize>>,
    deltas: Vec<Vec<[f32; 2]>>,
}

impl ShapePredictor {
    /// Reads a `.dat` file written by `dlib::serialize(shape_predictor)`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut r = Reader { data: &data, pos: 0, path };
        if r.int()? != 1 {
            return Err(r.err("unknown version"));
        }
        let initial = r.column()?;
        let parts = initial.len() / 2;
        let n_cascades = r.len()?;
        let mut forests = Vec::with_capacity(n_cascades);
        for _ in 0..n_cascades {
            let n_trees = r.len()?;
            let mut trees = Vec::with_capacity(n_trees);
            for _ in 0..n_trees {
                let n_splits = r.len()?;
                let mut splits = Vec::with_capacity(n_splits);
                for _ in 0..n_splits {
                    splits.push((r.len()?, r.len()?, r.float()?));
                }
                let n_leaves = r.len()?;
                let leaves = (0..n_leaves).map(|_| r.column()).collect::<Result<Vec<_>>>()?;
                if n_leaves != n_splits + 1 || leaves.iter().any(|l| l.len() != initial.len()) {
                    return Err(r.err("malformed regression tree"));
                }
                trees.push(Tree { splits, leaves });
            }
            forests.push(trees);
        }
        let anchors: Vec<Vec<usize>> =
            (0..r.len()?).map(|_| (0..r.len()?).map(|_| r.len()).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
        let deltas: Vec<Vec<[f32; 2]>> = (0..r.len()?)
            .map(|_| (0..r.len()?).map(|_| Ok([r.float()?, r.float()?])).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        let n_pixels = |i: usize| anchors[i].len();
        let consistent = anchors.len() == forests.len()
            && deltas.len() == forests.len()
            && (0..forests.len()).all(|i| {
                deltas[i].len() == n_pixels(i)
                    && anchors[i].iter().all(|&a| a < parts)
                    && forests[i].iter().all(|t| t.splits.iter().all(|s| s.0 < n_pixels(i) && s.1 < n_pixels(i)))
            });
        if !consistent {
            return Err(r.err("inconsistent cascades"));
        }
        Ok(Self { initial, forests, anchors, deltas })
    }

    pub fn num_parts(&self) -> usize {
        self.initial.len() / 2
    }

    /// The landmarks of the face in `rect` (`[left, top, right, bottom]`, inclusive pixel
    /// coordinates as dlib's `rectangle`), as integer pixel positions like dlib's `point`s.
    pub fn predict(&self, image: &RgbImage, rect: [i64; 4]) -> Vec<[i64; 2]> {
        let [left, top, right, bottom] = rect.map(|v| v as f64);
        // unnormalizing_tform: (0,0) -> top-left, (1,1) -> bottom-right.
        let to_image = |x: f64, y: f64| [left + (right - left) * x, top + (bottom - top) * y];
        let mut shape = self.initial.clone();
        let mut pixels = Vec::new();
        for (c, forest) in self.forests.iter().enumerate() {
            // Pixel values relative to the current shape (extract_feature_pixel_values).
            let m = similarity_2x2(&self.initial, &shape);
            pixels.clear();
            for (&a, d) in self.anchors[c].iter().zip(&self.deltas[c]) {
                let x = m[0][0] * d[0] + m[0][1] * d[1] + shape[2 * a];
                let y = m[1][0] * d[0] + m[1][1] * d[1] + shape[2 * a + 1];
                let [px, py] = to_image(x as f64, y as f64).map(round_half_up);
                let inside = px >= 0 && py >= 0 && px < image.width() as i64 && py < image.height() as i64;
                pixels.push(if inside { intensity(image.get_pixel(px as u32, py as u32)) as f32 } else { 0.0 });
            }
            for tree in forest {
                let mut i = 0;
                while i < tree.splits.len() {
                    let (a, b, t) = tree.splits[i];
                    i = if pixels[a] - pixels[b] > t { 2 * i + 1 } else { 2 * i + 2 };
                }
                for (s, v) in shape.iter_mut().zip(&tree.leaves[i - tree.splits.len()]) {
                    *s += v;
                }
            }
        }
        (0..self.num_parts())
            .map(|i| to_image(shape[2 * i] as f64, shape[2 * i + 1] as f64).map(round_half_up))
            .collect()
    }
}

/// dlib converts floating vectors to integer points with `floor(v + 0.5)`.
fn round_half_up(v: f64) -> i64 {
    (v + 0.5).floor() as i64
}

/// dlib's `get_pixel_intensity` of an RGB pixel: the integer mean of the three channels.
fn intensity(p: &image::Rgb<u8>) -> u8 {
    ((p[0] as u32 + p[1] as u32 + p[2] as u32) / 3) as u8
}

/// The rotation-and-scale part of the least-squares similarity from `from` to `to` (dlib's
/// `find_similarity_transform`, Umeyama, in double), cast to float as dlib casts it.
fn similarity_2x2(from: &[f32], to: &[f32]) -> [[f32; 2]; 2] {
    let n = from.len() / 2;
    let pts = |s: &[f32]| (0..n).map(|i| [s[2 * i] as f64, s[2 * i + 1] as f64]).collect::<Vec<_>>();
    let (src, dst) = (pts(from), pts(to));
    match align::similarity(&src, &dst) {
        Some(m) => [[m[0][0] as f32, m[0][1] as f32], [m[1][0] as f32, m[1][1] as f32]],
        None => [[1.0, 0.0], [0.0, 1.0]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_intensity_follow_dlib() {
        assert_eq!(round_half_up(2.5), 3);
        assert_eq!(round_half_up(-2.5), -2);
        assert_eq!(intensity(&image::Rgb([255, 255, 254])), 254);
    }
}
