//! SigLIP's contrastive half (arXiv 2303.15343), to pretrain the image encoder before the
//! prefix-LM stages as PaliGemma's own recipe does: a small text tower of SigLIP layers embeds
//! each image's caption, and the sigmoid loss pulls every image towards its caption and away
//! from the batch's other captions, pair by pair (no softmax over the batch).
//!
//! The image side is the vision tower's tokens, mean-pooled (SigLIP pools with an attention
//! head; PaliGemma drops it and reads every token, so the simpler pool is what this stage
//! leaves behind) and projected by `image_head`.

use dfdx::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::attention::{Heads, additive_mask};
use crate::config::VisionConfig;
use crate::layers::{Init, LayerNorm, Linear, impl_params};
use crate::siglip::SiglipLayer;
use crate::{Dev, Matrix, Vector};

/// Dimensions of the text tower and the shared embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveConfig {
    /// The tokenizer's ids.
    pub vocab_size: usize,
    /// Longest caption, in tokens.
    pub max_len: usize,
    /// Width of the text tower and of the shared embedding.
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Width of the image encoder's tokens.
    pub image_hidden_size: usize,
    pub layer_norm_eps: f64,
}

impl ContrastiveConfig {
    /// A text tower as wide as the image encoder and half as deep (one layer at least): the
    /// captions are short, and the image encoder is what the stage trains.
    pub fn for_vision(vision: &VisionConfig, vocab_size: usize, max_len: usize) -> Self {
        ContrastiveConfig {
            vocab_size,
            max_len,
            hidden_size: vision.hidden_size,
            intermediate_size: vision.intermediate_size,
            num_hidden_layers: (vision.num_hidden_layers / 2).max(1),
            num_attention_heads: vision.num_attention_heads,
            image_hidden_size: vision.hidden_size,
            layer_norm_eps: vision.layer_norm_eps,
        }
    }
}

/// Token and position embeddings, SigLIP layers, a final LayerNorm; names as transformers'
/// `SiglipTextTransformer`.
#[derive(Clone, Debug)]
pub struct TextTower {
    pub token_embedding: Matrix,
    pub position_embedding: Matrix,
    pub layers: Vec<SiglipLayer>,
    pub final_layer_norm: LayerNorm,
}
impl_params!(TextTower {
    "embeddings.token_embedding.weight" => token_embedding,
    "embeddings.position_embedding.weight" => position_embedding,
    "encoder.layers" => layers,
    "final_layer_norm" => final_layer_norm,
});

/// The text tower, both projection heads, and the loss's learned temperature and bias.
#[derive(Clone, Debug)]
pub struct Contrastive {
    pub cfg: ContrastiveConfig,
    pub text_model: TextTower,
    pub text_head: Linear,
    pub image_head: Linear,
    /// log of the logits' scale, SigLIP's `t'`: starts at ln 10.
    pub logit_scale: Vector,
    /// Starts at -10, so that the many negative pairs start with a small loss.
    pub logit_bias: Vector,
}
impl_params!(Contrastive {
    "text_model" => text_model,
    "text_head" => text_head,
    "image_head" => image_head,
    "logit_scale" => logit_scale,
    "logit_bias" => logit_bias,
});

impl Contrastive {
    /// A new text side: embeddings N(0, 0.02), layers as SigLIP draws them, heads N(0, 0.02).
    pub fn new(cfg: &ContrastiveConfig, dev: &Dev, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = Init {
            dev,
            rng: &mut rng,
            std: 0.02,
        };
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let text_model = TextTower {
            token_embedding: init.normal(cfg.vocab_size, d, 0.02),
            position_embedding: init.normal(cfg.max_len, d, 0.02),
            layers: (0..cfg.num_hidden_layers)
                .map(|_| SiglipLayer::init(&mut init, d, cfg.intermediate_size, eps))
                .collect(),
            final_layer_norm: LayerNorm::init(&mut init, d, eps),
        };
        Contrastive {
            cfg: cfg.clone(),
            text_model,
            text_head: Linear::init(&mut init, d, d, true),
            image_head: Linear::init(&mut init, cfg.image_hidden_size, d, true),
            logit_scale: init.constant(1, 10f32.ln()),
            logit_bias: init.constant(1, -10.0),
        }
    }

