//! The training loop: a mixture's stages, one optimiser step per pipeline batch.
//!
//! Per step: the batch becomes a [`ModelInput`] (at the stage's resolution: the position
//! embeddings are resampled when a stage changes it), is split into micro-batches of
//! [`TrainConfig::micro_batch_rows`] rows, and each micro-batch's gradient is weighted by its
//! share of the batch's loss weight, so the accumulated gradient is the whole batch's (loss
//! per target token, weighted by the batch's loss weights, with the stage's label smoothing).
//! A NaN or Inf loss or gradient norm stops the run before the update and names the batch's
//! examples' origins; otherwise the global gradient norm is clipped to the stage's
//! `grad_clip` and each optimiser group steps at its scheduled rate. Every step emits a
//! [`TrainEvent`]; checkpoints ([`super::checkpoint`]) are written every
//! [`TrainConfig::checkpoint_every`] steps, when the run stops early, and at its end.
//!
//! A stage whose objective is `siglip` steps differently ([`super::siglip`]): the whole batch
//! at once (its pairs are each other's negatives), the sigmoid loss of its images against
//! their suffixes, and only the image encoder and the text tower updated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dfdx::prelude::*;
use mixtures::{Budget, LossNorm, Mixture, Objective, Training};
use pipeline::Batch;
use pipeline::mixture::{RunOptions, inspect_sources, stage_of, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::PaliTokenizer;
use serde::{Deserialize, Serialize};

use super::batch::{model_input, split_rows};
use super::checkpoint::{FORMAT, RunState, load_run_checkpoint, save_run_checkpoint};
use super::groups::{Group, GroupLrs, Groups};
use super::schedule::LrSchedule;
use super::siglip::{TextSide, Trained};
use super::{Result, TrainError};
use crate::config::PaliGemmaConfig;
use crate::contrastive::ContrastiveConfig;
use crate::gemma::Dropout;
use crate::input::ModelInput;
use crate::layers::{ParamRef, Params};
use crate::loss::LossOptions;
use crate::optim::{clip_grad_norm, read_entry, write_entry};
use crate::{Dev, Gradients, PaliGemma};

/// How this process trains (the spec says what; these say how).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Rows per micro-batch (gradient accumulation); 0: the whole batch at once.
    pub micro_batch_rows: usize,
    /// Write a checkpoint every this many steps (0: only when stopping and at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (0: all).
    pub keep_checkpoints: usize,
    /// The run folder: checkpoints go to `RUN_DIR/checkpoints` and one event per step to
    /// `RUN_DIR/metrics.jsonl`. `None`: neither.
    pub run_dir: Option<PathBuf>,
    /// Stop (with a checkpoint) once the run has done this many steps in all.
    pub stop_after: Option<u64>,
    /// Compute the per-task loss every this many steps (an extra forward pass; 0: never).
    pub task_loss_every: u64,
    /// Set from elsewhere (Ctrl-C, the service's stop) to stop after the current step, with a
    /// checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            micro_batch_rows: 0,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            run_dir: None,
            stop_after: None,
            task_loss_every: 0,
            stop: None,
        }
    }
}

/// What one step reports: the CLI draws its progress bar from these, the service will
/// publish them, and `metrics.jsonl` holds one per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainEvent {
    /// Steps done in the run, this one included.
    pub step: u64,
    pub stage: usize,
    pub stage_name: String,
    /// Steps done in the stage, this one included, and the stage's planned steps.
    pub stage_step: u64,
    pub stage_steps: u64,
    /// Mean loss per target token (with label smoothing).
    pub loss: f32,
    /// Mean unsmoothed cross-entropy per target token of each task in the batch; only on
    /// steps that compute it ([`TrainConfig::task_loss_every`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_loss: BTreeMap<String, f32>,
    pub lr: GroupLrs,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub examples: usize,
    /// Non-padding tokens (image and text) of the batch.
    pub tokens: usize,
    pub examples_per_s: f64,
    pub tokens_per_s: f64,
    /// Fraction of the step's wall time spent waiting for the batch.
    pub data_wait: f64,
    /// Wall seconds of the step (waiting included).
    pub step_s: f64,
    /// Held-out headline score of each task, on steps that evaluate (the spec's
    /// `eval.every`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eval: BTreeMap<String, f64>,
}

