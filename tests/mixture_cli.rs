//! `paliforge mixture check` as a user runs it: a valid spec over real shards prints its stage
//! table and exits 0; a broken one lists every error with its key path and exits non-zero.

mod support;

use std::process::Command;

use support::paliforge;

fn check(spec: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(["mixture", "check"])
        .arg(spec)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn valid_and_invalid_specs_against_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    paliforge(&[
        "demo-data",
        "--rows",
        "40",
        "--pair-rows",
        "10",
        "--image-size",
        "32",
        "--out",
        demo.to_str().unwrap(),
    ]);
    let spec = include_str!("../mixtures/specs/quickstart.toml");
    std::fs::write(dir.path().join("good.toml"), spec).unwrap();
    let (ok, text) = check(&dir.path().join("good.toml"));
    assert!(ok, "{text}");
    assert!(
        text.contains("stage 0 \"pretrain\"") && text.contains("good.toml: valid"),
        "{text}"
    );

    // A column the shards lack, a task the stage doesn't have, a resolution off the patch grid.
    let broken = spec
        .replace("suffix = \"{caption}\"", "suffix = \"{captions}\"")
        .replace("weights = { vqa = 1 }", "weights = { vqa = 1, ocr = 1 }")
        .replacen("resolution = 112", "resolution = 100", 1);
    std::fs::write(dir.path().join("bad.toml"), broken).unwrap();
    let (ok, text) = check(&dir.path().join("bad.toml"));
    assert!(!ok, "{text}");
    for needle in [
        "tasks.caption.suffix",
        "captions",
        "stages[2].weights.ocr",
        "stages[0].resolution",
        "3 error(s)",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}
