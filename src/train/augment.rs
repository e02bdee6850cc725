//! Training image augmentations (docs/method.md §7), the reference's `init_augmentations`
//! (src/dataset/base.py, torchvision v2) on RGB images, before the CLIP pixel pipeline:
//! `RandomHorizontalFlip(0.5)`, `RandomAffine(degrees=10, translate=(0.1, 0.1),
//! scale=(0.9, 1.1))` (nearest, black fill), `GaussianBlur(kernel_size=(3, 7),
//! sigma=(0.1, 2.0))` (a 3-wide, 7-tall kernel, one sigma for both axes, reflect padding),
//! `ColorJitter(brightness=0.1, contrast=0.1)` (the two in random order) and
//! `JPEG([40, 100])`. Same distributions, dfdet's own random stream: not bit-identical to
//! torchvision's output.

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

use crate::rng::Rng;

/// Applies the whole pipeline with draws from `rng`.
pub fn augment(img: &RgbImage, rng: &mut Rng) -> RgbImage {
    let mut img = if rng.uniform() < 0.5 { image::imageops::flip_horizontal(img) } else { img.clone() };
    img = random_affine(&img, rng);
    img = gaussian_blur(&img, 3, 7, rng.range(0.1, 2.0));
    let (b, c) = (rng.range(0.9, 1.1), rng.range(0.9, 1.1));
    if rng.uniform() < 0.5 {
        img = brightness(&img, b);
        img = contrast(&img, c);
    } else {
        img = contrast(&img, c);
        img = brightness(&img, b);
    }
    let quality = 40 + rng.below(61) as u8;
    jpeg(&img, quality)
}

fn random_affine(img: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let angle = rng.range(-10.0, 10.0).to_radians();
    let tx = (rng.range(-0.1, 0.1) * w as f64).round();
    let ty = (rng.range(-0.1, 0.1) * h as f64).round();
    let scale = rng.range(0.9, 1.1);
    let (cx, cy) = ((w as f64 - 1.0) * 0.5, (h as f64 - 1.0) * 0.5);
    let (sin, cos) = angle.sin_cos();
    // Inverse map: output pixel -> input pixel (rotation counter-clockwise on screen).
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 - cx - tx, y as f64 - cy - ty);
        let sx = (cos * dx - sin * dy) / scale + cx;
        let sy = (sin * dx + cos * dy) / scale + cy;
        let (ix, iy) = (sx.round(), sy.round());
        if ix >= 0.0 && iy >= 0.0 && ix < w as f64 && iy < h as f64 {
            *img.get_pixel(ix as u32, iy as u32)
        } else {
            Rgb([0, 0, 0])
        }
    })
}

fn kernel(size: usize, sigma: f64) -> Vec<f64> {
    let half = (size as f64 - 1.0) / 2.0;
    let k: Vec<f64> = (0..size).map(|i| (-((i as f64 - half) / sigma).powi(2) / 2.0).exp()).collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Reflect (without repeating the edge) index into `0..n`.
fn reflect(i: i64, n: i64) -> u32 {
    if n <= 1 {
        return 0; // one pixel wide: every index reflects onto it
    }
    let mut i = i;
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * (n - 1) - i };
    }
    i as u32
}

fn gaussian_blur(img: &RgbImage, kx: usize, ky: usize, sigma: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (gx, gy) = (kernel(kx, sigma), kernel(ky, sigma));
    let pass = |src: &RgbImage, k: &[f64], horizontal: bool| {
        let r = (k.len() / 2) as i64;
        RgbImage::from_fn(w, h, |x, y| {
            let mut acc = [0.0f64; 3];
            for (j, wgt) in k.iter().enumerate() {
                let o = j as i64 - r;
                let p = if horizontal {
                    src.get_pixel(reflect(x as i64 + o, w as i64), y)
                } else {
                    src.get_pixel(x, reflect(y as i64 + o, h as i64))
                };
                for c in 0..3 {
                    acc[c] += wgt * p[c] as f64;
                }
            }
            Rgb(acc.map(|v| v.round().clamp(0.0, 255.0) as u8))
        })
    };
    pass(&pass(img, &gx, true), &gy, false)
}

fn brightness(img: &RgbImage, factor: f64) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        *p = Rgb(p.0.map(|v| (v as f64 * factor).round().clamp(0.0, 255.0) as u8));
    }
    out
}

fn contrast(img: &RgbImage, factor: f64) -> RgbImage {
    let n = (img.width() * img.height()) as f64;
    let mean = img.pixels().map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).sum::<f64>() / n;
    let mut out = img.clone();
    for p in out.pixels_mut() {
        *p = Rgb(p.0.map(|v| (factor * v as f64 + (1.0 - factor) * mean).round().clamp(0.0, 255.0) as u8));
    }
    out
}

fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
    let mut bytes = Vec::new();
    let encoded = JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(img);
    match encoded.ok().and_then(|_| image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).ok()) {
        Some(decoded) => decoded.to_rgb8(),
        None => img.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pixel_wide_or_tall_images_are_augmented() {
        // The blur's reflection once looped forever on a side of one pixel.
        for seed in 0..32 {
            for (w, h) in [(1, 40), (40, 1), (1, 1)] {
                let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5) as u8, (y * 5) as u8, 7]));
                assert_eq!(augment(&img, &mut Rng::new(seed)).dimensions(), (w, h));
            }
        }
        assert_eq!([-3, -1, 0, 1, 5].map(|i| reflect(i, 1)), [0; 5]);
    }

    #[test]
    fn keeps_size_and_is_reproducible() {
        let img = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
        let a = augment(&img, &mut Rng::new(3));
        let b = augment(&img, &mut Rng::new(3));
        assert_eq!(a.dimensions(), (64, 48));
        assert_eq!(a, b);
        assert_ne!(a, augment(&img, &mut Rng::new(4)));
    }

    #[test]
    fn blur_preserves_a_flat_image() {
        let img = RgbImage::from_pixel(10, 10, Rgb([100, 50, 200]));
        assert_eq!(gaussian_blur(&img, 3, 7, 1.5), img);
    }
}
