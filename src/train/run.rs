//! The training loop (docs/method.md §7): epochs of shuffled mini-batches, gradient accumulation,
//! AdamW steps on the schedule, validation each epoch with the best checkpoint kept by video-level
//! mAP, and a final test pass with it. Resumable from any saved `last`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;

use super::config::TrainConfig;
use super::data::{FeatureCache, epoch_order, load_batch};
use super::forward::{Encoded, HeadPass, encode, head_pass};
use super::init::base_encoder;
use super::lora;
use super::loss::LossValues;
use super::optim::{AdamW, AdamWConfig};
use super::params::{Trainable, export, host};
use super::schedule::Schedule;
use super::slerp::SlerpPlan;
use super::splits::Splits;
use super::state::{Best, EpochSoFar, MetricsLog, RunDir, TrainState, load_state, save_checkpoint};
use super::store::FeatureStore;
use super::validate::{loss_rows, metric_rows, score_val};
use crate::data::InputError;
use crate::data::sets::Split;
use crate::eval::unifalign::{alignment, uniformity};
use crate::eval::video::frame_and_video;
use crate::model::checkpoint::load_checkpoint;
use crate::model::fused::bf16::Autocast;
use crate::model::{Detector, Dtype};
use crate::progress::Observer;
use crate::rng::{Rng, Stream};
use crate::score::{FrameScore, TestOutcome, test_split, write_test_outputs};
use crate::{Error, Result};

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    pub run_dir: PathBuf,
    /// Stopped by the user: `last` holds the state to resume from.
    pub interrupted: bool,
    /// `--resume` of a run that had finished, test included: nothing was done.
    pub already_finished: bool,
    pub global_step: usize,
    pub best: Option<Best>,
    pub test: Option<TestOutcome>,
}

/// Starts a new run in `<run_dir>/<run_name>`: the folder must not hold a run already.
pub fn train(config: &TrainConfig, obs: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
    let dir = RunDir { dir: config.run_path() };
    if dir.metrics().exists() {
        return Err(Error::format(
            &dir.dir,
            format!(
                "already holds a run; continue it with `dfdet train --resume {}` or choose another run_name",
                dir.dir.display()
            ),
        ));
    }
    // Writability is checked by writing the config, before any data or model is touched.
    std::fs::create_dir_all(&dir.dir).map_err(|e| Error::io(&dir.dir, e))?;
    std::fs::create_dir_all(dir.checkpoints()).map_err(|e| Error::io(dir.checkpoints(), e))?;
    std::fs::write(dir.config(), config.to_toml()).map_err(|e| Error::io(dir.config(), e))?;
    Trainer::new(config.clone(), dir, false, obs)?.run(obs, stop)
}

/// The keys `--resume` may change: how long the run goes on and how often it saves `last`.
/// Anything else would make the saved state mean something else.
pub const RESUME_KEYS: [&str; 2] = ["max_epochs", "save_every_steps"];

/// Continues the run in `run_dir` from its `last` checkpoint, with its `config.toml` and
/// `overrides` of [`RESUME_KEYS`]: a larger `max_epochs` extends a finished run (training goes
/// on from its last epoch, the learning-rate schedule is recomputed for the new length from
/// the current step, and the test pass is redone with the new best checkpoint).
pub fn resume(run_dir: &Path, overrides: &[String], obs: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
    let dir = RunDir { dir: run_dir.to_path_buf() };
    for o in overrides {
        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
        if !RESUME_KEYS.contains(&key) {
            return Err(Error::config(
                format!("--set {key}"),
                format!(
                    "cannot change when resuming (the saved state depends on it); --resume takes {} only, \
                     start a new run for other settings",
                    RESUME_KEYS.join(" and ")
                ),
            ));
        }
    }
    let saved = TrainConfig::load(Some(&dir.config()), &[])?;
    let config = TrainConfig::load(Some(&dir.config()), overrides)?;
    let trainer = Trainer::new(config.clone(), dir.clone(), true, obs)?;
    if config != saved {
        for (key, old, new) in [
            ("max_epochs", saved.max_epochs, config.max_epochs),
            ("save_every_steps", saved.save_every_steps, config.save_every_steps),
        ] {
            if old != new {
                obs.message(&format!("{key}: {old} -> {new}"));
            }
        }
        crate::files::write_atomic(&dir.config(), config.to_toml().as_bytes())?;
    }
    trainer.run(obs, stop)
}

