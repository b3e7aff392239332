//! Run checkpoints: everything a run needs to continue exactly where it was.
//!
//! `RUN_DIR/checkpoints/step-00000123/` holds the model (Hugging Face safetensors and
//! `config.json`, via [`crate::checkpoint::save`]; the folder opens in transformers), the run's
//! `tokenizer.json`, each optimiser group's state ([`super::Groups::save`]), the text side of
//! `siglip` stages once one has run ([`super::siglip::TextSide::save`]), and `state.json`
//! ([`RunState`]: step, stage, the pipeline's stream state, the spec, metrics so far). It is written under a
//! temporary name and renamed when complete, so a folder named `step-*` is always whole;
//! a crash mid-write leaves only a `.tmp-*` folder, removed by the next save.

use std::path::{Path, PathBuf};

use pipeline::stream::StreamState;
use pipeline::text::PaliTokenizer;
use serde::{Deserialize, Serialize};

use super::groups::Groups;
use super::siglip::TextSide;
use super::trainer::TrainEvent;
use super::{Result, TrainError};
use crate::contrastive::ContrastiveConfig;
use crate::{Dev, PaliGemma};

/// Version of `state.json`'s layout.
pub const FORMAT: u32 = 1;
const STATE_FILE: &str = "state.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const PREFIX: &str = "step-";
const TMP_PREFIX: &str = ".tmp-";

/// The run's position and history, `state.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    /// Optimiser steps done in the whole run.
    pub step: u64,
    /// The stage the last step belonged to, and steps done in it.
    pub stage: usize,
    pub stage_step: u64,
    /// Resumes the pipeline right after the last batch trained on.
    pub stream: StreamState,
    /// The mixture spec, as JSON.
    pub spec: serde_json::Value,
    /// One event per step so far.
    pub metrics: Vec<TrainEvent>,
    /// The text side of `siglip` stages, once one has run (its weights and optimiser state
    /// are files beside the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrastive: Option<ContrastiveConfig>,
}

/// The folder of the checkpoint at `step` under `dir`.
pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:08}"))
}

/// The complete checkpoints under `dir` (a run's `checkpoints` folder) as `(step, folder)`,
/// oldest first.
pub fn complete_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
            && entry.path().join(STATE_FILE).is_file()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `dir` (a run's `checkpoints` folder), if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(complete_checkpoints(dir)?.pop().map(|(_, p)| p))
}

/// Writes a checkpoint of `state.step` under `dir` (temporary folder, then rename), then
/// removes all but the newest `keep` (0 keeps all) and any leftover temporary folders.
/// Returns the checkpoint's folder.
pub fn save_run_checkpoint(
    dir: &Path,
    model: &mut PaliGemma,
    groups: &mut Groups,
    text: Option<&mut TextSide>,
    state: &RunState,
    tokenizer: &PaliTokenizer,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let final_dir = step_dir(dir, state.step);
    let tmp = dir.join(format!("{TMP_PREFIX}{PREFIX}{:08}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    crate::checkpoint::save(model, &tmp, &Default::default())?;
    groups.save(model, &tmp)?;
    if let Some(text) = text {
        text.save(&tmp)?;
    }
    // The run's tokenizer beside the weights: the folder predicts and evaluates on its own.
    let tokenizer_path = tmp.join(TOKENIZER_FILE);
    tokenizer
        .inner()
        .save(&tokenizer_path, false)
        .map_err(|e| TrainError::Checkpoint {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
    let path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec(state).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_synced(&path, &json)?;
    if final_dir.exists() {
        // The same step saved again (a resumed run's end): the new one replaces it.
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let all = complete_checkpoints(dir)?;
    if keep > 0 && all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(final_dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

/// What a checkpoint folder holds.
pub struct RunCheckpoint {
    pub model: PaliGemma,
    pub groups: Groups,
    /// The text side of `siglip` stages, if one has run.
    pub text: Option<TextSide>,
    pub state: RunState,
}

/// Reads a checkpoint folder.
pub fn load_run_checkpoint(dir: &Path, dev: &Dev) -> Result<RunCheckpoint> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: RunState = serde_json::from_slice(&bytes).map_err(|e| TrainError::Checkpoint {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if state.format != FORMAT {
        return Err(TrainError::Checkpoint {
            path,
            message: format!("format {} (this build reads {FORMAT})", state.format),
        });
    }
    let mut model = crate::checkpoint::load(dir, dev)?;
    let mut groups = Groups::new(0.0);
    groups.load(&mut model, dir)?;
    let text = match &state.contrastive {
        Some(cfg) => Some(TextSide::load(cfg, dir, dev)?),
        None => None,
    };
    Ok(RunCheckpoint {
        model,
        groups,
        text,
        state,
    })
}
