//! The README's main command, shortened: `paliforge quickstart` on a tiny model for a few
//! steps makes the demo data, trains, evaluates every task on held-out data, writes the run's
//! report, and ends with one JSON line; `paliforge eval` scores the same run again.

mod support;

use support::{last_json_line, paliforge};

#[test]
fn quickstart_trains_evaluates_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("qs");
    let out = out_dir.to_str().unwrap();
    let run = paliforge(&[
        "quickstart",
        "--out",
        out,
        "--config",
        "tiny",
        "--max-steps",
        "3",
        "--threads",
        "2",
    ]);
    let summary = last_json_line(&run);
    assert_eq!(summary["steps"], 3);
    let tasks = summary["tasks"].as_object().unwrap();
    let names: Vec<&str> = tasks.keys().map(String::as_str).collect();
    assert_eq!(names, ["caption", "compare", "detect", "vqa"]);
    for metric in ["boxes_iou>0.5", "mean_iou", "map50"] {
        let v = tasks["detect"][metric].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{metric} {v}");
    }
    assert!(tasks["vqa"]["vqa_accuracy"].is_number());
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(table.contains("exact_match"), "{table}");

    let report = std::fs::read_to_string(out_dir.join("run/report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("data:image/png;base64,"));
    let metrics = std::fs::read_to_string(out_dir.join("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("run/eval.json")).unwrap())
            .unwrap();
    assert_eq!(eval["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(
        eval["tasks"][0]["examples"], 100,
        "the spec's eval.examples"
    );

    let again = paliforge(&[
        "eval",
        out_dir.join("spec.toml").to_str().unwrap(),
        "--model",
        out_dir.join("run").to_str().unwrap(),
        "--examples",
        "5",
    ]);
    let scores = last_json_line(&again);
    assert!(scores["model"].as_str().unwrap().ends_with("step-00000003"));
    assert_eq!(scores["tasks"].as_object().unwrap().len(), 4);
}
