//! The `siglip` objective: a stage that trains the image encoder alone, with SigLIP's sigmoid
//! loss ([`crate::contrastive`]) between each image and its example's suffix (the caption the
//! prefix-LM would have learnt to write), against a text tower that lives beside the model.
//! The projector and the LLM rest.
//!
//! The text side is made at the run's first siglip step, and saved in every checkpoint from
//! then on (`contrastive.safetensors` and its optimiser state), so that a run stopped inside
//! the stage resumes exactly; it is not part of the model the run produces.

use std::path::Path;

use dfdx::prelude::*;
use pipeline::Batch;

use super::{Result, TrainError};
use crate::contrastive::{Contrastive, ContrastiveConfig};
use crate::layers::{ParamMut, ParamRef, Params, join};
use crate::optim::{AdamW, AdamWConfig};
use crate::siglip::SiglipVision;
use crate::{Dev, Gradients, PaliGemma, TrainTape};

/// The text side's weights, in a checkpoint folder.
pub const TOWER_FILE: &str = "contrastive.safetensors";
/// The text side's optimiser state, in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer-contrastive.safetensors";

/// The text tower and heads with their own AdamW state.
pub struct TextSide {
    pub tower: Contrastive,
    pub optimizer: AdamW,
}

impl TextSide {
    pub fn new(cfg: &ContrastiveConfig, dev: &Dev, seed: u64) -> Self {
        TextSide {
            tower: Contrastive::new(cfg, dev, seed),
            optimizer: AdamW::new(AdamWConfig {
                lr: 0.0,
                weight_decay: 0.0,
                ..Default::default()
            }),
        }
    }

    /// Writes [`TOWER_FILE`] and [`OPTIMIZER_FILE`] in `dir`.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        crate::checkpoint::save_params(&self.tower, &dir.join(TOWER_FILE))?;
        self.optimizer
            .save_state(&mut self.tower, &dir.join(OPTIMIZER_FILE))?;
        Ok(())
    }

    /// Reads what [`Self::save`] wrote for a text side of `cfg`.
    pub fn load(cfg: &ContrastiveConfig, dir: &Path, dev: &Dev) -> Result<Self> {
        let mut side = TextSide::new(cfg, dev, 0);
        crate::checkpoint::load_params(&mut side.tower, &dir.join(TOWER_FILE))?;
        side.optimizer
            .load_state(&mut side.tower, &dir.join(OPTIMIZER_FILE))?;
        Ok(side)
    }
}

/// The text of each image of `batch`, in image order: the tokens its example predicts (its
/// suffix and `<eos>`). Each image must be the only one of its row (unpacked, single-image
/// examples: the spec's validation asks for both).
pub fn captions(batch: &Batch) -> Result<Vec<Vec<u32>>> {
    let mut seen = vec![false; batch.rows];
    batch
        .image_slots
        .iter()
        .map(|slot| {
            let row = slot.row as usize;
            if std::mem::replace(&mut seen[row], true) {
                return Err(TrainError::Batch(format!(
                    "row {row} holds more than one image: a siglip stage pairs one image with one text"
                )));
            }
            let span = row * batch.seq_len..(row + 1) * batch.seq_len;
            let text: Vec<u32> = span
                .filter(|&p| batch.loss_weights[p] > 0.0)
                .filter_map(|p| batch.tokens.get(p + 1).copied())
                .collect();
            if text.is_empty() {
                return Err(TrainError::Batch(format!(
                    "row {row} has no suffix to pair its image with"
                )));
            }
            Ok(text)
        })
        .collect()
}

/// The sigmoid loss of `batch` and its gradients (the image encoder's and the text side's).
pub fn loss_and_grads(
    model: &PaliGemma,
    side: &TextSide,
    batch: &Batch,
) -> Result<(f32, Gradients)> {
    let texts = captions(batch)?;
    if texts.len() < 2 {
        return Err(TrainError::Batch(format!(
            "{} image(s): a siglip step needs two at least, each the others' negative",
            texts.len()
        )));
    }
    let longest = texts.iter().map(Vec::len).max().unwrap_or(0);
    if longest > side.tower.cfg.max_len {
        return Err(TrainError::Batch(format!(
            "a caption of {longest} tokens: the text tower holds {}",
            side.tower.cfg.max_len
        )));
    }
    let tokens = model.image_tokens::<TrainTape>(&batch.pixels, batch.n_images());
    let loss = side
        .tower
        .loss(tokens, model.cfg.num_image_tokens(), &texts);
    Ok((loss.array(), loss.backward()))
}

/// What a siglip step trains, seen as one set of parameters for the gradient norm.
pub struct Trained<'a> {
    pub vision: &'a mut SiglipVision,
    pub text: &'a mut Contrastive,
}

impl Params for Trained<'_> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        self.vision.visit(&join(prefix, "vision_tower"), f);
        self.text.visit(&join(prefix, "contrastive"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        self.vision.visit_mut(&join(prefix, "vision_tower"), f);
        self.text.visit_mut(&join(prefix, "contrastive"), f);
    }
}
