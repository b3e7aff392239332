//! AdamW over the model's parameters, with dfdx's Adam kernel (decoupled weight decay).

use dfdx::prelude::*;
use dfdx::tensor_ops::{AdamConfig, WeightDecay};

use crate::layers::{ParamMut, Params};
use crate::{Dev, Gradients};

/// Hyper-parameters, as `torch.optim.AdamW`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Decay vectors (biases, norms) too; torch's default does.
    pub decay_vectors: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01, decay_vectors: true }
    }
}

/// AdamW state: the two moments of every parameter and the step count.
pub struct AdamW {
    pub cfg: AdamWConfig,
    step: i32,
    m1: Gradients,
    m2: Gradients,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW { cfg, step: 0, m1: Gradients::leaky(), m2: Gradients::leaky() }
    }

    pub fn steps(&self) -> i32 {
        self.step
    }

    /// One update of every parameter of `model` from `grads` (a parameter without a gradient
    /// is updated with a zero one).
    pub fn update<M: Params>(&mut self, model: &mut M, grads: &mut Gradients) {
        self.step += 1;
        let t = self.step;
        let adam = |decay: bool| AdamConfig {
            lr: self.cfg.lr,
            betas: self.cfg.betas,
            eps: self.cfg.eps,
            weight_decay: (decay && self.cfg.weight_decay != 0.0).then_some(WeightDecay::Decoupled(self.cfg.weight_decay)),
        };
        let (with, without) = (adam(true), adam(self.cfg.decay_vectors));
        let (m1, m2) = (&mut self.m1, &mut self.m2);
        model.visit_mut("", &mut |_, p| match p {
            ParamMut::Matrix(p) => step(&with, t, p, m1, m2, grads),
            ParamMut::Vector(p) => step(&without, t, p, m1, m2, grads),
        });
    }
}

fn step<S: Shape>(cfg: &AdamConfig, t: i32, p: &mut Tensor<S, f32, Dev>, m1: &mut Gradients, m2: &mut Gradients, grads: &mut Gradients) {
    let a = m1.get_or_alloc_mut(p).expect("alloc moment");
    let b = m2.get_or_alloc_mut(p).expect("alloc moment");
    let g = grads.get_or_alloc_mut(p).expect("alloc grad");
    cfg.try_update(t, p, a, b, g).expect("adam update");
}
