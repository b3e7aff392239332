//! Learning-rate schedules over a stage's optimiser steps.
//!
//! Steps count from 0 within a stage. Warm-up is linear and never wastes a step at lr 0:
//! step `s < warmup` gets `(s + 1) / warmup` of the base rate, so step `warmup - 1` is the
//! first at the full rate. After warm-up, with `p = (s - warmup) / (total - warmup)` in
//! `[0, 1)`:
//! - `rsqrt`: `sqrt(t / (s + 1 - w + t))` with `w = max(warmup, 1)` and `t` the timescale
//!   (default `w`, which makes it `sqrt(w / (s + 1))`): continuous with the warm-up, no fixed
//!   end, `1/sqrt(2)` of the peak `t` steps after it (big_vision's rsqrt decay, whose default
//!   `t` is 10,000). The last `cooldown` steps of the stage also ramp linearly down to
//!   `1 / cooldown` of it (big_vision's "infinite" schedule; 0: no cool-down).
//! - `cosine`: `(1 + cos(pi p)) / 2`.
//! - `linear`: `1 - p`.
//! - `constant`: 1.
//!
//! The image encoder's slower warm-up ([`linear_warmup`] with `vit_warmup`) multiplies its
//! group's rate on top of the stage's schedule.
//!
//! A stage that `continues` the one before it carries that stage's rsqrt schedule on: its step
//! `s` is step `offset + s` of the schedule, `offset` being the planned steps of the stages it
//! continues; only its cool-down is its own.

use mixtures::{Schedule, Training};
use serde::{Deserialize, Serialize};

/// A stage's schedule, resolved to step counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub base: f64,
    pub warmup: u64,
    /// Rsqrt only: steps after the warm-up to fall to `1/sqrt(2)` of the peak.
    pub timescale: u64,
    /// Planned optimiser steps of the stage (cosine and linear reach their end there).
    pub total: u64,
    /// Rsqrt only: steps of linear cool-down at the end of the stage.
    pub cooldown: u64,
    /// Steps of the schedule run before this stage, by the stages it continues; 0 for a stage
    /// that starts its own.
    #[serde(default)]
    pub offset: u64,
    /// The image encoder's own warm-up, in steps of the schedule.
    #[serde(default)]
    pub vit_warmup: u64,
}

/// `min(1, (step + 1) / warmup)`; 1 without warm-up.
pub fn linear_warmup(step: u64, warmup: u64) -> f64 {
    if warmup == 0 {
        1.0
    } else {
        ((step + 1) as f64 / warmup as f64).min(1.0)
    }
}

impl LrSchedule {
    /// The stage's knobs over `total` planned steps (fractions of warm-up resolve against it).
    pub fn from_training(training: &Training, total: u64) -> Self {
        let warmup = training.warmup.steps(total);
        LrSchedule {
            kind: training.schedule,
            base: training.lr,
            warmup,
            timescale: training.timescale.unwrap_or(warmup),
            total,
            cooldown: training.cooldown,
            offset: 0,
            vit_warmup: training.vit_warmup.steps(total),
        }
    }

    /// This schedule carried on by a stage of `total` planned steps with its own `cooldown`.
    pub fn continued(&self, total: u64, cooldown: u64) -> Self {
        LrSchedule {
            total,
            cooldown,
            offset: self.offset + self.total,
            ..*self
        }
    }

    /// Multiplier of the base rate at stage step `stage_step`.
    pub fn factor(&self, stage_step: u64) -> f64 {
        // The schedule's own step: a continued stage carries on where the ones before ended.
        let step = self.offset + stage_step;
        if step < self.warmup {
            return linear_warmup(step, self.warmup);
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f64 / decay_steps as f64).min(1.0);
        match self.kind {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - p,
            Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Schedule::Rsqrt => {
                let (w, t) = (self.warmup.max(1) as f64, self.timescale.max(1) as f64);
                let decay = (t / (step as f64 + 1.0 - w + t)).sqrt();
                let start = self.total.saturating_sub(self.cooldown);
                let cool = if self.cooldown > 0 && stage_step >= start {
                    let left = self.total.saturating_sub(stage_step);
                    (left as f64 / self.cooldown as f64).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                decay * cool
            }
        }
    }

    /// The learning rate at stage step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base * self.factor(step)
    }

    /// The image encoder's warm-up factor at stage step `step`.
    pub fn vit_factor(&self, step: u64) -> f64 {
        linear_warmup(self.offset + step, self.vit_warmup)
    }
}