/// The numbers of one optimiser step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: GroupLrs,
    pub task_loss: BTreeMap<String, f32>,
}

/// How [`Trainer::run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every stage done.
    Finished { steps: u64 },
    /// [`TrainConfig::stop_after`] reached, or [`TrainConfig::stop`] set.
    Stopped { steps: u64 },
}

/// `cfg` with the tokenizer's vocabulary and special ids: a fresh model for data made with it.
pub fn config_for_tokenizer(
    mut cfg: PaliGemmaConfig,
    tokenizer: &PaliTokenizer,
) -> PaliGemmaConfig {
    let special = tokenizer.special();
    cfg.text.vocab_size = tokenizer.vocab_size();
    cfg.image_token_id = special.image;
    cfg.bos_token_id = special.bos;
    cfg.eos_token_id = special.eos;
    cfg.pad_token_id = special.pad;
    cfg
}

/// Checks that batches made with `tokenizer` fit `model` (described for errors: "model DIR",
/// "checkpoint DIR", "the model"), a model of `cfg`: every id has an embedding (an id past the vocabulary would
/// index out of bounds), and `<bos>`, `<eos>` and `<image>` are the model's.
pub fn check_tokenizer(
    cfg: &PaliGemmaConfig,
    tokenizer: &PaliTokenizer,
    model: &str,
) -> Result<()> {
    let (ids, vocab) = (tokenizer.vocab_size(), cfg.text.vocab_size);
    if ids > vocab {
        return Err(TrainError::Config(format!(
            "tokenizer {} has {ids} ids but {model} has a vocabulary of {vocab}: use the \
             tokenizer the model was trained with, or one whose ids fit it",
            tokenizer.name()
        )));
    }
    let s = tokenizer.special();
    for (name, tok, theirs) in [
        ("<bos>", s.bos, cfg.bos_token_id),
        ("<eos>", s.eos, cfg.eos_token_id),
        ("<image>", s.image, cfg.image_token_id),
    ] {
        if tok != theirs {
            return Err(TrainError::Config(format!(
                "tokenizer {} has {name} {tok} but {model} has {theirs}",
                tokenizer.name()
            )));
        }
    }
    Ok(())
}

/// Stage `stage`'s learning-rate schedule: its own, or, for a stage that `continues` the one
/// before it, that stage's carried on after its planned steps.
pub fn stage_schedule(mixture: &Mixture, stage: usize) -> Result<LrSchedule> {
    // The stage's own knobs: what it continues comes from the schedule before it.
    let training = mixture.stages[stage].training();
    let total = planned_steps(mixture, stage)?;
    match stage.checked_sub(1) {
        Some(before) if training.continues => {
            Ok(stage_schedule(mixture, before)?.continued(total, training.cooldown))
        }
        _ => Ok(LrSchedule::from_training(&training, total)),
    }
}

/// Planned optimiser steps of stage `stage`: its example budget over its batch size (an upper
/// bound with packing, where a batch holds more examples than rows); an epoch budget counts
/// its task's source rows (before any row filter).
pub fn planned_steps(mixture: &Mixture, stage: usize) -> Result<u64> {
    let s = mixture
        .stages
        .get(stage)
        .ok_or_else(|| TrainError::Config(format!("no stage {stage}")))?;
    let batch = u64::from(s.batch_size().max(1));
    let examples = match &s.budget {
        Budget::Examples(n) => *n,
        Budget::Epochs { epochs, task } => {
            let source = &mixture
                .tasks
                .get(task)
                .ok_or_else(|| TrainError::Config(format!("stage {}: no task {task}", s.name)))?
                .source;
            let facts = inspect_sources(mixture);
            let rows = match facts.get(source) {
                Some(Ok(f)) => f.rows,
                Some(Err(e)) => {
                    return Err(TrainError::Config(format!(
                        "stage {}: source {source}: {e}",
                        s.name
                    )));
                }
                None => {
                    return Err(TrainError::Config(format!(
                        "stage {}: no source {source}",
                        s.name
                    )));
                }
            };
            // The other tasks draw beside it, in proportion to their weights.
            let share = mixture
                .stage_weights(stage)
                .and_then(|w| w.into_iter().find(|(t, _)| t == task))
                .map_or(1.0, |(_, w)| w);
            let counted = rows * u64::from(*epochs);
            if share > 0.0 {
                (counted as f64 / share).round() as u64
            } else {
                counted
            }
        }
    };
    Ok(examples.div_ceil(batch).max(1))
}

