//! The Gemma decoder: RMSNorm (1 + w), rotary multi-/grouped-query attention, GeGLU-tanh MLP,
//! final norm; the token embedding is tied to the output projection.

use dfdx::prelude::*;
use rand::Rng;

use crate::attention::{Heads, Mask, Rope, attention};
use crate::config::TextConfig;
use crate::layers::{Draw, Init, Linear, RmsNorm, impl_params};
use crate::{Dev, Matrix};

#[derive(Clone, Debug)]
pub struct GemmaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}
impl_params!(GemmaAttention {
    "q_proj" => q_proj, "k_proj" => k_proj, "v_proj" => v_proj, "o_proj" => o_proj,
});

#[derive(Clone, Debug)]
pub struct GemmaMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}
impl_params!(GemmaMlp { "gate_proj" => gate_proj, "up_proj" => up_proj, "down_proj" => down_proj });

#[derive(Clone, Debug)]
pub struct GemmaLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: GemmaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: GemmaMlp,
}
impl_params!(GemmaLayer {
    "input_layernorm" => input_layernorm, "self_attn" => self_attn,
    "post_attention_layernorm" => post_attention_layernorm, "mlp" => mlp,
});

/// Dropout on each layer's attention and MLP outputs, before the residual add (the
/// `llm_dropout` of the paper's transfer recipe). The masks follow from `seed`, so a step
/// redone after a resume drops the same units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub rate: f32,
    pub seed: u64,
}

/// The decoder. Parameter names are transformers' under the prefix `language_model.model`.
#[derive(Clone, Debug)]
pub struct Gemma {
    pub cfg: TextConfig,
    /// `[vocab, hidden]`: input embedding and (tied) output projection.
    pub embed_tokens: Matrix,
    pub layers: Vec<GemmaLayer>,
    pub norm: RmsNorm,
    /// Set by the trainer for the forward passes of a training step only.
    pub dropout: Option<Dropout>,
}
impl_params!(Gemma { "embed_tokens.weight" => embed_tokens, "layers" => layers, "norm" => norm });

/// `[batch, past, kv_heads * head_dim]` keys or values of one layer.
pub type CacheTensor = Tensor<(usize, usize, usize), f32, Dev>;

/// Keys and values of past tokens, per layer: `[batch, past, kv_heads * head_dim]`, post-RoPE.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub layers: Vec<(CacheTensor, CacheTensor)>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map(|(k, _)| k.shape().1).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps the rows `rows` (in that order, repeats allowed): beam search reordering.
    pub fn select_rows(&mut self, dev: &Dev, rows: &[usize]) {
        let idx = dev.tensor_from_vec(rows.to_vec(), (rows.len(),));
        for (k, v) in &mut self.layers {
            *k = k.clone().gather(idx.clone());
            *v = v.clone().gather(idx.clone());
        }
    }
}

