use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::FloatDType;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use dfdet::cli::{BenchArgs, Cli, Command, ConvertArgs, Dtype, Format, InfoArgs, MetricsArgs, ModelArgs, PredictArgs, TestArgs};
use dfdet::data::expand_inputs;
use dfdet::model::{load_checkpoint, Detector};
use dfdet::predict::{aggregate_videos, score_frames, FrameScore, VideoScore};

/// Exit codes: 0 all went well, 1 some inputs failed (the rest were still scored), 2 fatal.
const EXIT_PARTIAL: u8 = 1;
const EXIT_FATAL: u8 = 2;

fn main() -> ExitCode {
    dfdet::memory::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Predict(args) => predict(args),
        Command::Info(args) => info(args),
        Command::Convert(args) => convert(args),
        Command::Bench(args) => bench(args),
        Command::Test(args) => test(args),
        Command::Metrics(args) => metrics(args),
        Command::Preprocess(args) => preprocess(args),
        Command::Train(args) => train(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting the thread count")?;
    }
    Ok(())
}

fn float_dtype(d: Dtype) -> FloatDType {
    match d {
        Dtype::F32 => FloatDType::F32,
        Dtype::Bf16 => FloatDType::BF16,
    }
}

fn load_detector(args: &ModelArgs, device: &Device) -> Result<Detector> {
    let ckpt = load_checkpoint(&args.weights, args.backbone.as_deref())
        .with_context(|| format!("loading weights `{}`", args.weights))?;
    Detector::from_checkpoint(ckpt, device, float_dtype(args.dtype))
        .with_context(|| format!("building the model from `{}`", args.weights))
}