    /// Unit-length embeddings `[n_images, hidden]` of `[n_images * per_image, image hidden]`
    /// image tokens.
    pub fn embed_images<T: Tape<f32, Dev>>(
        &self,
        tokens: Matrix<T>,
        n_images: usize,
        per_image: usize,
    ) -> Matrix<T> {
        let d = tokens.shape().1;
        let pooled = tokens
            .reshape_like(&(n_images, per_image, d))
            .mean::<(usize, usize), Axis<1>>();
        unit_rows(self.image_head.forward(pooled))
    }

    /// Unit-length embeddings `[texts, hidden]` of token sequences (each non-empty, at most
    /// `max_len` long): the mean of the final-norm states of each text's own tokens.
    pub fn embed_texts<T: Tape<f32, Dev>>(&self, texts: &[Vec<u32>]) -> Matrix<T> {
        let dev = self.text_model.token_embedding.device().clone();
        let (b, d) = (texts.len(), self.cfg.hidden_size);
        let l = texts.iter().map(Vec::len).max().unwrap_or(1).max(1);
        assert!(
            l <= self.cfg.max_len,
            "a text of {l} tokens: the tower holds {}",
            self.cfg.max_len
        );
        let (mut ids, mut pos, mut keys, mut pool) =
            (vec![0; b * l], vec![0; b * l], vec![], vec![0.0; b * l]);
        for (i, text) in texts.iter().enumerate() {
            assert!(!text.is_empty(), "text {i} is empty");
            for (j, &t) in text.iter().enumerate() {
                ids[i * l + j] = (t as usize).min(self.cfg.vocab_size - 1);
                pool[i * l + j] = 1.0 / text.len() as f32;
            }
            for j in 0..l {
                pos[i * l + j] = j;
            }
            // Every query sees the text's own tokens and no padding.
            keys.extend((0..l).flat_map(|_| (0..l).map(|k| k < text.len())));
        }
        let mask = additive_mask(&dev, &keys, b, l, l);
        let tower = &self.text_model;
        let mut x = tower
            .token_embedding
            .retaped::<T>()
            .gather(dev.tensor_from_vec(ids, (b * l,)))
            + tower
                .position_embedding
                .retaped::<T>()
                .gather(dev.tensor_from_vec(pos, (b * l,)));
        let nh = self.cfg.num_attention_heads;
        let heads = Heads::self_attention(b, l, nh, d / nh);
        for layer in &tower.layers {
            x = layer.forward(x, heads, Some(&mask));
        }
        let pool = dev
            .tensor_from_vec(pool, (b, l))
            .broadcast_like::<_, Axis<2>>(&(b, l, d));
        let pooled =
            (tower.final_layer_norm.forward(x).reshape_like(&(b, l, d)) * pool)
                .sum::<(usize, usize), Axis<1>>();
        unit_rows(self.text_head.forward(pooled))
    }

    /// SigLIP's sigmoid loss of `[n, hidden]` image and text embeddings: over every pair
    /// `(i, j)`, `-log sigmoid(z_ij * (scale * <img_i, txt_j> + bias))` with `z_ij` 1 where the
    /// pair matches and -1 where not, summed and divided by `n`.
    pub fn sigmoid_loss<T: Tape<f32, Dev>>(
        &self,
        images: Matrix<T>,
        texts: Matrix<T>,
        matches: &[bool],
    ) -> Tensor<Rank0, f32, Dev, T> {
        let n = images.shape().0;
        assert_eq!(matches.len(), n * n, "matches: [n, n]");
        let dev = self.logit_scale.device().clone();
        let scale = self
            .logit_scale
            .retaped::<T>()
            .exp()
            .reshape_like(&())
            .broadcast_like(&(n, n));
        let bias = self
            .logit_bias
            .retaped::<T>()
            .reshape_like(&())
            .broadcast_like(&(n, n));
        let logits = images.matmul(texts.permute::<_, Axes2<1, 0>>()) * scale + bias;
        let signs: Vec<f32> = matches
            .iter()
            .map(|&m| if m { -1.0 } else { 1.0 })
            .collect();
        // -log sigmoid(z * l) = softplus(-z * l), kept finite for large arguments.
        let x = logits * dev.tensor_from_vec(signs, (n, n));
        let softplus = x.retaped::<T>().relu() + (x.abs().negate().exp() + 1.0).ln();
        softplus.sum::<Rank0, _>() / n as f32
    }

