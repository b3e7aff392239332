//! A Hugging Face PaliGemma folder fine-tuned as a user would: the oracle's tiny model
//! (model/tests/fixtures/paligemma-tiny, written by transformers) transferred to the demo's
//! questions with `mixtures/specs/tiny_transfer.toml` and a word-level tokenizer that fits its
//! 300 ids. What comes out is a Hugging Face folder like the one that went in, and it loads back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

mod support;

use support::{last_json_line, paliforge};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/model/tests/fixtures/paligemma-tiny"
);

/// A safetensors file's tensors: name -> (dtype, shape, bytes).
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, t)| {
            let shape = t["shape"].as_array().unwrap().iter();
            let shape = shape.map(|d| d.as_u64().unwrap()).collect();
            let [start, end] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize);
            let dtype = t["dtype"].as_str().unwrap().to_string();
            (name, (dtype, shape, data[start..end].to_vec()))
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every key of transformers' `config.json` (nested ones too) has the same value in `ours`,
/// but for the few that are not the model's: the writer's version, the initialiser's scale and
/// the cache default.
fn same_config(theirs: &serde_json::Value, ours: &serde_json::Value, at: &str) {
    for (key, value) in theirs.as_object().unwrap() {
        let path = format!("{at}{key}");
        if ["transformers_version", "initializer_range", "use_cache"].contains(&key.as_str()) {
            continue;
        }
        match (value, &ours[key]) {
            (serde_json::Value::Object(_), o) => same_config(value, o, &format!("{path}.")),
            (v, o) => assert_eq!(v, o, "config.json {path}"),
        }
    }
}

fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| json_line(l)["loss"].as_f64().unwrap())
        .collect()
}

fn json_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// The shipped spec, copied into `dir` (its data paths are relative to it: `dir/demo`).
fn spec_in(dir: &Path) -> String {
    let spec = dir.join("tiny_transfer.toml");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mixtures/specs/tiny_transfer.toml"
    );
    std::fs::copy(shipped, &spec).unwrap();
    spec.to_str().unwrap().to_string()
}

/// `paliforge demo-data` of `rows` single-image rows at the model's 56 px into `out`.
fn demo_data(out: &Path, rows: &str, extra: &[&str]) {
    let mut args = vec!["demo-data", "--out", out.to_str().unwrap(), "--rows", rows];
    args.extend(["--pair-rows", "1", "--image-size", "56"]);
    args.extend(extra);
    paliforge(&args);
}

