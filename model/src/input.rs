//! [`ModelInput`]: what one forward pass consumes, field for field the batch contract of
//! DESIGN.md (`pipeline::Batch` converts into it without computation).

use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};

/// One batch, row-major `[batch, len]` per-token fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInput {
    pub batch: usize,
    pub len: usize,
    /// Token ids; image slots hold the `<image>` id (its embedding lookup is overwritten).
    pub tokens: Vec<u32>,
    /// Number of images in `pixels`.
    pub n_images: usize,
    /// `[n_images, 3, R, R]` in [-1, 1], channels first; R = the config's image size.
    pub pixels: Vec<f32>,
    /// Per image: (row, start) of its `num_image_tokens` consecutive embedding slots.
    pub image_slots: Vec<(usize, usize)>,
    /// 0 = padding, 1.. = which packed example.
    pub segment_ids: Vec<u16>,
    /// RoPE positions; any origin (rotary attention is relative): the contract restarts at 0
    /// per packed example, transformers' PaliGemma counts from 1.
    pub positions: Vec<u32>,
    /// false: image/prefix (full attention within its example); true: causal suffix.
    pub causal: Vec<bool>,
    /// Weight of predicting token t+1 at position t (0 outside suffixes).
    pub loss_weights: Vec<f32>,
}

impl ModelInput {
    /// Checks every shape against `cfg` and each other; errors name the field.
    pub fn validate(&self, cfg: &PaliGemmaConfig) -> Result<()> {
        let n = self.batch * self.len;
        let bad = |m: String| Err(ModelError::Input(m));
        if n == 0 {
            return bad("empty batch".into());
        }
        for (name, l) in [
            ("tokens", self.tokens.len()),
            ("segment_ids", self.segment_ids.len()),
            ("positions", self.positions.len()),
            ("causal", self.causal.len()),
            ("loss_weights", self.loss_weights.len()),
        ] {
            if l != n {
                return bad(format!("{name} has {l} entries, expected batch*len = {n}"));
            }
        }
        let r = cfg.vision.image_size;
        let px = self.n_images * cfg.vision.num_channels * r * r;
        if self.pixels.len() != px {
            return bad(format!(
                "pixels has {} values, expected [{}, {}, {r}, {r}] = {px}",
                self.pixels.len(),
                self.n_images,
                cfg.vision.num_channels
            ));
        }
        if self.image_slots.len() != self.n_images {
            return bad(format!(
                "image_slots has {} entries for {} images",
                self.image_slots.len(),
                self.n_images
            ));
        }
        let k = cfg.num_image_tokens();
        let mut used = vec![false; n];
        for (i, &(row, start)) in self.image_slots.iter().enumerate() {
            if row >= self.batch || start + k > self.len {
                return bad(format!(
                    "image_slots[{i}] = ({row}, {start}) does not fit {k} tokens in [{}, {}]",
                    self.batch, self.len
                ));
            }
            for p in start..start + k {
                if std::mem::replace(&mut used[row * self.len + p], true) {
                    return bad(format!(
                        "image_slots[{i}] overlaps another image at ({row}, {p})"
                    ));
                }
            }
        }
        if let Some(i) = self
            .tokens
            .iter()
            .position(|&t| t as usize >= cfg.text.vocab_size && t != cfg.image_token_id)
        {
            return bad(format!(
                "tokens[{i}] = {} is outside the vocabulary",
                self.tokens[i]
            ));
        }
        Ok(())
    }

    /// Next-token targets: `tokens[t + 1]` within a row, the row's last position gets 0
    /// (its loss weight must be 0).
    pub fn targets(&self) -> Vec<u32> {
        let mut out = vec![0; self.batch * self.len];
        for b in 0..self.batch {
            for t in 0..self.len.saturating_sub(1) {
                out[b * self.len + t] = self.tokens[b * self.len + t + 1];
            }
        }
        out
    }

    /// Flat token index of every image slot, image-major: `n_images * num_image_tokens` entries.
    pub fn image_positions(&self, tokens_per_image: usize) -> Vec<usize> {
        self.image_slots
            .iter()
            .flat_map(|&(row, start)| {
                (start..start + tokens_per_image).map(move |p| row * self.len + p)
            })
            .collect()
    }

