//! Video decoding and frame sampling against OpenCV (cv2.VideoCapture) on carphone_pristine.mp4
//! (scripts/fixtures/make_face_fixtures.py wrote the reference numbers).

use std::process::Command;

use dfdet::preprocess::video::{Sampling, decode_sampled, probe, sample_indices};

use crate::common::{asset, program};
use crate::support::{json, max_abs_diff, thumb};

#[test]
fn carphone_frame_count_and_sampled_indices_match_opencv() {
    let Some(video) = asset("carphone_pristine.mp4") else { return };
    let want = json("video_carphone.json");
    let info = probe(&video).unwrap();
    assert_eq!(info.frame_count as u64, want["frame_count"].as_u64().unwrap());
    assert_eq!([info.width, info.height], [176, 144]);
    assert_eq!(info.rotation, 0);
    assert_eq!(info.codec, "h264");

    let lin: Vec<usize> = serde_json::from_value(want["linspace32"].clone()).unwrap();
    let mut dedup = lin.clone();
    dedup.dedup();
    assert_eq!(sample_indices(info.frame_count, Sampling::Linspace(32)), dedup);
    let stride: Vec<usize> = serde_json::from_value(want["stride10"].clone()).unwrap();
    assert_eq!(sample_indices(info.frame_count, Sampling::Stride(10)), stride);

    let mut got = Vec::new();
    let (_, summary) = decode_sampled(&video, Sampling::Linspace(32), |i, img| got.push((i, img))).unwrap();
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), dedup);
    assert_eq!(summary.delivered, 32);
    assert!(summary.missing.is_empty() && summary.error.is_none(), "{summary:?}");

    // Pixels: OpenCV's FFmpeg backend and ours convert YUV to RGB identically. The fixture
    // holds 16x16 block means rounded to 3 decimals and each frame's exact per-channel mean.
    let frames = want["frames"].as_object().unwrap();
    for (idx, reference) in frames {
        let idx: usize = idx.parse().unwrap();
        let img = &got.iter().find(|(i, _)| *i == idx).unwrap().1;
        let t: Vec<f64> = serde_json::from_value(reference["thumb"].clone()).unwrap();
        let d = max_abs_diff(&thumb(img, 16), &t);
        let mean: Vec<f64> = serde_json::from_value(reference["mean"].clone()).unwrap();
        let dm = max_abs_diff(&thumb(img, 1), &mean);
        eprintln!("frame {idx}: block means within {d:.1e} of OpenCV's (rounded to 1e-3), frame mean within {dm:.1e}");
        assert!(d <= 5e-4 + 1e-9, "frame {idx}: block means differ by {d}");
        assert!(dm <= 1e-9, "frame {idx}: frame means differ by {dm}");
    }
}

/// A copy of carphone tagged as rotated by the ffmpeg CLI comes out as the CLI itself shows it
/// (turned a quarter counter-clockwise: FFmpeg 5.1 writes `rotate=90` as a +90 degree display
/// matrix), and as the unrotated frames turned by the same angle.
#[test]
fn rotation_metadata_is_applied() {
    let Some(video) = asset("carphone_pristine.mp4") else { return };
    let Some(ffmpeg) = program("ffmpeg") else { return };
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("rotated.mp4");
    let ok = Command::new(&ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(&video)
        .args(["-c", "copy", "-metadata:s:v:0", "rotate=90"])
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(ok.success());
    let info = probe(&rotated).unwrap();
    assert_eq!(info.rotation, 270);
    let mut plain = None;
    decode_sampled(&video, Sampling::Linspace(1), |_, img| plain = Some(img)).unwrap();
    let mut turned = None;
    decode_sampled(&rotated, Sampling::Linspace(1), |_, img| turned = Some(img)).unwrap();
    let (plain, turned) = (plain.unwrap(), turned.unwrap());
    assert_eq!(turned.dimensions(), (144, 176));
    assert_eq!(turned, image::imageops::rotate270(&plain));
    // The CLI's own first frame (autorotated), as raw RGB.
    let cli = Command::new(&ffmpeg)
        .args(["-v", "error", "-i"])
        .arg(&rotated)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert_eq!(cli.stdout.len(), 144 * 176 * 3);
    let worst = cli.stdout.iter().zip(turned.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 2, "differs from the ffmpeg CLI by {worst}");
}

#[test]
fn stride_sampling_and_not_a_video() {
    let Some(video) = asset("carphone_pristine.mp4") else { return };
    let mut idx = Vec::new();
    decode_sampled(&video, Sampling::Stride(50), |i, _| idx.push(i)).unwrap();
    assert_eq!(idx, [0, 50, 100]);

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video at all").unwrap();
    let err = decode_sampled(&text, Sampling::default(), |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("notes.mp4") && err.contains("cannot decode video"), "{err}");
}
