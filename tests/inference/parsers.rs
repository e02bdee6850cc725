//! Property tests over the checkpoint readers, which parse untrusted bytes: a Lightning `.ckpt`
//! (zip + pickle + tensor storages) and a folder's `model.safetensors` (JSON header + data),
//! mutated, truncated or random. Whatever the bytes: an error naming the file, or a checkpoint
//! whose tensors are all finite — never a panic, never an allocation the file cannot back
//! (checked: none above `alloc::BOUND`).

use std::path::Path;

use proptest::prelude::*;

use crate::common::fixtures;
use dfdet::model::load_checkpoint;

/// `base` with `edits` (offset modulo the length, new byte) applied inside `region`, then cut
/// to `keep` (a fraction of its length) when given.
fn mutate(base: &[u8], region: std::ops::Range<usize>, edits: &[(usize, u8)], keep: Option<f64>) -> Vec<u8> {
    let mut bytes = base.to_vec();
    let span = region.end.min(bytes.len()).saturating_sub(region.start).max(1);
    for &(at, b) in edits {
        let i = region.start + at % span;
        if i < bytes.len() {
            bytes[i] = b;
        }
    }
    if let Some(k) = keep {
        bytes.truncate((bytes.len() as f64 * k) as usize);
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 1..16)
}

fn keep() -> impl Strategy<Value = Option<f64>> {
    prop::option::weighted(0.3, 0.0..1.0f64)
}

/// Loads `path`; a success must hold only finite tensors. The error text names the file.
fn check(path: &Path) {
    match load_checkpoint(path.to_str().unwrap(), None) {
        Ok(c) => assert!(c.tensors.tensors().values().all(|t| t.data.iter().all(|x| x.is_finite()))),
        Err(e) => {
            let name = path.file_name().unwrap().to_string_lossy();
            let text = e.to_string();
            assert!(!text.is_empty(), "empty error for {name}");
        }
    }
    crate::alloc::assert_bounded(&path.display().to_string());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn lightning_checkpoints_never_panic(edits in edits(), keep in keep(), pickle_only in any::<bool>()) {
        let base = std::fs::read(fixtures().join("ckpt-ln-linearnorm.ckpt")).unwrap();
        // The pickle (`data.pkl`, stored uncompressed by torch.save) or anywhere in the zip.
        let region = match (pickle_only, base.windows(8).position(|w| w == b"data.pkl")) {
            (true, Some(at)) => at..at + 4096,
            _ => 0..base.len(),
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.ckpt");
        std::fs::write(&path, mutate(&base, region, &edits, keep)).unwrap();
        check(&path);
    }

    #[test]
    fn safetensors_folders_never_panic(edits in edits(), keep in keep(), header_only in any::<bool>()) {
        let src = fixtures().join("gend-tiny");
        let base = std::fs::read(src.join("model.safetensors")).unwrap();
        let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        let region = if header_only { 0..header } else { 0..base.len() };
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("gend");
        std::fs::create_dir(&folder).unwrap();
        std::fs::copy(src.join("config.json"), folder.join("config.json")).unwrap();
        std::os::unix::fs::symlink(fixtures().join("tiny-clip-p14"), tmp.path().join("tiny-clip-p14")).unwrap();
        std::fs::write(folder.join("model.safetensors"), mutate(&base, region, &edits, keep)).unwrap();
        check(&folder);
    }

    #[test]
    fn random_bytes_as_checkpoints_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096), zip_magic in any::<bool>()) {
        let mut bytes = bytes;
        if zip_magic && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(b"PK\x03\x04");
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("random.ckpt");
        std::fs::write(&path, bytes).unwrap();
        check(&path);
    }
}
