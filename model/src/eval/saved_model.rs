//! Evaluating a model saved on disk (a Hugging Face folder, a run checkpoint, or a run folder,
//! meaning its newest checkpoint) on a spec's held-out data. `paliforge eval` and the
//! service's evaluations both go through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mixtures::Mixture;
use pipeline::mixture::{RunOptions, load_tokenizer};

use super::evaluate::{EvalOptions, EvalReport, evaluate, held_out_tasks};
use crate::Dev;
use crate::train::{Result, TrainError, latest_checkpoint};

/// What to evaluate, and how.
#[derive(Clone, Debug, Default)]
pub struct SavedModelEval {
    /// A Hugging Face PaliGemma folder, a run checkpoint, or a run folder.
    pub model: PathBuf,
    /// The stage whose resolution and text length to use, by name; default the last.
    pub stage: Option<String>,
    /// The tokenizer; default the model folder's `tokenizer.json`, else the one beside `spec`
    /// or the data.
    pub tokenizer: Option<PathBuf>,
    /// The spec's file, where a tokenizer beside it is looked for.
    pub spec: Option<PathBuf>,
    /// Data pipeline workers; 0 uses every core.
    pub threads: usize,
    /// Sample predictions kept per task.
    pub samples_per_task: usize,
}

/// The scores of one saved model.
#[derive(Clone, Debug)]
pub struct SavedModelReport {
    /// The folder whose weights were evaluated.
    pub model: PathBuf,
    /// The stage whose settings were used.
    pub stage: usize,
    pub report: EvalReport,
}

/// The folder holding the weights `model` names: a run folder's newest checkpoint, or itself.
fn weights_folder(model: &Path) -> Result<PathBuf> {
    Ok(latest_checkpoint(&model.join("checkpoints"))?.unwrap_or_else(|| model.to_path_buf()))
}

/// Evaluates the saved model on every task of `mixture` that has held-out data.
pub fn evaluate_saved_model(
    mixture: &Mixture,
    what: &SavedModelEval,
    dev: &Dev,
) -> Result<SavedModelReport> {
    let where_ = || {
        what.spec
            .as_ref()
            .map_or_else(|| "the spec".to_string(), |p| p.display().to_string())
    };
    if held_out_tasks(mixture) == 0 {
        return Err(TrainError::Config(format!(
            "{}: no source has `eval_data`, so there is nothing held out to evaluate on",
            where_()
        )));
    }
    let stage = match &what.stage {
        Some(name) => mixture
            .stages
            .iter()
            .position(|s| &s.name == name)
            .ok_or_else(|| TrainError::Config(format!("{}: no stage named {name}", where_())))?,
        None => mixture.stages.len().saturating_sub(1),
    };
    let folder = weights_folder(&what.model)?;
    // A run checkpoint carries the run's tokenizer; otherwise beside the spec or the data.
    let beside_weights = Some(folder.join("tokenizer.json")).filter(|p| p.is_file());
    let tokenizer = what.tokenizer.clone().or(beside_weights);
    let tokenizer = load_tokenizer(tokenizer.as_deref(), what.spec.as_deref(), mixture)?;
    let options = RunOptions {
        threads: what.threads,
        ..RunOptions::new(Arc::new(tokenizer))
    };
    let resolution = mixture.stages[stage].resolution() as usize;
    let mut model = crate::checkpoint::load_at_resolution(&folder, dev, resolution)?;
    tracing::info!(model = %folder.display(), stage, "evaluating");
    let report = evaluate(
        &mut model,
        mixture,
        &options,
        &EvalOptions {
            stage,
            samples_per_task: what.samples_per_task,
        },
    )?;
    Ok(SavedModelReport {
        model: folder,
        stage,
        report,
    })
}
