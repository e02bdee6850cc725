//! Face alignment: a 5-point similarity transform onto a template, and the bilinear warp.
//!
//! DeepfakeBench (`preprocessing/preprocess.py`, `img_align_crop`) estimates the transform with
//! scikit-image's `SimilarityTransform.estimate` (Umeyama 1991, scale on, no reflection) and warps
//! with `cv2.warpAffine` (bilinear, constant black border) straight to 256x256. Its template is
//! ArcFace's 112x112 five points, shifted 8 px right, scaled to the output size and shrunk
//! around the centre by the 1.3 margin: (96.87, 120.43) (158.83, 120.09) (128.04, 155.67)
//! (102.59, 191.94) (153.90, 191.66) at 256. GenD's template (`detector.py`, `align_face`) is
//! (0.34, 0.46) (0.66, 0.46) (0.5, 0.64) (0.37, 0.82) (0.63, 0.82) of the size with the same 1.3
//! margin; GenD fits it with `cv2.estimateAffinePartial2D(LMEDS)`, dfdet with the same least
//! squares as for DeepfakeBench (with five consistent points the two agree to a fraction of a
//! pixel).

use image::{Rgb, RgbImage};

/// A 2x3 affine matrix mapping source (frame) to destination (crop) coordinates.
pub type Affine = [[f64; 3]; 2];

/// Which five-point template to align onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// DeepfakeBench's (ArcFace points, 1.3 margin).
    #[default]
    Deepfakebench,
    /// GenD's (relative points, 1.3 margin).
    Gend,
}

