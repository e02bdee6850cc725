//! One function per command: options -> library settings -> library call -> stdout/stderr.
//! Each returns how the run ended ([`Ended`]); `main` turns that into the exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::prelude::*;

use super::args::{
    BenchArgs, ConvertArgs, FacesArgs, InfoArgs, MetricsArgs, ModelArgs, PredictArgs, PreprocessArgs, ServeArgs,
    StudyArgs, TestArgs, TrainArgs, VideoArgs,
};
use super::progress::Bars;
use dfdet::commands::predict::annotate::{ANNOTATION_FAILED, Annotate, Target};
use dfdet::commands::predict::{Format, PredictSettings};
use dfdet::commands::test::{TestConfig, TestOverrides};
use dfdet::commands::{self, FaceSettings};
use dfdet::data::sets::SetSpec;
use dfdet::model::{Checkpoint, Detector, Dtype, load_checkpoint};
use dfdet::preprocess::run::CropConfig;
use dfdet::preprocess::video::Sampling;

/// How a command ended, for the exit code.
pub enum Ended {
    /// Everything was done.
    Done,
    /// Some inputs could not be processed (each was named); the rest were.
    Partial,
    /// Stopped by Ctrl-C after saving what resuming needs.
    Interrupted,
}

/// More threads than this is a typo, not a machine.
const MAX_THREADS: usize = 1024;

fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if !(1..=MAX_THREADS).contains(&n) {
            anyhow::bail!("--threads {n} is outside 1..={MAX_THREADS}");
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting the thread count")?;
    }
    Ok(())
}

fn checkpoint(weights: &str, backbone: Option<&str>) -> Result<Checkpoint> {
    load_checkpoint(weights, backbone).with_context(|| format!("loading weights `{weights}`"))
}

fn detector(weights: &str, backbone: Option<&str>, dtype: Dtype, device: &Device) -> Result<Detector> {
    let detector = Detector::from_checkpoint(checkpoint(weights, backbone)?, device, dtype)
        .with_context(|| format!("building the model from `{weights}`"))?;
    if let Some(note) = detector.slower_here() {
        eprintln!("note: {note}");
    }
    Ok(detector)
}

/// Writes to stdout. A reader that went away (`dfdet ... | head -1`) is not an error: what it
/// read is all it wanted.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// The face settings of `--detector/--models/--frames/--stride/--template/--no-redetect`.
fn face_settings(v: &VideoArgs) -> Result<FaceSettings> {
    let sampling = match v.stride {
        Some(k) if k > 0 => Sampling::Stride(k),
        Some(_) => anyhow::bail!("--stride must be at least 1"),
        None if v.frames == 0 => anyhow::bail!("--frames must be at least 1 (frames sampled per video)"),
        None => Sampling::Linspace(v.frames),
    };
    let crop = CropConfig { template: v.template, size: 256, redetect: !v.no_redetect };
    Ok(FaceSettings { backend: v.detector, models: v.models.clone(), sampling, crop })
}

pub fn predict(args: PredictArgs) -> Result<Ended> {
    set_threads(args.model.threads)?;
    let ModelArgs { weights, backbone, dtype, .. } = &args.model;
    let mut settings = predict_settings(args.batch_size, &args.video, &args.faces)?;
    let device = Device::flex();
    let detector = detector(weights, backbone.as_deref(), *dtype, &device)?;
    settings.annotate = match &args.annotate {
        None => None,
        Some(out) => {
            Some(Annotate { out: annotate_target(&args.inputs, out)?, all_frames: args.annotate_all, crops: None })
        }
    };
    let mut bars = Bars::new(25);
    let result = commands::predict::predict(&detector, &device, &args.inputs, &settings, &mut bars);
    bars.finish();
    let mut predictions = result?;
    predictions.about = commands::predict::About::new(weights, &detector, &settings);
    for e in &predictions.errors {
        eprintln!("error: {}: {}", e.path, e.reason);
    }
    // Many images of one odd size would bury everything else: the first few, then a count.
    const SHOWN: usize = 10;
    for w in predictions.warnings.iter().take(SHOWN) {
        eprintln!("warning: {}: {}", w.path, w.reason);
    }
    if predictions.warnings.len() > SHOWN {
        eprintln!("warning: {} more (all of them in --format json)", predictions.warnings.len() - SHOWN);
    }
    for m in &predictions.media {
        let frames = if m.frames == 1 { "1 frame".to_string() } else { format!("{} frames", m.frames) };
        eprintln!("annotated: {} -> {} ({}, {frames})", m.input, m.path, m.codec);
    }
    write_stdout(&predictions.render(args.format))?;
    if predictions.errors.is_empty() {
        return Ok(Ended::Done);
    }
    let copies = predictions.errors.iter().filter(|e| e.reason.starts_with(ANNOTATION_FAILED)).count();
    let (failed, scored) = (predictions.errors.len() - copies, predictions.frames.len());
    if failed > 0 {
        eprintln!(
            "{failed} {} could not be scored (named above); {scored} {} scored",
            if failed == 1 { "input or frame" } else { "inputs or frames" },
            if scored == 1 { "frame was" } else { "frames were" },
        );
    }
    if copies > 0 {
        eprintln!(
            "{copies} annotated {} could not be written (named above); the scores above are complete for those inputs",
            if copies == 1 { "copy" } else { "copies" },
        );
    }
    Ok(Ended::Partial)
}

