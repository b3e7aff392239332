//! `paliforge model bench` on the tiny config: it runs, and its last line is the promised JSON.

mod support;

use std::process::Command;

use serde_json::Value;
use support::paliforge;

#[test]
fn model_bench_ends_with_a_json_line_of_figures() {
    let out = paliforge(&[
        "model",
        "bench",
        "--config",
        "tiny",
        "--batch",
        "2",
        "--text-len",
        "30",
        "--steps",
        "2",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() > 1, "a human summary comes first: {stdout}");
    let report: Value = serde_json::from_str(lines.last().unwrap()).expect("last line is JSON");
    for key in [
        "forward_ms",
        "train_step_ms",
        "train_tokens_per_s",
        "forward_tokens_per_s",
    ] {
        let v = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"));
        assert!(v > 0.0, "{key} = {v}");
    }
    assert_eq!(report["config"], "tiny");
    assert_eq!(report["batch"], 2);
    assert_eq!(report["seq_len"], 16 + 30); // 16 image tokens at 56 px, patch 14
    let tokens_per_s = report["train_tokens_per_s"].as_f64().unwrap();
    let step_ms = report["train_step_ms"].as_f64().unwrap();
    assert!(
        (tokens_per_s * step_ms / 1e3 - 2.0 * 46.0).abs() < 1e-6,
        "tokens/s is batch x length per step"
    );
}

#[test]
fn model_bench_refuses_an_unknown_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(["model", "bench", "--config", "huge"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown config `huge`"));
}
