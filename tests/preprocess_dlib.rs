//! dlib's 68-point landmark predictor, read from Debian libdlib-data's file and run in Rust,
//! against dlib-bin (the Python build of dlib) given the same face boxes, on real images:
//! the astronaut, 32 carphone frames and the 32 sample crops. Reference numbers:
//! scripts/fixtures/make_face_fixtures.py --dlib.

#[path = "preprocess_common/mod.rs"]
mod common;

use std::path::PathBuf;

use common::{asset, json, root};
use dfdet::preprocess::dlib::ShapePredictor;
use dfdet::preprocess::video::{Sampling, decode_sampled};

fn predictor() -> Option<ShapePredictor> {
    let path = PathBuf::from("/usr/share/dlib/shape_predictor_68_face_landmarks.dat");
    if !path.is_file() {
        let msg = "libdlib-data is not installed (/usr/share/dlib/shape_predictor_68_face_landmarks.dat): run scripts/setup-assets.sh";
        assert!(std::env::var("CI").is_err(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
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
    let samples = root().join("../shared/data/samples/datasets");
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
    assert!(faces >= 60);
    assert!(worst <= 1.0, "worst face mean error {worst}");
}
