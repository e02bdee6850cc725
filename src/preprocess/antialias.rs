//! The DINOv3 pixel pipeline (HF `DINOv3ViTImageProcessorFast`, transformers 4.56; docs/method.md §12): rescale to
//! [0, 1] in f32, resize with torchvision's antialiased bilinear filter on the float image, then
//! normalise with ImageNet's mean and standard deviation. No crop.
//!
//! The resize is ATen's separable `_upsample_bilinear2d_aa` on float tensors, which is what
//! `torchvision.transforms.v2.functional.resize(..., antialias=True)` runs on a float image: per
//! output pixel, the triangle filter widened by the scale when shrinking, its weights normalised
//! to sum to one, applied along the width and then along the height, in f32. (On `uint8` images
//! torchvision matches Pillow's fixed-point resampler instead; the processor resizes after
//! rescaling, so the float path is the one to follow.) Written here rather than taken from a
//! crate because parity needs this exact weighting and order, which no image crate promises.
//!
//! The same separable scheme with Keys' cubic filter (`a = -0.5`, support 2) is ATen's
//! `_upsample_bicubic2d_aa`, which timm runs to resample a learned position embedding to another
//! patch grid (`resample_abs_pos_embed`, bicubic with antialiasing; GenD's Perception Encoder,
//! [`crate::model::pe`]): [`Filter`] chooses the filter, [`resize_matrix`] gives one axis'
//! weights as a matrix.

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// ImageNet's normalisation constants (DINOv3's processor defaults).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's normalisation constants.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The filters of ATen's antialiased interpolation (`interpolate(..., antialias=True)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The triangle filter (`mode="bilinear"`), support 1.
    Bilinear,
    /// Keys' cubic convolution with `a = -0.5` (`mode="bicubic"`; Pillow's bicubic takes
    /// `a = -0.5` too, but rounds to 8 bits between its passes), support 2.
    Bicubic,
}

impl Filter {
    /// Half the filter's width in input samples before widening (ATen's `interp_size / 2`).
    fn support(self) -> f32 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The filter's weight at `x`, in f32 as ATen's compiled kernel rounds it: the cubic's
    /// polynomials are evaluated with fused multiply-adds (as the compiler contracts them; with
    /// separate products 1 weight in 10 comes out one ulp away).
    fn weight(self, x: f32) -> f32 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f32 = -0.5;
                if x < 1.0 {
                    // ((A + 2) x - (A + 3)) x x + 1
                    ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0)
                } else if x < 2.0 {
                    // ((A x - 5 A) x + 8 A) x - 4 A
                    A.mul_add(x, -5.0 * A).mul_add(x, 8.0 * A).mul_add(x, -4.0 * A)
                } else {
                    0.0
                }
            }
        }
    }
}

/// One axis' filter taps: for each output index, the first input index and the weights.
struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

/// The taps of ATen's antialiased interpolation from `input` to `output` samples
/// (`align_corners = false`, scale `input / output`) for a float tensor: ATen's
/// `_compute_indices_min_size_weights_aa` with its mixed f32/f64 promotions (the centre and the
/// filter's argument pass through f64), which makes every weight bit-identical to PyTorch's.
fn taps(input: usize, output: usize, filter: Filter) -> Taps {
    let scale = input as f32 / output as f32;
    // The filter widened by the scale when shrinking.
    let (support, invscale) = if scale >= 1.0 {
        ((f64::from(filter.support()) * f64::from(scale)) as f32, (1.0 / f64::from(scale)) as f32)
    } else {
        (filter.support(), 1.0)
    };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let mut starts = Vec::with_capacity(output);
    let mut weights = Vec::with_capacity(output);
    for i in 0..output {
        let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
        // C++ casts toward zero; both ends are then clamped into the input.
        let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
        let xmax = ((f64::from(center + support) + 0.5) as i64).min(input as i64);
        let count = (xmax - xmin).clamp(0, max_taps);
        let mut w: Vec<f32> = (xmin..xmin + count)
            .map(|x| {
                let d = x as f32 - center;
                filter.weight(((f64::from(d) + 0.5) * f64::from(invscale)) as f32)
            })
            .collect();
        let total: f32 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        starts.push(xmin as usize);
        weights.push(w);
    }
    Taps { starts, weights }
}