fn predict(args: PredictArgs) -> Result<ExitCode> {
    set_threads(args.model.threads)?;
    let device = Device::flex();
    let (videos, others): (Vec<_>, Vec<_>) =
        args.inputs.iter().cloned().partition(|p| p.is_file() && dfdet::preprocess::run::is_video(p));
    let inputs = expand_inputs(&others);
    let detector = load_detector(&args.model, &device)?;

    let bar = progress_bar(inputs.frames.len());
    let (mut frames, mut errors) = score_frames(&detector, &device, &inputs.frames, args.batch_size, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    errors.splice(0..0, inputs.errors);
    if !videos.is_empty() {
        let (f, e) = video_predictions(&args, &videos, &detector, &device)?;
        frames.extend(f);
        errors.extend(e);
    }
    for e in &errors {
        eprintln!("error: {}: {}", e.path, e.reason);
    }
    let videos = aggregate_videos(&frames);
    let out = render_predictions(&frames, &videos, &errors, args.format);
    std::io::stdout().write_all(out.as_bytes()).context("writing to stdout")?;
    if !errors.is_empty() {
        eprintln!("{} of {} inputs failed", errors.len(), frames.len() + errors.len());
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// Scores videos: frames sampled, faces found and aligned in memory, each crop scored as
/// `<video>/<frame:03>` (so that the video is the crops' "folder").
fn video_predictions(
    args: &PredictArgs,
    videos: &[std::path::PathBuf],
    detector: &Detector,
    device: &Device,
) -> Result<(Vec<FrameScore>, Vec<dfdet::data::InputError>)> {
    use dfdet::preprocess::run::crops_in_memory;
    let (faces, sampling, crop) = video_settings(&args.video)?;
    let (mut frames, mut errors) = (Vec::new(), Vec::new());
    for video in videos {
        let name = video.display().to_string();
        let (crops, skipped) = crops_in_memory(video, sampling, faces.as_ref(), &crop);
        for (frame, reason) in skipped {
            let path = frame.map(|f| format!("{name}/{f:03}")).unwrap_or_else(|| name.clone());
            errors.push(dfdet::data::InputError { path, reason });
        }
        let named: Vec<_> = crops.into_iter().map(|(i, c)| (format!("{name}/{i:03}"), c)).collect();
        if named.is_empty() {
            errors.push(dfdet::data::InputError { path: name, reason: "no face crop to score".into() });
        }
        frames.extend(dfdet::predict::score_images(detector, device, &named, args.batch_size));
    }
    Ok((frames, errors))
}

/// The detector, sampling and crop settings of `--detector/--frames/--stride/--template/...`.
fn video_settings(
    v: &dfdet::cli::VideoArgs,
) -> Result<(Box<dyn dfdet::preprocess::faces::FaceDetector>, dfdet::preprocess::video::Sampling, dfdet::preprocess::run::CropConfig)> {
    use dfdet::cli::{FaceBackend, FaceTemplate};
    use dfdet::preprocess::{align::TemplateKind, faces, run::CropConfig, video::Sampling};
    let backend = match v.detector {
        FaceBackend::Retinaface => faces::Backend::Retinaface,
        FaceBackend::Dlib => faces::Backend::Dlib,
    };
    let detector = faces::load_backend(backend, v.models.as_deref()).context("loading the face detector")?;
    let sampling = match v.stride {
        Some(k) if k > 0 => Sampling::Stride(k),
        Some(_) => anyhow::bail!("--stride must be at least 1"),
        None => Sampling::Linspace(v.frames),
    };
    let template = match v.template {
        FaceTemplate::Deepfakebench => TemplateKind::Deepfakebench,
        FaceTemplate::Gend => TemplateKind::Gend,
    };
    Ok((detector, sampling, CropConfig { template, size: 256, redetect: !v.no_redetect }))
}

fn preprocess(args: dfdet::cli::PreprocessArgs) -> Result<ExitCode> {
    use dfdet::preprocess::faces::Largest;
    use dfdet::preprocess::run::Job;
    set_threads(args.threads)?;
    let (detector, sampling, crop) = video_settings(&args.video)?;
    let mut videos = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            collect_videos(input, &mut found);
            found.sort();
            videos.extend(found);
        } else {
            videos.push(input.clone()); // not-a-video files are reported per video, not fatal
        }
    }
    if videos.is_empty() {
        anyhow::bail!("no video files in {:?}", args.inputs);
    }
    let job = Job {
        out: args.out.clone(),
        dataset: args.dataset.clone(),
        source: args.source.clone(),
        sampling,
        crop,
        detector: detector.as_ref(),
        chooser: &Largest,
    };
    let bar = if videos.len() > 1 && std::io::stderr().is_terminal() {
        ProgressBar::new(videos.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} videos  {per_sec}  eta {eta}  {msg}").expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let summary = job.run(&videos, |rec| {
        bar.set_message(rec.name.clone());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{} videos ({} already done): {} crops written, {} frames skipped, {} videos without crops",
        summary.videos, summary.resumed, summary.crops, summary.skipped_frames, summary.failed_videos
    );
    for l in &summary.lists {
        eprintln!("list   {}", l.display());
    }
    eprintln!("report {}", summary.report.display());
    // Frames without a face are normal; a video that gave no crop at all is a partial failure.
    Ok(if summary.failed_videos > 0 { ExitCode::from(EXIT_PARTIAL) } else { ExitCode::SUCCESS })
}

fn collect_videos(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_videos(&p, out);
        } else if dfdet::preprocess::run::is_video(&p) {
            out.push(p);
        }
    }
}

