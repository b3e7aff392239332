//! `paliforge pipeline bench` as a user runs it: its last line is one JSON report whose figures
//! agree with each other.

mod support;

use support::{last_json_line, paliforge};

#[test]
fn reports_whole_run_first_batch_and_steady_rates() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    paliforge(&[
        "demo-data",
        "--rows",
        "64",
        "--pair-rows",
        "8",
        "--image-size",
        "32",
        "--out",
        demo.to_str().unwrap(),
    ]);
    let shard = demo.join("scenes/train-00000.parquet");
    let out = paliforge(&[
        "pipeline",
        "bench",
        "--data",
        shard.to_str().unwrap(),
        "--prefix",
        "caption en",
        "--suffix",
        "{caption}",
        "--resolution",
        "56",
        "--text-len",
        "32",
        "--batch",
        "8",
        "--examples",
        "100",
    ]);
    let report = last_json_line(&out);
    let number = |key: &str| {
        report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {report}"))
    };
    // The 64 rows repeat until 100 examples have streamed, in batches of 8.
    assert_eq!(number("examples"), 100.0, "{report}");
    assert_eq!(number("batches"), 13.0, "{report}");
    assert_eq!(number("decode_only_images"), 64.0, "{report}");
    let seconds = number("seconds");
    let first = number("first_batch_s");
    assert!(0.0 < first && first <= seconds, "{report}");
    let whole = 100.0 / seconds;
    assert!(
        (number("examples_per_s") - whole).abs() < 1e-6 * whole,
        "{report}"
    );
    // The steady rate leaves out the first batch's examples and time.
    let steady = (100.0 - 8.0) / (seconds - first);
    assert!(
        (number("steady_examples_per_s") - steady).abs() < 1e-6 * steady,
        "{report}"
    );
    assert!(number("peak_rss_mib") > 0.0, "{report}");
    // The run's CPU time, per example and per second of the run.
    let cpu_ms = number("cpu_ms_per_example");
    assert!(cpu_ms > 0.0, "{report}");
    let busy = number("cores_busy");
    assert!(
        (busy - cpu_ms * 100.0 / 1e3 / seconds).abs() < 1e-6 * busy,
        "{report}"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(0.0 < busy && busy <= 1.1 * cores + 0.1, "{report}");
}
