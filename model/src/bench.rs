//! Timing of forward passes and training steps on a synthetic batch shaped like
//! `tools/bench_torch.py`'s: per row, the image tokens, then `text_len` text tokens (24 of
//! prefix with `<bos>` and `"\n"`, the rest suffix with `<eos>`), loss on the suffix.

use std::time::Instant;

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};
use crate::input::ModelInput;
use crate::layers::Params;
use crate::loss::LossOptions;
use crate::optim::{AdamW, AdamWConfig};
use crate::paligemma::PaliGemma;
use dfdx::tensor::Synchronize;

use crate::{TrainTape, device};

/// Medians over the timed steps, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub batch: usize,
    pub seq_len: usize,
    pub params: usize,
    pub threads: usize,
    pub steps: usize,
    /// Inference forward to the loss (no tape).
    pub forward_ms: f64,
    /// Training step: forward with tape, backward, AdamW.
    pub train_step_ms: f64,
    /// CPU time (all threads) per training step: robust to other load on the machine.
    pub train_step_cpu_ms: f64,
    pub train_forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Model FLOPs of one training step (forward + backward: 6 x weights x tokens, plus
    /// attention), for utilisation figures.
    pub train_step_flops: f64,
    /// Tokens (image + text) per second of training.
    pub train_tokens_per_s: f64,
    /// Tokens per second of inference forward.
    pub forward_tokens_per_s: f64,
    pub first_loss: f32,
    pub last_loss: f32,
}