    /// The input transformers' `PaliGemmaForConditionalGeneration.forward` builds from its
    /// arguments: images fill the `<image>` tokens in row-major order, `token_type_ids == 1`
    /// marks the causal suffix, `attention_mask == 0` padding, positions count from 1, and the
    /// loss is on every shifted label that is not -100 (labels default to the suffix tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn from_hf(
        cfg: &PaliGemmaConfig,
        batch: usize,
        len: usize,
        input_ids: &[u32],
        token_type_ids: &[u32],
        attention_mask: &[u32],
        labels: Option<&[i64]>,
        pixels: Vec<f32>,
        n_images: usize,
    ) -> Result<Self> {
        let k = cfg.num_image_tokens();
        let mut slots = Vec::new();
        for b in 0..batch {
            let mut t = 0;
            while t < len {
                if input_ids[b * len + t] == cfg.image_token_id {
                    if t + k > len
                        || input_ids[b * len + t..b * len + t + k]
                            .iter()
                            .any(|&x| x != cfg.image_token_id)
                    {
                        return Err(ModelError::Input(format!(
                            "row {b}: a run of <image> tokens at {t} is not a multiple of {k}"
                        )));
                    }
                    slots.push((b, t));
                    t += k;
                } else {
                    t += 1;
                }
            }
        }
        if slots.len() != n_images {
            return Err(ModelError::Input(format!(
                "{} images but <image> tokens for {}",
                n_images,
                slots.len()
            )));
        }
        let mut loss_weights = vec![0.0; batch * len];
        for b in 0..batch {
            for t in 0..len.saturating_sub(1) {
                let j = b * len + t + 1;
                let on = match labels {
                    Some(l) => l[j] != -100,
                    None => token_type_ids[j] == 1 && attention_mask[j] != 0,
                };
                loss_weights[b * len + t] = if on { 1.0 } else { 0.0 };
            }
        }
        let input = ModelInput {
            batch,
            len,
            tokens: input_ids.to_vec(),
            n_images,
            pixels,
            image_slots: slots,
            segment_ids: attention_mask.iter().map(|&m| (m != 0) as u16).collect(),
            positions: (0..batch).flat_map(|_| 1..=len as u32).collect(),
            causal: token_type_ids.iter().map(|&t| t == 1).collect(),
            loss_weights,
        };
        input.validate(cfg)?;
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_input(cfg: &PaliGemmaConfig) -> ModelInput {
        let k = cfg.num_image_tokens();
        let len = k + 4;
        let r = cfg.vision.image_size;
        ModelInput {
            batch: 1,
            len,
            tokens: [vec![cfg.image_token_id; k], vec![2, 5, 6, 1]].concat(),
            n_images: 1,
            pixels: vec![0.0; 3 * r * r],
            image_slots: vec![(0, 0)],
            segment_ids: vec![1; len],
            positions: (0..len as u32).collect(),
            causal: (0..len).map(|i| i >= k + 2).collect(),
            loss_weights: (0..len)
                .map(|i| if i > k && i + 1 < len { 1.0 } else { 0.0 })
                .collect(),
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cfg = PaliGemmaConfig::tiny();
        ok_input(&cfg).validate(&cfg).unwrap();
        let err = |f: &dyn Fn(&mut ModelInput)| {
            let mut i = ok_input(&cfg);
            f(&mut i);
            i.validate(&cfg).unwrap_err().to_string()
        };
        assert!(
            err(&|i| {
                i.causal.pop();
            })
            .contains("causal")
        );
        assert!(
            err(&|i| {
                i.pixels.pop();
            })
            .contains("pixels")
        );
        assert!(err(&|i| i.image_slots[0] = (0, 10)).contains("image_slots[0]"));
        assert!(err(&|i| i.image_slots.push((0, 2))).contains("image_slots"));
        assert!(err(&|i| i.tokens[17] = 5000).contains("tokens[17]"));
    }

    #[test]
    fn targets_are_the_next_tokens() {
        let cfg = PaliGemmaConfig::tiny();
        let i = ok_input(&cfg);
        let t = i.targets();
        assert_eq!(&t[16..], &[5, 6, 1, 0]);
    }
}