#[test]
fn the_tiny_hugging_face_model_fine_tunes_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = spec_in(d);
    let demo = d.join("demo");
    demo_data(&demo, "200", &["--word-tokenizer", "300"]);
    let arg = |p: &Path| p.to_str().unwrap().to_string();
    let tokenizer = arg(&demo.join("tokenizer.json"));
    let run = d.join("run");
    let out = paliforge(&[
        "train",
        &spec,
        "--out",
        &arg(&run),
        "--init",
        MODEL,
        "--tokenizer",
        &tokenizer,
        "--threads",
        "2",
    ]);
    let summary = last_json_line(&out);
    assert_eq!(summary["status"], "finished", "{summary}");
    assert_eq!(
        summary["steps"], 40,
        "the spec's 640 examples in batches of 16"
    );

    let losses = losses(&run);
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&losses[..3]), mean(&losses[losses.len() - 3..]));
    assert!(
        first > 5.5 && last < first - 0.5,
        "from about ln(300) = 5.7 the loss goes down: {losses:?}"
    );

    // The checkpoint is a Hugging Face folder like the one the run started from.
    let checkpoint = run.join("checkpoints/step-00000040");
    let before = tensors(&Path::new(MODEL).join("model.safetensors"));
    let after = tensors(&checkpoint.join("model.safetensors"));
    let layout = |t: &BTreeMap<String, (String, Vec<u64>, Vec<u8>)>| {
        let names = t
            .iter()
            .map(|(n, (dtype, shape, _))| (n.clone(), dtype.clone(), shape.clone()));
        names.collect::<Vec<_>>()
    };
    assert_eq!(layout(&after), layout(&before), "names, dtypes and shapes");
    let unchanged: Vec<&String> = before
        .iter()
        .filter(|(name, (_, _, bytes))| after[*name].2 == *bytes)
        .map(|(name, _)| name)
        .collect();
    assert!(unchanged.is_empty(), "every tensor trained: {unchanged:?}");
    same_config(
        &json(&Path::new(MODEL).join("config.json")),
        &json(&checkpoint.join("config.json")),
        "",
    );

    // Its weights and config alone, as a Hugging Face folder, load with the model crate and
    // evaluate with the CLI.
    let hf = d.join("hf");
    std::fs::create_dir(&hf).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(checkpoint.join(file), hf.join(file)).unwrap();
    }
    let loaded = model::checkpoint::load(&hf, &model::device()).unwrap();
    let original = model::PaliGemmaConfig::load(&Path::new(MODEL).join("config.json")).unwrap();
    assert_eq!(loaded.cfg, original);
    let report = d.join("eval.json");
    let out = paliforge(&[
        "eval",
        &spec,
        "--model",
        &arg(&hf),
        "--tokenizer",
        &tokenizer,
        "--threads",
        "2",
        "--out",
        &arg(&report),
        "--samples",
        "3",
    ]);
    let scores = &last_json_line(&out)["tasks"]["vqa"];
    let accuracy = scores["vqa_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{scores}");
    let report = json(&report);
    assert_eq!(
        report["tasks"][0]["examples"], 16,
        "the spec's eval.examples"
    );
    assert_eq!(
        report["samples"].as_array().unwrap().len(),
        3,
        "--samples 3 of 16"
    );
    let sample = &report["samples"][0];
    assert!(
        sample["prompt"]
            .as_str()
            .unwrap()
            .starts_with("<bos> answer en"),
        "{sample}"
    );
}

/// Runs `paliforge ARGS`, which must fail; its stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "paliforge {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn contains_all(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part}: {text}");
    }
}

#[test]
fn tokenizers_that_do_not_fit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = spec_in(d);
    let spec = spec.as_str();
    let run = d.join("run");
    let run = run.to_str().unwrap();
    // The demo's own tokenizer: BPE with PaliGemma's 1,153 tokens, far past 300 ids.
    let bpe = d.join("demo");
    demo_data(&bpe, "20", &[]);
    let stderr = fails(&["train", spec, "--out", run, "--init", MODEL]);
    let tokenizer = format!("tokenizer {}", bpe.join("tokenizer.json").display());
    contains_all(
        &stderr,
        &[&tokenizer, "paligemma-tiny has a vocabulary of 300"],
    );

    // The word-level one fits, but has no loc tokens: no boxes to train on or to score.
    let words = d.join("words");
    demo_data(&words, "20", &["--word-tokenizer", "300"]);
    let words_tokenizer = words.join("tokenizer.json");
    let detect = d.join("detect.toml");
    let detect_spec = std::fs::read_to_string(spec)
        .unwrap()
        .replace("\"{answer}\"", "\"{objects:detections}\"")
        .replace("\"vqa_accuracy\"", "\"detection_iou\"");
    std::fs::write(&detect, detect_spec).unwrap();
    let detect = detect.to_str().unwrap();
    let word_args = [
        "--init",
        MODEL,
        "--tokenizer",
        words_tokenizer.to_str().unwrap(),
    ];
    let stderr = fails(&[&["train", detect, "--out", run][..], &word_args].concat());
    let tokenizer = format!("tokenizer {}", words_tokenizer.display());
    contains_all(
        &stderr,
        &[
            "tasks.vqa.suffix",
            &tokenizer,
            "has no <loc0000>..<loc1023> tokens",
            "\"{objects:detections}\" writes boxes",
        ],
    );
    let stderr = fails(&[
        "eval",
        detect,
        "--model",
        MODEL,
        "--tokenizer",
        words_tokenizer.to_str().unwrap(),
    ]);
    contains_all(
        &stderr,
        &[&tokenizer, "task vqa's detection_iou evaluator reads boxes"],
    );
}