/// The resampling of one axis as a dense matrix `[output, input]` (row-major): row `o` holds
/// output sample `o`'s weights, so that `W · x` resamples a vector `x` of `input` samples. For
/// resampling inside a model, where a matrix product on the tensors is what autodiff follows.
pub fn resize_matrix(filter: Filter, input: usize, output: usize) -> Vec<f32> {
    let t = taps(input, output, filter);
    let mut m = vec![0f32; output * input];
    for (o, (start, w)) in t.starts.iter().zip(&t.weights).enumerate() {
        m[o * input + start..o * input + start + w.len()].copy_from_slice(w);
    }
    m
}

/// Resizes `planes` (`channels` planes of `height` x `width` f32 values, row-major) to
/// `out_h` x `out_w` with the triangle filter (bilinear), width first, then height.
pub fn resize_planes(planes: &[f32], channels: usize, size: [usize; 2], out: [usize; 2]) -> Vec<f32> {
    resize_planes_with(Filter::Bilinear, planes, channels, size, out)
}

/// Resizes `planes` (`channels` planes of `height` x `width` f32 values, row-major) to
/// `out_h` x `out_w` with `filter`, width first, then height, as ATen's separable kernel does
/// on a float tensor (an axis whose size is unchanged is copied, as ATen skips it).
pub fn resize_planes_with(
    filter: Filter,
    planes: &[f32],
    channels: usize,
    [height, width]: [usize; 2],
    [out_h, out_w]: [usize; 2],
) -> Vec<f32> {
    assert_eq!(planes.len(), channels * height * width, "planes of the given size");
    let wide = if out_w == width {
        planes.to_vec()
    } else {
        let horizontal = taps(width, out_w, filter);
        let mut wide = vec![0f32; channels * height * out_w];
        for (src, dst) in planes.chunks_exact(width).zip(wide.chunks_exact_mut(out_w)) {
            for (ox, out) in dst.iter_mut().enumerate() {
                let x0 = horizontal.starts[ox];
                *out = horizontal.weights[ox].iter().enumerate().fold(0.0, |acc, (j, w)| acc + src[x0 + j] * w);
            }
        }
        wide
    };
    if out_h == height {
        return wide;
    }
    let vertical = taps(height, out_h, filter);
    let mut out = vec![0f32; channels * out_h * out_w];
    for c in 0..channels {
        let src = &wide[c * height * out_w..(c + 1) * height * out_w];
        let dst = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (oy, row) in dst.chunks_exact_mut(out_w).enumerate() {
            let y0 = vertical.starts[oy];
            for (x, value) in row.iter_mut().enumerate() {
                *value = vertical.weights[oy]
                    .iter()
                    .enumerate()
                    .fold(0.0, |acc, (j, w)| acc + src[(y0 + j) * out_w + x] * w);
            }
        }
    }
    out
}

/// What `DINOv3ViTImageProcessorFast` does to an image (fields of `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dinov3Pixels {
    /// Output `[height, width]` (the whole image is resized to it; no crop).
    pub size: [usize; 2],
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f32,
}

impl Dinov3Pixels {
    /// The processor of the released DINOv3 checkpoints at `size` x `size` pixels.
    pub fn new(size: usize) -> Self {
        Self { size: [size, size], image_mean: IMAGENET_MEAN, image_std: IMAGENET_STD, rescale_factor: 1.0 / 255.0 }
    }

