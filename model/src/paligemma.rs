//! The whole model: SigLIP encodes each image, the connector maps its patches to the decoder's
//! width, the features fill their image slots among the scaled token embeddings, and Gemma
//! runs over the sequence with the prefix-LM mask; logits come from the tied embedding.

use dfdx::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::attention::{Rope, additive_mask, allowed};
use crate::config::{Connector, PaliGemmaConfig};
use crate::error::Result;
use crate::gemma::Gemma;
use crate::input::ModelInput;
use crate::layers::{Init, Linear, ParamMut, ParamRef, Params, gelu, join};
use crate::loss::{LossOptions, weighted_cross_entropy};
use crate::siglip::SiglipVision;
use crate::{Dev, Gradients, Matrix, TrainTape};

/// Maps vision features to the decoder's width: one linear layer (`linear`, PaliGemma), or
/// linear-GELU-linear (`linear_1`, `linear_2`; the connector ablation).
#[derive(Clone, Debug)]
pub struct Projector {
    pub first: Linear,
    pub second: Option<Linear>,
}

impl Params for Projector {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        match &self.second {
            None => self.first.visit(&join(prefix, "linear"), f),
            Some(s) => {
                self.first.visit(&join(prefix, "linear_1"), f);
                s.visit(&join(prefix, "linear_2"), f);
            }
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        match &mut self.second {
            None => self.first.visit_mut(&join(prefix, "linear"), f),
            Some(s) => {
                self.first.visit_mut(&join(prefix, "linear_1"), f);
                s.visit_mut(&join(prefix, "linear_2"), f);
            }
        }
    }
}

impl Projector {
    pub fn forward<T: Tape<f32, Dev>>(&self, x: Matrix<T>) -> Matrix<T> {
        let y = self.first.forward(x);
        match &self.second {
            None => y,
            Some(s) => s.forward(gelu(y)),
        }
    }
}

/// PaliGemma. Parameters are named as transformers 5 saves them (`vision_tower...`,
/// `multi_modal_projector...`, `language_model.model...`).
#[derive(Clone, Debug)]
pub struct PaliGemma {
    pub cfg: PaliGemmaConfig,
    pub dev: Dev,
    pub vision_tower: SiglipVision,
    pub multi_modal_projector: Projector,
    pub language_model: Gemma,
}

impl Params for PaliGemma {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        self.vision_tower.visit(&join(prefix, "vision_tower"), f);
        self.multi_modal_projector
            .visit(&join(prefix, "multi_modal_projector"), f);
        self.language_model
            .visit(&join(prefix, "language_model.model"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        self.vision_tower
            .visit_mut(&join(prefix, "vision_tower"), f);
        self.multi_modal_projector
            .visit_mut(&join(prefix, "multi_modal_projector"), f);
        self.language_model
            .visit_mut(&join(prefix, "language_model.model"), f);
    }
}

impl PaliGemma {
    /// A randomly initialised model: the vision tower drawn as SigLIP draws a new one (see
    /// `SiglipVision::init`), projector and Gemma weights N(0, 0.02), biases 0, norms identity.
    pub fn new(cfg: &PaliGemmaConfig, dev: &Dev, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut init = Init {
            dev,
            rng: &mut rng,
            std: 0.02,
        };
        let vision_tower = SiglipVision::init(&mut init, &cfg.vision);
        let (vd, td) = (cfg.vision.hidden_size, cfg.text.hidden_size);
        let multi_modal_projector = match cfg.connector {
            Connector::Linear => Projector {
                first: Linear::init(&mut init, vd, td, true),
                second: None,
            },
            Connector::Mlp => Projector {
                first: Linear::init(&mut init, vd, td, true),
                second: Some(Linear::init(&mut init, td, td, true)),
            },
        };
        let language_model = Gemma::init(&mut init, &cfg.text);
        Ok(PaliGemma {
            cfg: cfg.clone(),
            dev: dev.clone(),
            vision_tower,
            multi_modal_projector,
            language_model,
        })
    }

    /// The image encoder's tokens, `[n_images * num_image_tokens, vision hidden]`.
    pub fn image_tokens<T: Tape<f32, Dev>>(&self, pixels: &[f32], n_images: usize) -> Matrix<T> {
        let patches = self.vision_tower.patchify(pixels, n_images);
        let rows = patches.len() / self.cfg.vision.patch_dim();
        let patches = self
            .dev
            .tensor_from_vec(patches, (rows, self.cfg.vision.patch_dim()));
        self.vision_tower.forward(patches.retaped::<T>(), n_images)
    }

    /// Projected image features, `[n_images * num_image_tokens, text hidden]`.
    pub fn image_features<T: Tape<f32, Dev>>(&self, pixels: &[f32], n_images: usize) -> Matrix<T> {
        self.multi_modal_projector
            .forward(self.image_tokens::<T>(pixels, n_images))
    }