/// Resamples the image encoder's position embeddings for `image_size` (no-op if unchanged).
/// The resampled table is a new parameter: its optimiser moments start from zero.
pub fn set_resolution(model: &mut PaliGemma, image_size: usize) -> Result<()> {
    let v = &model.cfg.vision;
    if image_size == v.image_size {
        return Ok(());
    }
    if v.patch_size == 0 || !image_size.is_multiple_of(v.patch_size) {
        return Err(TrainError::Config(format!(
            "resolution {image_size} is not a multiple of the patch size {}",
            v.patch_size
        )));
    }
    let (from, to, dim, patch) = (
        v.grid(),
        image_size / v.patch_size,
        v.hidden_size,
        v.patch_size,
    );
    let old = model.vision_tower.embeddings.position_embedding.as_vec();
    let new = crate::checkpoint::resize_grid(&old, from, to, dim);
    model.vision_tower.embeddings.position_embedding =
        model.dev.tensor_from_vec(new, (to * to, dim));
    model.cfg.vision.image_size = image_size;
    model.vision_tower.cfg.image_size = image_size;
    tracing::info!(
        from = from * patch,
        to = image_size,
        "resampled the position embeddings"
    );
    Ok(())
}

/// `acc += scale * part` for every parameter of `model`.
fn accumulate(model: &PaliGemma, acc: &mut Gradients, part: &mut Gradients, scale: f32) {
    fn one<S: Shape>(
        acc: &mut Gradients,
        part: &mut Gradients,
        t: &Tensor<S, f32, Dev>,
        scale: f32,
    ) {
        let add = read_entry(part, t);
        let mut sum = read_entry(acc, t);
        for (s, a) in sum.iter_mut().zip(&add) {
            *s += scale * a;
        }
        write_entry(acc, t, &sum);
    }
    model.visit("", &mut |_, p| match p {
        ParamRef::Matrix(t) => one(acc, part, t, scale),
        ParamRef::Vector(t) => one(acc, part, t, scale),
    });
}

/// Scales each example's loss weights to sum to one, so that the weighted mean over tokens
/// is the mean over examples of each example's mean.
fn weigh_examples_equally(batch: &Batch, weights: &mut [f32]) {
    for seg in &batch.segments {
        let start = seg.row as usize * batch.seq_len + seg.start as usize;
        let span = &mut weights[start..start + seg.len as usize];
        let total: f32 = span.iter().sum();
        if total > 0.0 {
            span.iter_mut().for_each(|w| *w /= total);
        }
    }
}

/// "task name at shard row group r row i" for each example of the batch (first 20).
fn origins(batch: &Batch, tasks: &[String]) -> String {
    let mut out: Vec<String> = batch
        .segments
        .iter()
        .map(|s| {
            format!(
                "{} at {}",
                tasks.get(s.task_id as usize).map_or("?", String::as_str),
                s.origin
            )
        })
        .collect();
    let n = out.len();
    out.dedup();
    if n > 20 {
        out.truncate(20);
        out.push(format!("... ({n} examples)"));
    }
    out.join("; ")
}

