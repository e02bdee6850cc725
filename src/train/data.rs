//! Mini-batches of a split: seeded order per epoch, pixels (optionally augmented) decoded in
//! parallel, and the encoder-feature cache of linear probing.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::*;
use rayon::prelude::*;

use super::augment::augment;
use crate::data::InputError;
use crate::data::sets::Split;
use crate::model::config::Pixels;
use crate::preprocess::pixels::load_rgb_lenient;
use crate::rng::{Rng, Stream};

/// The order of a split's frames in `epoch` (PyTorch's `shuffle=True`, dfdet's stream).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    Rng::derive(seed, Stream::Shuffle, &[epoch as u64]).permutation(n)
}

/// The pixels of some frames of a split.
#[derive(Debug)]
pub struct Batch {
    /// Split indices of the frames that decoded, in batch order.
    pub index: Vec<usize>,
    /// `[b, 3, h, w]` on the plain device.
    pub pixels: Tensor<4>,
    /// Frames that could not be read.
    pub errors: Vec<InputError>,
    /// Frames read from a truncated or partly corrupt file (used, as the reference's Pillow
    /// with `LOAD_TRUNCATED_IMAGES` uses them).
    pub warnings: Vec<InputError>,
}

/// Decodes `index` of `split` into pixels; with `augment = Some((seed, epoch))`, each frame is
/// augmented with its own stream (so a batch is the same whatever the thread count).
pub fn load_batch(
    split: &Split,
    index: &[usize],
    pixels: &Pixels,
    augment_with: Option<(u64, usize)>,
    device: &Device,
) -> Batch {
    let [h, w] = pixels.size();
    let decoded: Vec<_> = index
        .par_iter()
        .map(|&i| {
            let path = Path::new(&split.files[i]);
            load_rgb_lenient(path).map(|(img, partly)| {
                let img = match augment_with {
                    Some((seed, epoch)) => {
                        augment(&img, &mut Rng::derive(seed, Stream::Augment, &[epoch as u64, i as u64]))
                    }
                    None => img,
                };
                (pixels.values(&img), partly)
            })
        })
        .collect();
    let mut ok = Vec::with_capacity(index.len());
    let mut data = Vec::with_capacity(index.len() * 3 * h * w);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (&i, result) in index.iter().zip(decoded) {
        match result {
            Ok((px, partly)) => {
                data.extend_from_slice(&px);
                ok.push(i);
                if let Some(reason) = partly {
                    let reason = format!("truncated or corrupt, used as far as it decodes (the rest black): {reason}");
                    warnings.push(InputError { path: split.files[i].clone(), reason });
                }
            }
            Err(e) => errors.push(InputError { path: split.files[i].clone(), reason: e.reason() }),
        }
    }
    let b = ok.len();
    Batch { index: ok, pixels: Tensor::from_data(TensorData::new(data, [b, 3, h, w]), device), errors, warnings }
}

/// Encoder features (`pooler_output`) of a split's frames, computed once.
#[derive(Debug, Default)]
pub struct FeatureCache {
    pub dim: usize,
    pub rows: HashMap<usize, Vec<f32>>,
}

impl FeatureCache {
    /// The cached features of `index` as `[b, d]`, with the indices that have one.
    pub fn batch(&self, index: &[usize], device: &Device) -> (Vec<usize>, Tensor<2>) {
        let ok: Vec<usize> = index.iter().copied().filter(|i| self.rows.contains_key(i)).collect();
        let mut data = Vec::with_capacity(ok.len() * self.dim);
        for i in &ok {
            data.extend_from_slice(&self.rows[i]);
        }
        let b = ok.len();
        (ok, Tensor::from_data(TensorData::new(data, [b, self.dim]), device))
    }
}