impl TemplateKind {
    /// The serde names of the variants.
    pub const NAMES: [&'static str; 2] = ["deepfakebench", "gend"];
}

/// The template's five points for a square crop of `size` pixels, computed in f32 as the
/// reference computes them (numpy float32 arrays).
pub fn template(kind: TemplateKind, size: u32) -> [[f32; 2]; 5] {
    const SCALE: f64 = 1.3; // a Python float
    let s = size as f32;
    let mut dst: [[f32; 2]; 5] = match kind {
        TemplateKind::Deepfakebench => {
            let arcface =
                [[30.2946f32, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]];
            // dst[:, 0] += 8 (the 112-wide variant), then * outsize / 112.
            arcface.map(|[x, y]| [(x + 8.0) * s / 112.0, y * s / 112.0])
        }
        TemplateKind::Gend => {
            let rel = [[0.34f32, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]];
            rel.map(|[x, y]| [x * s, y * s])
        }
    };
    // Python floats (f64) for the margin, applied to float32 arrays.
    let margin = size as f64 * (SCALE - 1.0) / 2.0;
    let shrink = (size as f64 / (size as f64 + 2.0 * margin)) as f32;
    let margin = margin as f32;
    for p in &mut dst {
        *p = [(p[0] + margin) * shrink, (p[1] + margin) * shrink];
    }
    dst
}

/// The least-squares similarity (rotation, uniform scale, translation; no reflection) taking
/// `src` onto `dst`: Umeyama's estimate, as scikit-image's `SimilarityTransform.estimate`.
/// In 2D its solution has the closed form `[a -b; b a]` with `a = Σ(s·d)/Σ|s|²`,
/// `b = Σ(s×d)/Σ|s|²` over the centred points. `None` when the source points coincide.
pub fn similarity(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Affine> {
    let n = src.len().min(dst.len());
    if n == 0 {
        return None;
    }
    let mean = |p: &[[f64; 2]]| {
        let (sx, sy) = p[..n].iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
        [sx / n as f64, sy / n as f64]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (s, d) in src[..n].iter().zip(&dst[..n]) {
        let (sx, sy, dx, dy) = (s[0] - ms[0], s[1] - ms[1], d[0] - md[0], d[1] - md[1]);
        dot += sx * dx + sy * dy;
        cross += sx * dy - sy * dx;
        norm += sx * sx + sy * sy;
    }
    if norm <= f64::EPSILON * 1e3 {
        return None;
    }
    let (a, b) = (dot / norm, cross / norm);
    Some([[a, -b, md[0] - (a * ms[0] - b * ms[1])], [b, a, md[1] - (b * ms[0] + a * ms[1])]])
}

/// `cv2.warpAffine(src, m, (w, h))` with `INTER_LINEAR` and a constant black border, as
/// OpenCV >= 4.11 computes it for 8-bit images: each output pixel maps back through the inverse
/// matrix in f32 (`fma(m00, x, f32(y*m01 + m02))`), and is interpolated in f32 from its four
/// neighbours (outside pixels black), first along x then y with fused multiply-adds, rounded
/// half to even. (OpenCV before 4.11, which made DeepfakeBench's published crops, quantised the
/// source position to 1/32 pixel and the weights to 1/32768: up to a few grey levels apart on
/// sharp edges.)
pub fn warp_affine(src: &RgbImage, m: &Affine, w: u32, h: u32) -> RgbImage {
    let inv = invert(m);
    let (sw, sh) = (src.width() as i64, src.height() as i64);
    let raw = src.as_raw();
    let mut out = RgbImage::new(w, h);
    let (m00, m10) = (inv[0][0] as f32, inv[1][0] as f32);
    let fetch = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= sw || y >= sh {
            return [0.0; 3];
        }
        let o = 3 * (y * sw + x) as usize;
        [raw[o] as f32, raw[o + 1] as f32, raw[o + 2] as f32]
    };
    for y in 0..h {
        let bx = (y as f64 * inv[0][1] + inv[0][2]) as f32;
        let by = (y as f64 * inv[1][1] + inv[1][2]) as f32;
        for x in 0..w {
            let sx = m00.mul_add(x as f32, bx);
            let sy = m10.mul_add(x as f32, by);
            if !(sx.is_finite() && sy.is_finite()) || sx.abs() > 1e9 || sy.abs() > 1e9 {
                continue; // far outside: black
            }
            let (ix, iy) = (sx.floor(), sy.floor());
            let (a, b) = (sx - ix, sy - iy);
            let (ix, iy) = (ix as i64, iy as i64);
            let (p00, p01, p10, p11) = (fetch(ix, iy), fetch(ix + 1, iy), fetch(ix, iy + 1), fetch(ix + 1, iy + 1));
            let mut px = [0u8; 3];
            for c in 0..3 {
                let top = a.mul_add(p01[c] - p00[c], p00[c]);
                let bottom = a.mul_add(p11[c] - p10[c], p10[c]);
                let v = b.mul_add(bottom - top, top);
                px[c] = v.round_ties_even().clamp(0.0, 255.0) as u8;
            }
            out.put_pixel(x, y, Rgb(px));
        }
    }
    out
}

/// The inverse of a 2x3 affine matrix, as `cv2.invertAffineTransform` computes it.
pub fn invert(m: &Affine) -> Affine {
    let d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22, a12, a21) = (m[1][1] * d, m[0][0] * d, -m[0][1] * d, -m[1][0] * d);
    let b1 = -a11 * m[0][2] - a12 * m[1][2];
    let b2 = -a21 * m[0][2] - a22 * m[1][2];
    [[a11, a12, b1], [a21, a22, b2]]
}

/// The transform aligning five landmarks onto a template of `size`, and the aligned crop.
pub fn align(frame: &RgbImage, landmarks: &[[f32; 2]; 5], kind: TemplateKind, size: u32) -> Option<(Affine, RgbImage)> {
    let dst = template(kind, size).map(|[x, y]| [x as f64, y as f64]);
    let src = landmarks.map(|[x, y]| [x as f64, y as f64]);
    let m = similarity(&src, &dst)?;
    Some((m, warp_affine(frame, &m, size, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepfakebench_template_matches_method_md() {
        let t = template(TemplateKind::Deepfakebench, 256);
        let want = [[96.87, 120.43], [158.83, 120.09], [128.04, 155.67], [102.59, 191.94], [153.90, 191.66]];
        for (a, b) in t.iter().zip(want) {
            assert!((a[0] - b[0]).abs() < 0.01 && (a[1] - b[1]).abs() < 0.01, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn similarity_recovers_a_known_transform() {
        let (s, th, tx, ty) = (1.7f64, 0.3f64, 12.0, -4.0);
        let (a, b) = (s * th.cos(), s * th.sin());
        let src = [[10.0, 20.0], [40.0, 22.0], [25.0, 40.0], [14.0, 55.0], [38.0, 56.0]];
        let dst = src.map(|[x, y]| [a * x - b * y + tx, b * x + a * y + ty]);
        let m = similarity(&src, &dst).unwrap();
        let want = [[a, -b, tx], [b, a, ty]];
        for r in 0..2 {
            for c in 0..3 {
                assert!((m[r][c] - want[r][c]).abs() < 1e-9);
            }
        }
        assert!(similarity(&[[1.0, 1.0]; 5], &dst).is_none());
    }

    #[test]
    fn identity_warp_copies_and_borders_are_black() {
        let mut img = RgbImage::new(4, 3);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = Rgb([i as u8 * 10, 7, 200]);
        }
        let id = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        assert_eq!(warp_affine(&img, &id, 4, 3), img);
        let shifted = warp_affine(&img, &[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], 4, 3);
        assert_eq!(shifted.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(shifted.get_pixel(2, 1), img.get_pixel(0, 1));
        // Half a pixel right: the mean of two neighbours (and of black at the edge).
        let half = warp_affine(&img, &[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], 4, 3);
        assert_eq!(half.get_pixel(1, 0)[0], 5);
        assert_eq!(half.get_pixel(0, 0)[2], 100);
    }
}