/// Trains a model through a mixture's stages.
pub struct Trainer {
    pub model: PaliGemma,
    groups: Groups,
    /// The text side of `siglip` stages, from the first siglip step on.
    text: Option<TextSide>,
    mixture: Mixture,
    options: RunOptions,
    config: TrainConfig,
    task_names: Vec<String>,
    step: u64,
    stage: usize,
    stage_step: u64,
    stream: StreamState,
    metrics: Vec<TrainEvent>,
}

impl Trainer {
    /// A run from its beginning, training `model` (random or loaded; its resolution follows
    /// each stage's).
    pub fn new(
        mixture: Mixture,
        model: PaliGemma,
        options: RunOptions,
        config: TrainConfig,
    ) -> Result<Self> {
        check_tokenizer(&model.cfg, &options.tokenizer, "the model")?;
        let task_names = mixtures::Sampler::new(&mixture)
            .map_err(|e| TrainError::Config(e.to_string()))?
            .task_names()
            .to_vec();
        Ok(Trainer {
            model,
            groups: Groups::new(0.0),
            text: None,
            mixture,
            options,
            config,
            task_names,
            step: 0,
            stage: 0,
            stage_step: 0,
            stream: StreamState::default(),
            metrics: Vec::new(),
        })
    }

    /// Continues a run from the checkpoint folder `checkpoint` (see
    /// [`super::latest_checkpoint`]), with `mixture` (the spec the run started with, or that
    /// spec with stages appended).
    pub fn resume(
        checkpoint: &std::path::Path,
        mixture: Mixture,
        options: RunOptions,
        config: TrainConfig,
        dev: &Dev,
    ) -> Result<Self> {
        let saved = load_run_checkpoint(checkpoint, dev)?;
        let (model, state) = (saved.model, saved.state);
        let what = format!("checkpoint {}", checkpoint.display());
        check_tokenizer(&model.cfg, &options.tokenizer, &what)?;
        if state.spec != spec_json(&mixture) {
            tracing::warn!(checkpoint = %checkpoint.display(), "the spec differs from the one the run started with");
        }
        let mut t = Trainer::new(mixture, model, options, config)?;
        t.groups = saved.groups;
        t.text = saved.text;
        t.step = state.step;
        t.stage = state.stage;
        t.stage_step = state.stage_step;
        t.stream = state.stream;
        t.metrics = state.metrics;
        tracing::info!(checkpoint = %checkpoint.display(), step = t.step, "resumed");
        Ok(t)
    }

    /// Steps done in the run.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// One event per step done so far (restored from the checkpoint when resumed).
    pub fn metrics(&self) -> &[TrainEvent] {
        &self.metrics
    }

    pub fn mixture(&self) -> &Mixture {
        &self.mixture
    }

    /// How the pipeline runs (tokenizer, workers).
    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// The pipeline state after the last batch trained on.
    pub fn stream_state(&self) -> &StreamState {
        &self.stream
    }

