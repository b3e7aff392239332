//! Device checks, for a CUDA build (`--features cuda`) carried to a GPU machine, or the CPU.
//!
//! `gpu_check oracle`: logits of the tiny fixture (tests/fixtures/paligemma-tiny) on this
//! device against transformers' (the CPU oracle), and a training step's loss.
//! `gpu_check bench CONFIG BATCH TEXT_LEN STEPS [PEAK_TFLOPS]`: forward + backward timing
//! (no optimiser), printing one JSON line with tokens/s and model FLOPs utilisation.

use std::path::PathBuf;

use model::{LossOptions, ModelInput, PaliGemmaConfig};
use safetensors::SafeTensors;

fn oracle() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma-tiny");
    let dir = if dir.is_dir() {
        dir
    } else {
        PathBuf::from("model/tests/fixtures/paligemma-tiny")
    };
    let bytes = std::fs::read(dir.join("fixture.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let u32s = |n: &str| -> Vec<u32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let labels: Vec<i64> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let cfg = PaliGemmaConfig::tiny();
    let input = ModelInput::from_hf(
        &cfg,
        2,
        28,
        &u32s("input_ids"),
        &u32s("token_type_ids"),
        &u32s("attention_mask"),
        Some(&labels),
        f32s("pixel_values"),
        2,
    )
    .unwrap();
    let dev = model::device();
    let m = model::checkpoint::load(&dir, &dev).unwrap();
    let logits = m.predict_logits(&input).unwrap();
    let want = f32s("logits");
    let d = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (loss, _) = m.loss_and_grads(&input, &LossOptions::default()).unwrap();
    let dl = (loss - f32s("loss")[0]).abs();
    // greedy decoding with the KV cache (concat on the device), both prompts batched
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fixture_decode.json")).unwrap())
            .unwrap();
    let px = f32s("pixel_values");
    let per = px.len() / 2;
    let mut prompts = vec![];
    let mut want = vec![];
    for c in meta["cases"].as_array().unwrap() {
        let row = c["batch_row_of_fixture"].as_u64().unwrap() as usize;
        let ids = |k: &str| {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        };
        prompts.push(model::Prompt {
            tokens: ids("input_ids"),
            n_images: 1,
            pixels: px[row * per..(row + 1) * per].to_vec(),
        });
        want.push(ids("generated"));
    }
    let opts = model::DecodeOptions {
        max_new_tokens: 8,
        stop_at_eos: false,
        keep_logits: false,
    };
    let got: Vec<Vec<u32>> = model::greedy(&m, &prompts, &opts)
        .unwrap()
        .into_iter()
        .map(|g| g.tokens)
        .collect();
    let ok = d < 1e-4 && dl < 1e-5 && got == want;
    println!(
        "{{\"check\":\"oracle\",\"device\":\"{}\",\"logits_max_abs_diff\":{d:e},\"loss_abs_diff\":{dl:e},\"greedy_tokens_identical\":{},\"ok\":{ok}}}",
        if cfg!(feature = "cuda") {
            "cuda"
        } else {
            "cpu"
        },
        got == want
    );
    if !ok {
        std::process::exit(1);
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("oracle") => oracle(),
        Some("bench") => {
            let cfg = PaliGemmaConfig::preset(
                a.get(1)
                    .map(String::as_str)
                    .unwrap_or("paligemma-3b-pt-224"),
            )
            .unwrap();
            let n = |i: usize, d: usize| a.get(i).map(|s| s.parse().expect("number")).unwrap_or(d);
            let peak: f64 = a
                .get(5)
                .map(|s| s.parse().expect("peak TFLOPS"))
                .unwrap_or(67.0);
            let r = model::bench_with(&cfg, n(2, 1), n(3, 64), n(4, 3), false).unwrap();
            let fwd_bwd_ms = r.train_forward_ms + r.backward_ms;
            let mfu = r.train_step_flops / (fwd_bwd_ms / 1e3) / (peak * 1e12);
            let mut v = serde_json::to_value(&r).unwrap();
            v["fwd_bwd_ms"] = serde_json::json!(fwd_bwd_ms);
            v["fwd_bwd_tokens_per_s"] =
                serde_json::json!((r.batch * r.seq_len) as f64 / fwd_bwd_ms * 1e3);
            v["mfu"] = serde_json::json!(mfu);
            v["peak_tflops"] = serde_json::json!(peak);
            println!("{v}");
        }
        _ => {
            eprintln!(
                "usage: gpu_check oracle | gpu_check bench CONFIG BATCH TEXT_LEN STEPS [PEAK_TFLOPS]"
            );
            std::process::exit(2);
        }
    }
}
