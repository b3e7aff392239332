//! The training knobs a stage hands the trainer, and their defaults per recipe.
//!
//! Defaults follow the PaliGemma paper (Beyer et al., 2024) where it fixes a choice, and say
//! so; the rest are paliforge's defaults.
//!
//! | knob | `pretrain` (Stages 1-2) | `transfer` (Stage 3) |
//! | --- | --- | --- |
//! | `lr` | 2e-5 (ours) | 1e-5 (paper's recommended transfer default) |
//! | `schedule` | `rsqrt` (ours: open-ended, no planned end) | `cosine` (paper) |
//! | `warmup` | 1,000 steps | 5 % of the stage (paper) |
//! | `timescale` (rsqrt only) | the warm-up's length (ours; big_vision's default is 10,000) | - |
//! | `cooldown` (rsqrt only) | 0 steps: none (big_vision's "infinite" schedule ends in one) | - |
//! | `vit_warmup` | 10 % of the stage: the paper's slow linear warm-up of the image encoder | as `warmup` |
//! | `continues` | false (true: the previous stage's rsqrt schedule, carried on) | false |
//! | `freeze_vit` | false (paper: the image encoder is trained in every stage) | false (paper) |
//! | `image_lr_scale` | 1 (ours: the image encoder's and projector's rate as a multiple of `lr`) | 1 |
//! | `label_smoothing` | 0 | 0 (paper) |
//! | `llm_dropout` | 0 | 0 (paper) |
//! | `weight_decay` | 0 | 0 (paper) |
//! | `grad_clip` | 1.0 (global norm) | 1.0 |

use serde::{Deserialize, Serialize};

/// Which family of defaults a stage starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// Multimodal pretraining on a broad mixture (the paper's Stages 1 and 2).
    #[default]
    Pretrain,
    /// Fine-tuning to one task or a small mix (the paper's Stage 3).
    Transfer,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// lr · sqrt(timescale / (steps since the warm-up + timescale)): no fixed end, so a stage
    /// can stop anywhere and still have decayed smoothly, and a later stage can carry it on
    /// (`continues`). Otherwise, like every schedule, it counts the stage's own steps.
    Rsqrt,
    /// Cosine decay to zero at the end of the stage.
    Cosine,
    /// Linear decay to zero at the end of the stage.
    Linear,
    Constant,
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schedule::Rsqrt => "rsqrt",
            Schedule::Cosine => "cosine",
            Schedule::Linear => "linear",
            Schedule::Constant => "constant",
        })
    }
}

/// A warm-up length: a number of optimiser steps or a fraction of the stage's steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Warmup {
    Steps(u64),
    Fraction(f64),
}

impl Warmup {
    /// Steps of warm-up in a stage of `total_steps`.
    pub fn steps(self, total_steps: u64) -> u64 {
        match self {
            Warmup::Steps(n) => n,
            Warmup::Fraction(f) => (f * total_steps as f64).round() as u64,
        }
    }
}

/// How the loss of a batch averages its target tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossNorm {
    /// Every target token counts the same: long answers weigh more. Default.
    #[default]
    PerToken,
    /// Each example's mean over its tokens, then the mean over examples (as big_vision does):
    /// short answers count as much as long ones.
    PerExample,
}

/// The `train` table of a stage as written: anything left out takes the recipe's default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    /// Rsqrt only: the steps after the warm-up over which the rate falls to 1/sqrt(2) of its
    /// peak (big_vision's `timescale`); default the warm-up's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<u64>,
    /// Rsqrt only: the stage's last steps, over which the rate ramps linearly down (to
    /// `1 / cooldown` of it on the last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<u64>,
    /// The image encoder's own (slower) linear warm-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vit_warmup: Option<Warmup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_vit: Option<bool>,
    /// The image encoder's and the projector's learning rate as a multiple of `lr`, like a
    /// per-parameter `lr_mults` of big_vision's configs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_lr_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip; 0 turns clipping off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_norm: Option<LossNorm>,
    /// Carries the previous stage's rsqrt schedule on instead of starting one: its `lr`,
    /// `schedule`, warm-ups and `timescale`, its steps counted after that stage's planned
    /// steps (continuous pretraining across a change of resolution or mixture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<bool>,
}

