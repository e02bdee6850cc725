//! dlib's 68-point landmark predictor, read from Debian libdlib-data's file and run in Rust,
//! against dlib-bin (the Python build of dlib) given the same face boxes, on real images:
//! the astronaut, 32 carphone frames and the 32 sample crops. Reference numbers:
//! scripts/fixtures/make_face_fixtures.py --dlib.

use dfdet::preprocess::dlib::ShapePredictor;
use dfdet::preprocess::video::{Sampling, decode_sampled};

use crate::common::{asset, installed, samples};
use crate::support::{DLIB_HEADER, DLIB_LANDMARKS, json, max_abs_diff, thumb};

fn predictor() -> Option<ShapePredictor> {
    let path = installed(DLIB_LANDMARKS, "libdlib-data")?;
    Some(ShapePredictor::from_file(&path).unwrap())
}

#[test]
fn landmarks_match_dlib_bin() {
    let (Some(sp), Some(astronaut), Some(video)) =
        (predictor(), asset("astronaut.png"), asset("carphone_pristine.mp4"))
    else {
        return;
    };
    assert_eq!(sp.num_parts(), 68);
    let doc = json("dlib.json");
    let mut images: Vec<(String, image::RgbImage)> =
        vec![("astronaut".into(), image::open(astronaut).unwrap().to_rgb8())];
    decode_sampled(&video, Sampling::Linspace(32), |i, img| images.push((format!("carphone/{i}"), img))).unwrap();
    let samples = samples().join("datasets");
    for key in doc.as_object().unwrap().keys().filter(|k| k.starts_with("samples/")) {
        let img = image::open(samples.join(&key["samples/".len()..])).unwrap().to_rgb8();
        images.push((key.clone(), img));
    }
    let (mut faces, mut total, mut worst, mut exact) = (0, 0f64, 0f64, 0);
    for (key, img) in &images {
        for face in doc[key].as_array().unwrap() {
            let rect: [i64; 4] = serde_json::from_value(face["rect"].clone()).unwrap();
            let want: Vec<[i64; 2]> = serde_json::from_value(face["landmarks"].clone()).unwrap();
            let got = sp.predict(img, rect);
            let errs: Vec<f64> = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (((a[0] - b[0]).pow(2) + (a[1] - b[1]).pow(2)) as f64).sqrt())
                .collect();
            let mean = errs.iter().sum::<f64>() / errs.len() as f64;
            worst = worst.max(mean);
            total += mean;
            faces += 1;
            exact += usize::from(got == want);
        }
    }
    eprintln!(
        "{faces} faces in {} images: {exact} identical; mean landmark error {:.3} px, worst face {:.3} px",
        images.len(),
        total / faces as f64,
        worst
    );
    assert_eq!((images.len(), faces), (65, 65), "README: identical on 65 faces");
    assert_eq!(exact, faces, "landmarks differ from dlib-bin's on some faces (worst face mean error {worst})");
}

/// The detector model compressed in libdlib-dev's frontal_face_detector.h decompresses to the
/// bytes dlib-bin's `get_frontal_face_detector().save()` writes.
#[test]
fn frontal_face_detector_header_decompresses() {
    let Some(header) = installed(DLIB_HEADER, "libdlib-dev") else { return };
    let want = &json("dlib.json")["__detector__"];
    let text = std::fs::read_to_string(&header).unwrap();
    let bytes = dfdet::preprocess::dlib::ppm::decode_header(&text).unwrap();
    assert_eq!(bytes.len() as u64, want["len"].as_u64().unwrap());
    assert_eq!(crc32fast(&bytes), want["crc32"].as_u64().unwrap() as u32);
    let det = dfdet::preprocess::dlib::HogDetector::from_serialized(&bytes, &header).unwrap();
    assert_eq!(det.num_filters(), 5);
}

fn crc32fast(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn hog() -> Option<dfdet::preprocess::dlib::HogDetector> {
    let header = installed(DLIB_HEADER, "libdlib-dev")?;
    Some(dfdet::preprocess::dlib::HogDetector::from_header(&header).unwrap())
}

fn image_from(v: &serde_json::Value) -> image::RgbImage {
    let rows: Vec<Vec<[u8; 3]>> = serde_json::from_value(v.clone()).unwrap();
    let (h, w) = (rows.len() as u32, rows[0].len() as u32);
    image::RgbImage::from_raw(w, h, rows.into_iter().flatten().flatten().collect()).unwrap()
}

/// dlib's bilinear resizes (the image pyramid and the upsampling) on seeded noise.
#[test]
fn resizes_match_dlib() {
    use dfdet::preprocess::dlib::pyramid::{pyramid_down6, resize_bilinear};
    let doc = &json("dlib.json")["__resize__"];
    let input = image_from(&doc["input"]);
    for (name, got) in [
        ("pyramid_down6", pyramid_down6(&input)),
        ("up", resize_bilinear(&input, 2 * input.width() + 2, 2 * input.height() + 1)),
    ] {
        let want = image_from(&doc[name]);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diff = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} values differ");
    }
}