/// A synthetic batch for `cfg`: `batch` rows of one image and `text_len` text tokens.
pub fn synthetic_batch(
    cfg: &PaliGemmaConfig,
    batch: usize,
    text_len: usize,
    seed: u64,
) -> Result<ModelInput> {
    const PREFIX: usize = 24;
    if text_len < PREFIX + 2 {
        return Err(ModelError::Input(format!(
            "text_len {text_len} must be at least {}",
            PREFIX + 2
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let k = cfg.num_image_tokens();
    let len = k + text_len;
    let v = cfg.text.vocab_size as u32;
    let hi = v.clamp(4, 8000);
    let mut input = ModelInput {
        batch,
        len,
        n_images: batch,
        ..Default::default()
    };
    for r in 0..batch {
        input
            .tokens
            .extend(std::iter::repeat_n(cfg.image_token_id, k));
        input.tokens.push(cfg.bos_token_id);
        input
            .tokens
            .extend((0..PREFIX - 2).map(|_| rng.gen_range(3..hi)));
        input.tokens.push(108.min(v - 1));
        input
            .tokens
            .extend((0..text_len - PREFIX - 1).map(|_| rng.gen_range(3..hi)));
        input.tokens.push(cfg.eos_token_id);
        input.image_slots.push((r, 0));
        input.segment_ids.extend(std::iter::repeat_n(1, len));
        input.positions.extend(0..len as u32);
        input.causal.extend((0..len).map(|i| i >= k + PREFIX));
        input.loss_weights.extend((0..len).map(|i| {
            if i + 1 >= k + PREFIX && i + 1 < len {
                1.0
            } else {
                0.0
            }
        }));
    }
    let r = cfg.vision.image_size;
    input.pixels = (0..batch * cfg.vision.num_channels * r * r)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    input.validate(cfg)?;
    Ok(input)
}

/// CPU time of this process (user + system, all threads), in milliseconds.
fn cpu_ms() -> f64 {
    1e3 * pipeline::bench::process_cpu_seconds()
}

/// FLOPs of forward + backward (3x forward) for one batch: 2 per weight per token in each
/// matmul, plus QK^T and PV; the LM head only at the loss positions is ignored (small).
pub fn train_flops(cfg: &PaliGemmaConfig, batch: usize, seq_len: usize) -> f64 {
    let (v, t) = (&cfg.vision, &cfg.text);
    let n = cfg.num_image_tokens() as f64;
    let (vd, vm) = (v.hidden_size as f64, v.intermediate_size as f64);
    let vis_layer = 2.0 * n * (4.0 * vd * vd + 2.0 * vd * vm) + 4.0 * n * n * vd;
    let vis = v.num_hidden_layers as f64 * vis_layer
        + 2.0 * n * (v.patch_dim() as f64 * vd + vd * t.hidden_size as f64);
    let (d, hd, l) = (t.hidden_size as f64, t.head_dim as f64, seq_len as f64);
    let (nh, nkv, m) = (
        t.num_attention_heads as f64,
        t.num_key_value_heads as f64,
        t.intermediate_size as f64,
    );
    let txt_layer =
        2.0 * l * (d * hd * (2.0 * nh + 2.0 * nkv) + 3.0 * d * m) + 4.0 * l * l * nh * hd;
    let txt = t.num_hidden_layers as f64 * txt_layer;
    3.0 * batch as f64 * (vis + txt)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `steps` inference forwards and `steps` training steps (after 2 warm-up steps) of a
/// random `cfg` model on a synthetic batch.
pub fn bench(
    cfg: &PaliGemmaConfig,
    batch: usize,
    text_len: usize,
    steps: usize,
) -> Result<BenchReport> {
    bench_with(cfg, batch, text_len, steps, true)
}

/// [`bench`], optionally without the optimiser (forward + backward only: no AdamW moments,
/// for the largest models on one GPU).
pub fn bench_with(
    cfg: &PaliGemmaConfig,
    batch: usize,
    text_len: usize,
    steps: usize,
    optimizer: bool,
) -> Result<BenchReport> {
    crate::tune_malloc();
    let dev = device();
    let mut model = PaliGemma::new(cfg, &dev, 0)?;
    let input = synthetic_batch(cfg, batch, text_len, 0)?;
    let opts = LossOptions::default();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-4,
        ..Default::default()
    });
    let steps = steps.max(1);
    let (mut fwd, mut step, mut tf, mut bw, mut up, mut cpu) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut first, mut last) = (None, 0.0);
    for i in 0..steps + 2 {
        let c0 = cpu_ms();
        let t0 = Instant::now();
        let loss = model.loss::<TrainTape>(&input, &opts);
        let value = loss.array();
        let t1 = Instant::now();
        let mut grads = loss.backward();
        dev.synchronize(); // device work is asynchronous on CUDA
        let t2 = Instant::now();
        if optimizer {
            opt.update(&mut model, &mut grads);
        }
        drop(grads);
        dev.synchronize();
        let t3 = Instant::now();
        let c3 = cpu_ms();
        first.get_or_insert(value);
        last = value;
        let t4 = Instant::now();
        let _ = model.loss::<NoneTape>(&input, &opts).array();
        let t5 = Instant::now();
        tracing::debug!(
            step = i,
            loss = value,
            ms = (t3 - t0).as_secs_f64() * 1e3,
            "bench step"
        );
        if i >= 2 {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            tf.push(ms(t0, t1));
            bw.push(ms(t1, t2));
            up.push(ms(t2, t3));
            step.push(ms(t0, t3));
            cpu.push(c3 - c0);
            fwd.push(ms(t4, t5));
        }
    }
    let tokens = (batch * input.len) as f64;
    let (step_ms, fwd_ms) = (median(step), median(fwd));
    Ok(BenchReport {
        batch,
        seq_len: input.len,
        params: model.num_params(),
        threads: rayon::current_num_threads(),
        steps,
        forward_ms: fwd_ms,
        train_step_ms: step_ms,
        train_step_cpu_ms: median(cpu),
        train_forward_ms: median(tf),
        backward_ms: median(bw),
        optimizer_ms: median(up),
        train_step_flops: train_flops(cfg, batch, input.len),
        train_tokens_per_s: tokens / step_ms * 1e3,
        forward_tokens_per_s: tokens / fwd_ms * 1e3,
        first_loss: first.unwrap_or(f32::NAN),
        last_loss: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_on_the_tiny_config() {
        let r = bench(&PaliGemmaConfig::tiny(), 2, 30, 2).unwrap();
        assert_eq!(r.seq_len, 16 + 30);
        assert_eq!(r.params, 127_776);
        assert!(r.train_step_ms > 0.0 && r.forward_ms > 0.0 && r.train_tokens_per_s > 0.0);
        assert!(r.first_loss > 5.0 && r.first_loss < 6.5, "{}", r.first_loss);
    }
}
