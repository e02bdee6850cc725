//! dlib's image resizing as the HOG detector uses it (`dlib/image_transforms`): the bilinear
//! `resize_image` of RGB images (its SIMD and scalar paths), `pyramid_down<6>` and
//! `pyramid_up` with `pyramid_down<2>`.

use image::RgbImage;

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