fn iou(a: [i64; 4], b: [i64; 4]) -> f64 {
    let area = |r: [i64; 4]| ((r[2] - r[0] + 1).max(0) * (r[3] - r[1] + 1).max(0)) as f64;
    let i = [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])];
    let inter = if i[2] < i[0] || i[3] < i[1] { 0.0 } else { area(i) };
    inter / (area(a) + area(b) - inter)
}

/// The HOG detector (upsample 1) against dlib-bin on the astronaut, 32 carphone frames and the
/// 32 sample crops: the same faces found and missed, the same boxes, scores within 5e-7.
#[test]
fn hog_detections_match_dlib_bin() {
    let (Some(det), Some(astronaut), Some(video)) = (hog(), asset("astronaut.png"), asset("carphone_pristine.mp4"))
    else {
        return;
    };
    let doc = json("dlib.json");
    let mut images: Vec<(String, image::RgbImage)> =
        vec![("astronaut".into(), image::open(astronaut).unwrap().to_rgb8())];
    decode_sampled(&video, Sampling::Linspace(32), |i, img| images.push((format!("carphone/{i}"), img))).unwrap();
    let samples = samples().join("datasets");
    for key in doc.as_object().unwrap().keys().filter(|k| k.starts_with("samples/")) {
        images.push((key.clone(), image::open(samples.join(&key["samples/".len()..])).unwrap().to_rgb8()));
    }
    let (mut worst_iou, mut worst_score, mut faces, mut exact) = (1f64, 0f64, 0, 0);
    for (key, img) in &images {
        let want = doc[key].as_array().unwrap();
        let got = det.detect(img, 1);
        assert_eq!(got.len(), want.len(), "{key}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            let rect: [i64; 4] = serde_json::from_value(w["rect"].clone()).unwrap();
            if g.rect != rect {
                eprintln!("{key}: {:?} {:.4} vs dlib {rect:?} {:.4}", g.rect, g.confidence, w["score"]);
            }
            worst_iou = worst_iou.min(iou(g.rect, rect));
            worst_score = worst_score.max((g.confidence - w["score"].as_f64().unwrap()).abs());
            exact += usize::from(g.rect == rect);
            faces += 1;
        }
    }
    eprintln!(
        "{} images, {faces} faces: {exact} boxes identical, worst IoU {worst_iou:.4}, largest score difference {worst_score:.2e}",
        images.len()
    );
    assert_eq!((images.len(), faces), (65, 65), "README: 65 images, 65/65 boxes identical");
    assert_eq!(exact, faces, "boxes differ from dlib-bin's (worst IoU {worst_iou})");
    assert!(worst_score <= 5e-7, "{worst_score}");
}

/// DeepfakeBench's `extract_aligned_face_dlib` end to end (dlib-bin + skimage + cv2): the same
/// five points, a crop within 0.02 grey levels on 8x8 block means, the same re-detection verdict.
#[test]
fn deepfakebench_pipeline_end_to_end() {
    use dfdet::preprocess::align::{TemplateKind, align};
    use dfdet::preprocess::backend::{Backend, load_backend};
    use dfdet::preprocess::faces::{FaceChooser, Largest};
    let (Some(_), Some(astronaut), Some(video)) = (hog(), asset("astronaut.png"), asset("carphone_pristine.mp4"))
    else {
        return;
    };
    let faces = load_backend(Backend::Dlib, None).unwrap();
    let doc = json("dlib.json");
    let mut images: Vec<(String, image::RgbImage)> =
        vec![("astronaut".into(), image::open(astronaut).unwrap().to_rgb8())];
    decode_sampled(&video, Sampling::Linspace(32), |i, img| {
        if [0, 61, 119].contains(&i) {
            images.push((format!("carphone/{i}"), img));
        }
    })
    .unwrap();
    for (key, img) in &images {
        let want = &doc["__end_to_end__"][key];
        let found = faces.detect(img).unwrap();
        if want.is_null() {
            assert!(found.is_empty(), "{key}: dlib-bin finds no face");
            continue;
        }
        let face = &found[Largest.choose(&found, 0).unwrap()];
        let pts: Vec<[f32; 2]> = serde_json::from_value(want["landmarks"].clone()).unwrap();
        assert_eq!(face.landmarks.to_vec(), pts, "{key}");
        let (_, crop) = align(img, &face.landmarks, TemplateKind::Deepfakebench, 256).unwrap();
        let t: Vec<f64> = serde_json::from_value(want["thumb"].clone()).unwrap();
        let d = max_abs_diff(&thumb(&crop, 32), &t);
        eprintln!("{key}: crop block means within {d:.3}");
        assert!(d <= 0.02, "{key}: {d}");
        assert_eq!(!faces.detect(&crop).unwrap().is_empty(), want["redetected"].as_bool().unwrap(), "{key}");
    }
}
