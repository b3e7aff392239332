//! Opening a run: the spec read and checked against its data, the tokenizer found, and the
//! model made fresh, loaded from a Hugging Face folder, or restored with the whole run from the
//! run folder's newest checkpoint. `paliforge train`, the quickstart and the service all start
//! runs here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mixtures::{Mixture, ValidationContext};
use pipeline::mixture::{RunOptions, inspect_sources, load_tokenizer};
use serde::{Deserialize, Serialize};

use super::checkpoint::latest_checkpoint;
use super::trainer::{TrainConfig, Trainer, check_tokenizer, config_for_tokenizer};
use super::{Result, TrainError};
use crate::{Dev, PaliGemma, PaliGemmaConfig};

/// Where a run's weights come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// A randomly initialised model of a preset (`tiny`, `small`, `paligemma-3b-pt-224`, ...)
    /// with the tokenizer's vocabulary and special ids; its vision tower taken from
    /// `image_encoder` if given (a SigLIP, PaliGemma or encoder-only checkpoint), as
    /// PaliGemma's first stage starts from a pretrained SigLIP.
    Fresh {
        config: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_encoder: Option<PathBuf>,
    },
    /// A Hugging Face PaliGemma folder (config.json and safetensors).
    Init { dir: PathBuf },
    /// The run folder's newest complete checkpoint: the run continues exactly.
    Resume,
}

/// Everything that opens a run.
#[derive(Clone, Debug)]
pub struct RunSetup {
    /// The mixture spec (TOML or JSON); relative data paths are relative to it.
    pub spec: PathBuf,
    /// The run folder: checkpoints, `metrics.jsonl`, `spec.json`.
    pub out: PathBuf,
    pub start: Start,
    /// The tokenizer; default: `tokenizer.json` beside the spec or the data.
    pub tokenizer: Option<PathBuf>,
    /// Data pipeline workers; 0 uses every core.
    pub threads: usize,
    /// How to train; its `run_dir` is set to `out`.
    pub train: TrainConfig,
}

/// Reads the spec and checks it against its sources' columns, naming the spec file.
pub fn read_spec(path: &Path) -> Result<Mixture> {
    let spec_error = |message: String| TrainError::Spec {
        path: path.to_path_buf(),
        message,
    };
    let mixture = Mixture::from_path(path).map_err(|e| spec_error(e.to_string()))?;
    let facts = inspect_sources(&mixture);
    let columns_of = |s: &str| facts.get(s)?.as_ref().ok().map(|f| f.columns.clone());
    mixture
        .validate(&ValidationContext::new().with_columns(&columns_of))
        .map_err(|e| spec_error(e.to_string()))?;
    Ok(mixture)
}

/// Opens the run `setup` describes, ready to [`Trainer::run`].
pub fn open_run(setup: RunSetup, dev: &Dev) -> Result<Trainer> {
    let mixture = read_spec(&setup.spec)?;
    let tokenizer = Arc::new(load_tokenizer(
        setup.tokenizer.as_deref(),
        Some(&setup.spec),
        &mixture,
    )?);
    let options = RunOptions {
        threads: setup.threads,
        ..RunOptions::new(tokenizer.clone())
    };
    std::fs::create_dir_all(&setup.out).map_err(|e| TrainError::io(&setup.out, e))?;
    let train = TrainConfig {
        run_dir: Some(setup.out.clone()),
        ..setup.train
    };
    let checkpoints = setup.out.join("checkpoints");
    let latest = latest_checkpoint(&checkpoints)?;
    let trainer = match (&setup.start, latest) {
        (Start::Resume, Some(latest)) => Trainer::resume(&latest, mixture, options, train, dev)?,
        (Start::Resume, None) => {
            return Err(TrainError::Config(format!(
                "cannot resume: no complete checkpoint in {}",
                checkpoints.display()
            )));
        }
        (_, Some(_)) => return Err(TrainError::RunExists { checkpoints }),
        (
            Start::Fresh {
                config,
                image_encoder,
            },
            None,
        ) => {
            let mut cfg = config_for_tokenizer(PaliGemmaConfig::preset(config)?, &tokenizer);
            cfg.vision.image_size = first_resolution(&mixture)?;
            let mut model = PaliGemma::new(&cfg, dev, mixture.seed)?;
            if let Some(loc) = tokenizer.loc_ids() {
                model.language_model.init_ordinal_embeddings(loc);
            }
            if let Some(path) = image_encoder {
                crate::checkpoint::load_image_encoder(&mut model, path)?;
            }
            Trainer::new(mixture, model, options, train)?
        }
        (Start::Init { dir }, None) => {
            let model =
                crate::checkpoint::load_at_resolution(dir, dev, first_resolution(&mixture)?)?;
            check_tokenizer(&model.cfg, &tokenizer, &format!("model {}", dir.display()))?;
            Trainer::new(mixture, model, options, train)?
        }
    };
    let spec_copy = setup.out.join("spec.json");
    std::fs::write(&spec_copy, trainer.mixture().to_json())
        .map_err(|e| TrainError::io(&spec_copy, e))?;
    Ok(trainer)
}

fn first_resolution(mixture: &Mixture) -> Result<usize> {
    let first = mixture
        .stages
        .first()
        .ok_or_else(|| TrainError::Config("the spec has no stages".into()))?;
    Ok(first.resolution() as usize)
}
