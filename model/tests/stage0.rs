//! Stage 0 from tiny checkpoints made by transformers (tests/fixtures/stage0/make_stage0.py):
//! the assembled model's vision tower is SigLIP's, its text path is Gemma's, the vocabulary is
//! extended, the projector is zero and new embeddings are small noise.

mod common;

use std::path::PathBuf;

use dfdx::prelude::*;
use model::checkpoint;
use model::layers::Params;
use model::stage0::{Stage0Options, Vocabulary, assemble};
use model::{ModelInput, PaliGemma};
use safetensors::SafeTensors;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stage0")
}

fn expected() -> std::collections::HashMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let d: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::I64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                d => panic!("{d:?}"),
            };
            (n, (v.shape().to_vec(), d))
        })
        .collect()
}

fn text_logits(m: &PaliGemma, ids: &[u32]) -> Vec<f32> {
    let l = ids.len();
    let input = ModelInput {
        batch: 1,
        len: l,
        tokens: ids.to_vec(),
        segment_ids: vec![1; l],
        positions: (0..l as u32).collect(),
        causal: vec![true; l],
        loss_weights: vec![0.0; l],
        ..Default::default()
    };
    m.predict_logits(&input).unwrap()
}

#[test]
fn assembles_siglip_and_gemma_into_a_paligemma() {
    let dev = model::device();
    let (m, vocab) = assemble(
        &dir().join("siglip"),
        &dir().join("gemma"),
        &Stage0Options::default(),
        &dev,
    )
    .unwrap();
    assert_eq!(
        vocab,
        Vocabulary {
            base: 256,
            loc_start: 256,
            seg_start: 1280,
            image_token_id: 1408,
            vocab_size: 1472
        }
    );
    assert_eq!(m.cfg.text.vocab_size, 1472);
    assert_eq!(m.cfg.image_token_id, 1408);
    let ex = expected();

    // the vision tower is SigLIP's
    let px: Vec<f32> = ex["pixel_values"].1.iter().map(|&x| x as f32).collect();
    let patches = m.vision_tower.patchify(&px, 2);
    let rows = patches.len() / m.cfg.vision.patch_dim();
    let vis = m
        .vision_tower
        .forward(
            dev.tensor_from_vec(patches, (rows, m.cfg.vision.patch_dim())),
            2,
        )
        .as_vec();
    let d = common::max_abs_diff(&vis, &ex["vision_last_hidden_state"].1);
    assert!(d < 1e-5, "vision differs from SigLIP by {d}");
    // the projector starts at zero
    assert!(
        m.image_features::<NoneTape>(&px, 2)
            .as_vec()
            .iter()
            .all(|&x| x == 0.0)
    );

    // the text path is Gemma's on the old vocabulary
    let ids: Vec<u32> = ex["input_ids"].1.iter().map(|&x| x as u32).collect();
    let logits = text_logits(&m, &ids);
    let v = m.cfg.text.vocab_size;
    let old: Vec<f32> = logits.chunks(v).flat_map(|r| r[..256].to_vec()).collect();
    let d = common::max_abs_diff(&old, &ex["gemma_logits"].1);
    assert!(d < 1e-4, "text logits differ from Gemma by {d}");

    // new embedding rows are N(0, 0.02)
    let emb = m.language_model.embed_tokens.as_vec();
    let new = &emb[256 * 64..];
    let std = (new.iter().map(|x| x * x).sum::<f32>() / new.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "new rows std {std}");

    // and it saves as a PaliGemma that loads back identically
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save(&m, tmp.path(), &Default::default()).unwrap();
    let back = checkpoint::load(tmp.path(), &dev).unwrap();
    assert_eq!(text_logits(&back, &ids), logits);
}

#[test]
fn stage0_at_another_resolution_resamples_the_position_grid() {
    let dev = model::device();
    let opts = Stage0Options {
        image_size: Some(112),
        ..Default::default()
    };
    let (m, _) = assemble(&dir().join("siglip"), &dir().join("gemma"), &opts, &dev).unwrap();
    assert_eq!(m.cfg.vision.grid(), 8);
    let pos = m.vision_tower.embeddings.position_embedding.as_vec();
    assert_eq!(pos.len(), 64 * 32);
    let (small, _) = assemble(
        &dir().join("siglip"),
        &dir().join("gemma"),
        &Stage0Options::default(),
        &dev,
    )
    .unwrap();
    let want = checkpoint::resize_grid(
        &small.vision_tower.embeddings.position_embedding.as_vec(),
        4,
        8,
        32,
    );
    assert_eq!(pos, want);
    assert!(m.num_params() > small.num_params());
}
