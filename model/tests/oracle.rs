//! The model against transformers' numbers (tests/fixtures/paligemma-tiny, made by
//! transformers 5.24 in f32): mask, activations, logits, loss and every gradient.

mod common;

use common::*;
use dfdx::prelude::*;
use model::attention::allowed;
use model::layers::Params;
use model::{LossOptions, PaliGemmaConfig};

#[test]
fn mask_matches_transformers_prefix_lm_mask() {
    let fx = read_all("fixture.safetensors");
    let input = fixture_input(&fx);
    let a = allowed(input.batch, input.len, &input.segment_ids, &input.causal);
    let want = &fx["attn_mask_allowed"].data;
    assert_eq!(a.len(), want.len());
    let bad = a
        .iter()
        .zip(want)
        .filter(|(x, y)| (**x as u8 as f64) != **y)
        .count();
    assert_eq!(bad, 0, "{bad} mask entries differ");
}

#[test]
fn activations_and_logits_match() {
    let fx = read_all("fixture.safetensors");
    let m = tiny_model();
    let input = fixture_input(&fx);
    let feats = m
        .image_features::<NoneTape>(&input.pixels, input.n_images)
        .as_vec();
    let d = max_abs_diff(&feats, &fx["act.image_features"].data);
    println!("image_features max|diff| = {d:.3e}");
    assert!(d < 1e-5, "image features differ by {d}");
    let emb = m.input_embeddings::<NoneTape>(&input).as_vec();
    let d = max_abs_diff(&emb, &fx["act.text_inputs_embeds"].data);
    println!("inputs_embeds max|diff| = {d:.3e}");
    assert!(d < 1e-5, "input embeddings differ by {d}");
    let logits = m.predict_logits(&input).unwrap();
    let d = max_abs_diff(&logits, &fx["logits"].data);
    println!("logits max|diff| = {d:.3e}");
    assert!(d < 1e-4, "logits differ by {d}");
}

#[test]
fn loss_and_all_gradients_match() {
    let fx = read_all("fixture.safetensors");
    let grads_fx = read_all("grads.safetensors");
    let m = tiny_model();
    let input = fixture_input(&fx);
    let (loss, mut grads) = m.loss_and_grads(&input, &LossOptions::default()).unwrap();
    let want = fx["loss"].data[0];
    println!("loss {loss} vs {want}: {:.3e}", (loss as f64 - want).abs());
    assert!((loss as f64 - want).abs() < 1e-5, "loss {loss} vs {want}");
    let params = m.named_params();
    assert_eq!(params.len(), grads_fx.len(), "parameter count");
    let mut worst = (0.0f64, String::new());
    for (name, p) in &params {
        let g = p.grad(&mut grads);
        let w = &grads_fx[&format!("grad.{name}")];
        assert_eq!(g.len(), w.data.len(), "{name}");
        let scale = w.data.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
        let d = max_abs_diff(&g, &w.data);
        // relative to the largest entry; analytically-zero gradients (vision k_proj.bias) are
        // rounding noise near 1e-8 and compared absolutely
        assert!(
            d <= 1e-6 + 1e-4 * scale,
            "{name}: max|diff| {d:.3e}, max|g| {scale:.3e}"
        );
        if scale > 1e-6 && d / scale > worst.0 {
            worst = (d / scale, name.clone());
        }
    }
    println!(
        "worst relative gradient difference {:.3e} ({})",
        worst.0, worst.1
    );
}

#[test]
fn both_name_layouts_load_the_same_parameters() {
    let m = tiny_model();
    let mut hub = model::PaliGemma::new(&PaliGemmaConfig::tiny(), &model::device(), 1).unwrap();
    model::checkpoint::load_weights(
        &mut hub,
        &fixture_dir().join("model_hub_layout.safetensors"),
    )
    .unwrap();
    for ((n, a), (_, b)) in m.named_params().iter().zip(hub.named_params().iter()) {
        assert_eq!(a.to_vec(), b.to_vec(), "{n}");
    }
}

