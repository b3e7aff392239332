//! `paliforge predict` on the oracle's tiny PaliGemma (model/tests/fixtures/paligemma-tiny),
//! with a word-level tokenizer made here to fit its 300-token vocabulary: the CLI's prompt is
//! the one transformers built for the fixture, and its tokens are the model crate's decoding.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use model::{BeamOptions, DecodeOptions, Prompt};
use pipeline::image::{ImageProcessor, Rgb, RgbImage};
use serde_json::{Value, json};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/model/tests/fixtures/paligemma-tiny"
);
/// Fixture case 0's text: `<bos>` w160 w116 w94 w191 w167 "\n" (fixture_decode.json).
const PROMPT: &str = "w160 w116 w94 w191 w167";

/// The name of each id: Gemma's specials where the fixture's config puts them, `<image>` last,
/// "\n" at Gemma's 108, words `wN` elsewhere.
fn token(id: u32) -> String {
    match id {
        0 => "<pad>".into(),
        1 => "<eos>".into(),
        2 => "<bos>".into(),
        3 => "<unk>".into(),
        108 => "\n".into(),
        299 => "<image>".into(),
        _ => format!("w{id}"),
    }
}

/// A WordLevel tokenizer.json: words split on whitespace; specials and "\n" as added tokens, so
/// they match before the split.
fn tokenizer_json() -> Value {
    let added = |id: u32, special: bool| {
        json!({ "id": id, "content": token(id), "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special })
    };
    let vocab: serde_json::Map<String, Value> = (0..300).map(|id| (token(id), json!(id))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(0, true), added(1, true), added(2, true), added(3, true), added(108, false), added(299, true)],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" }
    })
}

/// A model folder as Hugging Face lays one out, and two images in it.
fn model_dir() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(FIXTURE).join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("tokenizer.json"),
        tokenizer_json().to_string(),
    )
    .unwrap();
    let images: Vec<PathBuf> = (0..2u32)
        .map(|k| {
            // not square and not 56 px, so the pipeline's resize has work to do
            let img = RgbImage::from_fn(90, 70, |x, y| {
                Rgb([(x * 2 + k * 90) as u8, (y * 3) as u8, ((x + y) * k) as u8])
            });
            let path = dir.path().join(format!("image{k}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect();
    (dir, images)
}

fn paliforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(args)
        .output()
        .unwrap()
}

fn predict_json(dir: &Path, images: &[PathBuf], extra: &[&str]) -> Value {
    let mut args = vec![
        "predict",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--json",
    ];
    for image in images {
        args.extend(["--image", image.to_str().unwrap()]);
    }
    args.extend(extra);
    let out = paliforge(&args);
    assert!(
        out.status.success(),
        "predict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The prompt built in-process: the fixture's text tokens after the images' tokens, and the
/// images through the same pipeline processing.
fn in_process_prompt(m: &model::PaliGemma, images: &[PathBuf]) -> Prompt {
    let mut proc = ImageProcessor::new();
    let pixels: Vec<f32> = images
        .iter()
        .flat_map(|p| {
            proc.process(&std::fs::read(p).unwrap(), m.cfg.vision.image_size as u32)
                .unwrap()
        })
        .collect();
    Prompt::with_images(
        &m.cfg,
        &[2, 160, 116, 94, 191, 167, 108],
        images.len(),
        pixels,
    )
}

#[test]
fn predict_builds_transformers_prompt_and_decodes_as_the_model_crate() {
    let (dir, images) = model_dir();
    let m = model::checkpoint::load(dir.path(), &model::device()).unwrap();

    let out = predict_json(dir.path(), &images[..1], &["--max-new-tokens", "8"]);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("fixture_decode.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ids(&out["prompt_tokens"]),
        ids(&meta["cases"][0]["input_ids"]),
        "transformers' prompt"
    );

    let opts = DecodeOptions {
        max_new_tokens: 8,
        stop_at_eos: true,
        keep_logits: false,
    };
    let want = model::greedy(&m, &[in_process_prompt(&m, &images[..1])], &opts)
        .unwrap()
        .remove(0)
        .tokens;
    assert!(!want.is_empty());
    assert_eq!(ids(&out["tokens"]), want);
    let words: Vec<String> = want
        .iter()
        .take_while(|&&t| t != 1)
        .filter(|&&t| ![0, 2, 3, 299].contains(&t))
        .map(|&t| token(t))
        .collect();
    assert_eq!(out["text"], json!(words.join(" ")));

    // plain output: the text alone
    let plain = paliforge(&[
        "predict",
        "--model",
        dir.path().to_str().unwrap(),
        "--image",
        images[0].to_str().unwrap(),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "8",
    ]);
    assert!(plain.status.success());
    assert_eq!(
        String::from_utf8(plain.stdout).unwrap(),
        format!("{}\n", words.join(" "))
    );
}

#[test]
fn predict_with_two_images_and_beam_search() {
    let (dir, images) = model_dir();
    let m = model::checkpoint::load(dir.path(), &model::device()).unwrap();
    let prompt = in_process_prompt(&m, &images);
    assert_eq!(prompt.tokens.len(), 2 * 16 + 7);

    let greedy = predict_json(dir.path(), &images, &["--max-new-tokens", "6"]);
    assert_eq!(ids(&greedy["prompt_tokens"]), prompt.tokens);
    let opts = DecodeOptions {
        max_new_tokens: 6,
        stop_at_eos: true,
        keep_logits: false,
    };
    assert_eq!(
        ids(&greedy["tokens"]),
        model::greedy(&m, std::slice::from_ref(&prompt), &opts).unwrap()[0].tokens
    );

    let beam = predict_json(
        dir.path(),
        &images,
        &["--max-new-tokens", "6", "--beams", "3"],
    );
    let want = model::beam_search(
        &m,
        &[prompt],
        &BeamOptions {
            beams: 3,
            decode: opts,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ids(&beam["tokens"]), want[0].tokens);
}

#[test]
fn predict_errors_name_the_file_at_fault() {
    let (dir, images) = model_dir();
    let not_image = dir.path().join("not-an-image.png");
    std::fs::write(&not_image, b"these bytes are no image").unwrap();
    let args = |image: &Path| {
        paliforge(&[
            "predict",
            "--model",
            dir.path().to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--prompt",
            PROMPT,
        ])
    };
    let out = args(&not_image);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not-an-image.png"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let out = args(&images[0]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