    /// Reads a HF `preprocessor_config.json` of a DINOv3 processor; refuses settings this
    /// pipeline does not follow (another filter, a center crop, no resize or no normalisation).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let bad = |what: String| Error::format(path, what);
        let flag = |key: &str, default: bool| v.get(key).and_then(|x| x.as_bool()).unwrap_or(default);
        if v.get("resample").and_then(|x| x.as_u64()).unwrap_or(2) != 2 {
            return Err(bad("`resample` must be 2 (bilinear), as in DINOv3's processor".into()));
        }
        if flag("do_center_crop", false) || !flag("do_resize", true) || !flag("do_normalize", true) {
            return Err(bad("DINOv3's pipeline resizes and normalises, without a center crop".into()));
        }
        let size = v.get("size").ok_or_else(|| bad("no `size`".into()))?;
        let side = |k: &str| size.get(k).and_then(|x| x.as_u64()).filter(|&n| (1..=4096).contains(&n));
        let (h, w) = match (side("height"), side("width")) {
            (Some(h), Some(w)) => (h as usize, w as usize),
            _ => return Err(bad(format!("`size` must give a height and a width of 1 to 4096: {size}"))),
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => serde_json::from_value::<[f32; 3]>(x.clone())
                    .map_err(|e| bad(format!("`{key}` must be three numbers: {e}"))),
            }
        };
        let image_std = triple("image_std", IMAGENET_STD)?;
        if image_std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(bad(format!("`image_std` must be positive: {image_std:?}")));
        }
        let rescale_factor = v.get("rescale_factor").and_then(|x| x.as_f64()).unwrap_or(1.0 / 255.0) as f32;
        Ok(Self { size: [h, w], image_mean: triple("image_mean", IMAGENET_MEAN)?, image_std, rescale_factor })
    }

    /// `pixel_values` of one image, `[3, h, w]` row-major.
    pub fn pixel_values(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut planes = vec![0f32; 3 * h * w];
        for (k, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                // The processor multiplies the uint8 tensor by the Python float: f32 result.
                planes[c * h * w + k] = px[c] as f32 * self.rescale_factor;
            }
        }
        let mut out = resize_planes(&planes, 3, [h, w], self.size);
        let plane = self.size[0] * self.size[1];
        for c in 0..3 {
            let (m, s) = (self.image_mean[c], self.image_std[c]);
            out[c * plane..(c + 1) * plane].iter_mut().for_each(|v| *v = (*v - m) / s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_by_two_averages_pairs() {
        // Scale 2: support 2, centre 1 for output 0: inputs 0..3 with weights 1/4, 3/4, 3/4, 1/4
        // before normalising (the outer ones clipped at the edge).
        let t = taps(8, 4, Filter::Bilinear);
        assert_eq!(t.starts, [0, 1, 3, 5]);
        let w0: f32 = t.weights[0].iter().sum();
        assert!((w0 - 1.0).abs() < 1e-6);
        assert_eq!(t.weights[1].len(), 4);
        assert!((t.weights[1][0] - 0.125).abs() < 1e-6 && (t.weights[1][1] - 0.375).abs() < 1e-6);
    }

    #[test]
    fn bicubic_weights_are_aten_s() {
        // torch 2.8: interpolate(eye(5), size=3, mode="bicubic", antialias=True), row 0 and 1.
        let m = resize_matrix(Filter::Bicubic, 5, 3);
        let want: [[f64; 5]; 2] = [
            [5.846_153_5e-1, 4.461_538_2e-1, 1.821_904_3e-14, -3.076_919_7e-2, 0.0],
            [-3.720_928_7e-2, 2.465_116_2e-1, 5.813_953_3e-1, 2.465_116_2e-1, -3.720_928_7e-2],
        ];
        for (o, row) in want.iter().enumerate() {
            for (x, w) in row.iter().enumerate() {
                let got = f64::from(m[o * 5 + x]);
                assert!((got - w).abs() <= 1e-7 * w.abs().max(1e-7), "[{o}, {x}]: {got} vs {w}");
            }
        }
        // Rows sum to one; the same size is the identity.
        for row in resize_matrix(Filter::Bicubic, 24, 16).chunks_exact(24) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let id = resize_matrix(Filter::Bicubic, 4, 4);
        assert!((0..16).all(|k| id[k] == if k % 5 == 0 { 1.0 } else { 0.0 }));
    }

    #[test]
    fn constant_planes_stay_constant_and_same_size_is_a_copy() {
        let planes = vec![0.25f32; 2 * 5 * 7];
        let out = resize_planes(&planes, 2, [5, 7], [3, 4]);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let ramp: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_planes(&ramp, 1, [3, 4], [3, 4]), ramp);
    }
}