struct Trainer {
    config: TrainConfig,
    dir: RunDir,
    device: Device,
    autodiff: Device,
    detector: Detector,
    trainable: Trainable,
    adam: AdamW,
    schedule: Schedule,
    steps_per_epoch: usize,
    trn: Split,
    val: Split,
    tst: Option<Split>,
    cache: Option<(FeatureCache, FeatureCache)>,
    store: Option<FeatureStore>,
    log: MetricsLog,
    state: TrainState,
    unreadable: HashSet<usize>,
    /// Frames already named in a warning (partly decoded, or unreadable in validation): each
    /// is named once per run, not once per epoch.
    warned: HashSet<String>,
}

impl Trainer {
    fn new(config: TrainConfig, dir: RunDir, resuming: bool, obs: &mut dyn Observer) -> Result<Self> {
        if config.num_classes != 2 {
            return Err(Error::config(
                "num_classes",
                format!("{}: training uses binary labels (real/fake), as the reference", config.num_classes),
            ));
        }
        let Splits { trn, val, tst } = Splits::load(&config, obs)?;

        let device = Device::flex();
        let autodiff = super::autodiff_device(&device);
        let ckpt = match &config.checkpoint {
            Some(source) => {
                let mut c = load_checkpoint(source, None)?;
                if c.spec.num_classes != config.num_classes {
                    return Err(Error::config(
                        "checkpoint",
                        format!("`{source}` has {} classes, the config {}", c.spec.num_classes, config.num_classes),
                    ));
                }
                c.spec.head = config.head;
                c.spec.tuning = config.tuning();
                c
            }
            None => base_encoder(&config.backbone, config.head, config.num_classes, config.tuning(), config.seed)?,
        };
        let store = match (&config.feature_cache_dir, config.cache_features) {
            (Some(root), true) => Some(FeatureStore::open(root, &ckpt.backbone, &ckpt.tensors, config.bf16_mixed())?),
            _ => None,
        };
        let mut detector = Detector::from_checkpoint(ckpt, &device, Dtype::F32)?;
        detector.spec.run_name = Some(config.run_name.clone());
        detector.spec.precision = Some(if config.bf16_mixed() { "bf16-mixed" } else { "32-true" }.into());
        if let Some(l) = config.lora() {
            lora::attach(&mut detector, l, config.seed)?;
        }
        let mut trainable = Trainable::select(&mut detector, &config.selection())?;
        detector.encoder.keep_transposed_weights(trainable.backward_through_frozen_projections());
        if config.bf16_mixed() {
            detector.encoder.prepare_bf16_mixed(trainable.backward_through_frozen_projections());
            obs.message(&format!(
                "precision bf16-mixed: bfloat16 products by {}",
                crate::model::fused::onednn::bf16_products()
            ));
        }
        let mut adam = AdamW::new(
            AdamWConfig { betas: config.betas, eps: config.eps, weight_decay: config.weight_decay },
            &trainable,
        );
        let total = detector.num_params();
        obs.message(&format!(
            "trainable: {} of {} parameters ({:.4}%) in {} tensors",
            trainable.numel(),
            total,
            100.0 * trainable.numel() as f64 / total as f64,
            trainable.params.len()
        ));

        let minibatches = trn.files.len().div_ceil(config.mini_batch_size);
        let steps_per_epoch = minibatches.div_ceil(config.accumulation());
        let schedule = Schedule {
            lr: config.lr,
            min_lr: config.min_lr,
            scheduler: config.lr_scheduler,
            total: config.max_epochs * steps_per_epoch,
            warmup: (config.warmup_epochs * steps_per_epoch as f64) as usize,
            cycle: (config.num_epochs_in_cycle * steps_per_epoch as f64) as usize,
        };

        let (state, log) = if resuming {
            let last =
                dir.last_for_resume().ok_or_else(|| Error::format(&dir.dir, "no checkpoints/last to resume from"))?;
            let mut state = load_state(&last, &mut trainable, &mut adam)?;
            if state.epoch > config.max_epochs {
                return Err(Error::config(
                    "max_epochs",
                    format!(
                        "{}: the run has trained {} epochs already; give at least that many",
                        config.max_epochs, state.epoch
                    ),
                ));
            }
            // A finished run goes on when max_epochs grew.
            state.done = state.epoch >= config.max_epochs;
            let log = MetricsLog::open(&dir.metrics(), state.metrics_bytes)?;
            obs.message(&format!(
                "resuming {} at epoch {}, step {} ({} optimizer steps done)",
                dir.dir.display(),
                state.epoch + 1,
                state.step_in_epoch,
                state.global_step
            ));
            (state, log)
        } else {
            let log = MetricsLog::open(&dir.metrics(), 0)?;
            let state = TrainState {
                trainable: trainable.params.iter().map(|p| p.name.clone()).collect(),
                adam_steps: vec![0; trainable.params.len()],
                ..TrainState::default()
            };
            (state, log)
        };
        Ok(Self {
            config,
            dir,
            device,
            autodiff,
            detector,
            trainable,
            adam,
            schedule,
            steps_per_epoch,
            trn,
            val,
            tst,
            cache: None,
            store,
            log,
            state,
            unreadable: HashSet::new(),
            warned: HashSet::new(),
        })
    }