/// How `predict` and `serve` score: batch size, faces in videos and photos.
fn predict_settings(batch_size: usize, video: &VideoArgs, faces: &FacesArgs) -> Result<PredictSettings> {
    if !(1..=64).contains(&faces.max_faces) {
        anyhow::bail!("--max-faces {}: 1 to 64", faces.max_faces);
    }
    let mut settings = PredictSettings::new(batch_size, face_settings(video)?);
    settings.max_faces = faces.max_faces;
    settings.detect_stills = faces.detect_faces;
    Ok(settings)
}

/// `--annotate PATH`: the output file for one image or video input (its extension checked
/// against the input's kind), else a folder (created).
fn annotate_target(inputs: &[PathBuf], out: &Path) -> Result<Target> {
    let single = match inputs {
        // One input that is not a folder or a list (a missing one is reported by predict).
        [one] if !one.is_dir() && one.extension().is_none_or(|e| e != "txt") => Some(one),
        _ => None,
    };
    let Some(input) = single else {
        if out.is_file() {
            anyhow::bail!("--annotate {}: with several inputs this is a folder, and a file is there", out.display());
        }
        std::fs::create_dir_all(out).with_context(|| format!("--annotate {}: creating the folder", out.display()))?;
        return Ok(Target::Folder(out.to_path_buf()));
    };
    let video = dfdet::data::is_video(input);
    let ext = out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    let fits = if video { dfdet::data::is_video(out) } else { image::ImageFormat::from_extension(&ext).is_some() };
    if !fits || out.is_dir() {
        anyhow::bail!(
            "--annotate {}: {} is {}, so the annotated copy needs {}",
            out.display(),
            input.display(),
            if video { "a video" } else { "an image" },
            if video { "a video file name (.mp4, .mkv, .avi, ...)" } else { "an image file name (.png, .jpg, ...)" }
        );
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("--annotate: creating {}", parent.display()))?;
    }
    Ok(Target::File(out.to_path_buf()))
}

pub fn info(args: InfoArgs) -> Result<Ended> {
    set_threads(args.threads)?;
    if args.system {
        write_stdout(&commands::info::describe_system())?;
        return Ok(Ended::Done);
    }
    let ckpt = checkpoint(&args.weights, args.backbone.as_deref())?;
    let path = ckpt.path.clone();
    let detector = Detector::from_checkpoint(ckpt, &Device::flex(), Dtype::F32)
        .with_context(|| format!("building the model from `{}`", args.weights))?;
    write_stdout(&commands::info::describe(&detector, &path))?;
    Ok(Ended::Done)
}

pub fn convert(args: ConvertArgs) -> Result<Ended> {
    let ckpt = checkpoint(&args.weights, args.backbone.as_deref())?;
    commands::info::convert(&ckpt, &args.out, args.force).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(Ended::Done)
}