#[test]
fn plain_dfdx_ops_match_too() {
    // the fused CPU ops are the default; the plain-op path (the CUDA one) must agree as well
    model::fused::with_plain_ops(|| {
        let fx = read_all("fixture.safetensors");
        let m = tiny_model();
        let input = fixture_input(&fx);
        let logits = m.predict_logits(&input).unwrap();
        let d = max_abs_diff(&logits, &fx["logits"].data);
        assert!(d < 1e-4, "plain-op logits differ by {d}");
        let (loss, mut grads) = m.loss_and_grads(&input, &LossOptions::default()).unwrap();
        assert!((loss as f64 - fx["loss"].data[0]).abs() < 1e-5);
        let grads_fx = read_all("grads.safetensors");
        for (name, p) in m.named_params() {
            let w = &grads_fx[&format!("grad.{name}")];
            let scale = w.data.iter().fold(0.0f64, |a, &x| a.max(x.abs()));
            let d = max_abs_diff(&p.grad(&mut grads), &w.data);
            assert!(d <= 1e-6 + 1e-4 * scale, "{name}: {d:e}");
        }
    });
}

#[test]
fn token_losses_average_to_the_loss() {
    let fx = read_all("fixture.safetensors");
    let m = tiny_model();
    let input = fixture_input(&fx);
    let per = m.token_losses(&input).unwrap();
    let n = input.loss_weights.iter().filter(|&&w| w != 0.0).count();
    assert_eq!(n, 8);
    assert!(
        per.iter()
            .zip(&input.loss_weights)
            .all(|(l, w)| (*w == 0.0) == (*l == 0.0))
    );
    let mean = per.iter().sum::<f32>() / n as f32;
    assert!((mean as f64 - fx["loss"].data[0]).abs() < 1e-5, "{mean}");
}

/// Two examples packed in one row (segments 1 and 2, positions restarting) give the logits each
/// gets alone: the mask isolates them and RoPE sees per-example positions.
#[test]
fn packed_examples_match_the_unpacked_oracle() {
    let fx = read_all("fixture.safetensors");
    let m = tiny_model();
    let alone = fixture_input(&fx);
    let l = alone.len;
    let real: Vec<usize> = (0..2)
        .map(|b| {
            (0..l)
                .filter(|&t| alone.segment_ids[b * l + t] != 0)
                .count()
        })
        .collect();
    let mut p = model::ModelInput {
        batch: 1,
        len: real[0] + real[1],
        n_images: 2,
        pixels: alone.pixels.clone(),
        ..Default::default()
    };
    for (b, &n) in real.iter().enumerate() {
        let start = p.tokens.len();
        p.image_slots.push((0, start));
        for t in 0..n {
            let i = b * l + t;
            p.tokens.push(alone.tokens[i]);
            p.segment_ids.push(b as u16 + 1);
            p.positions.push(t as u32 + 1);
            p.causal.push(alone.causal[i]);
            p.loss_weights.push(alone.loss_weights[i]);
        }
    }
    let logits = m.predict_logits(&p).unwrap();
    let v = m.cfg.text.vocab_size;
    let want = &fx["logits"].data;
    let mut worst = 0.0f64;
    let mut off = 0;
    for (b, &n) in real.iter().enumerate() {
        for t in 0..n {
            for k in 0..v {
                let d = (logits[(off + t) * v + k] as f64 - want[(b * l + t) * v + k]).abs();
                worst = worst.max(d);
            }
        }
        off += n;
    }
    println!("packed vs oracle max|diff| = {worst:.3e}");
    assert!(worst < 1e-4, "packed logits differ by {worst}");
    // and the loss over the packed row equals the oracle's (same 8 targets)
    let (loss, _) = m
        .loss_and_grads(&p, &model::LossOptions::default())
        .unwrap();
    assert!((loss as f64 - fx["loss"].data[0]).abs() < 1e-5, "{loss}");
}