    fn run(mut self, obs: &mut dyn Observer, stop: &AtomicBool) -> Result<Outcome> {
        // Training, validation and the test pass all compute in the run's precision, as
        // Lightning's trainer does.
        let _autocast = Autocast::bf16(self.config.bf16_mixed());
        let tested = self.dir.test().join("metrics.json").is_file() || self.tst.is_none();
        if self.state.done && tested {
            obs.message(&format!(
                "{} finished all {} epochs already (test results in {}); nothing to do",
                self.dir.dir.display(),
                self.config.max_epochs,
                self.dir.test().display()
            ));
            let mut outcome = self.outcome(false, None);
            outcome.already_finished = true;
            return Ok(outcome);
        }
        if self.config.cache_features && !self.state.done {
            self.cache = Some((self.encode_all(true, obs)?, self.encode_all(false, obs)?));
        }
        while !self.state.done {
            let epoch = self.state.epoch;
            if self.state.step_in_epoch < self.steps_per_epoch {
                obs.phase(
                    &format!("epoch {}/{}", epoch + 1, self.config.max_epochs),
                    self.steps_per_epoch,
                    self.state.step_in_epoch,
                );
            }
            let order = epoch_order(self.trn.files.len(), self.config.seed, epoch);
            let accum = self.config.accumulation();
            let mb = self.config.mini_batch_size;
            while self.state.step_in_epoch < self.steps_per_epoch {
                let s = self.state.step_in_epoch;
                let first = s * accum * mb;
                let last = ((s + 1) * accum * mb).min(order.len());
                let chunks: Vec<&[usize]> = order[first..last].chunks(mb).collect();
                let (loss, lr) = self.optimizer_step(epoch, s * accum, &chunks, obs)?;
                self.state.step_in_epoch += 1;
                obs.advance(1);
                if let Some(loss) = loss {
                    obs.status(&format!("loss {loss:.4} lr {lr:.2e}"));
                }
                let every = self.config.save_every_steps;
                let interrupted = stop.load(Ordering::SeqCst);
                if interrupted || (every > 0 && self.state.global_step.is_multiple_of(every)) {
                    self.save_last()?;
                }
                if interrupted {
                    obs.message(&format!(
                        "interrupted after {} optimizer steps; saved {}; continue with `dfdet train --resume {}`",
                        self.state.global_step,
                        self.dir.last().display(),
                        self.dir.dir.display()
                    ));
                    return Ok(self.outcome(true, None));
                }
            }
            self.end_epoch(epoch, obs)?;
            self.state.epoch += 1;
            self.state.step_in_epoch = 0;
            self.state.epoch_so_far = EpochSoFar::default();
            self.state.done = self.state.epoch >= self.config.max_epochs;
            self.save_last()?;
            if stop.load(Ordering::SeqCst) && !self.state.done {
                obs.message(&format!("interrupted; saved {}", self.dir.last().display()));
                return Ok(self.outcome(true, None));
            }
        }
        let test = self.test(obs)?;
        Ok(self.outcome(false, test))
    }