/// Every knob resolved: what the trainer consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup: Warmup,
    /// Rsqrt's timescale in steps; `None`: the warm-up's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timescale: Option<u64>,
    /// Rsqrt's linear cool-down at the end of the stage, in steps (0: none).
    #[serde(default)]
    pub cooldown: u64,
    pub vit_warmup: Warmup,
    pub freeze_vit: bool,
    /// Multiplies the image encoder's and the projector's rate (1 in runs saved before it).
    #[serde(default = "unit")]
    pub image_lr_scale: f64,
    pub label_smoothing: f64,
    pub llm_dropout: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub loss_norm: LossNorm,
    /// The schedule knobs are the previous stage's, carried on (see [`TrainSpec::continues`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues: bool,
}

fn unit() -> f64 {
    1.0
}

impl Recipe {
    pub fn defaults(self) -> Training {
        let transfer_warmup = Warmup::Fraction(0.05);
        match self {
            Recipe::Pretrain => Training {
                lr: 2e-5,
                schedule: Schedule::Rsqrt,
                warmup: Warmup::Steps(1000),
                timescale: None,
                cooldown: 0,
                vit_warmup: Warmup::Fraction(0.1),
                freeze_vit: false,
                image_lr_scale: 1.0,
                label_smoothing: 0.0,
                llm_dropout: 0.0,
                weight_decay: 0.0,
                grad_clip: 1.0,
                loss_norm: LossNorm::PerToken,
                continues: false,
            },
            Recipe::Transfer => Training {
                lr: 1e-5,
                schedule: Schedule::Cosine,
                warmup: transfer_warmup,
                timescale: None,
                cooldown: 0,
                vit_warmup: transfer_warmup,
                freeze_vit: false,
                image_lr_scale: 1.0,
                label_smoothing: 0.0,
                llm_dropout: 0.0,
                weight_decay: 0.0,
                grad_clip: 1.0,
                loss_norm: LossNorm::PerToken,
                continues: false,
            },
        }
    }

    /// Default batch size: the paper's transfer recipe uses 256; pretraining uses 1024 (ours).
    pub fn batch_size(self) -> u32 {
        match self {
            Recipe::Pretrain => 1024,
            Recipe::Transfer => 256,
        }
    }
}

impl TrainSpec {
    pub fn resolve(&self, recipe: Recipe) -> Training {
        let d = recipe.defaults();
        let warmup = self.warmup.unwrap_or(d.warmup);
        Training {
            lr: self.lr.unwrap_or(d.lr),
            schedule: self.schedule.unwrap_or(d.schedule),
            warmup,
            timescale: self.timescale.or(d.timescale),
            cooldown: self.cooldown.unwrap_or(d.cooldown),
            // In transfer the encoder follows the same warm-up unless told otherwise.
            vit_warmup: self.vit_warmup.unwrap_or(match recipe {
                Recipe::Pretrain => d.vit_warmup,
                Recipe::Transfer => warmup,
            }),
            freeze_vit: self.freeze_vit.unwrap_or(d.freeze_vit),
            image_lr_scale: self.image_lr_scale.unwrap_or(d.image_lr_scale),
            label_smoothing: self.label_smoothing.unwrap_or(d.label_smoothing),
            llm_dropout: self.llm_dropout.unwrap_or(d.llm_dropout),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            grad_clip: self.grad_clip.unwrap_or(d.grad_clip),
            loss_norm: self.loss_norm.unwrap_or(d.loss_norm),
            continues: self.continues.unwrap_or(false),
        }
    }
}
