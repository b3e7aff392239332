//! Save -> load round trips in both name layouts (single file and sharded), and loader errors
//! that name the tensor at fault.

mod common;

use std::collections::HashMap;

use common::*;
use model::checkpoint::{self, NameLayout, SaveOptions};
use model::layers::Params;
use model::{ModelError, PaliGemma, PaliGemmaConfig};
use safetensors::SafeTensors;

#[test]
fn save_then_load_gives_identical_logits_in_both_layouts() {
    let fx = read_all("fixture.safetensors");
    let input = fixture_input(&fx);
    let m = tiny_model();
    let want = m.predict_logits(&input).unwrap();
    for (layout, shard) in [
        (NameLayout::Transformers5, None),
        (NameLayout::Hub, Some(100_000)),
        (NameLayout::Hub, None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save(
            &m,
            dir.path(),
            &SaveOptions {
                layout,
                max_shard_bytes: shard,
            },
        )
        .unwrap();
        let files = checkpoint::weight_files(dir.path()).unwrap();
        if shard.is_some() {
            assert!(files.len() > 1, "expected several shards, got {files:?}");
        }
        // the stored names are the layout's, and the tied lm_head is not stored
        let bytes = std::fs::read(&files[0]).unwrap();
        let names: Vec<String> = SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .cloned()
            .collect();
        assert!(!names.iter().any(|n| n.contains("lm_head")));
        let hub = names
            .iter()
            .any(|n| n.starts_with("vision_tower.vision_model."));
        assert_eq!(
            hub,
            layout == NameLayout::Hub || !names.iter().any(|n| n.starts_with("vision_tower.")),
            "{names:?}"
        );
        let back = checkpoint::load(dir.path(), &model::device()).unwrap();
        assert_eq!(back.cfg, m.cfg);
        assert_eq!(
            back.predict_logits(&input).unwrap(),
            want,
            "{layout:?} {shard:?}"
        );
    }
}

/// The fixture's tensors, editable, written back as one file.
fn fixture_tensors() -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

/// Writes f32 tensors as one safetensors file.
fn write_f32(tensors: &[(String, Vec<usize>, Vec<u8>)], path: &std::path::Path) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None::<HashMap<String, String>>, path).unwrap();
}

fn load_edited(tensors: Vec<(String, Vec<usize>, Vec<u8>)>) -> Result<PaliGemma, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_f32(&tensors, &path);
    let mut m = PaliGemma::new(&PaliGemmaConfig::tiny(), &model::device(), 0).unwrap();
    checkpoint::load_weights(&mut m, &path).map(|_| m)
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() {
    let name = "language_model.model.layers.1.mlp.up_proj.weight";
    let t: Vec<_> = fixture_tensors()
        .into_iter()
        .filter(|(n, _, _)| n != name)
        .collect();
    let e = load_edited(t).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { name: n, .. } if n == name),
        "{e}"
    );
    assert!(e.to_string().contains(name));

    let mut t = fixture_tensors();
    t.push((
        "vision_tower.encoder.layers.7.mlp.fc1.bias".into(),
        vec![1],
        vec![0; 4],
    ));
    let e = load_edited(t).unwrap_err();
    assert!(
        e.to_string()
            .contains("vision_tower.encoder.layers.7.mlp.fc1.bias"),
        "{e}"
    );

    let mut t = fixture_tensors();
    let bad = t
        .iter_mut()
        .find(|(n, _, _)| n == "multi_modal_projector.linear.bias")
        .unwrap();
    bad.1 = vec![32];
    bad.2.truncate(32 * 4);
    let e = load_edited(t).unwrap_err();
    assert!(
        matches!(&e, ModelError::ShapeMismatch { name, .. } if name == "multi_modal_projector.linear.bias"),
        "{e}"
    );

    // a stored lm_head (tied) is accepted and ignored
    let mut t = fixture_tensors();
    let emb = t
        .iter()
        .find(|(n, _, _)| n == "language_model.model.embed_tokens.weight")
        .unwrap()
        .clone();
    t.push(("lm_head.weight".into(), emb.1, emb.2));
    load_edited(t).unwrap();
}

#[test]
fn loading_at_another_resolution_resamples_the_position_embedding() {
    let m = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(&m, dir.path(), &SaveOptions::default()).unwrap();
    let big = checkpoint::load_at_resolution(dir.path(), &model::device(), 112).unwrap();
    assert_eq!(big.cfg.vision.image_size, 112);
    assert_eq!(big.cfg.num_image_tokens(), 64);
    let want = checkpoint::resize_grid(
        &m.vision_tower.embeddings.position_embedding.as_vec(),
        4,
        8,
        32,
    );
    assert_eq!(
        big.vision_tower.embeddings.position_embedding.as_vec(),
        want
    );
    // loading it without resizing is a named shape error
    let mut strict = PaliGemma::new(&big.cfg, &model::device(), 0).unwrap();
    let e = checkpoint::load_weights(&mut strict, dir.path()).unwrap_err();
    assert!(e.to_string().contains("position_embedding"), "{e}");
}

