//! Shared helpers of the integration tests: the copied transformers fixture.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use model::{ModelInput, PaliGemma, PaliGemmaConfig};
use safetensors::{Dtype, SafeTensors};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paligemma-tiny")
}

/// A tensor of the fixture as f64 values with its shape.
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read_all(file: &str) -> HashMap<String, Arr> {
    let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let b = v.data();
            let data: Vec<f64> = match v.dtype() {
                Dtype::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::U8 => b.iter().map(|&x| x as f64).collect(),
                d => panic!("{name}: dtype {d:?}"),
            };
            (
                name,
                Arr {
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn tiny_model() -> PaliGemma {
    model::checkpoint::load(&fixture_dir(), &model::device()).unwrap()
}

/// The fixture's batch as the model's input.
pub fn fixture_input(fx: &HashMap<String, Arr>) -> ModelInput {
    let cfg = PaliGemmaConfig::tiny();
    let ids = &fx["input_ids"];
    let (b, l) = (ids.shape[0], ids.shape[1]);
    let u = |k: &str| fx[k].data.iter().map(|&x| x as u32).collect::<Vec<_>>();
    let labels: Vec<i64> = fx["labels"].data.iter().map(|&x| x as i64).collect();
    let px = &fx["pixel_values"];
    ModelInput::from_hf(
        &cfg,
        b,
        l,
        &u("input_ids"),
        &u("token_type_ids"),
        &u("attention_mask"),
        Some(&labels),
        px.data.iter().map(|&x| x as f32).collect(),
        px.shape[0],
    )
    .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}