impl Gemma {
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, cfg: &TextConfig) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| GemmaLayer {
                input_layernorm: RmsNorm::init(init, d, eps),
                self_attn: GemmaAttention {
                    q_proj: Linear::init(init, d, cfg.num_attention_heads * hd, false),
                    k_proj: Linear::init(init, d, cfg.num_key_value_heads * hd, false),
                    v_proj: Linear::init(init, d, cfg.num_key_value_heads * hd, false),
                    o_proj: Linear::init(init, cfg.num_attention_heads * hd, d, false),
                },
                post_attention_layernorm: RmsNorm::init(init, d, eps),
                mlp: GemmaMlp {
                    gate_proj: Linear::init(init, d, cfg.intermediate_size, false),
                    up_proj: Linear::init(init, d, cfg.intermediate_size, false),
                    down_proj: Linear::init(init, cfg.intermediate_size, d, false),
                },
            })
            .collect();
        Gemma {
            cfg: cfg.clone(),
            embed_tokens: init.weight(cfg.vocab_size, d, Draw::Normal),
            layers,
            norm: RmsNorm::init(init, d, eps),
            dropout: None,
        }
    }

    /// Gives the ordered tokens `ids` (`<loc0000>`.. `<loc1023>`: bin `i` of `ids.len()`)
    /// embeddings that vary smoothly with their bin: sinusoids of the bin's position at
    /// frequencies spread geometrically from half a cycle to 64 cycles across the range, with
    /// the norm of a drawn row. The output layer is tied, so neighbouring bins start with near
    /// logits, and what a fresh model learns about one bin carries to its neighbours instead of
    /// each of 1,024 rare tokens being learnt alone.
    pub fn init_ordinal_embeddings(&mut self, ids: &[u32]) {
        let (d, n) = (self.cfg.hidden_size, ids.len());
        let pairs = d / 2;
        let mut table = self.embed_tokens.as_vec();
        let norm_sq = table.iter().map(|x| x * x).sum::<f32>() / self.cfg.vocab_size as f32;
        // Each (cos, sin) pair adds scale^2 to a row's squared norm.
        let scale = (norm_sq / pairs as f32).sqrt();
        for (bin, &id) in ids.iter().enumerate() {
            let at = (bin as f64 + 0.5) / n as f64;
            let row = &mut table[id as usize * d..(id as usize + 1) * d];
            row.fill(0.0);
            for k in 0..pairs {
                let cycles = 0.5 * 128f64.powf(k as f64 / (pairs - 1).max(1) as f64);
                let phase = std::f64::consts::TAU * cycles * at;
                row[2 * k] = scale * phase.cos() as f32;
                row[2 * k + 1] = scale * phase.sin() as f32;
            }
        }
        self.embed_tokens.copy_from(&table);
    }

    /// Token embeddings times sqrt(hidden): `[tokens, hidden]`. Ids outside the vocabulary
    /// (an image token id past it) look up row 0, as transformers does.
    pub fn embed<T: Tape<f32, Dev>>(&self, tokens: &[u32]) -> Matrix<T> {
        let dev = self.embed_tokens.device().clone();
        let v = self.cfg.vocab_size;
        let ids: Vec<usize> = tokens
            .iter()
            .map(|&t| if (t as usize) < v { t as usize } else { 0 })
            .collect();
        let ids = dev.tensor_from_vec(ids, (tokens.len(),));
        let scale = (self.cfg.hidden_size as f32).sqrt();
        self.embed_tokens.retaped::<T>().gather(ids) * scale
    }

    /// The decoder over `x` = `[batch * len, hidden]` input embeddings; returns the final-norm
    /// hidden states, same shape. `rope` holds one row per token of `x`; `mask` is
    /// `[batch, len, past + len]`. With a cache, the new keys/values are appended to it.
    pub fn forward<T: Tape<f32, Dev>>(
        &self,
        x: Matrix<T>,
        batch: usize,
        rope: &Rope,
        mask: &Mask,
        mut cache: Option<&mut KvCache>,
    ) -> Matrix<T> {
        let mut x = x;
        let len = x.shape().0 / batch;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| {
                if c.layers.len() <= i {
                    let kw = self.cfg.num_key_value_heads * self.cfg.head_dim;
                    let e: CacheTensor = x.device().zeros_like(&(batch, 0, kw));
                    c.layers.push((e.clone(), e));
                }
                &mut c.layers[i]
            });
            x = self.layer(i, layer, x, batch, len, rope, mask, c);
        }
        self.norm.forward(x)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer<T: Tape<f32, Dev>>(
        &self,
        index: usize,
        l: &GemmaLayer,
        x: Matrix<T>,
        batch: usize,
        len: usize,
        rope: &Rope,
        mask: &Mask,
        cache: Option<&mut (CacheTensor, CacheTensor)>,
    ) -> Matrix<T> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = l.input_layernorm.forward(x.retaped::<T>());
        let a = &l.self_attn;
        let q = rope.apply(a.q_proj.forward(h.retaped::<T>()), nh);
        let k = rope.apply(a.k_proj.forward(h.retaped::<T>()), nkv);
        let v = a.v_proj.forward(h);
        let (k, v, keys) = match cache {
            None => (k, v, len),
            Some((ck, cv)) => {
                let past = ck.shape().1;
                let kw = nkv * hd;
                let (k, v) = (
                    k.reshape_like(&(batch, len, kw)),
                    v.reshape_like(&(batch, len, kw)),
                );
                let (k, v) = if past == 0 {
                    (k, v)
                } else {
                    (
                        (ck.retaped::<T>(), k).concat_along(Axis::<1>),
                        (cv.retaped::<T>(), v).concat_along(Axis::<1>),
                    )
                };
                let (k, kt) = k.split_tape();
                let (v, vt) = v.split_tape();
                *ck = k.clone();
                *cv = v.clone();
                let keys = past + len;
                (
                    k.put_tape(kt).reshape_like(&(batch * keys, kw)),
                    v.put_tape(vt).reshape_like(&(batch * keys, kw)),
                    keys,
                )
            }
        };
        let heads = Heads {
            batch,
            queries: len,
            keys,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        let attended = a.o_proj.forward(attention(q, k, v, heads, Some(mask)));
        let x = crate::fused::add(x, self.drop(attended, 2 * index as u64));
        let h = l.post_attention_layernorm.forward(x.retaped::<T>());
        let g = l.mlp.gate_proj.forward(h.retaped::<T>());
        let u = l.mlp.up_proj.forward(h);
        let mlp = l.mlp.down_proj.forward(crate::fused::geglu(g, u));
        crate::fused::add(x, self.drop(mlp, 2 * index as u64 + 1))
    }

    /// `x` with [`Gemma::dropout`] applied (mask stream `stream`), or unchanged.
    fn drop<T: Tape<f32, Dev>>(&self, x: Matrix<T>, stream: u64) -> Matrix<T> {
        let Some(d) = self.dropout.filter(|d| d.rate > 0.0) else {
            return x;
        };
        let shape = *x.shape();
        let keep = 1.0 - d.rate;
        let threshold = (f64::from(keep) * 2f64.powi(64)) as u64;
        let mut rng = pipeline::rng::SplitMix64::new(d.seed, stream);
        let mask: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                if rng.next_u64() < threshold {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        let mask = x.device().tensor_from_vec(mask, shape);
        x * mask
    }

    /// Logits from final hidden states: `h @ embed_tokens^T`, `[rows, vocab]`.
    pub fn lm_head<T: Tape<f32, Dev>>(&self, h: Matrix<T>) -> Matrix<T> {
        h.matmul(self.embed_tokens.retaped::<T>().permute::<_, Axes2<1, 0>>())
    }
}