    /// [`Self::sigmoid_loss`] of images (their tokens, as [`Self::embed_images`] takes them)
    /// against `texts`, image `i` with text `i`; pairs whose texts are equal count as matches.
    pub fn loss<T: Tape<f32, Dev>>(
        &self,
        image_tokens: Matrix<T>,
        per_image: usize,
        texts: &[Vec<u32>],
    ) -> Tensor<Rank0, f32, Dev, T> {
        let n = texts.len();
        let matches: Vec<bool> = texts
            .iter()
            .flat_map(|a| texts.iter().map(move |b| a == b))
            .collect();
        let images = self.embed_images(image_tokens, n, per_image);
        let texts = self.embed_texts::<T>(texts);
        self.sigmoid_loss(images, texts, &matches)
    }
}

/// Rows scaled to unit length.
fn unit_rows<T: Tape<f32, Dev>>(x: Matrix<T>) -> Matrix<T> {
    let s = *x.shape();
    let norm = (x.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
    x / norm.broadcast_like::<_, Axis<1>>(&s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, AdamWConfig};

    fn tower(vocab: usize) -> Contrastive {
        let cfg = ContrastiveConfig {
            vocab_size: vocab,
            max_len: 6,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            image_hidden_size: 4,
            layer_norm_eps: 1e-6,
        };
        Contrastive::new(&cfg, &crate::device(), 3)
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn the_sigmoid_loss_is_the_mean_over_images_of_each_pairs_log_sigmoid() {
        let t = tower(10);
        let dev = crate::device();
        let n = 3;
        let (a, b) = (noise(n * 8, 1), noise(n * 8, 2));
        let unit = |v: &[f32]| -> Vec<Vec<f64>> {
            v.chunks(8)
                .map(|r| {
                    let norm = r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    r.iter().map(|x| *x as f64 / norm).collect()
                })
                .collect()
        };
        let (ua, ub) = (unit(&a), unit(&b));
        let matches = [true, false, false, false, true, true, false, true, true];
        let got = t
            .sigmoid_loss(
                unit_rows(dev.tensor_from_vec(a, (n, 8))),
                unit_rows(dev.tensor_from_vec(b, (n, 8))),
                &matches,
            )
            .array() as f64;
        let mut want = 0.0;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = ua[i].iter().zip(&ub[j]).map(|(x, y)| x * y).sum();
                let logit = 10.0 * dot - 10.0;
                let z = if matches[i * n + j] { 1.0 } else { -1.0 };
                want -= (1.0 / (1.0 + (-z * logit).exp())).ln();
            }
        }
        want /= n as f64;
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    }

    #[test]
    fn a_texts_embedding_does_not_see_the_padding_of_longer_texts() {
        let t = tower(10);
        let alone = t.embed_texts::<NoneTape>(&[vec![3, 4]]).as_vec();
        let batched = t
            .embed_texts::<NoneTape>(&[vec![3, 4], vec![5, 6, 7, 8, 9]])
            .as_vec();
        assert!(
            alone
                .iter()
                .zip(&batched[..8])
                .all(|(a, b)| (a - b).abs() < 1e-5),
            "{alone:?} vs {:?}",
            &batched[..8]
        );
        let norm: f32 = batched[8..].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
    }

    #[test]
    fn training_on_fixed_pairs_lowers_the_loss_and_tells_them_apart() {
        let mut t = tower(10);
        let dev = crate::device();
        let (n, per_image) = (4, 3);
        let tokens = dev.tensor_from_vec(noise(n * per_image * 4, 7), (n * per_image, 4));
        let texts = [vec![1, 2], vec![3], vec![4, 5, 6], vec![7, 8]];
        let mut opt = AdamW::new(AdamWConfig {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        });
        let mut losses = Vec::new();
        for _ in 0..60 {
            let loss = t.loss(tokens.retaped::<crate::TrainTape>(), per_image, &texts);
            losses.push(loss.array());
            let mut grads = loss.backward();
            opt.update(&mut t, &mut grads);
        }
        assert!(
            losses[59] < 0.5 * losses[0],
            "loss {} -> {}",
            losses[0],
            losses[59]
        );
        // Each image now scores its own text above every other one.
        let images = t.embed_images(tokens.clone(), n, per_image).as_vec();
        let texts = t.embed_texts::<NoneTape>(&texts).as_vec();
        let d = 8;
        for i in 0..n {
            let score =
                |j: usize| -> f32 { (0..d).map(|k| images[i * d + k] * texts[j * d + k]).sum() };
            assert!(
                (0..n).filter(|&j| j != i).all(|j| score(i) > score(j)),
                "image {i}"
            );
        }
    }
}
