//! The tiny model learns: AdamW overfits one batch to near-zero loss.

mod common;

use common::*;
use model::{AdamW, AdamWConfig, LossOptions, PaliGemma, PaliGemmaConfig};

#[test]
fn tiny_model_overfits_one_batch() {
    let fx = read_all("fixture.safetensors");
    let input = fixture_input(&fx);
    let mut m = PaliGemma::new(&PaliGemmaConfig::tiny(), &model::device(), 7).unwrap();
    let mut opt = AdamW::new(AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    });
    let opts = LossOptions::default();
    let mut first = None;
    let mut last = f32::NAN;
    for step in 0..120 {
        let (loss, mut grads) = m.loss_and_grads(&input, &opts).unwrap();
        first.get_or_insert(loss);
        last = loss;
        if step % 20 == 0 {
            println!("step {step}: loss {loss:.5}");
        }
        opt.update(&mut m, &mut grads);
    }
    let first = first.unwrap();
    println!("loss {first:.4} -> {last:.6}");
    assert!(
        first > 5.0,
        "initial loss {first} should be near ln(300) = 5.7"
    );
    assert!(last < 0.02, "loss only fell to {last}");
}

#[test]
fn a_batch_without_loss_positions_gives_zero_loss_and_zero_gradients() {
    let fx = read_all("fixture.safetensors");
    let mut input = fixture_input(&fx);
    input.loss_weights.iter_mut().for_each(|w| *w = 0.0);
    let m = tiny_model();
    let (loss, mut grads) = m.loss_and_grads(&input, &LossOptions::default()).unwrap();
    assert_eq!(loss, 0.0);
    use model::layers::Params;
    for (name, p) in m.named_params() {
        assert!(p.grad(&mut grads).iter().all(|&g| g == 0.0), "{name}");
    }
}