    /// Decoder inputs, `[batch * len, hidden]`: token embeddings x sqrt(hidden), with each
    /// image's features (not rescaled) in its slots.
    pub fn input_embeddings<T: Tape<f32, Dev>>(&self, input: &ModelInput) -> Matrix<T> {
        let x = self.language_model.embed::<T>(&input.tokens);
        if input.n_images == 0 {
            return x;
        }
        let n = input.tokens.len();
        let feats = self.image_features::<T>(&input.pixels, input.n_images);
        let mut idx = vec![0usize; n];
        let mut is_img = vec![0f32; n];
        for (f, p) in input
            .image_positions(self.cfg.num_image_tokens())
            .into_iter()
            .enumerate()
        {
            idx[p] = f;
            is_img[p] = 1.0;
        }
        let keep: Vec<f32> = is_img.iter().map(|&m| 1.0 - m).collect();
        let s = *x.shape();
        let keep = self
            .dev
            .tensor_from_vec(keep, (n,))
            .broadcast_like::<_, Axis<1>>(&s);
        let is_img = self
            .dev
            .tensor_from_vec(is_img, (n,))
            .broadcast_like::<_, Axis<1>>(&s);
        let placed = feats.gather(self.dev.tensor_from_vec(idx, (n,)));
        x * keep + placed * is_img
    }

    /// Final-norm hidden states, `[batch * len, hidden]`.
    pub fn hidden<T: Tape<f32, Dev>>(&self, input: &ModelInput) -> Matrix<T> {
        let (b, l) = (input.batch, input.len);
        let x = self.input_embeddings::<T>(input);
        let mask = additive_mask(
            &self.dev,
            &allowed(b, l, &input.segment_ids, &input.causal),
            b,
            l,
            l,
        );
        let t = &self.cfg.text;
        let rope = Rope::new(&self.dev, &input.positions, t.head_dim, t.rope_theta);
        self.language_model.forward(x, b, &rope, &mask, None)
    }

    /// Logits for every position, `[batch * len, vocab]`.
    pub fn logits<T: Tape<f32, Dev>>(&self, input: &ModelInput) -> Matrix<T> {
        self.language_model.lm_head(self.hidden::<T>(input))
    }

    /// Weighted next-token cross-entropy (sum of weighted losses / sum of weights). Logits are
    /// computed only at positions whose weight is non-zero.
    pub fn loss<T: Tape<f32, Dev>>(
        &self,
        input: &ModelInput,
        opts: &LossOptions,
    ) -> Tensor<Rank0, f32, Dev, T> {
        let h = self.hidden::<T>(input);
        let targets = input.targets();
        let mut rows: Vec<usize> = (0..targets.len())
            .filter(|&i| input.loss_weights[i] != 0.0)
            .collect();
        if rows.is_empty() {
            rows.push(0); // weight 0: loss 0, zero gradients, and the tape stays connected
        }
        let t: Vec<u32> = rows.iter().map(|&i| targets[i]).collect();
        let w: Vec<f32> = rows.iter().map(|&i| input.loss_weights[i]).collect();
        let m = rows.len();
        let h = h.gather(self.dev.tensor_from_vec(rows, (m,)));
        weighted_cross_entropy(self.language_model.lm_head(h), &t, &w, opts)
    }

    /// Loss value and the gradients of every parameter (`ParamRef::grad`).
    pub fn loss_and_grads(
        &self,
        input: &ModelInput,
        opts: &LossOptions,
    ) -> Result<(f32, Gradients)> {
        input.validate(&self.cfg)?;
        let loss = self.loss::<TrainTape>(input, opts);
        let value = loss.array();
        Ok((value, loss.backward()))
    }

    /// Per-position cross-entropy of the next token (unweighted; 0 where the loss weight is 0),
    /// `[batch * len]`: per-task losses and metrics aggregate it by segment.
    pub fn token_losses(&self, input: &ModelInput) -> Result<Vec<f32>> {
        input.validate(&self.cfg)?;
        let h = self.hidden::<NoneTape>(input);
        let targets = input.targets();
        let rows: Vec<usize> = (0..targets.len())
            .filter(|&i| input.loss_weights[i] != 0.0)
            .collect();
        let mut out = vec![0.0; targets.len()];
        if rows.is_empty() {
            return Ok(out);
        }
        let m = rows.len();
        let idx = self.dev.tensor_from_vec(rows.clone(), (m,));
        let t = self.dev.tensor_from_vec(
            rows.iter()
                .map(|&i| targets[i] as usize)
                .collect::<Vec<_>>(),
            (m,),
        );
        let lp = self
            .language_model
            .lm_head(h.gather(idx))
            .log_softmax::<Axis<1>>()
            .select(t)
            .as_vec();
        for (k, &i) in rows.iter().enumerate() {
            out[i] = -lp[k];
        }
        Ok(out)
    }

    /// Inference logits, `[batch * len, vocab]` row-major.
    pub fn predict_logits(&self, input: &ModelInput) -> Result<Vec<f32>> {
        input.validate(&self.cfg)?;
        Ok(self.logits::<NoneTape>(input).as_vec())
    }
}