    fn outcome(&self, interrupted: bool, test: Option<TestOutcome>) -> Outcome {
        Outcome {
            run_dir: self.dir.dir.clone(),
            interrupted,
            already_finished: false,
            global_step: self.state.global_step,
            best: self.state.best,
            test,
        }
    }

    /// One optimizer step over `chunks` (its mini-batches, the first being mini-batch
    /// `first_mb` of the epoch). Returns the mean loss of its finite mini-batches and the lr.
    fn optimizer_step(
        &mut self,
        epoch: usize,
        first_mb: usize,
        chunks: &[&[usize]],
        obs: &mut dyn Observer,
    ) -> Result<(Option<f64>, f64)> {
        let lr = self.schedule.lr_at(self.state.global_step);
        let bound = self.trainable.bind(&mut self.detector, &self.autodiff);
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.trainable.params.len()];
        let accum = self.config.accumulation() as f64;
        let mut step_rows: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        let mut finite = 0usize;
        for (k, chunk) in chunks.iter().enumerate() {
            let mb = (first_mb + k) as u64;
            let Some(out) = self.minibatch(epoch, mb, chunk, obs)? else { continue };
            let (values, total, stats) = out;
            if values.total.is_nan() {
                obs.message(&format!(
                    "warning: NaN loss at epoch {}, step {}: mini-batch skipped",
                    epoch + 1,
                    self.state.global_step
                ));
                add_row(&mut step_rows, "train/nan_skipped", 1.0);
                continue;
            }
            finite += 1;
            let g = (total / accum).backward();
            for (acc, new) in grads.iter_mut().zip(self.trainable.gradients(&bound, &g)) {
                match (acc.as_mut(), new) {
                    (Some(a), Some(n)) => a.iter_mut().zip(&n).for_each(|(x, y)| *x += y),
                    (None, Some(n)) => *acc = Some(n),
                    _ => {}
                }
            }
            for (name, v) in loss_rows("train", &values).into_iter().chain(stats) {
                add_row(&mut step_rows, &name, v);
                self.state.epoch_so_far.add(&name, v);
            }
        }
        if finite > 0 {
            self.adam.step(&mut self.trainable, &grads, lr);
        }
        self.state.global_step += 1;
        let mut rows: Vec<(String, f64)> = step_rows.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect();
        rows.push(("lr".into(), lr));
        let loss = rows.iter().find(|(k, _)| k == "train/loss").map(|r| r.1);
        self.log.rows(epoch, self.state.global_step, &rows)?;
        Ok((loss, lr))
    }

    /// Forward of one training mini-batch: the loss values, the loss tensor, and logged
    /// statistics. `None` if no frame of it could be read.
    #[allow(clippy::type_complexity)]
    fn minibatch(
        &mut self,
        epoch: usize,
        mb: u64,
        index: &[usize],
        obs: &mut dyn Observer,
    ) -> Result<Option<(LossValues, Tensor<1>, Vec<(String, f64)>)>> {
        let seed = self.config.seed;
        let index: Vec<usize> = index.iter().copied().filter(|i| !self.unreadable.contains(i)).collect();
        let augment = self.config.augmentations.then_some((seed, epoch));
        let lora = self.config.lora().map(|l| l.dropout);
        let device = self.device.clone();
        let before_forward = |detector: &mut Detector, b: usize| {
            // Training mode: what the encoder draws per forward pass.
            let mut rng = Rng::derive(seed, Stream::Rope, &[epoch as u64, mb]);
            detector.encoder.set_training(&detector.backbone.encoder, Some(&mut || rng.uniform()));
            if let Some(dropout) = lora {
                let mut rng = Rng::derive(seed, Stream::Dropout, &[epoch as u64, mb]);
                lora::set_dropout(detector, dropout, b, Some(&mut rng), &device);
            }
        };
        let cache = self.cache.as_ref().map(|(trn, _)| trn);
        let Encoded { index: ok, pooled, errors, warnings } =
            encode(&mut self.detector, &self.trn, &index, cache, augment, &self.device, before_forward);
        // Back to eval mode for whatever runs next (validation, checkpoints).
        self.detector.encoder.set_training(&self.detector.backbone.encoder, None);
        // A partly decoded frame is used (as the reference uses it), and said once per run.
        for w in warnings {
            if self.warned.insert(w.path.clone()) {
                obs.message(&format!("warning: {}: {}", w.path, w.reason));
            }
        }
        for e in errors {
            obs.message(&format!("warning: {}: {} (left out of training)", e.path, e.reason));
            if let Some(i) = self.trn.files.iter().position(|f| *f == e.path) {
                self.unreadable.insert(i);
            }
        }
        let Some(pooled) = pooled.filter(|_| !ok.is_empty()) else { return Ok(None) };
        let labels: Vec<usize> = ok.iter().map(|&i| self.trn.labels[i]).collect();
        let pooled = if self.config.slerp_feature_augmentation {
            let mut rng = Rng::derive(seed, Stream::Slerp, &[epoch as u64, mb]);
            SlerpPlan::draw(&labels, self.config.slerp_feature_augmentation_range, &mut rng).apply(pooled)
        } else {
            pooled
        };
        let HeadPass { probs, features, loss } = head_pass(&self.detector, pooled, &labels, &self.config.loss);
        let mut stats = vec![("train/alignment".to_string(), alignment(&features, &labels, 2.0))];
        if let Some(u) = uniformity(&features, 2.0) {
            stats.push(("train/uniformity".into(), u));
        }
        self.state.epoch_so_far.seen.extend(&ok);
        self.state.epoch_so_far.probs.extend(&probs);
        Ok(Some((loss.values, loss.total, stats)))
    }

    /// Encoder features of every frame of the training (or validation) split, for linear probing.
    fn encode_all(&mut self, training: bool, obs: &mut dyn Observer) -> Result<FeatureCache> {
        let split = if training { &self.trn } else { &self.val };
        let name = if training { "caching trn features" } else { "caching val features" };
        obs.phase(name, split.files.len(), 0);
        let mut cache = FeatureCache { dim: self.detector.backbone.encoder.hidden_size(), rows: Default::default() };
        // Frames the feature store already holds are read from it; the others are encoded in
        // mini-batches and stored.
        let mut index = Vec::new();
        let mut stored = 0usize;
        for (i, frame) in split.files.iter().enumerate() {
            match self.store.as_ref().and_then(|s| s.get(frame)) {
                Some(f) => {
                    cache.rows.insert(i, f);
                    stored += 1;
                }
                None => index.push(i),
            }
        }
        if stored > 0 {
            obs.advance(stored);
            obs.message(&format!("{name}: {stored} of {} frames read from the feature cache", split.files.len()));
        }
        for chunk in index.chunks(self.config.mini_batch_size) {
            let batch = load_batch(split, chunk, &self.detector.backbone.pixels, None, &self.device);
            for e in batch.errors.iter().chain(&batch.warnings) {
                obs.message(&format!("warning: {}: {}", e.path, e.reason));
            }
            if !batch.index.is_empty() {
                let d = cache.dim;
                let f = host(self.detector.encoder.forward(batch.pixels)).1;
                for (k, &i) in batch.index.iter().enumerate() {
                    let row = f[k * d..(k + 1) * d].to_vec();
                    if let Some(store) = &self.store {
                        store.put(&split.files[i], &row)?;
                    }
                    cache.rows.insert(i, row);
                }
            }
            obs.advance(chunk.len());
        }
        Ok(cache)
    }

    /// Validation pass and the epoch's rows in metrics.csv; keeps `best`.
    fn end_epoch(&mut self, epoch: usize, obs: &mut dyn Observer) -> Result<()> {
        let mut rows: Vec<(String, f64)> = Vec::new();
        // Training metrics, from the probabilities seen during the epoch.
        let so_far = std::mem::take(&mut self.state.epoch_so_far);
        for (k, v) in so_far.means() {
            rows.push((format!("{k}_epoch"), v));
        }
        if !so_far.seen.is_empty() {
            let files: Vec<&str> = so_far.seen.iter().map(|&i| self.trn.files[i].as_str()).collect();
            let labels: Vec<usize> = so_far.seen.iter().map(|&i| self.trn.labels[i]).collect();
            let probs: Vec<f64> = so_far.probs.iter().map(|&p| p as f64).collect();
            let e = frame_and_video(&files, &probs, &labels, self.config.num_classes, true)?;
            metric_rows(&mut rows, "train", "frame", &e.frame);
            metric_rows(&mut rows, "train", "video", &e.video);
        }
        self.state.epoch_so_far = so_far;

        // Validation.
        self.trainable.unbind(&mut self.detector, &self.device);
        lora::set_dropout(&mut self.detector, 0.0, 0, None, &self.device);
        let cache = self.cache.as_ref().map(|(_, val)| val);
        let val = score_val(&mut self.detector, &self.val, cache, &self.config, &self.device, &mut self.warned, obs)?;
        for (k, v) in loss_rows("val", &val.loss) {
            rows.push((k, v));
        }
        rows.push(("val/alignment".into(), val.alignment));
        if let Some(u) = val.uniformity {
            rows.push(("val/uniformity".into(), u));
        }
        let e = frame_and_video(&val.files, &val.probs, &val.labels, self.config.num_classes, true)?;
        metric_rows(&mut rows, "val", "frame", &e.frame);
        metric_rows(&mut rows, "val", "video", &e.video);

        let head = self.trainable.get("model.linear.weight").map(|p| l2(&p.data));
        let bias = self.trainable.get("model.linear.bias").map(|p| l2(&p.data));
        rows.extend(head.map(|v| ("model/linear-W-norm".to_string(), v)));
        rows.extend(bias.map(|v| ("model/linear-b-norm".to_string(), v)));
        rows.push(("lr".into(), self.schedule.lr_at(self.state.global_step.saturating_sub(1))));
        self.log.rows(epoch, self.state.global_step, &rows)?;
        // A figure is a convenience: without a font (say) the run goes on.
        if let Err(err) = super::curves::write(&self.dir.dir, &format!("{}: training curves", self.config.run_name)) {
            obs.message(&format!("warning: training curves not drawn: {err}"));
        }

        let map = e.video.map;
        let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.4}"));
        let mut summary = format!(
            "epoch {}/{}: val video mAP {} AUROC {}, frame AUROC {}",
            epoch + 1,
            self.config.max_epochs,
            fmt(map),
            fmt(e.video.auroc),
            fmt(e.frame.auroc)
        );
        if let Some(v) = map
            && self.state.best.is_none_or(|b| v > b.value)
        {
            self.state.best = Some(Best { epoch, value: v });
            let tensors = export(&mut self.detector);
            save_checkpoint(&self.dir.best(), &self.detector.spec, &self.detector.backbone, &tensors, None)?;
            summary += " (best)";
        }
        obs.message(&summary);
        Ok(())
    }

    fn save_last(&mut self) -> Result<()> {
        self.state.metrics_bytes = self.log.bytes()?;
        self.state.adam_steps = self.adam.state.iter().map(|m| m.step).collect();
        self.trainable.unbind(&mut self.detector, &self.device);
        let tensors = export(&mut self.detector);
        save_checkpoint(
            &self.dir.last(),
            &self.detector.spec,
            &self.detector.backbone,
            &tensors,
            Some((&self.state, &self.trainable, &self.adam)),
        )
    }

    /// The test pass with `best` on the configured test sets.
    fn test(&mut self, obs: &mut dyn Observer) -> Result<Option<TestOutcome>> {
        let Some(tst) = &self.tst else { return Ok(None) };
        let best = self.dir.best();
        if !best.is_dir() {
            obs.message("no best checkpoint (validation mAP was never defined): testing with last");
        }
        let source = if best.is_dir() { best } else { self.dir.last() };
        let ckpt = load_checkpoint(&source.display().to_string(), None)?;
        let detector = Detector::from_checkpoint(ckpt, &self.device, Dtype::F32)?;
        let out = self.dir.test();
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        obs.phase("test", tst.files.len(), 0);
        let outcome = match &self.store {
            // Linear probing: the encoder never changed, its features of the test frames are in
            // (or go to) the feature store.
            Some(store) => {
                let (scores, errors, warnings) =
                    score_through_store(&detector, tst, store, self.config.mini_batch_size, obs)?;
                let mut outcome = write_test_outputs(tst, &scores, errors, detector.spec.num_classes, &out)?;
                outcome.warnings.splice(0..0, warnings.iter().map(|w| format!("{}: {}", w.path, w.reason)));
                outcome
            }
            None => test_split(&detector, &self.device, tst, self.config.mini_batch_size, &out, obs)?,
        };
        for e in &outcome.errors {
            obs.message(&format!("warning: {}: {}", e.path, e.reason));
        }
        for w in &outcome.warnings {
            obs.message(&format!("warning: {w}"));
        }
        Ok(Some(outcome))
    }
}

