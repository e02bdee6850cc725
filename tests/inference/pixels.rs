//! Pixel parity with the reference stack (Pillow 13 + transformers 4.50 `CLIPImageProcessor`):
//! fixtures in `tests/fixtures/pixels/` come from `scripts/fixtures/make_pixel_fixtures.py`
//! (its docstring says what each file is). The 32 sample crops are read from
//! `../shared/data/samples/datasets`.

use std::path::{Path, PathBuf};

use dfdet::Error;
use dfdet::model::config::PixelConfig;
use dfdet::preprocess::pixels::{load_rgb, load_rgb_lenient, pixel_values, resize_and_crop, resize_bicubic};
use image::RgbImage;

use crate::common::{fixtures, read_json, samples};

/// `tests/fixtures/pixels`.
fn pixel_fixtures() -> PathBuf {
    fixtures().join("pixels")
}

fn manifest() -> serde_json::Value {
    read_json("pixels/manifest.json")
}

/// A manifest input: `samples/<rel>` (the shared sample crops) or `inputs/<file>`.
fn input_path(input: &str) -> PathBuf {
    match input.strip_prefix("samples/") {
        Some(rel) => samples().join("datasets").join(rel),
        None => pixel_fixtures().join(input),
    }
}

fn cases(key: &str) -> Vec<serde_json::Value> {
    manifest()[key].as_array().unwrap().clone()
}

fn str_of<'a>(case: &'a serde_json::Value, key: &str) -> &'a str {
    case[key].as_str().unwrap()
}

/// A fixture PNG of 8-bit RGB.
fn read_rgb_png(path: &Path) -> RgbImage {
    match image::open(path).unwrap() {
        image::DynamicImage::ImageRgb8(img) => img,
        other => panic!("{}: expected an 8-bit RGB PNG, got {:?}", path.display(), other.color()),
    }
}

/// How one image compares with its reference.
#[derive(Debug, Clone, Copy)]
struct Diff {
    max: u8,
    differing: usize,
    mean: f64,
    len: usize,
}

fn diff(ours: &RgbImage, theirs: &RgbImage, what: &str) -> Diff {
    assert_eq!(ours.dimensions(), theirs.dimensions(), "{what}: size");
    let (mut max, mut differing, mut sum) = (0u8, 0usize, 0u64);
    for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        differing += usize::from(d != 0);
        sum += u64::from(d);
    }
    Diff { max, differing, mean: sum as f64 / ours.len() as f64, len: ours.len() }
}

/// The JPEG inputs: Pillow decodes them with libjpeg-turbo, `image` with zune-jpeg. Their
/// IDCTs nearly agree (4:4:4: a handful of values 1-2 levels off), but their 4:2:0 chroma
/// upsampling rounds differently (zune-jpeg rounds between its horizontal and vertical
/// triangle filters, libjpeg-turbo's `h2v2_fancy_upsample` once at the end): a few levels.
fn is_jpeg(name: &str) -> bool {
    name.starts_with("jpeg")
}

/// Prints the per-case and overall tally, then checks every case: bit-identical to Pillow for
/// everything Pillow and `image` decode identically (all but the JPEGs), and for the JPEGs at
/// most 4 levels with a mean under a quarter of a level (a regression guard, not parity).
fn check_all(results: Vec<(String, Diff)>) {
    let (mut cases, mut max, mut differing, mut total) = (0usize, 0u8, 0usize, 0usize);
    for (name, d) in &results {
        println!("{name}: max |d| = {}, {} of {} values differ, mean |d| = {:.4}", d.max, d.differing, d.len, d.mean);
        if !is_jpeg(name) {
            cases += 1;
            max = max.max(d.max);
            differing += d.differing;
            total += d.len;
        }
    }
    println!("overall, JPEGs aside: {cases} cases, max |d| = {max}, {differing} of {total} values differ");
    let bad: Vec<_> = results
        .iter()
        .filter(|(name, d)| if is_jpeg(name) { d.max > 4 || d.mean > 0.25 } else { d.differing > 0 })
        .collect();
    assert!(bad.is_empty(), "out of tolerance: {bad:?}");
}

#[test]
fn load_rgb_matches_pillow_convert_rgb() {
    let mut results = Vec::new();
    for case in cases("crop_cases").iter().filter(|c| c["decoded"].as_bool() == Some(true)) {
        let name = str_of(case, "name");
        let ours = load_rgb(&input_path(str_of(case, "input"))).unwrap();
        let theirs = read_rgb_png(&pixel_fixtures().join(format!("decoded/{name}.png")));
        results.push((name.to_string(), diff(&ours, &theirs, name)));
    }
    assert!(results.len() >= 6, "decode cases: {}", results.len());
    check_all(results);
}

