//! The SigLIP vision tower: patch embedding, learned position embedding, pre-LN encoder
//! layers with tanh-GELU MLPs, post-LayerNorm; no pooling head (PaliGemma uses every patch).

use dfdx::prelude::*;
use rand::Rng;

use crate::attention::{Heads, Mask, attention};
use crate::config::VisionConfig;
use crate::layers::{Draw, Init, LayerNorm, Linear, gelu, impl_params};
use crate::{Dev, Matrix};

/// Patch embedding (a stride-`patch` convolution, stored as `[hidden, channels * patch^2]`) and
/// the learned position embedding (`[num_patches, hidden]`).
#[derive(Clone, Debug)]
pub struct VisionEmbeddings {
    pub patch_embedding: Linear,
    pub position_embedding: Matrix,
}
impl_params!(VisionEmbeddings {
    "patch_embedding" => patch_embedding,
    "position_embedding.weight" => position_embedding,
});

#[derive(Clone, Debug)]
pub struct SiglipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
}
impl_params!(SiglipAttention {
    "q_proj" => q_proj, "k_proj" => k_proj, "v_proj" => v_proj, "out_proj" => out_proj,
});

#[derive(Clone, Debug)]
pub struct SiglipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
}
impl_params!(SiglipMlp { "fc1" => fc1, "fc2" => fc2 });

#[derive(Clone, Debug)]
pub struct SiglipLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: SiglipAttention,
    pub layer_norm2: LayerNorm,
    pub mlp: SiglipMlp,
}
impl_params!(SiglipLayer {
    "layer_norm1" => layer_norm1, "self_attn" => self_attn,
    "layer_norm2" => layer_norm2, "mlp" => mlp,
});

impl SiglipLayer {
    /// A new layer of `width` features, drawn as SigLIP draws one: Xavier-uniform attention
    /// and MLP weights, biases zero (the MLP's N(0, 1e-6) taken as zero), norms identity.
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, width: usize, mlp: usize, eps: f64) -> Self {
        let mut xavier = |inp, out| Linear::drawn(init, inp, out, true, Draw::XavierUniform);
        let self_attn = SiglipAttention {
            q_proj: xavier(width, width),
            k_proj: xavier(width, width),
            v_proj: xavier(width, width),
            out_proj: xavier(width, width),
        };
        let mlp = SiglipMlp {
            fc1: xavier(width, mlp),
            fc2: xavier(mlp, width),
        };
        SiglipLayer {
            layer_norm1: LayerNorm::init(init, width, eps),
            self_attn,
            layer_norm2: LayerNorm::init(init, width, eps),
            mlp,
        }
    }

    /// `[batch * len, width]` rows through one pre-LN block with a tanh-GELU MLP; `mask`
    /// (additive, `[batch, len, len]`) hides keys, none attends everywhere.
    pub fn forward<T: Tape<f32, Dev>>(
        &self,
        x: Matrix<T>,
        heads: Heads,
        mask: Option<&Mask>,
    ) -> Matrix<T> {
        let h = self.layer_norm1.forward(x.retaped::<T>());
        let a = &self.self_attn;
        let q = a.q_proj.forward(h.retaped::<T>());
        let k = a.k_proj.forward(h.retaped::<T>());
        let v = a.v_proj.forward(h);
        let x = crate::fused::add(x, a.out_proj.forward(attention(q, k, v, heads, mask)));
        let h = self.layer_norm2.forward(x.retaped::<T>());
        let h = self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(h)));
        crate::fused::add(x, h)
    }
}

/// The vision tower. Parameter names are transformers 5's (`embeddings...`, `encoder.layers.N...`,
/// `post_layernorm...`) under the prefix `vision_tower`.
#[derive(Clone, Debug)]
pub struct SiglipVision {
    pub cfg: VisionConfig,
    pub embeddings: VisionEmbeddings,
    pub layers: Vec<SiglipLayer>,
    pub post_layernorm: LayerNorm,
}
impl_params!(SiglipVision {
    "embeddings" => embeddings, "encoder.layers" => layers, "post_layernorm" => post_layernorm,
});

impl SiglipVision {
    /// A new encoder drawn as SigLIP draws one (transformers' `SiglipPreTrainedModel`, like
    /// big_vision's ViT): Xavier-uniform attention and MLP weights, a LeCun-normal patch
    /// embedding, position embeddings N(0, 1/width), biases zero (the MLP's N(0, 1e-6) taken
    /// as zero), norms identity. The 0.02 normal that transformers' PaliGemma applies to every
    /// weight is for fine-tuning a loaded model; from scratch it starts the encoder so small
    /// that the image pathway learnt far slower.
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, cfg: &VisionConfig) -> Self {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| SiglipLayer::init(init, d, cfg.intermediate_size, eps))
            .collect();
        SiglipVision {
            cfg: cfg.clone(),
            embeddings: VisionEmbeddings {
                patch_embedding: Linear::drawn(init, cfg.patch_dim(), d, true, Draw::LecunNormal),
                position_embedding: init.normal(cfg.num_patches(), d, 1.0 / (d as f32).sqrt()),
            },
            layers,
            post_layernorm: LayerNorm::init(init, d, eps),
        }
    }

    /// Cuts `[n_images, C, R, R]` pixels into `[n_images * patches, C * p * p]` rows: patches in
    /// row-major (y, x) order, each flattened as (channel, dy, dx) like the conv weight.
    pub fn patchify(&self, pixels: &[f32], n_images: usize) -> Vec<f32> {
        let (c, r, p) = (
            self.cfg.num_channels,
            self.cfg.image_size,
            self.cfg.patch_size,
        );
        let g = r / p;
        assert_eq!(
            pixels.len(),
            n_images * c * r * r,
            "pixels: expected [n, {c}, {r}, {r}]"
        );
        let mut out = Vec::with_capacity(pixels.len());
        for n in 0..n_images {
            for gy in 0..g {
                for gx in 0..g {
                    for ch in 0..c {
                        for dy in 0..p {
                            let row = ((n * c + ch) * r + gy * p + dy) * r + gx * p;
                            out.extend_from_slice(&pixels[row..row + p]);
                        }
                    }
                }
            }
        }
        out
    }

    /// `patches` (from [`Self::patchify`]) -> `[n_images * patches, hidden]`, post-LayerNorm.
    pub fn forward<T: Tape<f32, Dev>>(&self, patches: Matrix<T>, n_images: usize) -> Matrix<T> {
        let (np, d) = (self.cfg.num_patches(), self.cfg.hidden_size);
        let x = self.embeddings.patch_embedding.forward(patches);
        let s = (n_images, np, d);
        let pos = self
            .embeddings
            .position_embedding
            .retaped::<T>()
            .broadcast_like::<_, Axis<0>>(&s);
        let mut x = (x.reshape_like(&s) + pos).reshape_like(&(n_images * np, d));
        let heads = Heads::self_attention(
            n_images,
            np,
            self.cfg.num_attention_heads,
            self.cfg.head_dim(),
        );
        for layer in &self.layers {
            x = layer.forward(x, heads, None);
        }
        self.post_layernorm.forward(x)
    }
}
