//! The CLIP pixel pipeline, exactly as HF `CLIPImageProcessor` (transformers 4.50) runs it on
//! a Pillow image: `convert("RGB")`, shortest-edge bicubic resize (Pillow's `Image.resize`),
//! center crop (padding with zeros when the crop is larger), rescale, normalise, `[3, H, W]`.
//!
//! The resize is a port of Pillow's `ImagingResample` (`src/libImaging/Resample.c`), not a
//! call into `image` or `fast_image_resize`: their bicubic differs from Pillow's by 2-5
//! levels (other support/antialiasing, rounding and pass order), and the detector was
//! trained on Pillow's pixels. The parity tests in `tests/inference/pixels.rs` hold this file to
//! Pillow 13 / transformers 4.50 outputs (`scripts/fixtures/make_pixel_fixtures.py`): bit
//! exact, except JPEG decoding (`image` uses zune-jpeg, Pillow libjpeg-turbo; 4:2:0 chroma
//! upsampling differs by up to a few levels).

use std::path::Path;

use image::{ColorType, ImageDecoder, ImageError, ImageReader, RgbImage};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What HF `CLIPImageProcessor` does to an image (the fields of `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PixelConfig {
    /// Shortest side after resizing.
    pub shortest_edge: usize,
    /// Center crop `[height, width]`.
    pub crop_size: [usize; 2],
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_resize: bool,
    pub do_center_crop: bool,
    pub do_normalize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f32,
}

/// The pixel pipeline of a backbone: CLIP's processor, DINOv3's (a whole-image antialiased
/// resize, [`crate::preprocess::antialias`]) or timm's (the Perception Encoder's). Serialised
/// untagged: each has its own fields, and a dfdet.json written before DINOv3 holds a bare
/// CLIP one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pixels {
    Clip(PixelConfig),
    Dinov3(crate::preprocess::antialias::Dinov3Pixels),
    /// timm's eval transform (the Perception Encoder's).
    Timm(TimmPixels),
}

impl Pixels {
    /// `pixel_values` of one image: `[3, h, w]` f32, channel-major.
    pub fn values(&self, img: &RgbImage) -> Vec<f32> {
        match self {
            Self::Clip(cfg) => pixel_values(img, cfg),
            Self::Dinov3(cfg) => cfg.pixel_values(img),
            Self::Timm(cfg) => cfg.pixel_values(img),
        }
    }
    /// The encoder's input `[height, width]`.
    pub fn size(&self) -> [usize; 2] {
        match self {
            Self::Clip(cfg) => cfg.crop_size,
            Self::Dinov3(cfg) => cfg.size,
            Self::Timm(cfg) => [cfg.input_size; 2],
        }
    }
}

/// OpenAI CLIP's normalisation constants.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation constants.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

impl PixelConfig {
    /// The processor of the OpenAI CLIP checkpoints at `size` pixels.
    pub fn clip(size: usize) -> Self {
        Self {
            shortest_edge: size,
            crop_size: [size, size],
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_resize: true,
            do_center_crop: true,
            do_normalize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
        }
    }

    /// Reads a HF `preprocessor_config.json`; absent fields take `CLIPImageProcessor`'s defaults.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let bad = |key: &str| Error::format(path, format!("`{key}` has an unexpected value"));
        let mut config = Self::clip(224);
        // `size` is an int (old files) or {"shortest_edge": n}.
        if let Some(size) = v.get("size") {
            config.shortest_edge = match size {
                serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| bad("size"))? as usize,
                obj => obj.get("shortest_edge").and_then(|n| n.as_u64()).ok_or_else(|| bad("size"))? as usize,
            };
        }
        // `crop_size` is an int or {"height": h, "width": w}.
        if let Some(crop) = v.get("crop_size") {
            config.crop_size = match crop {
                serde_json::Value::Number(n) => {
                    let n = n.as_u64().ok_or_else(|| bad("crop_size"))? as usize;
                    [n, n]
                }
                obj => {
                    let h = obj.get("height").and_then(|n| n.as_u64()).ok_or_else(|| bad("crop_size"))?;
                    let w = obj.get("width").and_then(|n| n.as_u64()).ok_or_else(|| bad("crop_size"))?;
                    [h as usize, w as usize]
                }
            };
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            match v.get(key) {
                None => Ok(None),
                Some(x) => serde_json::from_value::<[f32; 3]>(x.clone()).map(Some).map_err(|_| bad(key)),
            }
        };
        if let Some(mean) = triple("image_mean")? {
            config.image_mean = mean;
        }
        if let Some(std) = triple("image_std")? {
            config.image_std = std;
        }
        let flag = |key: &str, default: bool| v.get(key).and_then(|b| b.as_bool()).unwrap_or(default);
        config.do_resize = flag("do_resize", true);
        config.do_center_crop = flag("do_center_crop", true);
        config.do_normalize = flag("do_normalize", true);
        config.do_rescale = flag("do_rescale", true);
        if let Some(f) = v.get("rescale_factor") {
            config.rescale_factor = f.as_f64().ok_or_else(|| bad("rescale_factor"))? as f32;
        }
        // A crop of 0 pixels cannot be scored, and one past 4096 (the encoders take 224-448) is
        // a typo that would allocate gigabytes per image.
        for (key, n) in
            [("size", config.shortest_edge), ("crop_size", config.crop_size[0]), ("crop_size", config.crop_size[1])]
        {
            if !(1..=MAX_SIDE).contains(&n) {
                return Err(Error::format(path, format!("`{key}` {n} is outside 1..={MAX_SIDE} pixels")));
            }
        }
        if config.image_std.iter().any(|&s| !s.is_finite() || s == 0.0)
            || config.image_mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::format(path, "`image_mean` must be finite and `image_std` finite and non-zero"));
        }
        if let Some(r) = v.get("resample") {
            // Only bicubic (3) is what the CLIP checkpoints use.
            if r.as_u64() != Some(3) {
                return Err(Error::format(path, format!("resample {r} is not supported (only 3, bicubic)")));
            }
        }
        Ok(config)
    }
}

/// The largest resize or crop side a pixel configuration may ask for.
pub const MAX_SIDE: usize = 4096;

/// Decodes an image file and converts it to RGB as Pillow's `convert("RGB")` does.
///
/// Grey is replicated, alpha (RGBA, LA) dropped, palettes expanded. 16-bit samples become
/// 8-bit as Pillow does it: the high byte for RGB(A)/LA, but 16-bit grey (Pillow's `I;16`)
/// is *clipped* at 255. A truncated file is decoded as far as the decoder gets, the rest
/// black (the original sets Pillow's `LOAD_TRUNCATED_IMAGES`); see [`load_rgb_lenient`] to
/// learn that it happened. An undecodable file is [`Error::Image`] naming the path and why;
/// one that cannot be opened is [`Error::Io`].
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_lenient(path).map(|(image, _)| image)
}

/// [`load_rgb`], also returning the decoder's complaint when the file was truncated or
/// corrupt part-way and only partly decoded (so that callers can warn about it).
pub fn load_rgb_lenient(path: &Path) -> Result<(RgbImage, Option<String>)> {
    let bad = |reason: String| Error::Image { path: path.to_path_buf(), reason };
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let mut limits = image::Limits::default();
    limits.reserve(decoder.total_bytes()).map_err(|e| bad(e.to_string()))?;
    // Zeroed, so that rows a truncated file never reaches stay black, as in Pillow.
    let mut buf = vec![0u8; decoder.total_bytes() as usize];
    let eight_bit = color.bytes_per_pixel() == color.channel_count();
    let note = match decoder.read_image(&mut buf) {
        Ok(()) => None,
        // Decoders fill `buf` front to back; what they wrote before the error is the image
        // as far as it goes. Only trusted for 8-bit samples: a 16-bit PNG's partial rows are
        // still big-endian (`image` swaps them only on success).
        Err(e @ (ImageError::Decoding(_) | ImageError::IoError(_))) if eight_bit => Some(e.to_string()),
        Err(e) => return Err(bad(e.to_string())),
    };
    // The JPEG decoder pads a file cut short without a word (libjpeg, under Pillow, says
    // "premature end of JPEG file"): a JPEG must end with its end-of-image marker.
    let note = match note {
        None if jpeg && !ends_with_jpeg_eoi(path) => Some("the JPEG data ends before its end-of-image marker".into()),
        note => note,
    };
    let rgb = to_rgb8(&buf, color).ok_or_else(|| bad(format!("unsupported colour type {color:?}")))?;
    let image = RgbImage::from_raw(width, height, rgb).ok_or_else(|| bad("decoded size mismatch".into()))?;
    Ok((image, note))
}

/// Whether the last 64 KiB of the file hold a JPEG end-of-image marker (`FF D9`). Inside the
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so a file cut
/// short has none there; data that some cameras append after the marker is allowed for.
fn ends_with_jpeg_eoi(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let tail = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(path)?;
        let len = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    // Unreadable now (it was readable a moment ago): no claim either way.
    tail().map_or(true, |bytes| bytes.windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// Pillow's `convert("RGB")` of decoded samples (`buf` in `image`'s layout for `color`).
fn to_rgb8(buf: &[u8], color: ColorType) -> Option<Vec<u8>> {
    let u16s = || buf.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]]));
    let rgb = match color {
        ColorType::Rgb8 => buf.to_vec(),
        ColorType::Rgba8 => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        ColorType::L8 => buf.iter().flat_map(|&v| [v; 3]).collect(),
        ColorType::La8 => buf.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        // Pillow opens 16-bit grey as `I;16`, and `I16_RGB` clips instead of scaling.
        ColorType::L16 => u16s().flat_map(|v| [v.min(255) as u8; 3]).collect(),
        // Pillow unpacks 16-bit colour (`RGB;16B`, `LA;16B`, ...) keeping the high byte.
        ColorType::La16 => u16s().step_by(2).flat_map(|v| [(v >> 8) as u8; 3]).collect(),
        ColorType::Rgb16 => u16s().map(|v| (v >> 8) as u8).collect(),
        ColorType::Rgba16 => {
            let hi: Vec<u8> = u16s().map(|v| (v >> 8) as u8).collect();
            hi.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect()
        }
        // Float images (TIFF): Pillow has no float RGB; take `image`'s clamp-and-round.
        ColorType::Rgb32F | ColorType::Rgba32F => {
            let channels = color.channel_count() as usize;
            buf.chunks_exact(4 * channels)
                .flat_map(|p| {
                    let f = |i: usize| {
                        let v = f32::from_ne_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
                        (v.clamp(0.0, 1.0) * 255.0).round() as u8
                    };
                    [f(0), f(1), f(2)]
                })
                .collect()
        }
        _ => return None,
    };
    Some(rgb)
}

// ---------------------------------------------------------------------------------------------
// Pillow's bicubic resample (Resample.c), 8 bits per channel.

/// Fixed-point fraction bits of the coefficients: `PRECISION_BITS = 32 - 8 - 2`.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` (Keys' cubic convolution with a = -0.5).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The resampling weights of one axis: per output index, the first input index, how many
/// inputs it reads, and `ksize` fixed-point coefficients.
struct Coeffs {
    ksize: usize,
    /// `(first, count)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `[out_size, ksize]`, zero past `count`.
    k: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` over the whole axis (`box` = `[0, in_size]`) followed by
    /// `normalize_coeffs_8bpc`, with the same f64 expressions in the same order.
    fn bicubic(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow's box is float: `scale = (double)(in1 - in0) / outSize`.
        let (in0, in1) = (0.0f32, in_size as f32);
        let scale = f64::from(in1 - in0) / out_size as f64;
        // Widen the filter when shrinking: this is the antialiasing.
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let count = xmax.max(0) as usize;
            let mut ww = 0.0;
            for (x, wx) in w[..count].iter_mut().enumerate() {
                *wx = bicubic_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                ww += *wx;
            }
            for (x, &wx) in w[..count].iter().enumerate() {
                let wx = if ww != 0.0 { wx / ww } else { wx };
                let scaled = wx * f64::from(1u32 << PRECISION_BITS);
                k[xx * ksize + x] = if wx < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin as usize, count));
        }
        Self { ksize, bounds, k }
    }

    fn row(&self, out: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[out];
        (first, &self.k[out * self.ksize..out * self.ksize + count])
    }
}

/// Pillow's `clip8`: drop the fraction bits (arithmetic shift) and saturate to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding term every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow-exact bicubic resize: `Image.resize((width, height), Image.BICUBIC)` of an RGB
/// uint8 image (Pillow 13).
///
/// Two separable passes as in `ImagingResampleInner`, each rounded and clipped to 8 bits; an
/// axis whose size does not change is not resampled at all. The order matters for the
/// result: horizontal then vertical, except that Pillow 13 (python-pillow/Pillow#9549) goes
/// vertical first when the height shrinks by more than twice as many pixels as the width
/// does ([`vertical_first`]). Pillow 12 and older always go horizontal first; the two agree
/// on square crops and on every shortest-edge resize that does not shrink a tall image.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (out_w, out_h) == (in_w, in_h) {
        return img.clone();
    }
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let src = img.as_raw().as_slice();
    let out = if out_w == in_w {
        vertical_pass(src, in_w, 0, &Coeffs::bicubic(in_h, out_h))
    } else if out_h == in_h {
        horizontal_pass(src, in_w, 0..in_h, &Coeffs::bicubic(in_w, out_w))
    } else if vertical_first(in_w, in_h, out_w, out_h) {
        let temp = vertical_pass(src, in_w, 0, &Coeffs::bicubic(in_h, out_h)); // [out_h, in_w, 3]
        horizontal_pass(&temp, in_w, 0..out_h, &Coeffs::bicubic(in_w, out_w))
    } else {
        let vert = Coeffs::bicubic(in_h, out_h);
        // Only the source rows the vertical pass reads go through the horizontal one.
        let first = vert.bounds[0].0;
        let last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
        let temp = horizontal_pass(src, in_w, first..last, &Coeffs::bicubic(in_w, out_w)); // [last - first, out_w, 3]
        vertical_pass(&temp, out_w, first, &vert)
    };
    RgbImage::from_raw(width, height, out).expect("resize buffer size")
}

/// Pillow 13's choice of pass order (python-pillow/Pillow#9549, "if height is scaled down
/// significantly more than width, resize vertically first"): vertical first when the height
/// is reduced, and by more than twice as many pixels as the width. Pillow 13.0.0's C source
/// was not at hand: this rule was fitted to its output and then matched it on all of 1441
/// random and near-boundary sizes (a tie, `dh == 2 * dw`, goes horizontal first).
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let (dw, dh) = (in_w as i64 - out_w as i64, in_h as i64 - out_h as i64);
    dh > 0 && dh > 2 * dw
}

/// Pillow's `ImagingResampleHorizontal_8bpc` over `rows` of an RGB buffer `in_w` wide:
/// returns `[rows.len(), out_w, 3]`.
fn horizontal_pass(src: &[u8], in_w: usize, rows: std::ops::Range<usize>, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    for (out_row, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let in_row = &src[y * in_w * 3..][..in_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (first, k) = c.row(xx);
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &kx) in in_row[first * 3..][..k.len() * 3].chunks_exact(3).zip(k) {
                r += i32::from(p[0]) * kx;
                g += i32::from(p[1]) * kx;
                b += i32::from(p[2]) * kx;
            }
            px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc` of an RGB buffer `width` wide whose first row is
/// source row `row_shift`: returns `[out_h, width, 3]`. A whole output row is accumulated
/// at a time (integer sums, so the order of the terms does not matter).
fn vertical_pass(src: &[u8], width: usize, row_shift: usize, c: &Coeffs) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; c.bounds.len() * stride];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (first, k) = c.row(yy);
        acc.fill(HALF);
        for (y, &ky) in k.iter().enumerate() {
            let in_row = &src[(first - row_shift + y) * stride..][..stride];
            for (a, &v) in acc.iter_mut().zip(in_row) {
                *a += i32::from(v) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HF's resize and center crop.

/// HF's `get_resize_output_image_size(default_to_square=False)`: the short side becomes
/// `shortest_edge`, the long side `int(shortest_edge * long / short)` (f64, truncated).
/// Returns `(width, height)`.
pub fn resize_output_size(width: u32, height: u32, shortest_edge: usize) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_short = shortest_edge as u32;
    let new_long = if short == 0 { 0 } else { (shortest_edge as f64 * f64::from(long) / f64::from(short)) as u32 };
    if width <= height { (new_short, new_long) } else { (new_long, new_short) }
}

/// HF's `center_crop` to `crop_h` x `crop_w`: offsets `(orig - crop) // 2`; where the image
/// is smaller than the crop it is first zero-padded (`ceil((new - orig) / 2)` before), as
/// HF does, so the result is always the crop size.
pub fn center_crop(img: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    let (orig_h, orig_w) = (img.height() as i64, img.width() as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    // Source offset of the crop's first row/column along one axis.
    let offset = |orig: i64, crop: i64| -> i64 {
        let start = (orig - crop).div_euclid(2); // Python's floor division
        if start >= 0 && start + crop <= orig {
            return start;
        }
        // HF pads only when some side is out of bounds; it then pads *both* axes by
        // `ceil((max(crop, orig) - orig) / 2)`, which is zero along an axis that fits.
        let new = crop.max(orig);
        let pad = (new - orig + 1).div_euclid(2);
        (start + pad).max(0) - pad
    };
    let (top, left) = (offset(orig_h, ch), offset(orig_w, cw));
    window(img, top, left, crop_h, crop_w)
}

/// The `crop_h` x `crop_w` window of `img` whose top-left pixel is at (`top`, `left`), either
/// possibly negative or past the edge: pixels outside the image are black (the crops' padding).
fn window(img: &RgbImage, top: i64, left: i64, crop_h: usize, crop_w: usize) -> RgbImage {
    let (orig_h, orig_w) = (img.height() as i64, img.width() as i64);
    let src = img.as_raw();
    let mut out = RgbImage::new(crop_w as u32, crop_h as u32);
    for (y, row) in out.chunks_exact_mut(crop_w * 3).enumerate() {
        let sy = top + y as i64;
        if !(0..orig_h).contains(&sy) {
            continue;
        }
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let sx = left + x as i64;
            if (0..orig_w).contains(&sx) {
                let i = (sy * orig_w + sx) as usize * 3;
                px.copy_from_slice(&src[i..i + 3]);
            }
        }
    }
    out
}

/// HF's resize (shortest edge, bicubic) then center crop, per `cfg`'s flags: the uint8
/// image before rescaling and normalisation.
pub fn resize_and_crop(img: &RgbImage, cfg: &PixelConfig) -> RgbImage {
    let resized = if cfg.do_resize {
        let (w, h) = resize_output_size(img.width(), img.height(), cfg.shortest_edge);
        resize_bicubic(img, w, h)
    } else {
        img.clone()
    };
    if cfg.do_center_crop { center_crop(&resized, cfg.crop_size[0], cfg.crop_size[1]) } else { resized }
}

/// The full pipeline: `[3, H, W]` f32, channel-major, as `CLIPImageProcessor` computes it.
///
/// HF rescales in f64 and casts to f32 (`(x.astype(float64) * 1/255).astype(float32)`),
/// then normalises in f32 (`(x - f32(mean)) / f32(std)`); this does the same, so the values
/// are bit-identical to HF's.
pub fn pixel_values(img: &RgbImage, cfg: &PixelConfig) -> Vec<f32> {
    let img = resize_and_crop(img, cfg);
    let plane = img.width() as usize * img.height() as usize;
    // `rescale_factor` is stored as f32; HF multiplies by the Python float. Recover the f64
    // for the usual 1/255 (the f32 product differs from HF's in 126 of the 256 levels).
    let scale = if cfg.rescale_factor == (1.0f64 / 255.0) as f32 { 1.0 / 255.0 } else { f64::from(cfg.rescale_factor) };
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        let (mean, std) = (cfg.image_mean[c], cfg.image_std[c]);
        // The 256 possible values of this channel.
        let lut: Vec<f32> = (0..=255u8)
            .map(|v| {
                let mut x = if cfg.do_rescale { (f64::from(v) * scale) as f32 } else { f32::from(v) };
                if cfg.do_normalize {
                    x = (x - mean) / std;
                }
                x
            })
            .collect();
        for (o, p) in out[c * plane..(c + 1) * plane].iter_mut().zip(img.pixels()) {
            *o = lut[p.0[c] as usize];
        }
    }
    out
}

/// timm's eval transform (`timm.data.create_transform(**data_config, is_training=False)`,
/// timm 1.0 / torchvision 0.23) for a square `input_size` and `crop_mode` "center", as GenD
/// builds it for its timm backbones (the Perception Encoder, [`crate::model::pe`]):
/// `Resize(floor(input_size / crop_pct))` on the shortest edge with Pillow's bicubic,
/// `CenterCrop(input_size)`, `ToTensor` (`x / 255` in f32), `Normalize(mean, std)`.
///
/// The resize is the one [`resize_and_crop`] runs for CLIP (the same Pillow call and output
/// size); the crop is not: torchvision starts it at `int(round((orig - crop) / 2))`, Python
/// rounding half to even, where HF's CLIP processor takes `(orig - crop) // 2` (they differ
/// when `orig - crop` is 3 mod 4), and pads by `(crop - orig) // 2` before (HF: rounded up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimmPixels {
    /// The crop's side (GenD sets `input_size` to (3, 224, 224)).
    pub input_size: usize,
    /// The resize's shortest edge is `floor(input_size / crop_pct)`.
    pub crop_pct: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TimmPixels {
    /// The Perception Encoder's data config (timm `_pe_cfg`: crop_pct 1, bicubic, mean and
    /// std 0.5) at `size` pixels.
    pub fn pe(size: usize) -> Self {
        Self { input_size: size, crop_pct: 1.0, mean: [0.5; 3], std: [0.5; 3] }
    }

    /// The side the shortest edge is resized to.
    pub fn scale_size(&self) -> usize {
        (self.input_size as f64 / self.crop_pct).floor() as usize
    }

    /// `pixel_values` of one image: `[3, input_size, input_size]` f32, channel-major.
    pub fn pixel_values(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = resize_output_size(img.width(), img.height(), self.scale_size());
        let resized = resize_bicubic(img, w, h);
        let img = center_crop_torchvision(&resized, self.input_size, self.input_size);
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            let lut: Vec<f32> = (0..=255u8).map(|v| (f32::from(v) / 255.0 - mean) / std).collect();
            for (o, p) in out[c * plane..(c + 1) * plane].iter_mut().zip(img.pixels()) {
                *o = lut[p.0[c] as usize];
            }
        }
        out
    }
}

/// torchvision's `center_crop` to `crop_h` x `crop_w` on a Pillow image: where the image is
/// smaller than the crop it is zero-padded by `(crop - orig) // 2` before; otherwise the crop
/// starts at `int(round((orig - crop) / 2))` (half to even).
pub fn center_crop_torchvision(img: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    let offset = |orig: i64, crop: i64| -> i64 {
        if crop > orig {
            return -((crop - orig) / 2);
        }
        let n = orig - crop;
        let half = n / 2;
        // n / 2 = half + 0.5 when n is odd: Python's round goes to the even neighbour.
        if n % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
    };
    let (orig_h, orig_w) = (img.height() as i64, img.width() as i64);
    let (top, left) = (offset(orig_h, crop_h as i64), offset(orig_w, crop_w as i64));
    window(img, top, left, crop_h, crop_w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_center_crop_rounds_half_to_even() {
        // A 1-pixel-wide column per x: the crop's first column tells its offset.
        let img = RgbImage::from_fn(12, 1, |x, _| image::Rgb([x as u8, 0, 0]));
        // orig - crop = 1, 3, 5, 7: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
        for (crop, first) in [(11, 0), (9, 2), (7, 2), (5, 4), (12, 0)] {
            assert_eq!(center_crop_torchvision(&img, 1, crop).get_pixel(0, 0).0[0], first, "crop {crop}");
        }
        // A larger crop pads (crop - orig) // 2 zeros before: 3 for 12 -> 19.
        let padded = center_crop_torchvision(&img, 1, 19);
        assert_eq!((padded.get_pixel(2, 0).0[0], padded.get_pixel(4, 0).0[0]), (0, 1));
        assert_eq!(TimmPixels { crop_pct: 0.875, ..TimmPixels::pe(224) }.scale_size(), 256);
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]))
    }

    #[test]
    fn same_size_resize_is_a_copy() {
        let img = gradient(37, 23);
        assert_eq!(resize_bicubic(&img, 37, 23), img);
    }

    #[test]
    fn resize_shapes() {
        let img = gradient(256, 256);
        for (w, h) in [(224, 224), (100, 37), (500, 300), (256, 100), (1, 1)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
        }
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        assert!(!vertical_first(256, 256, 224, 224));
        assert!(vertical_first(97, 61, 300, 17)); // height shrinks, width grows
        assert!(!vertical_first(75, 30, 56, 9)); // 21 rows vs 19 columns: not twice
        assert!(!vertical_first(60, 60, 31, 2)); // a tie: 58 == 2 * 29
        assert!(vertical_first(60, 60, 32, 2));
        assert!(!vertical_first(33, 36, 85, 57)); // height grows
        assert!(vertical_first(230, 500, 224, 486)); // a tall image's shortest-edge resize
    }

    #[test]
    fn constant_image_stays_constant() {
        // Normalised weights sum to 1 (to within the fixed-point rounding): a flat image stays flat.
        let img = RgbImage::from_pixel(97, 61, image::Rgb([200, 3, 128]));
        for (w, h) in [(224, 141), (40, 25), (97, 300)] {
            assert!(resize_bicubic(&img, w, h).pixels().all(|p| p.0 == [200, 3, 128]));
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(256, 224), (224, 256), (97, 61), (61, 97), (640, 7)] {
            let c = Coeffs::bicubic(i, o);
            for xx in 0..o {
                let sum: i32 = c.row(xx).1.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i32, "{i}->{o} at {xx}: {sum}");
            }
        }
    }

    #[test]
    fn hf_output_sizes() {
        assert_eq!(resize_output_size(256, 256, 224), (224, 224));
        assert_eq!(resize_output_size(300, 241, 224), (278, 224));
        assert_eq!(resize_output_size(241, 300, 224), (224, 278));
        assert_eq!(resize_output_size(640, 200, 224), (716, 224));
    }

    #[test]
    fn center_crop_offsets_and_padding() {
        let img = gradient(10, 7);
        // Fits: offsets (7-4)//2 = 1 and (10-5)//2 = 2.
        let c = center_crop(&img, 4, 5);
        assert_eq!(c.get_pixel(0, 0), img.get_pixel(2, 1));
        // Too tall: padded by ceil((9-7)/2) = 1 row above; width still cropped.
        let c = center_crop(&img, 9, 6);
        assert_eq!(c.dimensions(), (6, 9));
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(0, 1), img.get_pixel(2, 0));
        assert_eq!(c.get_pixel(5, 7), img.get_pixel(7, 6));
        assert_eq!(c.get_pixel(5, 8).0, [0, 0, 0]);
        // Odd padding: ceil((8-5)/2) = 2 columns on the left, 1 on the right.
        let c = center_crop(&gradient(5, 3), 3, 8);
        assert_eq!(c.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(2, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(7, 0).0, [0, 0, 0]);
    }

    #[test]
    fn pixel_values_layout_and_range() {
        let cfg = PixelConfig::clip(224);
        let v = pixel_values(&gradient(256, 300), &cfg);
        assert_eq!(v.len(), 3 * 224 * 224);
        let lo = (0.0 - cfg.image_mean[0]) / cfg.image_std[0];
        assert!(v.iter().all(|x| x.is_finite() && *x >= lo - 1.0 && *x <= 3.0));
        // Channel planes: a pure-red image has a constant plane per channel.
        let red = RgbImage::from_pixel(224, 224, image::Rgb([255, 0, 0]));
        let v = pixel_values(&red, &cfg);
        let r = (1.0f32 - cfg.image_mean[0]) / cfg.image_std[0];
        assert!(v[..224 * 224].iter().all(|&x| x == r));
        assert!(v[224 * 224..].iter().all(|&x| x < 0.0));
    }
}
