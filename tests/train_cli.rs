//! `paliforge train` as a user runs it: the demo data, the quickstart spec, a tiny model;
//! stopped and resumed, its metrics file shows the losses of an uninterrupted run.

use std::path::Path;
use std::process::Command;

mod support;

use support::paliforge;

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

/// The quickstart spec in `d`, beside the demo data it reads.
fn quickstart_with_demo(d: &Path) -> std::path::PathBuf {
    let spec = d.join("spec.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/mixtures/specs/quickstart.toml"
        ),
        &spec,
    )
    .unwrap();
    paliforge(&["demo-data", "--out", d.join("demo").to_str().unwrap()]);
    spec
}

#[test]
fn train_stops_resumes_and_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = quickstart_with_demo(d);
    let (spec, whole, parts) = (spec.to_str().unwrap(), d.join("whole"), d.join("parts"));
    let common = [
        "--config",
        "tiny",
        "--threads",
        "2",
        "--task-loss-every",
        "2",
    ];
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", spec, "--out", out.to_str().unwrap()];
        args.extend(common);
        args.extend(extra);
        paliforge(&args)
    };
    let out = train(&whole, &["--max-steps", "4"]);
    let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(summary["status"], "stopped");
    assert_eq!(summary["steps"], 4);

    train(&parts, &["--max-steps", "2", "--checkpoint-every", "1"]);
    // starting again over a run's checkpoints needs --resume
    let again = Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args([
            "train",
            spec,
            "--out",
            parts.to_str().unwrap(),
            "--config",
            "tiny",
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    train(&parts, &["--resume", "--max-steps", "4"]);

    let (a, b) = (losses(&whole), losses(&parts));
    assert_eq!(a.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(a, b, "resumed losses equal the uninterrupted run's");
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(whole.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert!(
        last["task_loss"].as_object().is_some_and(|t| !t.is_empty()),
        "per-task loss on even steps: {last}"
    );
    assert!(
        whole
            .join("checkpoints/step-00000004/model.safetensors")
            .is_file()
    );
    assert!(
        whole
            .join("checkpoints/step-00000004/config.json")
            .is_file()
    );

    // A checkpoint carries the run's tokenizer: it predicts on its own.
    let checkpoint = whole.join("checkpoints/step-00000004");
    assert_eq!(
        std::fs::read_to_string(checkpoint.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(d.join("demo/tokenizer.json")).unwrap(),
    );
    let image = d.join("scene.png");
    image::RgbImage::from_pixel(112, 112, image::Rgb([200, 40, 40]))
        .save(&image)
        .unwrap();
    paliforge(&[
        "predict",
        "--model",
        checkpoint.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--prompt",
        "caption en",
        "--max-new-tokens",
        "4",
    ]);
}

#[test]
fn a_fresh_run_takes_its_image_encoder_from_the_checkpoint_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = quickstart_with_demo(d);
    // The oracle's tiny PaliGemma, trained at 56 px: its vision tower, resampled to 112 px.
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("model/tests/fixtures/paligemma-tiny");
    let run = d.join("run");
    paliforge(&[
        "train",
        spec.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--config",
        "tiny",
        "--image-encoder",
        encoder.to_str().unwrap(),
        "--max-steps",
        "1",
        "--checkpoint-every",
        "1",
    ]);
    let dev = model::device();
    let trained = model::checkpoint::load(&run.join("checkpoints/step-00000001"), &dev).unwrap();
    let mut want = model::PaliGemma::new(&trained.cfg, &dev, 0).unwrap();
    model::checkpoint::load_image_encoder(&mut want, &encoder).unwrap();
    let tower = |m: &model::PaliGemma| -> Vec<f32> {
        use model::layers::Params;
        m.vision_tower
            .named_params()
            .into_iter()
            .flat_map(|(_, p)| p.to_vec())
            .collect()
    };
    let (got, want) = (tower(&trained), tower(&want));
    assert_eq!(got.len(), want.len());
    // One step at the image side's warm-up rate (about 1e-7) moves it by no more than that.
    let moved = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved < 1e-5,
        "the vision tower moved {moved} from the encoder"
    );
}
