//! The pipeline's [`Batch`] as the model's [`ModelInput`], and row-wise micro-batches.
//!
//! Positions: the batch contract restarts them at 0 per packed example; transformers'
//! PaliGemma (and this crate's decoding, `decode.rs`) count real tokens from 1. RoPE is
//! relative, so either origin gives the same model up to rounding, but training with the
//! origin that inference uses keeps the two bit-for-bit on the same arithmetic: real tokens
//! get `position + 1`, padding keeps 0.

use pipeline::Batch;

use super::{Result, TrainError};
use crate::config::PaliGemmaConfig;
use crate::input::ModelInput;

/// Converts `batch` for a model of config `cfg`: the batch's resolution and image-token
/// count must be the model's; image slots get the model's `<image>` id (whatever id the
/// tokenizer gave them; their embeddings are replaced by image features anyway).
pub fn model_input(batch: &Batch, cfg: &PaliGemmaConfig) -> Result<ModelInput> {
    batch.validate().map_err(TrainError::Batch)?;
    if batch.resolution != cfg.vision.image_size {
        return Err(TrainError::Batch(format!(
            "images are {r}x{r} but the model takes {m}x{m}",
            r = batch.resolution,
            m = cfg.vision.image_size
        )));
    }
    if batch.n_images() > 0 && batch.tokens_per_image != cfg.num_image_tokens() {
        return Err(TrainError::Batch(format!(
            "{} tokens per image but the model makes {}",
            batch.tokens_per_image,
            cfg.num_image_tokens()
        )));
    }
    let mut tokens = batch.tokens.clone();
    for slot in &batch.image_slots {
        let at = slot.row as usize * batch.seq_len + slot.start as usize;
        tokens[at..at + batch.tokens_per_image].fill(cfg.image_token_id);
    }
    let positions = batch
        .positions
        .iter()
        .zip(&batch.segment_ids)
        .map(|(&p, &s)| if s == 0 { 0 } else { p + 1 })
        .collect();
    let input = ModelInput {
        batch: batch.rows,
        len: batch.seq_len,
        tokens,
        n_images: batch.n_images(),
        pixels: batch.pixels.clone(),
        image_slots: batch
            .image_slots
            .iter()
            .map(|s| (s.row as usize, s.start as usize))
            .collect(),
        segment_ids: batch.segment_ids.clone(),
        positions,
        causal: batch.causal.clone(),
        loss_weights: batch.loss_weights.clone(),
    };
    input.validate(cfg)?;
    Ok(input)
}

/// Splits `input` into consecutive groups of at most `rows` rows (0: one group), each with
/// the images of its rows in their original order. Rows are independent (attention never
/// crosses a row), so the parts' per-token losses are exactly the whole batch's.
pub fn split_rows(input: &ModelInput, rows: usize, cfg: &PaliGemmaConfig) -> Vec<ModelInput> {
    if rows == 0 || rows >= input.batch {
        return vec![input.clone()];
    }
    let image_len = cfg.vision.num_channels * cfg.vision.image_size * cfg.vision.image_size;
    let len = input.len;
    (0..input.batch)
        .step_by(rows)
        .map(|first| {
            let end = (first + rows).min(input.batch);
            let cells = first * len..end * len;
            let images: Vec<usize> = (0..input.n_images)
                .filter(|&i| (first..end).contains(&input.image_slots[i].0))
                .collect();
            ModelInput {
                batch: end - first,
                len,
                tokens: input.tokens[cells.clone()].to_vec(),
                n_images: images.len(),
                pixels: images
                    .iter()
                    .flat_map(|&i| {
                        input.pixels[i * image_len..(i + 1) * image_len]
                            .iter()
                            .copied()
                    })
                    .collect(),
                image_slots: images
                    .iter()
                    .map(|&i| (input.image_slots[i].0 - first, input.image_slots[i].1))
                    .collect(),
                segment_ids: input.segment_ids[cells.clone()].to_vec(),
                positions: input.positions[cells.clone()].to_vec(),
                causal: input.causal[cells.clone()].to_vec(),
                loss_weights: input.loss_weights[cells].to_vec(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_each_rows_cells_and_images() {
        let cfg = PaliGemmaConfig::tiny();
        let input = crate::bench::synthetic_batch(&cfg, 5, 30, 1).unwrap();
        let parts = split_rows(&input, 2, &cfg);
        assert_eq!(
            parts.iter().map(|p| p.batch).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        for p in &parts {
            p.validate(&cfg).unwrap();
        }
        let cat =
            |f: &dyn Fn(&ModelInput) -> Vec<f32>| parts.iter().flat_map(f).collect::<Vec<f32>>();
        assert_eq!(cat(&|p| p.loss_weights.clone()), input.loss_weights);
        assert_eq!(cat(&|p| p.pixels.clone()), input.pixels);
        let tokens: Vec<u32> = parts.iter().flat_map(|p| p.tokens.clone()).collect();
        assert_eq!(tokens, input.tokens);
        assert_eq!(
            parts.iter().map(|p| p.n_images).sum::<usize>(),
            input.n_images
        );
        assert_eq!(split_rows(&input, 0, &cfg), vec![input.clone()]);
    }
}