#[cfg(test)]
mod tests {
    use crate::{PaliGemma, PaliGemmaConfig};

    #[test]
    fn ordinal_embeddings_are_smooth_in_their_bin_and_leave_other_rows() {
        let mut cfg = PaliGemmaConfig::tiny();
        cfg.text.vocab_size = 1100;
        let mut model = PaliGemma::new(&cfg, &crate::device(), 0).unwrap();
        let gemma = &mut model.language_model;
        let before = gemma.embed_tokens.as_vec();
        // PaliGemma's 1,024 location bins
        let ids: Vec<u32> = (50..1074).collect();
        gemma.init_ordinal_embeddings(&ids);
        let after = gemma.embed_tokens.as_vec();
        let d = cfg.text.hidden_size;
        let row = |t: &[f32], id: u32| t[id as usize * d..(id as usize + 1) * d].to_vec();
        for id in (0..50).chain(1074..cfg.text.vocab_size as u32) {
            assert_eq!(row(&after, id), row(&before, id), "row {id}");
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let norm = |id| dot(&row(&after, id), &row(&after, id)).sqrt();
        let cos = |a, b| dot(&row(&after, a), &row(&after, b)) / (norm(a) * norm(b));
        let mean_norm_sq = dot(&before, &before) / cfg.text.vocab_size as f32;
        assert!((norm(500).powi(2) / mean_norm_sq - 1.0).abs() < 1e-4);
        // near bins alike, far bins not, and likeness falls with distance
        assert!(cos(500, 501) > 0.9, "{}", cos(500, 501));
        assert!(cos(500, 501) > cos(500, 520));
        assert!(cos(500, 520) > cos(500, 600));
        assert!(cos(500, 900).abs() < 0.3, "{}", cos(500, 900));
    }
}
