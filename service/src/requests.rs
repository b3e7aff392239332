//! The bodies clients send: the server reads them, the HTTP client writes them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::store::TrainOptions;

/// `POST /v1/runs`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A stored mixture's id...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture: Option<i64>,
    /// ...or a spec inline: TOML or JSON text, or a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecInput>,
    /// The folder relative data paths of an inline spec are relative to (default: the first
    /// data root); the paths must stay inside the data roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
    #[serde(default)]
    pub start: StartRequest,
    /// The run folder (checkpoints, metrics, evaluations): inside the data roots, relative to
    /// `base`, empty or new; default `DATA_DIR/runs/ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    #[serde(default)]
    pub options: TrainOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SpecInput {
    Text(String),
    Object(serde_json::Value),
}

impl SpecInput {
    pub fn into_text(self) -> String {
        match self {
            SpecInput::Text(text) => text,
            SpecInput::Object(value) => value.to_string(),
        }
    }
}

/// Where a new run's weights come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartRequest {
    /// A random model of a preset: `tiny`, `small`, `paligemma-3b-pt-224`, ...; its vision
    /// tower from `image_encoder` (a checkpoint inside the data roots) if given.
    Fresh {
        config: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_encoder: Option<PathBuf>,
    },
    /// A Hugging Face PaliGemma folder inside the data roots.
    Init { dir: PathBuf },
    /// Another run's checkpoint: the newest, or the one at `step`.
    Checkpoint {
        run: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u64>,
    },
}

impl Default for StartRequest {
    fn default() -> Self {
        StartRequest::Fresh {
            config: "small".into(),
            image_encoder: None,
        }
    }
}

/// `POST /v1/runs/{id}/evaluations`: one of the run's checkpoints scored on its spec's
/// held-out data (each source's `eval_data`). Unset fields take the spec's `[eval]` settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalRequest {
    /// The checkpoint's step; default the newest when the evaluation starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// The stage whose resolution and text length to use, by name; default the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Held-out examples per task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<u32>,
    /// Beams (1: greedy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beams: Option<u32>,
}
