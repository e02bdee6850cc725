//! The real `dfdet` binary on real face crops, checked for what a user sees.

use std::collections::BTreeMap;

use crate::common::{dfdet, fixtures, read_json, samples};

const CKPT: &str = "ckpt-ln-linearnorm.ckpt";

/// Reference p(fake) per sample crop (path relative to the samples root).
fn expected(ckpt: &str) -> BTreeMap<String, f64> {
    let all = read_json("expected_probs.json");
    let cases: BTreeMap<String, Vec<f64>> = serde_json::from_value(all[ckpt].clone()).unwrap();
    cases.into_iter().map(|(k, v)| (k, v[1])).collect()
}

fn relative_to_samples(path: &str) -> String {
    let root = samples().display().to_string();
    path.strip_prefix(&root).unwrap_or(path).trim_start_matches('/').to_string()
}

fn predict_json(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = dfdet().arg("predict").args(args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (json, out)
}

#[test]
fn json_scores_every_crop_like_the_reference() {
    let weights = fixtures().join(CKPT);
    let datasets = samples().join("datasets");
    let (json, out) =
        predict_json(&["--weights", weights.to_str().unwrap(), "--format", "json", datasets.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let frames = json["frames"].as_array().unwrap();
    let videos = json["videos"].as_array().unwrap();
    assert_eq!(frames.len(), 32);
    assert_eq!(videos.len(), 8);
    assert!(videos.iter().all(|v| v["frames"] == 4));
    let want = expected(CKPT);
    for f in frames {
        let path = relative_to_samples(f["path"].as_str().unwrap());
        let got = f["p_fake"].as_f64().unwrap();
        assert!((got - want[&path]).abs() <= 1e-4, "{path}: {got} vs {}", want[&path]);
    }
    // A video's score is the mean of its frames'.
    let v = &videos[0];
    let name = v["video"].as_str().unwrap();
    let mean: f64 = frames
        .iter()
        .filter(|f| dfdet::data::video_of(f["path"].as_str().unwrap()) == name)
        .map(|f| f["p_fake"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    assert!((v["p_fake"].as_f64().unwrap() - mean).abs() < 1e-6);
}

#[test]
fn csv_and_table_formats() {
    let weights = fixtures().join(CKPT);
    let video = samples().join("datasets/FF/DF/000_003");
    let out = dfdet()
        .args(["predict", "-w", weights.to_str().unwrap(), "-f", "csv", video.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,video,p_fake,video_p_fake"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    let want = expected(CKPT);
    for r in &rows {
        assert_eq!(r.len(), 4);
        let p: f64 = r[2].parse().unwrap();
        assert!((p - want[&relative_to_samples(r[0])]).abs() < 1e-4);
        assert_eq!(r[1], video.to_str().unwrap());
    }

    let out = dfdet().args(["predict", "-w", weights.to_str().unwrap(), video.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("frame"), "{table}");
    assert!(table.contains("video") && table.contains("frames  p_fake"), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains("025.png")).count(), 1);
}

/// One corrupt image among good ones: reported with its path, the rest still scored, exit 1.
#[test]
fn corrupt_file_among_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("FF/DF/000_003");
    std::fs::create_dir_all(&video).unwrap();
    for f in ["000.png", "012.png", "025.png"] {
        std::fs::copy(samples().join("datasets/FF/DF/000_003").join(f), video.join(f)).unwrap();
    }
    std::fs::write(video.join("999.png"), b"this is not a png").unwrap();
    let weights = fixtures().join(CKPT);
    let (json, out) = predict_json(&["-w", weights.to_str().unwrap(), "-f", "json", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("999.png"), "{stderr}");
    assert_eq!(json["frames"].as_array().unwrap().len(), 3);
    assert_eq!(json["errors"][0]["path"].as_str().unwrap(), video.join("999.png").to_str().unwrap());
}

/// `--dtype bf16` (or `DFDET_DTYPE=bf16`) scores in bf16 and says so in `about`; `--dtype` beats
/// the environment; a bad value in the environment is refused naming it; on a CPU without native
/// bfloat16 products bf16 says it is slower there, and `auto` is f32.
#[test]
fn dtype_from_the_option_or_the_environment() {
    let weights = fixtures().join(CKPT);
    let crops = samples().join("datasets/CDFv2/Celeb-real/id0_0000");
    let run = |env: Option<&str>, args: &[&str]| {
        let mut c = dfdet();
        c.args(["predict", "-w", weights.to_str().unwrap(), "-f", "json"]).args(args).arg(&crops);
        if let Some(v) = env {
            c.env("DFDET_DTYPE", v);
        }
        c.output().unwrap()
    };
    let p_fake = |json: &serde_json::Value| -> Vec<f64> {
        json["frames"].as_array().unwrap().iter().map(|f| f["p_fake"].as_f64().unwrap()).collect()
    };
    let f32_run = run(None, &[]);
    assert!(f32_run.status.success(), "{}", String::from_utf8_lossy(&f32_run.stderr));
    let f32_json: serde_json::Value = serde_json::from_slice(&f32_run.stdout).unwrap();
    assert_eq!(f32_json["about"]["dtype"], "f32");
    for (env, args) in [(Some("bf16"), &[][..]), (Some("f32"), &["--dtype", "bf16"][..])] {
        let out = run(env, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["about"]["dtype"], "bf16", "{env:?} {args:?}");
        let (bf16, f32) = (p_fake(&json), p_fake(&f32_json));
        assert_eq!(bf16.len(), 4);
        let moved = bf16.iter().zip(&f32).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(moved > 0.0 && moved < 5e-3, "bf16 against f32: {moved}");
        assert_eq!(stderr.contains("slower than f32"), !dfdet::model::dtype::native_bf16_products(), "{stderr}");
    }
    let out = run(Some("fp16"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fp16") && stderr.contains("--dtype"), "{stderr}");
    if !dfdet::model::dtype::native_bf16_products() {
        let auto: serde_json::Value = serde_json::from_slice(&run(Some("auto"), &[]).stdout).unwrap();
        assert_eq!(auto["about"]["dtype"], "f32");
    }
}

/// List files: relative paths resolve against the list's folder; a missing line names the list and line.
#[test]
fn list_file_with_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("data/CDFv2/Celeb-real/id0_0000");
    std::fs::create_dir_all(&video).unwrap();
    for f in ["000.png", "015.png"] {
        std::fs::copy(samples().join("datasets/CDFv2/Celeb-real/id0_0000").join(f), video.join(f)).unwrap();
    }
    let list = dir.path().join("data/list.txt");
    std::fs::write(&list, "CDFv2/Celeb-real/id0_0000/000.png\nCDFv2/Celeb-real/id0_0000/015.png\nCDFv2/missing.png\n")
        .unwrap();
    let weights = fixtures().join(CKPT);
    let elsewhere = tempfile::tempdir().unwrap();
    let out = dfdet()
        .current_dir(elsewhere.path())
        .args(["predict", "-w", weights.to_str().unwrap(), "-f", "json", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["frames"].as_array().unwrap().len(), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("list.txt line 3"), "{stderr}");
}

#[test]
fn bad_weights_are_a_clear_error() {
    let png = samples().join("datasets/FF/DF/000_003/025.png");
    let out = dfdet().args(["predict", "-w", png.to_str().unwrap(), png.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("025.png") && stderr.contains("not a PyTorch checkpoint"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = dfdet()
        .args([
            "predict",
            "-w",
            fixtures().join(CKPT).to_str().unwrap(),
            "--backbone",
            "openai/clip-vit-huge",
            png.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("openai/clip-vit-large-patch14"), "{stderr}");
}

#[test]
fn info_describes_the_checkpoint() {
    let out = dfdet().args(["info", fixtures().join(CKPT).to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // tiny-clip-p14: hidden 32, 2 layers -> 6 LayerNorms x 64 + head 32x2+2 = 450 trainable.
    assert!(text.contains("LinearNorm"), "{text}");
    assert!(text.contains("LnTuning"), "{text}");
    assert!(text.contains("trainable    450 "), "{text}");
}

/// `convert` writes dfdet's folder format, which then predicts the same numbers.
#[test]
fn convert_then_predict() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("model");
    let out = dfdet()
        .args(["convert", fixtures().join("gend-tiny").to_str().unwrap(), out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out_dir.join("model.safetensors").is_file() && out_dir.join("dfdet.json").is_file());
    let crop = samples().join("datasets/FF/NT/000_003/019.png");
    let (json, out) = predict_json(&["-w", out_dir.to_str().unwrap(), "-f", "json", crop.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = json["frames"][0]["p_fake"].as_f64().unwrap();
    let want = expected("gend-tiny")["datasets/FF/NT/000_003/019.png"];
    assert!((got - want).abs() <= 1e-4, "{got} vs {want}");
}

/// `convert` never overwrites its own source, nor an existing folder without `--force`.
#[test]
fn convert_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let gend = crate::common::gend_copy(dir.path());
    let before = std::fs::read(gend.join("model.safetensors")).unwrap();
    let g = gend.to_str().unwrap();
    let out = dfdet().args(["convert", g, g, "--force"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("would overwrite the checkpoint being converted"), "{err}");
    assert_eq!(std::fs::read(gend.join("model.safetensors")).unwrap(), before);

    let target = dir.path().join("taken");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("notes.txt"), "mine").unwrap();
    let t = target.to_str().unwrap();
    let out = dfdet().args(["convert", g, t]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already exists and is not empty: give --force"), "{err}");
    assert!(!target.join("model.safetensors").exists());
    let out = dfdet().args(["convert", g, t, "--force"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(target.join("model.safetensors").is_file() && target.join("notes.txt").is_file());
}

/// `bench -f csv` writes CSV (the CPU beside every row), `--batch 1 2` takes both values, and
/// the run says what it is doing on stderr.
#[test]
fn bench_csv_rows_name_the_cpu() {
    let tiny = fixtures().join("tiny-clip-p14");
    let out = dfdet()
        .args(["bench", "--backbone", tiny.to_str().unwrap(), "--batch", "1", "2", "--dtype", "f32", "--iters", "1"])
        .args(["-f", "csv"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "cpu,isa,backbone,dtype,kernels,bf16_products,batch,threads,s_per_img,img_per_s,gflops,of_peak,peak_rss_mib"
    );
    assert_eq!(lines.len(), 3, "{stdout}");
    let cpu = dfdet::cpu::CpuInfo::detect();
    assert!(lines[1].starts_with(&format!("\"{}\",{},", cpu.model, cpu.isa.join(" "))), "{stdout}");
    let rows: Vec<csv::StringRecord> =
        csv::Reader::from_reader(stdout.as_bytes()).records().collect::<Result<_, _>>().unwrap();
    for (row, batch) in rows.iter().zip(["1", "2"]) {
        assert_eq!(&row[3], "f32", "{stdout}");
        // The library chosen by what this machine has (oneDNN on AVX-512, else OpenBLAS).
        assert_eq!(&row[4], dfdet::model::fused::products::default_kernels().name(), "{stdout}");
        assert_eq!(row[5], dfdet::model::fused::onednn::bf16_products(), "{stdout}");
        assert_eq!(&row[6], batch, "{stdout}");
        // A CLIP encoder's products are counted, and put against the measured peak.
        let (gflops, of_peak): (f64, f64) = (row[10].parse().unwrap(), row[11].parse().unwrap());
        assert!(gflops > 0.0 && of_peak > 0.0 && of_peak < 1.5, "{stdout}");
        let s_per_img: f64 = row[8].parse().unwrap();
        let gflop = 2.0 * tiny_forward_macs() / 1e9;
        // The CSV's rounding (two decimals of GFLOP/s) is the only slack.
        assert!((gflops * s_per_img / gflop - 1.0).abs() < 1e-2, "{stdout}");
    }
    assert!(stderr.contains("f32, batch 2: 1 warm-up + 1 timed forward passes"), "{stderr}");
}

/// Multiply-adds of one 224-pixel image through the tiny p14 CLIP (`tests/fixtures/tiny-clip-p14`:
/// 2 layers, width 32, MLP 64, 16 x 16 patches of 3 x 14 x 14, read from its config), counted by
/// hand: the patch embedding, a full first layer, and a last layer whose class token alone is
/// queried.
fn tiny_forward_macs() -> f64 {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-clip-p14/config.json")).unwrap()).unwrap();
    let v = &cfg["vision_config"];
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("vision_config.{k}"));
    let (d, f, layers) = (num("hidden_size"), num("intermediate_size"), num("num_hidden_layers"));
    let n = (num("image_size") / num("patch_size")).powi(2);
    let t = n + 1.0;
    let patch = n * 3.0 * num("patch_size").powi(2) * d;
    let full = t * (4.0 * d * d + 2.0 * d * f) + 2.0 * t * t * d;
    let last = 2.0 * t * d * d + 2.0 * d * d + 2.0 * d * f + 2.0 * t * d;
    patch + (layers - 1.0) * full + last
}

/// `bench --products` measures every product with every library present, against the CPU's
/// measured peak; `info --system` names the libraries and the one in use (`DFDET_KERNELS`).
#[test]
fn products_benchmark_and_system_info_name_the_kernels() {
    let tiny = fixtures().join("tiny-clip-p14");
    let out = dfdet()
        .args(["bench", "--products", "--backbone", tiny.to_str().unwrap()])
        .args(["--batch", "2", "--iters", "1", "-f", "csv"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "cpu,isa,kernels,op,m,n,k,transposed,threads,gflops,of_peak");
    let libraries = dfdet::model::fused::products::Kernels::available();
    // Seven products of a layer, each with every library, and oneDNN's bfloat16 product where
    // the CPU has it (against the bfloat16 peak).
    let native = usize::from(dfdet::model::dtype::native_bf16_products());
    assert_eq!(lines.len(), 1 + 7 * (libraries.len() + native), "{stdout}");
    assert_eq!(stdout.matches(",onednn-bf16,").count(), 7 * native, "{stdout}");
    for row in &lines[1..] {
        let f: Vec<&str> = row.rsplitn(3, ',').collect();
        let (gflops, of_peak): (f64, f64) = (f[1].parse().unwrap(), f[0].parse().unwrap());
        assert!(gflops > 0.0 && of_peak > 0.0 && of_peak < 1.5, "{row}");
    }
    for k in &libraries {
        assert!(stdout.contains(&format!(",{},", k.name())), "{stdout}");
    }
    for (env, used) in [("gemm", "in use       gemm"), ("openblas", "in use       "), ("onednn", "in use       ")] {
        let out = dfdet().env("DFDET_KERNELS", env).args(["info", "--system"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(used) && text.contains("kernels      gemm"), "{text}");
        // The attention's bfloat16 products: the CPU's dot products exactly where it has them.
        let dot = std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f");
        assert_eq!(text.contains("bf16 attn    bfloat16 dot products"), dot, "{text}");
    }
}

/// A `DFDET_KERNELS` that names no library is said on stderr, with the choices, and the
/// default library runs instead of the variable being ignored in silence.
#[test]
fn an_unknown_kernels_library_is_named_and_the_default_used() {
    let out = dfdet().env("DFDET_KERNELS", "blas").args(["info", "--system"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("DFDET_KERNELS: unknown kernels `blas`: one of gemm, openblas, onednn"), "{stderr}");
    let default = dfdet::model::fused::products::default_kernels().name();
    assert!(stdout.contains(&format!("in use       {default} (DFDET_KERNELS: unknown kernels `blas`")), "{stdout}");
}

/// oneDNN's OpenMP threads and OpenBLAS's threads sleep soon after each product unless the
/// environment chooses: dfdet runs itself again with `OMP_WAIT_POLICY=PASSIVE` and
/// `OPENBLAS_THREAD_TIMEOUT=4` where they are unset (OpenMP reads its variable only when it is
/// loaded, at start), and leaves what the environment sets alone, each on its own.
#[test]
fn library_threads_wait_quietly_unless_the_environment_chooses() {
    let cases = [
        (None, None, ["openmp wait  PASSIVE", "blas wait    4 ("]),
        (Some("ACTIVE"), None, ["openmp wait  ACTIVE", "blas wait    4 ("]),
        (None, Some("20"), ["openmp wait  PASSIVE", "blas wait    20 ("]),
        (Some("ACTIVE"), Some("20"), ["openmp wait  ACTIVE", "blas wait    20 ("]),
    ];
    for (policy, timeout, want) in cases {
        let mut cmd = dfdet();
        for (name, value) in [("OMP_WAIT_POLICY", policy), ("OPENBLAS_THREAD_TIMEOUT", timeout)] {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let out = cmd.args(["info", "--system"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{policy:?} {timeout:?}: {text}");
        for line in want {
            assert!(text.contains(line), "{policy:?} {timeout:?}: no {line:?} in {text}");
        }
    }
}

/// Every command's help ends with the exit codes.
#[test]
fn help_states_the_exit_codes() {
    for command in ["predict", "test", "train", "study", "preprocess", "bench", "metrics", "info", "convert"] {
        let out = dfdet().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Exit codes: 0 everything was done; 1 some inputs"), "{command}: {text}");
        assert!(text.contains("2 nothing could run") && text.contains("130 stopped by Ctrl-C"), "{command}");
    }
}
