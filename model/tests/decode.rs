//! Decoding with the KV cache against transformers' greedy generation (fixture_decode.*),
//! batched prompts of different lengths, beam search, and stopping at `<eos>`.

mod common;

use common::*;
use model::decode::{BeamOptions, DecodeOptions, Prompt, beam_search, greedy};
use model::{ModelInput, PaliGemma};

struct Case {
    prompt: Prompt,
    generated: Vec<u32>,
    row: usize,
}

fn cases() -> Vec<Case> {
    let fx = read_all("fixture.safetensors");
    let px = &fx["pixel_values"];
    let per = px.data.len() / px.shape[0];
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("fixture_decode.json")).unwrap(),
    )
    .unwrap();
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let row = c["batch_row_of_fixture"].as_u64().unwrap() as usize;
            let u = |k: &str| {
                c[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect::<Vec<_>>()
            };
            Case {
                prompt: Prompt {
                    tokens: u("input_ids"),
                    n_images: 1,
                    pixels: px.data[row * per..(row + 1) * per]
                        .iter()
                        .map(|&x| x as f32)
                        .collect(),
                },
                generated: u("generated"),
                row,
            }
        })
        .collect()
}

fn no_stop(n: usize) -> DecodeOptions {
    DecodeOptions {
        max_new_tokens: n,
        stop_at_eos: false,
        keep_logits: true,
    }
}

#[test]
fn greedy_matches_transformers_batched_and_alone() {
    let m = tiny_model();
    let cases = cases();
    assert_ne!(
        cases[0].prompt.tokens.len(),
        cases[1].prompt.tokens.len(),
        "prompts of different lengths"
    );
    let want_logits = read_all("fixture_decode.safetensors");
    let prompts: Vec<Prompt> = cases.iter().map(|c| c.prompt.clone()).collect();
    let batched = greedy(&m, &prompts, &no_stop(8)).unwrap();
    for (c, g) in cases.iter().zip(&batched) {
        assert_eq!(g.tokens, c.generated, "case {}", c.row);
        let flat: Vec<f32> = g.step_logits.concat();
        let d = max_abs_diff(
            &flat,
            &want_logits[&format!("case{}.step_logits", c.row)].data,
        );
        println!(
            "case {}: tokens {:?}, step logits max|diff| {d:.3e}",
            c.row, g.tokens
        );
        assert!(d < 1e-4, "case {} step logits differ by {d}", c.row);
        let alone = greedy(&m, std::slice::from_ref(&c.prompt), &no_stop(8)).unwrap();
        assert_eq!(alone[0].tokens, c.generated);
    }
}

#[test]
fn greedy_stops_at_eos() {
    let mut m = tiny_model();
    m.cfg.eos_token_id = 39; // case 0 generates [108, 39, ...]
    let cases = cases();
    let prompts: Vec<Prompt> = cases.iter().map(|c| c.prompt.clone()).collect();
    let opts = DecodeOptions {
        max_new_tokens: 8,
        stop_at_eos: true,
        keep_logits: false,
    };
    let g = greedy(&m, &prompts, &opts).unwrap();
    assert_eq!(g[0].tokens, vec![108, 39]);
    assert_eq!(g[1].tokens, cases[1].generated); // never produces 39: runs to the limit
}

/// Sum of log-probabilities of `generated` after `prompt`, by one full forward without a cache.
fn sequence_logprob(m: &PaliGemma, prompt: &Prompt, generated: &[u32]) -> f32 {
    let cfg = &m.cfg;
    let mut tokens = prompt.tokens.clone();
    tokens.extend_from_slice(generated);
    let l = tokens.len();
    // the generated tokens may include the <image> id: place the image explicitly
    let input = ModelInput {
        batch: 1,
        len: l,
        n_images: 1,
        pixels: prompt.pixels.clone(),
        image_slots: vec![(0, 0)],
        segment_ids: vec![1; l],
        positions: (1..=l as u32).collect(),
        causal: (0..l).map(|i| i >= prompt.tokens.len()).collect(),
        loss_weights: vec![0.0; l],
        tokens,
    };
    let logits = m.predict_logits(&input).unwrap();
    let v = cfg.text.vocab_size;
    let mut sum = 0.0;
    for (j, &t) in generated.iter().enumerate() {
        let row = &logits[(prompt.tokens.len() - 1 + j) * v..(prompt.tokens.len() + j) * v];
        let mx = row.iter().copied().fold(f32::MIN, f32::max);
        let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f32>().ln();
        sum += row[t as usize] - lse;
    }
    sum
}

#[test]
fn beam_search_is_greedy_with_one_beam_and_scores_its_best_sequence() {
    let m = tiny_model();
    let cases = cases();
    let prompts: Vec<Prompt> = cases.iter().map(|c| c.prompt.clone()).collect();
    let one = BeamOptions {
        beams: 1,
        length_penalty: 0.0,
        decode: no_stop(6),
    };
    let b1 = beam_search(&m, &prompts, &one).unwrap();
    for (c, g) in cases.iter().zip(&b1) {
        assert_eq!(g.tokens, c.generated[..6]);
    }
    let four = BeamOptions {
        beams: 4,
        length_penalty: 0.0,
        decode: no_stop(6),
    };
    let b4 = beam_search(&m, &prompts, &four).unwrap();
    for ((c, g4), g1) in cases.iter().zip(&b4).zip(&b1) {
        let recomputed = sequence_logprob(&m, &c.prompt, &g4.tokens);
        println!(
            "case {}: beam4 {:?} score {:.4} (recomputed {recomputed:.4}), greedy score {:.4}",
            c.row, g4.tokens, g4.score, g1.score
        );
        assert_eq!(g4.tokens.len(), 6);
        assert!(
            (recomputed - g4.score).abs() < 1e-3,
            "cached score {} vs full forward {recomputed}",
            g4.score
        );
        assert!(
            g4.score >= g1.score - 1e-4,
            "beam search found a worse sequence than greedy"
        );
    }
}