#[test]
fn resize_and_crop_matches_clip_image_processor() {
    let mut results = Vec::new();
    for case in cases("crop_cases") {
        let name = str_of(&case, "name");
        let cfg = PixelConfig { do_resize: case["do_resize"].as_bool().unwrap(), ..PixelConfig::clip(224) };
        let img = load_rgb(&input_path(str_of(&case, "input"))).unwrap();
        let ours = resize_and_crop(&img, &cfg);
        let theirs = read_rgb_png(&pixel_fixtures().join(format!("expected/{name}.png")));
        results.push((name.to_string(), diff(&ours, &theirs, name)));
    }
    assert!(results.len() >= 32 + 10, "crop cases: {}", results.len());
    check_all(results);
}

#[test]
fn resize_bicubic_matches_pillow() {
    let mut results = Vec::new();
    for case in cases("resize_cases") {
        let name = str_of(&case, "name");
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let img = load_rgb(&input_path(str_of(&case, "input"))).unwrap();
        let ours = resize_bicubic(&img, w, h);
        let theirs = read_rgb_png(&pixel_fixtures().join(format!("resize/{name}.png")));
        results.push((name.to_string(), diff(&ours, &theirs, name)));
    }
    check_all(results);
}

/// `normalized/<name>.png` holds HF's `[3, 224, 224]` f32 tensor as RGBA8 pixels whose bytes
/// are the little-endian floats (a lossless, compressed container `image` can read).
fn read_f32_png(path: &Path) -> Vec<f32> {
    let img = image::open(path).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgba8, "{}", path.display());
    img.as_bytes().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn pixel_values_match_clip_image_processor() {
    let crop_cases = cases("crop_cases");
    let names = manifest()["normalized"].as_array().unwrap().clone();
    assert_eq!(names.len(), 3);
    for name in names {
        let name = name.as_str().unwrap();
        let case = crop_cases.iter().find(|c| c["name"] == name && c["do_resize"] == true).unwrap();
        let img = load_rgb(&input_path(str_of(case, "input"))).unwrap();
        let ours = pixel_values(&img, &PixelConfig::clip(224));
        let theirs = read_f32_png(&pixel_fixtures().join(format!("normalized/{name}.png")));
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let unequal = ours.iter().zip(&theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        println!("{name}: max |d| = {max:e}, {unequal} of {} values not bit-identical", ours.len());
        assert_eq!(unequal, 0, "{name}: max |d| = {max:e}");
    }
}

/// Loading must end in an image (decoded as far as it goes) or in `Error::Image` naming the
/// file: never a panic.
fn assert_loads_or_names(path: &Path) -> Option<RgbImage> {
    match load_rgb_lenient(path) {
        Ok((img, note)) => {
            println!("{}: {}x{}, {note:?}", path.display(), img.width(), img.height());
            Some(img)
        }
        Err(e @ Error::Image { .. }) => {
            let text = e.to_string();
            println!("{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            None
        }
        Err(e) => panic!("{}: expected Error::Image, got {e}", path.display()),
    }
}

#[test]
fn truncated_png_decodes_partially_or_errs_with_the_path() {
    let src = input_path("samples/FF/real/000/000.png");
    let bytes = std::fs::read(&src).unwrap();
    let full = load_rgb(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.png");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    if let Some(img) = assert_loads_or_names(&path) {
        assert_eq!(img.dimensions(), full.dimensions());
        // The decoded rows are the original's, the rest black: what Pillow 13 gives with
        // LOAD_TRUNCATED_IMAGES (for this file, 123 rows, then black, in both).
        let row = full.width() as usize * 3;
        let same_rows = img.chunks(row).zip(full.chunks(row)).take_while(|(a, b)| a == b).count();
        assert!(same_rows > 0, "nothing decoded");
        assert!(img.chunks(row).skip(same_rows).all(|r| r.iter().all(|&v| v == 0)));
        println!("{same_rows} of {} rows decoded", full.height());
    }
}

#[test]
fn truncated_or_garbage_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(pixel_fixtures().join("inputs/jpeg_241x300.jpg")).unwrap();
    let png = std::fs::read(input_path("samples/FF/real/000/000.png")).unwrap();
    let png16 = std::fs::read(pixel_fixtures().join("inputs/rgb16_64x48.png")).unwrap();
    let files: [(&str, &[u8]); 7] = [
        ("half.jpg", &jpeg[..jpeg.len() / 2]),
        ("header-only.png", &png[..60]),
        ("signature-only.png", &png[..8]),
        ("half16.png", &png16[..png16.len() / 2]),
        ("empty.png", &[]),
        ("garbage.png", b"this is not an image at all, just some text bytes"),
        ("garbage.jpg", &[0xff, 0xd8, 0xff, 0xe0, 0, 0, 1, 2, 3]),
    ];
    for (name, data) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        if let Some(img) = assert_loads_or_names(&path) {
            println!("  bottom-left pixel {:?}", img.get_pixel(0, img.height() - 1).0);
        }
    }
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let path = pixel_fixtures().join("no-such-image.png");
    let err = load_rgb(&path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("no-such-image.png"), "{err}");
}
