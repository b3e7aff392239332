//! AdamW over the model's parameters, with dfdx's Adam kernel (decoupled weight decay).

use std::collections::HashMap;
use std::path::Path;

use dfdx::prelude::*;
use dfdx::tensor::Storage;
use dfdx::tensor_ops::{AdamConfig, WeightDecay};
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};
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
        AdamWConfig {
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            decay_vectors: true,
        }
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
        AdamW {
            cfg,
            step: 0,
            m1: Gradients::leaky(),
            m2: Gradients::leaky(),
        }
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
            weight_decay: (decay && self.cfg.weight_decay != 0.0)
                .then_some(WeightDecay::Decoupled(self.cfg.weight_decay)),
        };
        let (with, without) = (adam(true), adam(self.cfg.decay_vectors));
        let (m1, m2) = (&mut self.m1, &mut self.m2);
        model.visit_mut("", &mut |_, p| match p {
            ParamMut::Matrix(p) => step(&with, t, p, m1, m2, grads),
            ParamMut::Vector(p) => step(&without, t, p, m1, m2, grads),
        });
    }
}

/// Overwrites a gradient-sized device buffer with host values.
fn write_buffer(buf: &mut <Dev as Storage<f32>>::Vec, data: &[f32]) {
    #[cfg(not(feature = "cuda"))]
    buf.copy_from_slice(data);
    #[cfg(feature = "cuda")]
    {
        let dev = buf.device();
        dev.htod_sync_copy_into(data, &mut **buf)
            .expect("copy to the GPU");
    }
}

/// The values of `t`'s entry in `g` (allocated as zeros if absent).
pub(crate) fn read_entry<S: Shape>(g: &mut Gradients, t: &Tensor<S, f32, Dev>) -> Vec<f32> {
    g.get_or_alloc_mut(t).expect("alloc");
    g.get(t).as_vec()
}

/// Overwrites `t`'s entry in `g` with host values.
pub(crate) fn write_entry<S: Shape>(g: &mut Gradients, t: &Tensor<S, f32, Dev>, data: &[f32]) {
    write_buffer(g.get_or_alloc_mut(t).expect("alloc"), data);
}

/// Global L2 norm of the gradients of `model`'s parameters.
pub fn grad_norm<M: Params>(model: &mut M, grads: &mut Gradients) -> f32 {
    let mut sq = 0.0f64;
    model.visit_mut("", &mut |_, p| {
        let v = match p {
            ParamMut::Matrix(t) => {
                grads.get_or_alloc_mut(&*t).expect("alloc");
                grads.get(&*t).square().sum::<Rank0, _>().array()
            }
            ParamMut::Vector(t) => {
                grads.get_or_alloc_mut(&*t).expect("alloc");
                grads.get(&*t).square().sum::<Rank0, _>().array()
            }
        };
        sq += v as f64;
    });
    sq.sqrt() as f32
}

/// Scales the gradients so that their global norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`; a `max_norm` of 0 or less does not clip, as a spec's
/// `grad_clip = 0`); returns the norm before clipping. On CUDA the scaling goes through host
/// memory.
pub fn clip_grad_norm<M: Params>(model: &mut M, grads: &mut Gradients, max_norm: f32) -> f32 {
    let norm = grad_norm(model, grads);
    let c = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && c < 1.0 {
        model.visit_mut("", &mut |_, p| match p {
            ParamMut::Matrix(t) => {
                let v: Vec<f32> = read_entry(grads, &*t).iter().map(|x| x * c).collect();
                write_entry(grads, &*t, &v);
            }
            ParamMut::Vector(t) => {
                let v: Vec<f32> = read_entry(grads, &*t).iter().map(|x| x * c).collect();
                write_entry(grads, &*t, &v);
            }
        });
    }
    norm
}