fn render_predictions(
    frames: &[FrameScore],
    videos: &[VideoScore],
    errors: &[dfdet::data::InputError],
    format: Format,
) -> String {
    match format {
        Format::Json => {
            let errors: Vec<_> =
                errors.iter().map(|e| serde_json::json!({"path": e.path, "reason": e.reason})).collect();
            let doc = serde_json::json!({ "frames": frames, "videos": videos, "errors": errors });
            format!("{}\n", serde_json::to_string_pretty(&doc).expect("serialisable"))
        }
        Format::Csv => {
            let video_score: std::collections::HashMap<&str, f32> =
                videos.iter().map(|v| (v.video.as_str(), v.p_fake)).collect();
            let mut s = String::from("path,video,p_fake,video_p_fake\n");
            for f in frames {
                let v = dfdet::data::video_of(&f.path);
                s += &format!("{},{},{:.6},{:.6}\n", csv_field(&f.path), csv_field(v), f.p_fake, video_score[v]);
            }
            s
        }
        Format::Table => {
            let width = frames.iter().map(|f| f.path.len()).max().unwrap_or(4).max(5);
            let mut s = format!("{:<width$}  p_fake\n", "frame");
            for f in frames {
                s += &format!("{:<width$}  {:.4}\n", f.path, f.p_fake);
            }
            let width = videos.iter().map(|v| v.video.len()).max().unwrap_or(5).max(5);
            s += &format!("\n{:<width$}  frames  p_fake\n", "video");
            for v in videos {
                s += &format!("{:<width$}  {:>6}  {:.4}\n", v.video, v.frames, v.p_fake);
            }
            s
        }
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn info(args: InfoArgs) -> Result<ExitCode> {
    let ckpt = load_checkpoint(&args.weights, args.backbone.as_deref())
        .with_context(|| format!("loading weights `{}`", args.weights))?;
    let path = ckpt.path.display().to_string();
    let device = Device::flex();
    let detector = Detector::from_checkpoint(ckpt, &device, FloatDType::F32)
        .with_context(|| format!("building the model from `{}`", args.weights))?;
    let (total, trainable) = (detector.num_params(), detector.num_trainable());
    let spec = &detector.spec;
    let enc = &detector.backbone.encoder;
    println!("weights      {path}");
    println!("backbone     {}", detector.backbone.name);
    println!(
        "encoder      hidden {}, {} layers, {} heads, MLP {}, patch {}, image {}",
        enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads, enc.intermediate_size, enc.patch_size, enc.image_size
    );
    println!("head         {:?}, {} classes", spec.head, spec.num_classes);
    println!("tuning       {:?}", spec.tuning);
    println!("parameters   {total}");
    println!("trainable    {trainable} ({:.4}%)", 100.0 * trainable as f64 / total as f64);
    println!("precision    {}", spec.precision.as_deref().unwrap_or("unknown"));
    if let Some(name) = &spec.run_name {
        println!("run          {name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn convert(args: ConvertArgs) -> Result<ExitCode> {
    let ckpt = load_checkpoint(&args.weights, args.backbone.as_deref())
        .with_context(|| format!("loading weights `{}`", args.weights))?;
    dfdet::model::checkpoint::save_dfdet(&args.out, &ckpt.spec, &ckpt.backbone, ckpt.tensors.tensors())
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    set_threads(args.threads)?;
    if args.train {
        let batch = args.batch.first().copied().unwrap_or(4);
        let row = dfdet::train::bench::run(&args.backbone, batch, args.iters)?;
        let out = match args.format {
            Format::Json => format!("{}\n", serde_json::to_string(&row)?),
            _ => format!(
                "LN-tuning step  {}  batch {}  threads {}: {:.3} s/step, {:.3} s/img, peak RSS {:.0} MiB\n",
                row.backbone, row.batch, row.threads, row.s_per_step, row.s_per_img, row.peak_rss_mib
            ),
        };
        std::io::stdout().write_all(out.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let report = dfdet::bench::run(&args.backbone, &args.batch, &args.dtype.iter().map(|d| float_dtype(*d)).collect::<Vec<_>>(), args.iters)?;
    let out = match args.format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&report)?),
        _ => dfdet::bench::render_table(&report),
    };
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr only when there is more than a screenful of work and someone to see it.
fn progress_bar(total: usize) -> ProgressBar {
    if total > 24 && std::io::stderr().is_terminal() {
        ProgressBar::new(total as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} frames  {per_sec}  eta {eta}").expect("valid template"),
        )
    } else {
        ProgressBar::hidden()
    }
}

fn test(args: TestArgs) -> Result<ExitCode> {
    use dfdet::data::sets::{SetSpec, Split};
    use dfdet::evaluate::{new_run_dir, run_test, TestConfig};

    set_threads(args.threads)?;
    let mut config = match &args.config {
        Some(path) => TestConfig::from_file(path)?,
        None => TestConfig {
            weights: dfdet::cli::DEFAULT_WEIGHTS.into(),
            backbone: None,
            sets: Default::default(),
            limit_files: None,
            batch_size: 8,
            dtype: "f32".into(),
        },
    };
    if let Some(w) = args.weights {
        config.weights = w;
    }
    if args.backbone.is_some() {
        config.backbone = args.backbone;
    }
    for s in &args.sets {
        let spec = SetSpec::parse(s)?;
        config.sets.insert(spec.name, spec.lists);
    }
    if args.limit_files.is_some() {
        config.limit_files = args.limit_files;
    }
    if let Some(b) = args.batch_size {
        config.batch_size = b;
    }
    if let Some(d) = args.dtype {
        config.dtype = match d {
            Dtype::F32 => "f32".into(),
            Dtype::Bf16 => "bf16".into(),
        };
    }
    let dtype = match config.dtype.as_str() {
        "f32" => Dtype::F32,
        "bf16" => Dtype::Bf16,
        other => anyhow::bail!("dtype `{other}` is not one of f32, bf16"),
    };
    if config.sets.is_empty() {
        anyhow::bail!("no test sets: give --set NAME=LIST[,LIST...] or a config file with [sets]");
    }

    let split = Split::load(&config.set_specs(), config.limit_files)?;
    eprint!("{}", split.statistics());
    if split.files.is_empty() {
        anyhow::bail!("the test sets name no existing frame");
    }
    let device = Device::flex();
    let model = ModelArgs { weights: config.weights.clone(), backbone: config.backbone.clone(), dtype, threads: None };
    let detector = load_detector(&model, &device)?;
    let out = match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => new_run_dir(std::path::Path::new("runs/test"))?,
    };
    config.write(&out)?;

    let bar = progress_bar(split.files.len());
    let outcome = run_test(&detector, &device, &split, config.batch_size, &out, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    for e in &outcome.errors {
        eprintln!("error: {}: {}", e.path, e.reason);
    }
    print!("{}", dfdet::eval::report::summary_table(&outcome.report));
    eprintln!("wrote {}", out.display());
    Ok(if outcome.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}

fn metrics(args: MetricsArgs) -> Result<ExitCode> {
    use dfdet::eval::report::{evaluate_sets, write_report, Predictions};

    let preds = Predictions::read_csv(&args.predictions)?;
    let plots = args.out.as_ref().map(|d| d.join("plots"));
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let report = evaluate_sets(&preds, &Default::default(), plots.as_deref(), "test")?;
    if let Some(dir) = &args.out {
        write_report(&dir.join("metrics.json"), &report)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Exit code of a run stopped by Ctrl-C (128 + SIGINT), after `last` was saved.
const EXIT_INTERRUPTED: u8 = 130;

fn train(args: dfdet::cli::TrainArgs) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    set_threads(args.threads)?;
    let config = match &args.resume {
        Some(_) => None,
        None => {
            let mut sets = args.sets.clone();
            if args.cache_features {
                sets.push("cache_features=true".into());
            }
            Some(dfdet::train::TrainConfig::load(args.config.as_deref(), &sets)?)
        }
    };
    if let (true, Some(config)) = (args.print_config, &config) {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    // The first Ctrl-C stops after the current step with `last` saved; a second one quits.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED.into());
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    let mut bars = dfdet::train::progress::Bars::default();
    let outcome = match (&args.resume, &config) {
        (Some(dir), _) => dfdet::train::resume(dir, &mut bars, &stop),
        (None, Some(config)) => dfdet::train::train(config, &mut bars, &stop),
        (None, None) => unreachable!("a config is loaded unless resuming"),
    };
    bars.finish();
    let outcome = outcome?;
    if outcome.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let Some(test) = &outcome.test {
        print!("{}", dfdet::eval::report::summary_table(&test.report));
    }
    eprintln!("wrote {}", outcome.run_dir.display());
    Ok(ExitCode::SUCCESS)
}
