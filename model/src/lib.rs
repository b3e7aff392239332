//! PaliGemma (SigLIP vision tower, linear projector, Gemma decoder) on dfdx 0.13.
//!
//! Numerically the model of Hugging Face transformers' `PaliGemmaForConditionalGeneration`
//! (see `tests/oracle.rs`); weights load from and save to its safetensors names.
//!
//! - [`config`]: model dimensions, presets, transformers' `config.json`.
//! - [`layers`]: linear, LayerNorm, RMSNorm, the parameter visitor.
//! - [`attention`]: the batch contract's attention mask, RoPE, multi-/grouped-query attention.
//! - [`siglip`], [`gemma`], [`paligemma`]: the towers and the whole model.
//! - [`contrastive`]: SigLIP's text tower and sigmoid loss, to pretrain the image encoder.
//! - [`input`]: [`ModelInput`], the model's view of the pipeline's batch contract.
//! - [`loss`]: weighted cross-entropy from logits.
//! - [`checkpoint`]: Hugging Face safetensors in and out.
//! - [`decode`]: greedy and beam search with a KV cache.
//! - [`fused`]: fused, multi-threaded CPU ops with their own backward (GELU/GeGLU, masked
//!   softmax, RMSNorm, LayerNorm, RoPE, bias add), each tested against its plain-op twin.
//! - [`optim`]: AdamW over the model's parameters.
//! - [`stage0`]: a new PaliGemma from SigLIP and Gemma checkpoints (vocabulary extension).
//! - [`bench`]: timing of forward and training steps.
//! - [`train`]: the trainer: pipeline batches, schedules, optimiser groups, run checkpoints.
//! - [`eval`]: held-out evaluation: decoding and per-task metrics.

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod contrastive;
pub mod decode;
pub mod error;
pub mod eval;
pub mod fused;
pub mod gemma;
pub mod input;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod paligemma;
pub mod siglip;
pub mod stage0;
pub mod train;

pub use bench::{BenchReport, bench, bench_with};
pub use checkpoint::NameLayout;
pub use config::{PaliGemmaConfig, TextConfig, VisionConfig};
pub use decode::{BeamOptions, DecodeOptions, Generation, Prompt, beam_search, greedy};
pub use error::ModelError;
pub use input::ModelInput;
pub use loss::LossOptions;
pub use optim::{AdamW, AdamWConfig, clip_grad_norm, grad_norm};
pub use paligemma::PaliGemma;

/// The device every tensor lives on: the CPU, or with the `cuda` feature the first GPU.
#[cfg(not(feature = "cuda"))]
pub type Dev = dfdx::tensor::Cpu;
/// The device every tensor lives on: the CPU, or with the `cuda` feature the first GPU.
#[cfg(feature = "cuda")]
pub type Dev = dfdx::tensor::Cuda;

/// A tape recording operations for backward.
pub type TrainTape = dfdx::tensor::OwnedTape<f32, Dev>;
/// A vector (biases, norm weights).
pub type Vector = dfdx::tensor::Tensor<(usize,), f32, Dev>;
/// A matrix (linear weights), rows first; activations are `[rows, features]` matrices.
pub type Matrix<T = dfdx::tensor::NoneTape> = dfdx::tensor::Tensor<(usize, usize), f32, Dev, T>;
/// Gradients of a backward pass, keyed by tensor.
pub type Gradients = dfdx::tensor::Gradients<f32, Dev>;

/// Keeps freed large buffers in glibc's heap instead of returning them to the kernel, so that
/// the per-step tensors of training reuse memory without page faults and zero-filling (about a
/// fifth of the CPU time of a `small` training step otherwise). Process-wide; call once at the
/// start of training or benchmarking.
pub fn tune_malloc() {
    pipeline::malloc::keep_freed(1 << 30, Some(64 << 20));
}

/// Creates the device (CPU, or GPU 0 with the `cuda` feature), with denormal floats flushed to
/// zero on this thread and the compute pool. dfdx's buffer cache stays off unless
/// `PALIFORGE_DFDX_CACHE=1`: measured on the `small` step at 2 threads it made the step slower
/// (0.70 s against 0.54 s) and the process five times larger (model/README.md).
pub fn device() -> Dev {
    use dfdx::tensor::Cache;
    flush_denormals();
    let dev = Dev::default();
    if std::env::var("PALIFORGE_DFDX_CACHE").as_deref() == Ok("1") {
        dev.enable_cache();
    }
    dev
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread and every thread of the
/// global rayon pool (where the matmuls and fused ops run). A training step makes denormal
/// values (the gradients of masked attention, of padding), and x86 arithmetic on them is
/// about a hundred times slower: without this a `small` quickstart step took 45 s instead of
/// 2 s. Values below 1.2e-38 become 0, as PyTorch's `set_flush_denormal(True)` does.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    fn on_this_thread() {
        // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR;
        // every x86_64 CPU has SSE2 and both flags.
        #[allow(deprecated)]
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fn on_this_thread() {}
    on_this_thread();
    rayon::broadcast(|_| on_this_thread());
}