impl AdamW {
    /// Saves the step count and both moments of every parameter (named `m1.<param>`,
    /// `m2.<param>`) as safetensors, so that a run resumes exactly.
    pub fn save_state<M: Params>(&mut self, model: &mut M, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let (m1, m2) = (&mut self.m1, &mut self.m2);
        model.visit_mut("", &mut |name, p| {
            let shape = p.shape();
            let (a, b) = match p {
                ParamMut::Matrix(t) => (read_entry(m1, &*t), read_entry(m2, &*t)),
                ParamMut::Vector(t) => (read_entry(m1, &*t), read_entry(m2, &*t)),
            };
            let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            tensors.push((format!("m1.{name}"), shape.clone(), bytes(a)));
            tensors.push((format!("m2.{name}"), shape, bytes(b)));
        });
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .expect("view"),
                )
            })
            .collect();
        let meta: HashMap<String, String> = [("step".to_string(), self.step.to_string())].into();
        let tmp = path.with_extension("tmp");
        safetensors::serialize_to_file(views, &Some(meta), &tmp).map_err(|e| {
            ModelError::Safetensors {
                path: tmp.clone(),
                message: e.to_string(),
            }
        })?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    }

    /// Restores what [`Self::save_state`] wrote, for the same model; errors name a missing or
    /// misshapen moment.
    pub fn load_state<M: Params>(&mut self, model: &mut M, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::Safetensors {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ModelError::Safetensors {
                path: path.to_owned(),
                message: "no `step` metadata".into(),
            })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let (m1, m2) = (&mut self.m1, &mut self.m2);
        let mut result = Ok(());
        model.visit_mut("", &mut |name, p| {
            if result.is_err() {
                return;
            }
            let shape = p.shape();
            let read = |key: String| crate::checkpoint::read_exact(&st, path, &key, &shape);
            result = (|| {
                let (a, b) = (read(format!("m1.{name}"))?, read(format!("m2.{name}"))?);
                match p {
                    ParamMut::Matrix(t) => {
                        write_entry(m1, &*t, &a);
                        write_entry(m2, &*t, &b);
                    }
                    ParamMut::Vector(t) => {
                        write_entry(m1, &*t, &a);
                        write_entry(m2, &*t, &b);
                    }
                }
                Ok(())
            })();
        });
        result?;
        self.step = step;
        Ok(())
    }
}

fn step<S: Shape>(
    cfg: &AdamConfig,
    t: i32,
    p: &mut Tensor<S, f32, Dev>,
    m1: &mut Gradients,
    m2: &mut Gradients,
    grads: &mut Gradients,
) {
    let a = m1.get_or_alloc_mut(p).expect("alloc moment");
    let b = m2.get_or_alloc_mut(p).expect("alloc moment");
    let g = grads.get_or_alloc_mut(p).expect("alloc grad");
    cfg.try_update(t, p, a, b, g).expect("adam update");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PaliGemmaConfig;
    use crate::paligemma::PaliGemma;

    fn input(cfg: &PaliGemmaConfig) -> crate::ModelInput {
        crate::bench::synthetic_batch(cfg, 1, 30, 3).unwrap()
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let cfg = PaliGemmaConfig::tiny();
        let mut m = PaliGemma::new(&cfg, &crate::device(), 1).unwrap();
        let (_, mut g) = m.loss_and_grads(&input(&cfg), &Default::default()).unwrap();
        let before = grad_norm(&mut m, &mut g);
        assert!(before > 0.0);
        assert_eq!(
            clip_grad_norm(&mut m, &mut g, 0.0),
            before,
            "0: no clipping"
        );
        assert_eq!(grad_norm(&mut m, &mut g), before);
        let reported = clip_grad_norm(&mut m, &mut g, before / 4.0);
        assert!((reported - before).abs() < 1e-4 * before);
        let after = grad_norm(&mut m, &mut g);
        assert!(
            (after - before / 4.0).abs() < 1e-3 * before,
            "{after} vs {}",
            before / 4.0
        );
    }

    /// Training resumed from saved weights and optimiser state follows the same path.
    #[test]
    fn adamw_state_resumes_exactly() {
        let cfg = PaliGemmaConfig::tiny();
        let dev = crate::device();
        let batch = input(&cfg);
        let opts = Default::default();
        let acfg = AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        };
        let mut a = PaliGemma::new(&cfg, &dev, 1).unwrap();
        let mut opt_a = AdamW::new(acfg.clone());
        for _ in 0..3 {
            let (_, mut g) = a.loss_and_grads(&batch, &opts).unwrap();
            opt_a.update(&mut a, &mut g);
        }
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::save(&a, dir.path(), &Default::default()).unwrap();
        opt_a
            .save_state(&mut a, &dir.path().join("optimizer.safetensors"))
            .unwrap();
        let mut b = crate::checkpoint::load(dir.path(), &dev).unwrap();
        let mut opt_b = AdamW::new(acfg);
        opt_b
            .load_state(&mut b, &dir.path().join("optimizer.safetensors"))
            .unwrap();
        assert_eq!(opt_b.steps(), 3);
        for _ in 0..2 {
            for (m, o) in [(&mut a, &mut opt_a), (&mut b, &mut opt_b)] {
                let (_, mut g) = m.loss_and_grads(&batch, &opts).unwrap();
                o.update(m, &mut g);
            }
        }
        let (la, _) = a.loss_and_grads(&batch, &opts).unwrap();
        let (lb, _) = b.loss_and_grads(&batch, &opts).unwrap();
        assert_eq!(la, lb);
        // a fresh optimiser (no state) diverges: the test can tell the difference
        let mut c = crate::checkpoint::load(dir.path(), &dev).unwrap();
        let mut opt_c = AdamW::new(AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        });
        for _ in 0..2 {
            let (_, mut g) = c.loss_and_grads(&batch, &opts).unwrap();
            opt_c.update(&mut c, &mut g);
        }
        let (lc, _) = c.loss_and_grads(&batch, &opts).unwrap();
        assert_ne!(lc, la);
    }
}
