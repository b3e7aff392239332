//! Training: the pipeline's batches in, optimiser steps, run checkpoints that resume exactly.
//!
//! One concept per file:
//! - [`batch`]: a pipeline [`pipeline::Batch`] as a [`crate::ModelInput`], and its split into
//!   micro-batches for gradient accumulation.
//! - [`schedule`]: learning-rate schedules (rsqrt with warm-up and cool-down, cosine, linear,
//!   constant) and the image encoder's slower linear warm-up.
//! - [`groups`]: the optimiser groups (image encoder, projector, LLM), each with its own
//!   AdamW state and learning rate; `freeze_vit`.
//! - [`checkpoint`]: a run checkpoint (weights, optimiser state, step, the pipeline's state,
//!   the spec, metrics), written atomically, the last K kept.
//! - [`siglip`]: the step of a `siglip` stage: the image encoder against a text tower.
//! - [`trainer`]: the loop over a mixture's stages, its guard rails and its event stream.
//! - [`report`]: the run's HTML report: loss curves, scores, sample predictions.
//! - [`run`]: opening a run from a spec and a run folder (fresh, from a Hugging Face folder,
//!   or resumed), as the CLI and the service do.

pub mod batch;
pub mod checkpoint;
pub mod groups;
pub mod report;
pub mod run;
pub mod schedule;
pub mod siglip;
pub mod trainer;

use std::path::PathBuf;

pub use batch::{model_input, split_rows};
pub use checkpoint::{
    RunCheckpoint, RunState, complete_checkpoints, latest_checkpoint, load_run_checkpoint,
    save_run_checkpoint,
};
pub use groups::{Group, GroupLrs, Groups};
pub use report::write_report;
pub use run::{RunSetup, Start, open_run, read_spec};
pub use schedule::{LrSchedule, linear_warmup};
pub use trainer::{
    Outcome, StepStats, TrainConfig, TrainEvent, Trainer, config_for_tokenizer, planned_steps,
    stage_schedule,
};

/// Errors of training; each names the file, step, stage or batch at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    #[error("stage {stage}: {source}")]
    Pipeline {
        stage: String,
        #[source]
        source: pipeline::PipelineError,
    },
    #[error("{path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error(transparent)]
    Tokenizer(#[from] pipeline::text::TokenizerError),
    #[error("invalid training setup: {0}")]
    Config(String),
    /// A new run into a folder that holds another run's checkpoints.
    #[error("{} already holds checkpoints: resume that run, or choose another run folder", checkpoints.display())]
    RunExists { checkpoints: PathBuf },
    #[error("batch does not fit the model: {0}")]
    Batch(String),
    /// A NaN or Inf loss or gradient: the run stops before the update, the last checkpoint
    /// stays the newest.
    #[error(
        "step {step} (stage {stage}): {what} is {value}; the batch's examples came from: {origins}"
    )]
    NonFinite {
        step: u64,
        stage: String,
        what: &'static str,
        value: f32,
        origins: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
