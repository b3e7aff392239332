//! Stage 0: a new PaliGemma assembled from off-the-shelf unimodal checkpoints in Hugging Face's
//! format, a SigLIP (vision tower used, pooling head and text tower dropped) and a Gemma causal
//! LM, with the vocabulary extended by `<locNNNN>`, `<segNNN>` and `<image>` tokens.
//!
//! New-model initialisation as the PaliGemma paper found best: the projector starts at zero,
//! new token embeddings are drawn from N(0, 0.02^2).

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use serde_json::{Value, json};

use crate::Dev;
use crate::checkpoint::{LoadPlan, load_image_encoder, load_planned};
use crate::config::{Connector, PaliGemmaConfig};
use crate::error::{ModelError, Result};
use crate::layers::{ParamMut, Params};
use crate::paligemma::PaliGemma;

/// Options of [`assemble`].
#[derive(Clone, Debug)]
pub struct Stage0Options {
    /// Input resolution; `None` keeps the SigLIP checkpoint's (the position-embedding grid is
    /// resampled otherwise).
    pub image_size: Option<usize>,
    /// `<loc0000>`..: 1024 in PaliGemma.
    pub loc_tokens: usize,
    /// `<seg000>`..: 128 in PaliGemma.
    pub seg_tokens: usize,
    /// Round the vocabulary up to a multiple of this (64: 257216 for Gemma's 256000).
    pub pad_vocab_to: usize,
    pub connector: Connector,
    /// Standard deviation of the new token embeddings.
    pub new_token_std: f32,
    pub seed: u64,
}

impl Default for Stage0Options {
    fn default() -> Self {
        Stage0Options {
            image_size: None,
            loc_tokens: 1024,
            seg_tokens: 128,
            pad_vocab_to: 64,
            connector: Connector::Linear,
            new_token_std: 0.02,
            seed: 0,
        }
    }
}

/// Where the added tokens went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    /// The Gemma checkpoint's vocabulary size: ids below it are unchanged.
    pub base: usize,
    /// `<loc0000>` (then consecutive).
    pub loc_start: u32,
    /// `<seg000>` (then consecutive).
    pub seg_start: u32,
    pub image_token_id: u32,
    /// The extended vocabulary's size (padded rows are unused).
    pub vocab_size: usize,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_owned(),
        source: e,
    })
}

/// Builds a PaliGemma from `siglip_dir` (a SigLIP or SigLIP-vision checkpoint folder) and
/// `gemma_dir` (a Gemma causal-LM folder).
pub fn assemble(
    siglip_dir: &Path,
    gemma_dir: &Path,
    opts: &Stage0Options,
    dev: &Dev,
) -> Result<(PaliGemma, Vocabulary)> {
    let sc = read_json(&siglip_dir.join("config.json"))?;
    let mut vc = sc.get("vision_config").cloned().unwrap_or(sc.clone());
    vc["vision_use_head"] = json!(false);
    if let Some(size) = opts.image_size {
        vc["image_size"] = json!(size);
    }
    let mut tc = read_json(&gemma_dir.join("config.json"))?;
    let base = tc
        .get("vocab_size")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no vocab_size",
                gemma_dir.join("config.json").display()
            ))
        })? as usize;
    let loc_start = base as u32;
    let seg_start = loc_start + opts.loc_tokens as u32;
    let image_token_id = seg_start + opts.seg_tokens as u32;
    let m = opts.pad_vocab_to.max(1);
    let vocab_size = (image_token_id as usize + 1).div_ceil(m) * m;
    tc["vocab_size"] = json!(vocab_size);
    let hidden = tc.get("hidden_size").cloned().unwrap_or(json!(2048));
    let mut pg = json!({
        "model_type": "paligemma",
        "vision_config": vc,
        "text_config": tc,
        "image_token_index": image_token_id,
        "projection_dim": hidden,
    });
    if opts.connector == Connector::Mlp {
        pg["paliforge_connector"] = json!("mlp");
    }
    let cfg = PaliGemmaConfig::from_hf_json(&pg)?;
    let mut model = PaliGemma::new(&cfg, dev, opts.seed)?;

    load_image_encoder(&mut model, siglip_dir)?;
    let text = LoadPlan {
        rename: &|n: &str| {
            if n == "lm_head.weight" {
                return None;
            }
            Some(format!(
                "language_model.{}",
                n.strip_prefix("model.")
                    .map_or(n.to_string(), |r| format!("model.{r}"))
            ))
        },
        optional: &|n: &str| !n.starts_with("language_model."),
        resize_position_embedding: false,
        partial_embedding: true,
    };
    load_planned(&mut model, gemma_dir, &text)?;

    // new token rows: N(0, std^2); projector: zero
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0x5eed);
    let normal =
        Normal::new(0.0f32, opts.new_token_std).map_err(|e| ModelError::Config(e.to_string()))?;
    let h = cfg.text.hidden_size;
    let mut emb = model.language_model.embed_tokens.as_vec();
    emb[base * h..]
        .iter_mut()
        .for_each(|x| *x = normal.sample(&mut rng));
    model.language_model.embed_tokens.copy_from(&emb);
    model
        .multi_modal_projector
        .visit_mut("", &mut |_, mut p: ParamMut<'_>| {
            let n = p.shape().iter().product();
            p.copy_from(&vec![0.0; n]);
        });
    tracing::info!(
        base,
        vocab_size,
        image_token_id,
        "assembled a Stage 0 PaliGemma"
    );
    Ok((
        model,
        Vocabulary {
            base,
            loc_start,
            seg_start,
            image_token_id,
            vocab_size,
        },
    ))
}