pub fn bench(args: BenchArgs) -> Result<Ended> {
    set_threads(args.threads)?;
    let mut bars = Bars::new(usize::MAX);
    for &k in &args.kernels {
        if !dfdet::model::fused::products::Kernels::available().contains(&k) {
            return Err(anyhow::anyhow!("--kernels {}: the library cannot be loaded on this machine", k.name()));
        }
    }
    if let Some(&k) = args.kernels.first() {
        dfdet::model::fused::products::set_kernels(k);
    }
    let out = if let Some(file) = &args.serve {
        dfdet::serve::load::check_file(file)?;
        let device = Device::flex();
        let detector = match &args.weights {
            Some(w) => detector(w, None, Dtype::F32, &device)?,
            None => {
                let backbone = dfdet::model::config::Backbone::resolve(&args.backbone)?;
                Detector::from_checkpoint(commands::bench::random_checkpoint(&backbone, 0), &device, Dtype::F32)?
            }
        };
        let batch_size = args.batch.first().copied().unwrap_or(8);
        let server = dfdet::serve::Server {
            detector,
            weights: args.weights.clone().unwrap_or_else(|| format!("random {}", args.backbone)),
            settings: PredictSettings::new(batch_size, face_settings(&args.video)?),
            limits: dfdet::serve::Limits {
                max_upload: 1 << 30,
                workers: 1,
                queue: args.concurrency,
                timeout: std::time::Duration::from_secs(3600),
                media_ttl: std::time::Duration::from_secs(600),
                media_jobs: 64,
            },
            token: None,
        };
        let load = dfdet::serve::load::Load {
            file: file.clone(),
            requests: args.requests,
            concurrency: args.concurrency,
            query: args.query.clone(),
            baseline_runs: args.iters.max(3),
        };
        let row = dfdet::serve::load::run(server, &load)?;
        match args.format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&row)?),
            Format::Csv => row.render_csv(),
            Format::Table => row.render(),
        }
    } else if args.products {
        let batch = args.batch.first().copied().unwrap_or(1);
        let rows = commands::bench::products::products(&args.backbone, batch, args.iters, &mut bars)?;
        match args.format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&rows)?),
            Format::Csv => commands::bench::products::render_csv(&rows),
            Format::Table => commands::bench::products::render_table(&rows),
        }
    } else if args.train {
        let batch = args.batch.first().copied().unwrap_or(4);
        let row =
            commands::bench::train_step(&args.backbone, batch, args.iters, args.precision == "bf16-mixed", &mut bars)?;
        match args.format {
            Format::Json => format!("{}\n", serde_json::to_string(&row)?),
            Format::Csv => row.render_csv(),
            Format::Table => row.render(),
        }
    } else {
        let rows =
            commands::bench::inference(&args.backbone, &args.batch, &args.dtype, &args.kernels, args.iters, &mut bars)?;
        match args.format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&rows)?),
            Format::Csv => commands::bench::render_csv(&rows),
            Format::Table => commands::bench::render_table(&rows),
        }
    };
    write_stdout(&out)?;
    Ok(Ended::Done)
}

