//! Shared by the preprocessing tests: the reference numbers of tests/fixtures/faces
//! (scripts/fixtures/make_face_fixtures.py), the block means they compare crops by, and dlib's
//! files as Debian installs them.

use std::path::PathBuf;

use crate::common::{fixtures, read_json};

/// libdlib-dev's HOG face detector, compressed in a header.
pub const DLIB_HEADER: &str = "/usr/include/dlib/image_processing/frontal_face_detector.h";
/// libdlib-data's 68-point landmark model.
pub const DLIB_LANDMARKS: &str = "/usr/share/dlib/shape_predictor_68_face_landmarks.dat";

/// `tests/fixtures/faces`.
pub fn face_fixtures() -> PathBuf {
    fixtures().join("faces")
}

/// A JSON file of `tests/fixtures/faces`.
pub fn json(name: &str) -> serde_json::Value {
    read_json(face_fixtures().join(name))
}

/// Block means over a cells x cells grid, as `thumb` in make_face_fixtures.py.
pub fn thumb(img: &image::RgbImage, cells: usize) -> Vec<f64> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let edges = |n: usize| (0..=cells).map(|i| (i as f64 * n as f64 / cells as f64) as usize).collect::<Vec<_>>();
    let (xs, ys) = (edges(w), edges(h));
    let mut out = Vec::with_capacity(cells * cells * 3);
    for i in 0..cells {
        for j in 0..cells {
            let mut sum = [0f64; 3];
            let mut n = 0f64;
            for y in ys[i]..ys[i + 1] {
                for x in xs[j]..xs[j + 1] {
                    let p = img.get_pixel(x as u32, y as u32);
                    for c in 0..3 {
                        sum[c] += p[c] as f64;
                    }
                    n += 1.0;
                }
            }
            out.extend(sum.map(|s| s / n));
        }
    }
    out
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}
