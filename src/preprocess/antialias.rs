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

use std::path::Path;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// ImageNet's normalisation constants (DINOv3's processor defaults).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's normalisation constants.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One axis' filter taps: for each output index, the first input index and the weights.
struct Taps {
    starts: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

/// The taps of ATen's antialiased bilinear interpolation from `input` to `output` samples
/// (`align_corners = false`, scale `input / output`), computed in f32 as for a float tensor.
fn taps(input: usize, output: usize) -> Taps {
    let scale = input as f32 / output as f32;
    // Bilinear interpolates over 2 samples: a support of 1, widened by the scale when shrinking.
    let (support, invscale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    let mut starts = Vec::with_capacity(output);
    let mut weights = Vec::with_capacity(output);
    for i in 0..output {
        let center = scale * (i as f32 + 0.5);
        // C++ casts toward zero; both ends are then clamped into the input.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(input as i64);
        let mut w: Vec<f32> = (xmin..xmax)
            .map(|x| {
                let t = ((x - xmin) as f32 + xmin as f32 - center + 0.5) * invscale;
                (1.0 - t.abs()).max(0.0)
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

/// Resizes `planes` (`channels` planes of `height` x `width` f32 values, row-major) to
/// `out_h` x `out_w`, width first, then height.
pub fn resize_planes(
    planes: &[f32],
    channels: usize,
    [height, width]: [usize; 2],
    [out_h, out_w]: [usize; 2],
) -> Vec<f32> {
    assert_eq!(planes.len(), channels * height * width, "planes of the given size");
    let horizontal = taps(width, out_w);
    let mut wide = vec![0f32; channels * height * out_w];
    for (src, dst) in planes.chunks_exact(width).zip(wide.chunks_exact_mut(out_w)) {
        for (ox, out) in dst.iter_mut().enumerate() {
            let x0 = horizontal.starts[ox];
            *out = horizontal.weights[ox].iter().enumerate().fold(0.0, |acc, (j, w)| acc + src[x0 + j] * w);
        }
    }
    let vertical = taps(height, out_h);
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
        let t = taps(8, 4);
        assert_eq!(t.starts, [0, 1, 3, 5]);
        let w0: f32 = t.weights[0].iter().sum();
        assert!((w0 - 1.0).abs() < 1e-6);
        assert_eq!(t.weights[1].len(), 4);
        assert!((t.weights[1][0] - 0.125).abs() < 1e-6 && (t.weights[1][1] - 0.375).abs() < 1e-6);
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