#[test]
fn bf16_and_f16_checkpoints_load_rounded() {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = tiny_model();
    for dtype in [safetensors::Dtype::BF16, safetensors::Dtype::F16] {
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let half: Vec<u8> = v
                    .data()
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let x = f32::from_le_bytes(c.try_into().unwrap());
                        match dtype {
                            safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
                            _ => half::f16::from_f32(x).to_le_bytes(),
                        }
                    })
                    .collect();
                (n, v.shape().to_vec(), half)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = data
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let path = dir.path().join("model.safetensors");
        safetensors::serialize_to_file(views, &None::<HashMap<String, String>>, &path).unwrap();
        let mut h = PaliGemma::new(&PaliGemmaConfig::tiny(), &model::device(), 3).unwrap();
        checkpoint::load_weights(&mut h, &path).unwrap();
        let rel = if dtype == safetensors::Dtype::BF16 {
            1.0 / 128.0
        } else {
            1.0 / 1024.0
        };
        for ((n, a), (_, b)) in m.named_params().iter().zip(h.named_params().iter()) {
            for (x, y) in a.to_vec().iter().zip(b.to_vec()) {
                assert!(
                    (x - y).abs() <= rel * x.abs() + 1e-7,
                    "{dtype:?} {n}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn the_mlp_connector_saves_and_loads() {
    let fx = read_all("fixture.safetensors");
    let input = fixture_input(&fx);
    let mut cfg = PaliGemmaConfig::tiny();
    cfg.connector = model::config::Connector::Mlp;
    let m = PaliGemma::new(&cfg, &model::device(), 5).unwrap();
    let names: Vec<String> = m.named_params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"multi_modal_projector.linear_1.weight".to_string()));
    assert!(names.contains(&"multi_modal_projector.linear_2.bias".to_string()));
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(&m, dir.path(), &SaveOptions::default()).unwrap();
    let back = checkpoint::load(dir.path(), &model::device()).unwrap();
    assert_eq!(back.cfg.connector, model::config::Connector::Mlp);
    assert_eq!(
        back.predict_logits(&input).unwrap(),
        m.predict_logits(&input).unwrap()
    );
    // a linear-connector model cannot silently load it
    let mut lin = PaliGemma::new(&PaliGemmaConfig::tiny(), &model::device(), 0).unwrap();
    assert!(checkpoint::load_weights(&mut lin, dir.path()).is_err());
}

/// Every parameter's values by name, for those whose name starts with `prefix`.
fn values_under(m: &PaliGemma, prefix: &str) -> Vec<(String, Vec<f32>)> {
    m.named_params()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, p)| (n, p.to_vec()))
        .collect()
}

#[test]
fn an_image_encoder_loads_into_a_fresh_model_and_leaves_the_rest() {
    let trained = tiny_model();
    let dev = model::device();
    let fresh = || PaliGemma::new(&PaliGemmaConfig::tiny(), &dev, 7).unwrap();
    let untouched = values_under(&fresh(), "language_model.");

    // from a whole PaliGemma checkpoint: only its vision tower is read
    let mut m = fresh();
    checkpoint::load_image_encoder(&mut m, &fixture_dir()).unwrap();
    assert_eq!(
        values_under(&m, "vision_tower."),
        values_under(&trained, "vision_tower.")
    );
    assert_eq!(values_under(&m, "language_model."), untouched);

    // from a SigLIP checkpoint's names (its pooling head skipped) stored for another grid
    let siglip: Vec<_> = fixture_tensors()
        .into_iter()
        .filter_map(|(n, s, d)| {
            let rest = n.strip_prefix("vision_tower.")?;
            Some((format!("vision_model.{rest}"), s, d))
        })
        .chain([("vision_model.head.probe".to_string(), vec![1], vec![0; 4])])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("siglip.safetensors");
    write_f32(&siglip, &path);
    let mut cfg = PaliGemmaConfig::tiny();
    cfg.vision.image_size = 112;
    let mut m = PaliGemma::new(&cfg, &dev, 7).unwrap();
    checkpoint::load_image_encoder(&mut m, &path).unwrap();
    assert_eq!(
        m.vision_tower.embeddings.position_embedding.as_vec(),
        checkpoint::resize_grid(
            &trained.vision_tower.embeddings.position_embedding.as_vec(),
            4,
            8,
            32
        )
    );

    // a file without an image encoder is an error naming it and the first tensor it lacks
    let text_only: Vec<_> = fixture_tensors()
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("language_model."))
        .collect();
    write_f32(&text_only, &path);
    let e = checkpoint::load_image_encoder(&mut fresh(), &path).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor { name, path: p } if name.starts_with("vision_tower.") && p == &path),
        "{e}"
    );
}

#[test]
fn the_shipped_image_encoder_fits_the_small_preset_at_112_px() {
    let mut cfg = PaliGemmaConfig::small();
    cfg.vision.image_size = 112;
    let mut m = PaliGemma::new(&cfg, &model::device(), 0).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pretrained/small-image-encoder.safetensors");
    let random = values_under(&m, "vision_tower.");
    checkpoint::load_image_encoder(&mut m, &path).unwrap();
    // every tensor of the tower came from the file: none keeps its random values
    for ((name, got), (_, was)) in values_under(&m, "vision_tower.").iter().zip(&random) {
        assert_ne!(got, was, "{name}");
    }
}
