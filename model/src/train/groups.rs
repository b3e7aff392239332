//! Optimiser groups: the image encoder, the projector and the LLM, each with its own AdamW
//! state (moments and step count, so bias correction stays per group) and learning rate.
//!
//! The image encoder's rate is the stage's schedule times its own slower linear warm-up
//! (`vit_warmup`); with `freeze_vit` it is not updated at all (its moments and step count
//! stay as they were, so unfreezing in a later stage continues from them).

use std::path::Path;

use mixtures::Training;
use serde::{Deserialize, Serialize};

use super::Result;
use super::schedule::LrSchedule;
use crate::optim::{AdamW, AdamWConfig};
use crate::{Gradients, PaliGemma};

/// One optimiser group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Vision,
    Projector,
    Llm,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Vision, Group::Projector, Group::Llm];

    /// The groups a prefix-LM step trains: all but a frozen image encoder.
    pub fn trained(freeze_vit: bool) -> &'static [Group] {
        if freeze_vit {
            &[Group::Projector, Group::Llm]
        } else {
            &Group::ALL
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Vision => "vision",
            Group::Projector => "projector",
            Group::Llm => "llm",
        }
    }

    /// The group of a parameter named as [`crate::layers::Params`] names it.
    pub fn of(param: &str) -> Group {
        if param.starts_with("vision_tower.") {
            Group::Vision
        } else if param.starts_with("multi_modal_projector.") {
            Group::Projector
        } else {
            Group::Llm
        }
    }

    /// The file of this group's optimiser state inside a checkpoint.
    pub fn state_file(self) -> String {
        format!("optimizer-{}.safetensors", self.name())
    }
}

/// Learning rates of one step, per group (0 for a frozen group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupLrs {
    pub vision: f64,
    pub projector: f64,
    pub llm: f64,
    /// The text side of a `siglip` stage ([`super::siglip`]); 0 elsewhere.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub text: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl GroupLrs {
    /// The rates of stage step `step` of a stage with these knobs and this schedule.
    pub fn at(training: &Training, schedule: &LrSchedule, step: u64) -> Self {
        let lr = schedule.lr(step);
        let image = lr * training.image_lr_scale;
        let vision = if training.freeze_vit {
            0.0
        } else {
            image * schedule.vit_factor(step)
        };
        GroupLrs {
            vision,
            projector: image,
            llm: lr,
            text: 0.0,
        }
    }

    /// The rates of a `siglip` stage: the image encoder and the text side at the stage's
    /// scheduled rate, the projector and the LLM at rest.
    pub fn siglip(schedule: &LrSchedule, step: u64) -> Self {
        let lr = schedule.lr(step);
        GroupLrs {
            vision: lr,
            text: lr,
            ..Default::default()
        }
    }

    /// The highest rate of the step, for a one-number display.
    pub fn peak(&self) -> f64 {
        self.vision.max(self.projector).max(self.llm).max(self.text)
    }

    pub fn get(&self, group: Group) -> f64 {
        match group {
            Group::Vision => self.vision,
            Group::Projector => self.projector,
            Group::Llm => self.llm,
        }
    }
}

/// The three groups' AdamW states.
pub struct Groups {
    vision: AdamW,
    projector: AdamW,
    llm: AdamW,
}

impl Groups {
    /// Fresh states; `weight_decay` is decoupled (AdamW's), matrices and vectors alike.
    pub fn new(weight_decay: f64) -> Self {
        let cfg = AdamWConfig {
            lr: 0.0,
            weight_decay,
            ..Default::default()
        };
        Groups {
            vision: AdamW::new(cfg.clone()),
            projector: AdamW::new(cfg.clone()),
            llm: AdamW::new(cfg),
        }
    }

    pub fn optimizer(&self, group: Group) -> &AdamW {
        match group {
            Group::Vision => &self.vision,
            Group::Projector => &self.projector,
            Group::Llm => &self.llm,
        }
    }

    fn optimizer_mut(&mut self, group: Group) -> &mut AdamW {
        match group {
            Group::Vision => &mut self.vision,
            Group::Projector => &mut self.projector,
            Group::Llm => &mut self.llm,
        }
    }

    /// One update of each group of `groups` at its rate in `lrs`, with `weight_decay`; the
    /// others stay as they are (their moments and step counts too).
    pub fn update(
        &mut self,
        model: &mut PaliGemma,
        grads: &mut Gradients,
        lrs: &GroupLrs,
        weight_decay: f64,
        groups: &[Group],
    ) {
        for &group in groups {
            let opt = self.optimizer_mut(group);
            opt.cfg.lr = lrs.get(group);
            opt.cfg.weight_decay = weight_decay;
            match group {
                Group::Vision => opt.update(&mut model.vision_tower, grads),
                Group::Projector => opt.update(&mut model.multi_modal_projector, grads),
                Group::Llm => opt.update(&mut model.language_model, grads),
            }
        }
    }

    /// Writes each group's state as `optimizer-<group>.safetensors` in `dir`.
    pub fn save(&mut self, model: &mut PaliGemma, dir: &Path) -> Result<()> {
        self.vision.save_state(
            &mut model.vision_tower,
            &dir.join(Group::Vision.state_file()),
        )?;
        self.projector.save_state(
            &mut model.multi_modal_projector,
            &dir.join(Group::Projector.state_file()),
        )?;
        self.llm.save_state(
            &mut model.language_model,
            &dir.join(Group::Llm.state_file()),
        )?;
        Ok(())
    }

    /// Reads what [`Self::save`] wrote, for the same model.
    pub fn load(&mut self, model: &mut PaliGemma, dir: &Path) -> Result<()> {
        self.vision.load_state(
            &mut model.vision_tower,
            &dir.join(Group::Vision.state_file()),
        )?;
        self.projector.load_state(
            &mut model.multi_modal_projector,
            &dir.join(Group::Projector.state_file()),
        )?;
        self.llm.load_state(
            &mut model.language_model,
            &dir.join(Group::Llm.state_file()),
        )?;
        Ok(())
    }
}