    fn stop_requested(&self) -> bool {
        self.config
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn stage_name(&self, stage: usize) -> String {
        self.mixture
            .stages
            .get(stage)
            .map_or_else(|| format!("#{stage}"), |s| s.name.clone())
    }

    /// Trains until every stage is done, [`TrainConfig::stop_after`] steps, or
    /// [`TrainConfig::stop`] is set; calls
    /// `on_event` after each step.
    pub fn run(&mut self, on_event: &mut dyn FnMut(&TrainEvent)) -> Result<Outcome> {
        let mut log = self.open_metrics_log()?;
        loop {
            let stage =
                stage_of(&self.mixture, &self.stream).map_err(|source| TrainError::Pipeline {
                    stage: "?".into(),
                    source,
                })?;
            if stage >= self.mixture.stages.len() {
                break;
            }
            if stage != self.stage {
                self.stage = stage;
                self.stage_step = 0;
            }
            let name = self.stage_name(stage);
            let training = self.mixture.stage_training(stage);
            let schedule = stage_schedule(&self.mixture, stage)?;
            let pipeline_err = |source| TrainError::Pipeline {
                stage: name.clone(),
                source,
            };
            let mut stream = stage_stream(&self.mixture, stage, &self.options, self.stream.clone())
                .map_err(pipeline_err)?;
            let mut any = false;
            loop {
                let waited = Instant::now();
                let Some(next) = stream.next() else { break };
                let wait = waited.elapsed().as_secs_f64();
                let next = next.map_err(|source| TrainError::Pipeline {
                    stage: name.clone(),
                    source,
                })?;
                any = true;
                let computed = Instant::now();
                let stats = self.train_batch(&next.batch, &training, &schedule)?;
                // dfdx's buffer cache keeps every freed size for reuse and never evicts: batches
                // of varying shapes would grow it without bound (24 GB in 60 quickstart steps).
                self.model.dev.empty_cache();
                let compute = computed.elapsed().as_secs_f64();
                self.stream = next.state;
                self.step += 1;
                self.stage_step += 1;
                let total = wait + compute;
                let examples = next.batch.segments.len();
                let tokens = next.batch.segment_ids.iter().filter(|&&s| s != 0).count();
                let event = TrainEvent {
                    step: self.step,
                    stage,
                    stage_name: name.clone(),
                    stage_step: self.stage_step,
                    stage_steps: schedule.total,
                    loss: stats.loss,
                    task_loss: stats.task_loss,
                    lr: stats.lr,
                    grad_norm: stats.grad_norm,
                    examples,
                    tokens,
                    examples_per_s: examples as f64 / total.max(1e-9),
                    tokens_per_s: tokens as f64 / total.max(1e-9),
                    data_wait: wait / total.max(1e-9),
                    step_s: total,
                    eval: self.periodic_eval(stage)?,
                };
                if let Some((path, file)) = &mut log {
                    append_event(file, &event).map_err(|e| TrainError::io(&*path, e))?;
                }
                on_event(&event);
                self.metrics.push(event);
                if self.config.checkpoint_every > 0
                    && self.step.is_multiple_of(self.config.checkpoint_every)
                {
                    self.save_checkpoint()?;
                }
                if self.config.stop_after.is_some_and(|k| self.step >= k) || self.stop_requested() {
                    drop(stream);
                    self.save_checkpoint()?;
                    return Ok(Outcome::Stopped { steps: self.step });
                }
            }
            if !any {
                return Err(TrainError::Config(format!(
                    "stage {name} produced no batches"
                )));
            }
        }
        self.save_checkpoint()?;
        Ok(Outcome::Finished { steps: self.step })
    }

    /// The loss per target token of `batch` (weighted by its loss weights, with the stage's
    /// label smoothing) and its gradients, accumulated over micro-batches of
    /// [`TrainConfig::micro_batch_rows`] rows: each micro-batch counts by its share of the
    /// batch's loss weight, so the result is the whole batch's up to rounding. Switches the
    /// model to the batch's resolution first.
    pub fn batch_loss_and_grads(
        &mut self,
        batch: &Batch,
        training: &Training,
    ) -> Result<(f32, Gradients)> {
        set_resolution(&mut self.model, batch.resolution)?;
        let mut input = model_input(batch, &self.model.cfg)?;
        if training.loss_norm == LossNorm::PerExample {
            weigh_examples_equally(batch, &mut input.loss_weights);
        }
        let parts = split_rows(&input, self.config.micro_batch_rows, &self.model.cfg);
        let opts = LossOptions {
            label_smoothing: training.label_smoothing as f32,
        };
        let weight = |p: &ModelInput| p.loss_weights.iter().map(|&w| w as f64).sum::<f64>();
        let total_weight: f64 = parts.iter().map(weight).sum();
        // Each micro-batch draws its own dropout masks, all fixed by the step.
        let (rate, seed) = (
            training.llm_dropout as f32,
            self.mixture.seed ^ (self.step << 16),
        );
        let dropout = move |part: usize| {
            (rate > 0.0).then_some(Dropout {
                rate,
                seed: seed ^ part as u64,
            })
        };
        let result = (|| -> Result<(f32, Gradients)> {
            if parts.len() == 1 || total_weight == 0.0 {
                self.model.language_model.dropout = dropout(0);
                return Ok(self.model.loss_and_grads(&input, &opts)?);
            }
            let mut acc = Gradients::leaky();
            let mut loss = 0.0f64;
            for (i, part) in parts.iter().enumerate() {
                let w = weight(part);
                if w == 0.0 {
                    continue;
                }
                self.model.language_model.dropout = dropout(i);
                let (l, mut g) = self.model.loss_and_grads(part, &opts)?;
                let share = w / total_weight;
                loss += share * l as f64;
                accumulate(&self.model, &mut acc, &mut g, share as f32);
            }
            Ok((loss as f32, acc))
        })();
        self.model.language_model.dropout = None;
        result
    }

    /// The sigmoid loss of a `siglip` stage's `batch` and its gradients (the image encoder's
    /// and the text side's); makes the text side at the run's first siglip step.
    fn siglip_loss_and_grads(&mut self, batch: &Batch) -> Result<(f32, Gradients)> {
        set_resolution(&mut self.model, batch.resolution)?;
        if self.text.is_none() {
            let longest = (0..self.mixture.stages.len())
                .filter(|&i| self.mixture.stages[i].objective == Objective::Siglip)
                .map(|i| self.mixture.stages[i].text_len() as usize)
                .max()
                .unwrap_or(1);
            let cfg = ContrastiveConfig::for_vision(
                &self.model.cfg.vision,
                self.options.tokenizer.vocab_size(),
                longest,
            );
            tracing::info!(?cfg, "a text tower for the siglip stages");
            // Drawn apart from the model's weights, but fixed by the spec's seed.
            let seed = self.mixture.seed ^ 0x5167_1195;
            self.text = Some(TextSide::new(&cfg, &self.model.dev, seed));
        }
        let text = self.text.as_ref().expect("made above");
        super::siglip::loss_and_grads(&self.model, text, batch)
    }

    /// One optimiser step on `batch` with a stage's knobs and schedule at the trainer's current
    /// stage step.
    pub fn train_batch(
        &mut self,
        batch: &Batch,
        training: &Training,
        schedule: &LrSchedule,
    ) -> Result<StepStats> {
        let stage_name = self.stage_name(self.stage);
        let siglip = self
            .mixture
            .stages
            .get(self.stage)
            .is_some_and(|s| s.objective == Objective::Siglip);
        let (loss, mut grads) = if siglip {
            self.siglip_loss_and_grads(batch)?
        } else {
            self.batch_loss_and_grads(batch, training)?
        };
        let non_finite = |what, value| TrainError::NonFinite {
            step: self.step + 1,
            stage: stage_name.clone(),
            what,
            value,
            origins: origins(batch, &self.task_names),
        };
        if !loss.is_finite() {
            return Err(non_finite("the loss", loss));
        }
        let clip = training.grad_clip as f32;
        let norm = if siglip {
            let text = self.text.as_mut().expect("made by the siglip loss");
            let mut trained = Trained {
                vision: &mut self.model.vision_tower,
                text: &mut text.tower,
            };
            clip_grad_norm(&mut trained, &mut grads, clip)
        } else {
            clip_grad_norm(&mut self.model, &mut grads, clip)
        };
        if !norm.is_finite() {
            return Err(non_finite("the gradient norm", norm));
        }
        let task_loss = if !siglip
            && self.config.task_loss_every > 0
            && (self.step + 1).is_multiple_of(self.config.task_loss_every)
        {
            self.task_losses(batch)?
        } else {
            BTreeMap::new()
        };
        let decay = training.weight_decay;
        let lr = if siglip {
            let lr = GroupLrs::siglip(schedule, self.stage_step);
            let text = self.text.as_mut().expect("made by the siglip loss");
            text.optimizer.cfg.lr = lr.text;
            text.optimizer.cfg.weight_decay = decay;
            text.optimizer.update(&mut text.tower, &mut grads);
            let groups = [Group::Vision];
            self.groups
                .update(&mut self.model, &mut grads, &lr, decay, &groups);
            lr
        } else {
            let lr = GroupLrs::at(training, schedule, self.stage_step);
            let groups = Group::trained(training.freeze_vit);
            self.groups
                .update(&mut self.model, &mut grads, &lr, decay, groups);
            lr
        };
        Ok(StepStats {
            loss,
            grad_norm: norm,
            lr,
            task_loss,
        })
    }

    /// Mean unsmoothed cross-entropy per target token of each task in `batch`.
    fn task_losses(&self, batch: &Batch) -> Result<BTreeMap<String, f32>> {
        let input = model_input(batch, &self.model.cfg)?;
        let mut token_losses = Vec::with_capacity(batch.rows * batch.seq_len);
        for part in &split_rows(&input, self.config.micro_batch_rows, &self.model.cfg) {
            token_losses.extend(self.model.token_losses(part)?);
        }
        let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for seg in &batch.segments {
            let base = seg.row as usize * batch.seq_len + seg.start as usize;
            let entry = sums
                .entry(
                    self.task_names
                        .get(seg.task_id as usize)
                        .cloned()
                        .unwrap_or_default(),
                )
                .or_default();
            for i in base..base + seg.len as usize {
                let w = batch.loss_weights[i] as f64;
                entry.0 += w * token_losses[i] as f64;
                entry.1 += w;
            }
        }
        Ok(sums
            .into_iter()
            .filter(|(_, (_, w))| *w > 0.0)
            .map(|(t, (l, w))| (t, (l / w) as f32))
            .collect())
    }

    /// The held-out headline scores, on the steps the spec's `eval.every` asks for.
    fn periodic_eval(&mut self, stage: usize) -> Result<BTreeMap<String, f64>> {
        let every = self.mixture.eval.every;
        if every == 0 || !self.step.is_multiple_of(every) {
            return Ok(BTreeMap::new());
        }
        let report = crate::eval::evaluate(
            &mut self.model,
            &self.mixture,
            &self.options,
            &crate::eval::EvalOptions {
                stage,
                samples_per_task: 0,
            },
        )?;
        Ok(report
            .tasks
            .iter()
            .filter_map(|t| t.headline().map(|(_, v)| (t.task.clone(), *v)))
            .collect())
    }

    /// `RUN_DIR/metrics.jsonl` rewritten with the events so far (after a resume, those of the
    /// checkpoint: later steps are redone), open to append.
    fn open_metrics_log(&self) -> Result<Option<(PathBuf, std::fs::File)>> {
        let Some(run_dir) = &self.config.run_dir else {
            return Ok(None);
        };
        let path = run_dir.join(METRICS_FILE);
        let tmp = run_dir.join(format!("{METRICS_FILE}.tmp"));
        let mut text = Vec::new();
        for event in &self.metrics {
            append_event(&mut text, event).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Some((path, file)))
    }

    /// Writes a checkpoint of the run as it is now (no-op without a run folder).
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(run_dir) = &self.config.run_dir else {
            return Ok(None);
        };
        let dir = run_dir.join("checkpoints");
        let state = RunState {
            format: FORMAT,
            step: self.step,
            stage: self.stage,
            stage_step: self.stage_step,
            stream: self.stream.clone(),
            spec: spec_json(&self.mixture),
            metrics: self.metrics.clone(),
            contrastive: self.text.as_ref().map(|t| t.tower.cfg.clone()),
        };
        let path = save_run_checkpoint(
            &dir,
            &mut self.model,
            &mut self.groups,
            self.text.as_mut(),
            &state,
            &self.options.tokenizer,
            self.config.keep_checkpoints,
        )?;
        tracing::info!(path = %path.display(), step = self.step, "checkpoint");
        Ok(Some(path))
    }
}

/// One event per line of `RUN_DIR/metrics.jsonl`.
pub const METRICS_FILE: &str = "metrics.jsonl";

fn append_event(out: &mut impl std::io::Write, event: &TrainEvent) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")
}

fn spec_json(mixture: &Mixture) -> serde_json::Value {
    serde_json::to_value(mixture).expect("a mixture always serialises")
}
