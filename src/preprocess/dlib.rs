//! dlib's face landmarks, read from dlib's own files: the 68-point ERT shape predictor
//! (Kazemi & Sullivan 2014) of Debian `libdlib-data`, as `dlib::shape_predictor` runs it
//! (`dlib/image_processing/shape_predictor.h`), and dlib's serialisation format
//! (`dlib/serialize.h`: varint-packed integers, floats as 64-bit mantissa + 16-bit exponent).
//!
//! The HOG face detector is in [`super::dlib_hog`].

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::faces::FaceDetector;
use crate::{Error, Result};

/// dlib's 68-point landmark model, from Debian `libdlib-data`.
pub const SHAPE_PREDICTOR: &str = "shape_predictor_68_face_landmarks.dat";
/// dlib's HOG frontal face detector ships inside this header, from Debian `libdlib-dev`.
pub const FRONTAL_FACE_HEADER: &str = "frontal_face_detector.h";

/// DeepfakeBench's five alignment points among the 68 (`get_keypts`): 37, 44, 30, 49, 55.
pub const DEEPFAKEBENCH_POINTS: [usize; 5] = [37, 44, 30, 49, 55];

/// Installed locations: `/usr/share/dlib` (libdlib-data), `/usr/include/dlib/image_processing`
/// (libdlib-dev).
fn find(models: Option<&Path>, name: &str, system: &str, package: &str) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match models {
        Some(dir) => vec![dir.join(name), dir.join("dlib").join(name)],
        None => vec![Path::new(system).join(name)],
    };
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::Invalid(format!(
            "dlib model `{name}` not found (looked in {}); it is provided by the Debian package `{package}` \
             (apt-get install {package}), or give a folder holding it with --models",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// DeepfakeBench's 81-point model (not packaged; its first 68 points are the usual set), used
/// instead of the 68-point one when `--models` holds it.
pub const SHAPE_PREDICTOR_81: &str = "shape_predictor_81_face_landmarks.dat";

/// The landmark model and the detector header.
pub fn model_files(models: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let model81 = models.map(|d| d.join(SHAPE_PREDICTOR_81)).filter(|p| p.is_file());
    Ok((
        match model81 {
            Some(p) => p,
            None => find(models, SHAPE_PREDICTOR, "/usr/share/dlib", "libdlib-data")?,
        },
        find(models, FRONTAL_FACE_HEADER, "/usr/include/dlib/image_processing", "libdlib-dev")?,
    ))
}

/// The `dlib` back-end: HOG detector (image upsampled once, as DeepfakeBench calls it) and the
/// 68-point predictor on each box; the five alignment points are DeepfakeBench's
/// ([`DEEPFAKEBENCH_POINTS`]).
pub struct DlibFaces {
    pub hog: super::dlib_hog::HogDetector,
    pub landmarks: ShapePredictor,
    /// Times the image is doubled before detection (DeepfakeBench: 1).
    pub upsample: u32,
}

pub fn load(models: Option<&Path>) -> Result<Box<dyn FaceDetector>> {
    let (landmarks, hog) = model_files(models)?;
    Ok(Box::new(DlibFaces {
        hog: super::dlib_hog::HogDetector::from_header(&hog)?,
        landmarks: ShapePredictor::from_file(&landmarks)?,
        upsample: 1,
    }))
}

impl FaceDetector for DlibFaces {
    fn name(&self) -> &'static str {
        "dlib"
    }

    fn detect(&self, image: &RgbImage) -> Result<Vec<super::faces::Face>> {
        let mut faces = Vec::new();
        for d in self.hog.detect(image, self.upsample) {
            let points = self.landmarks.predict(image, d.rect);
            let all: Vec<[f32; 2]> = points.iter().map(|p| [p[0] as f32, p[1] as f32]).collect();
            let landmarks = DEEPFAKEBENCH_POINTS.map(|i| all[i]);
            let [l, t, r, b] = d.rect.map(|v| v as f32);
            // dlib's boxes are inclusive: width = right - left + 1.
            faces.push(super::faces::Face {
                bbox: [l, t, r + 1.0, b + 1.0],
                score: d.confidence as f32,
                landmarks,
                all_landmarks: all,
            });
        }
        Ok(faces)
    }
}

/// A reader of dlib's serialisation format.
pub(super) struct Reader<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl Reader<'_> {
    pub(super) fn err(&self, what: &str) -> Error {
        Error::format(self.path, format!("not a dlib model file: {what} at byte {}", self.pos))
    }

    pub(super) fn byte(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(|| self.err("unexpected end of file"))?;
        self.pos += 1;
        Ok(b)
    }

    /// `pack_int`: a control byte (bit 7: negative, low 4 bits: byte count), then little-endian bytes.
    pub(super) fn int(&mut self) -> Result<i64> {
        let ctl = self.byte()?;
        let n = (ctl & 0x0F) as usize;
        if n > 8 || ctl & 0x70 != 0 {
            return Err(self.err("bad integer control byte"));
        }
        let mut v: u64 = 0;
        for i in 0..n {
            v |= (self.byte()? as u64) << (8 * i);
        }
        Ok(if ctl & 0x80 != 0 { -(v as i64) } else { v as i64 })
    }

    pub(super) fn len(&mut self) -> Result<usize> {
        let v = self.int()?;
        usize::try_from(v).map_err(|_| self.err("negative length"))
    }

    /// `float_details`: mantissa * 2^exponent (32000-32002: inf, -inf, NaN).
    pub(super) fn float(&mut self) -> Result<f32> {
        self.double().map(|v| v as f32)
    }

    /// A `double`, in the same format as floats.
    pub(super) fn double(&mut self) -> Result<f64> {
        let mantissa = self.int()?;
        let exponent = self.int()?;
        Ok(match exponent {
            32000 => f64::INFINITY,
            32001 => f64::NEG_INFINITY,
            32002 => f64::NAN,
            e => mantissa as f64 * 2f64.powi(e as i32),
        })
    }

    /// A column vector `matrix<float,0,1>`: rows and columns (negated in the current format),
    /// then the values.
    pub(super) fn column(&mut self) -> Result<Vec<f32>> {
        let (r, c) = (self.int()?.unsigned_abs() as usize, self.int()?.unsigned_abs() as usize);
        if c != 1 && r * c != 0 {
            return Err(self.err("expected a column vector"));
        }
        (0..r * c).map(|_| self.float()).collect()
    }
}

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
    match super::align::similarity(&src, &dst) {
        Some(m) => [[m[0][0] as f32, m[0][1] as f32], [m[1][0] as f32, m[1][1] as f32]],
        None => [[1.0, 0.0], [0.0, 1.0]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_integers_and_floats() {
        let path = Path::new("mem");
        // 0 -> [0x00]; 300 -> [0x02, 0x2c, 0x01]; -5 -> [0x81, 0x05].
        let data = [0x00, 0x02, 0x2c, 0x01, 0x81, 0x05];
        let mut r = Reader { data: &data, pos: 0, path };
        assert_eq!((r.int().unwrap(), r.int().unwrap(), r.int().unwrap()), (0, 300, -5));
        // 0.75 = 3 * 2^-2: mantissa 3, exponent -2.
        let data = [0x01, 0x03, 0x81, 0x02];
        let mut r = Reader { data: &data, pos: 0, path };
        assert_eq!(r.float().unwrap(), 0.75);
        assert!(Reader { data: &[0x01], pos: 0, path }.int().is_err());
    }

    #[test]
    fn rounding_and_intensity_follow_dlib() {
        assert_eq!(round_half_up(2.5), 3);
        assert_eq!(round_half_up(-2.5), -2);
        assert_eq!(intensity(&image::Rgb([255, 255, 254])), 254);
    }
}