/// Scores `split` with `detector`, taking the encoder's features from `store` where it holds
/// them and storing the others. Returns the scores, the frames that could not be read, and
/// those read only in part.
fn score_through_store(
    detector: &Detector,
    split: &Split,
    store: &FeatureStore,
    batch_size: usize,
    obs: &mut dyn Observer,
) -> Result<(Vec<FrameScore>, Vec<InputError>, Vec<InputError>)> {
    let device = Device::flex();
    let d = detector.backbone.encoder.hidden_size();
    let mut scores = Vec::with_capacity(split.files.len());
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let index: Vec<usize> = (0..split.files.len()).collect();
    for chunk in index.chunks(batch_size.max(1)) {
        let mut rows: Vec<(usize, Vec<f32>)> = Vec::with_capacity(chunk.len());
        let mut missing = Vec::new();
        for &i in chunk {
            match store.get(&split.files[i]) {
                Some(f) => rows.push((i, f)),
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let batch = load_batch(split, &missing, &detector.backbone.pixels, None, &device);
            errors.extend(batch.errors);
            warnings.extend(batch.warnings);
            if !batch.index.is_empty() {
                let f = host(detector.encoder.forward(batch.pixels)).1;
                for (k, &i) in batch.index.iter().enumerate() {
                    let row = f[k * d..(k + 1) * d].to_vec();
                    store.put(&split.files[i], &row)?;
                    rows.push((i, row));
                }
            }
        }
        if !rows.is_empty() {
            let b = rows.len();
            let data: Vec<f32> = rows.iter().flat_map(|(_, f)| f.iter().copied()).collect();
            let pooled = Tensor::<2>::from_data(TensorData::new(data, [b, d]), &device);
            let logits = detector.head.forward(pooled).logits;
            let c = logits.dims()[1];
            let probs = host(burn::tensor::activation::softmax(logits, 1)).1;
            for (k, (i, _)) in rows.iter().enumerate() {
                scores.push(FrameScore::new(split.files[*i].clone(), probs[k * c..(k + 1) * c].to_vec()));
            }
        }
        obs.advance(chunk.len());
    }
    Ok((scores, errors, warnings))
}

fn add_row(rows: &mut BTreeMap<String, (f64, usize)>, name: &str, v: f64) {
    let e = rows.entry(name.to_string()).or_default();
    e.0 += v;
    e.1 += 1;
}

fn l2(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}