pub fn test(args: TestArgs) -> Result<Ended> {
    set_threads(args.threads)?;
    let sets = args.sets.iter().map(|s| SetSpec::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let overrides = TestOverrides {
        weights: args.weights,
        backbone: args.backbone,
        sets,
        limit_files: args.limit_files,
        data_root: args.root,
        batch_size: args.batch_size,
        dtype: args.dtype,
    };
    let config = TestConfig::load(args.config.as_deref(), overrides)?;
    let split = config.split()?;
    eprint!("{}", split.statistics());
    let device = Device::flex();
    let detector = detector(&config.weights, config.backbone.as_deref(), config.dtype, &device)?;
    let out = commands::test::run_dir(args.out.as_deref())?;
    let mut bars = Bars::new(25);
    let outcome = commands::test::run(&config, &split, &detector, &device, &out, &mut bars);
    bars.finish();
    let outcome = outcome?;
    for e in &outcome.errors {
        eprintln!("error: {}: {}", e.path, e.reason);
    }
    write_stdout(&dfdet::eval::report::summary_table(&outcome.report))?;
    eprintln!("wrote {}", out.display());
    Ok(if outcome.errors.is_empty() { Ended::Done } else { Ended::Partial })
}

pub fn metrics(args: MetricsArgs) -> Result<Ended> {
    use dfdet::eval::report::{Predictions, evaluate_sets, write_report};
    let preds = Predictions::read_csv(&args.predictions)?;
    let plots = args.out.as_ref().map(|d| d.join("plots"));
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A `set` column (dfdet's test runs write one) gives the per-set results back.
    let (report, warnings) = evaluate_sets(&preds, &preds.named_sets(), plots.as_deref(), "test")?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if let Some(dir) = &args.out {
        write_report(&dir.join("metrics.json"), &report)?;
    }
    write_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    Ok(Ended::Done)
}

pub fn preprocess(args: PreprocessArgs) -> Result<Ended> {
    set_threads(args.threads)?;
    let faces = face_settings(&args.video)?;
    let output = commands::preprocess::Output { out: args.out, dataset: args.dataset, source: args.source };
    let mut bars = Bars::new(2);
    let summary = commands::preprocess::preprocess(&args.inputs, &output, &faces, &mut bars);
    bars.finish();
    let summary = summary?;
    eprintln!(
        "{} videos ({} done by an earlier run): {} crops written now, {} in the lists; {} frames skipped, {} videos without crops",
        summary.videos,
        summary.resumed,
        summary.crops_written,
        summary.crops,
        summary.skipped_frames,
        summary.failed_videos
    );
    for l in &summary.lists {
        eprintln!("list   {}", l.display());
    }
    eprintln!("report {}", summary.report.display());
    // Frames without a face are normal; a video that gave no crop at all is a partial failure.
    Ok(if summary.failed_videos > 0 { Ended::Partial } else { Ended::Done })
}

/// The first Ctrl-C (or SIGTERM) sets the flag: training stops after the current step with
/// `last` saved; a second one quits at once.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(crate::EXIT_INTERRUPTED.into());
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

pub fn train(args: TrainArgs) -> Result<Ended> {
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
        write_stdout(&config.to_toml_with_unset())?;
        return Ok(Ended::Done);
    }
    let stop = stop_on_ctrl_c()?;
    let mut bars = Bars::new(0);
    let outcome = match (&args.resume, &config) {
        (Some(dir), _) => dfdet::train::resume(dir, &args.sets, &mut bars, &stop),
        (_, Some(config)) => dfdet::train::train(config, &mut bars, &stop),
        (None, None) => unreachable!("a config is loaded unless resuming"),
    };
    bars.finish();
    let outcome = outcome?;
    if outcome.interrupted {
        return Ok(Ended::Interrupted);
    }
    if let Some(test) = &outcome.test {
        write_stdout(&dfdet::eval::report::summary_table(&test.report))?;
    }
    eprintln!("wrote {}", outcome.run_dir.display());
    Ok(Ended::Done)
}

pub fn study(args: StudyArgs) -> Result<Ended> {
    use dfdet::study::{Selection, StudyConfig, prepare};
    set_threads(args.threads)?;
    let config = StudyConfig::load(&args.config, &args.sets)?;
    if args.print_config {
        let subsets = config.dir().join("subsets");
        let cells = config.cells(&|f| subsets.join(format!("trn-{}.txt", dfdet::study::config::percent(f))))?;
        let mut text = config.to_toml();
        text += "\n# The grid, in order (--shard I/N runs cells I, I+N, ...):\n";
        for (i, c) in cells.iter().enumerate() {
            text += &format!("#   {i:>3}  {}  -> {}\n", c.name, c.config.run_path().display());
        }
        write_stdout(&text)?;
        return Ok(Ended::Done);
    }
    let stop = stop_on_ctrl_c()?;
    let mut bars = Bars::new(0);
    let prepared = prepare(config, &mut bars)?;
    if args.report {
        let written = prepared.report(&mut bars)?;
        bars.finish();
        return Ok(if written.cells_done == written.cells_total { Ended::Done } else { Ended::Partial });
    }
    let selection = Selection { shard: args.shard, only: args.only.clone() };
    let outcome = prepared.run(&selection, &mut bars, &stop);
    bars.finish();
    let outcome = outcome?;
    if !outcome.skipped.is_empty() {
        eprintln!("already finished: {}", outcome.skipped.join(", "));
    }
    if outcome.interrupted {
        eprintln!("interrupted; run the same command again to continue");
        return Ok(Ended::Interrupted);
    }
    if let Some(report) = &outcome.report {
        let md = std::fs::read_to_string(&report.summary_md).unwrap_or_default();
        write_stdout(&md)?;
    }
    Ok(Ended::Done)
}

pub fn serve(args: ServeArgs) -> Result<Ended> {
    set_threads(args.model.threads)?;
    let ModelArgs { weights, backbone, dtype, .. } = &args.model;
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(anyhow::anyhow!("{what}")) };
    check((1..=64).contains(&args.workers), "--workers: 1 to 64")?;
    check(args.queue <= 10_000, "--queue: 0 to 10000")?;
    check(args.max_upload_mb >= 1, "--max-upload-mb: at least 1")?;
    check(args.timeout_s >= 1, "--timeout-s: at least 1")?;
    check((1..=1024).contains(&args.batch_size), "--batch-size: 1 to 1024")?;
    check((1..=10_000).contains(&args.keep_media_jobs), "--keep-media-jobs: 1 to 10000")?;
    let settings = predict_settings(args.batch_size, &args.video, &args.faces)?;
    let device = Device::flex();
    let detector = detector(weights, backbone.as_deref(), *dtype, &device)?;
    let server = dfdet::serve::Server {
        detector,
        weights: weights.clone(),
        settings,
        limits: dfdet::serve::Limits {
            max_upload: args.max_upload_mb * 1_000_000,
            workers: args.workers,
            queue: args.queue,
            timeout: std::time::Duration::from_secs(args.timeout_s),
            media_ttl: std::time::Duration::from_secs(args.keep_media_min.saturating_mul(60)),
            media_jobs: args.keep_media_jobs,
        },
        token: args.token.clone(),
    };
    let addr = std::net::SocketAddr::new(args.host, args.port);
    dfdet::serve::serve(server, addr, |bound| eprintln!("listening on http://{bound} (Ctrl-C stops)"))?;
    Ok(Ended::Done)
}
