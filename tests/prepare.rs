//! `paliforge prepare` as a user runs it: images with annotations (JSONL and CSV) or Parquet
//! in, paliforge shards and a manifest out, bad rows reported, and a job killed half-way that
//! leaves no half shard and completes when run again.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use pipeline::writer::Manifest;

fn paliforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_paliforge"))
}

fn png(i: usize, side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(i * 7) as u8, (x * 3) as u8, (y * 5) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `rows` images in `dir/images` and their annotations; row 3's file is missing and row 5's
/// image is corrupt when `with_bad` is set.
fn image_folder(dir: &Path, rows: usize, side: u32, with_bad: bool) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut jsonl = String::new();
    let mut csv = String::from("file_name,caption,n\n");
    for i in 0..rows {
        let name = format!("{i:05}.png");
        if !(with_bad && i == 3) {
            let bytes = if with_bad && i == 5 {
                png(i, side)[..40].to_vec()
            } else {
                png(i, side)
            };
            std::fs::write(dir.join("images").join(&name), bytes).unwrap();
        }
        jsonl += &serde_json::json!({ "file_name": name, "caption": format!("picture {i}"), "n": i, "box": [0.1, 0.2, 0.5, 0.6] }).to_string();
        jsonl += "\n";
        csv += &format!("{name},picture {i},{i}\n");
    }
    std::fs::write(dir.join("annotations.jsonl"), jsonl).unwrap();
    std::fs::write(dir.join("annotations.csv"), csv).unwrap();
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn image_folders_with_jsonl_or_csv_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), 20, 16, true);
    for (annotations, out) in [
        ("annotations.jsonl", "from-jsonl"),
        ("annotations.csv", "from-csv"),
    ] {
        let out = dir.path().join(out);
        let text = run_ok(
            paliforge()
                .arg("prepare")
                .arg("--images")
                .arg(dir.path().join("images"))
                .arg("--annotations")
                .arg(dir.path().join(annotations))
                .args([
                    "--image-column",
                    "file_name",
                    "--rows-per-shard",
                    "8",
                    "--rows-per-row-group",
                    "4",
                    "--max-bad-fraction",
                    "0.2",
                    "--out",
                ])
                .arg(&out),
        );
        assert!(
            text.contains("18 rows in 3 shards, 2 bad rows skipped"),
            "{text}"
        );
        let manifest = Manifest::read(&out).unwrap();
        manifest.verify(&out).unwrap();
        let split = &manifest.splits["train"];
        let reasons: Vec<String> = split
            .bad_rows
            .iter()
            .map(|b| format!("{} {}", b.reason, b.location.row))
            .collect();
        assert_eq!(reasons, ["missing_file 3", "corrupt_image 5"]);
        assert!(split.bad_rows[0].detail.contains("00003.png"));
    }
    let jsonl = Manifest::read(&dir.path().join("from-jsonl")).unwrap();
    let columns: Vec<&str> = jsonl.splits["train"]
        .schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["file_name", "box", "caption", "n"],
        "types inferred, the image column first"
    );
}

#[test]
fn parquet_to_parquet_with_reencoding() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), 6, 300, false);
    let first = dir.path().join("first");
    run_ok(
        paliforge()
            .arg("prepare")
            .arg("--images")
            .arg(dir.path().join("images"))
            .arg("--annotations")
            .arg(dir.path().join("annotations.jsonl"))
            .args(["--image-column", "file_name", "--out"])
            .arg(&first),
    );
    let second = dir.path().join("second");
    let text = run_ok(
        paliforge()
            .args(["prepare", "--parquet"])
            .arg(first.join("train-*.parquet"))
            .args([
                "--image-column",
                "file_name",
                "--max-side",
                "64",
                "--split",
                "small",
                "--train-tokenizer",
                "300",
                "--out",
            ])
            .arg(&second),
    );
    assert!(text.contains("6 rows in 1 shards"), "{text}");
    let manifest = Manifest::read(&second).unwrap();
    manifest.verify(&second).unwrap();
    assert!(second.join("tokenizer.json").is_file());
    // Every image was re-encoded to at most 64 pixels a side.
    let file = std::fs::File::open(&manifest.shard_paths(&second, "small")[0]).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 16).unwrap();
    let mut checked = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let images = batch.column_by_name("file_name").unwrap();
        let images = images.as_struct();
        let bytes = images.column_by_name("bytes").unwrap().as_binary::<i32>();
        for i in 0..bytes.len() {
            let img = image::load_from_memory(bytes.value(i)).unwrap();
            assert_eq!((img.width(), img.height()), (64, 64));
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn a_killed_prepare_leaves_no_half_shard_and_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), 3000, 64, false);
    let out = dir.path().join("out");
    let args = |c: &mut Command| {
        c.arg("prepare")
            .arg("--images")
            .arg(dir.path().join("images"))
            .arg("--annotations")
            .arg(dir.path().join("annotations.jsonl"))
            .args([
                "--image-column",
                "file_name",
                "--rows-per-shard",
                "250",
                "--threads",
                "1",
                "--out",
            ])
            .arg(&out);
    };
    let mut command = paliforge();
    args(&mut command);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("train-00001.parquet").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no shard appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "prepare finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs.
    child.wait().unwrap();
    assert!(
        !out.join("manifest.json").exists(),
        "no manifest for an unfinished job"
    );
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet")
            && !path.file_name().unwrap().to_string_lossy().starts_with('.')
        {
            let file = std::fs::File::open(&path).unwrap();
            let rows: usize =
                parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024)
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum();
            assert_eq!(rows, 250, "{} is whole", path.display());
        }
    }
    let mut again = paliforge();
    args(&mut again);
    let text = run_ok(&mut again);
    assert!(text.contains("3000 rows in 12 shards"), "{text}");
    let manifest = Manifest::read(&out).unwrap();
    manifest.verify(&out).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files cleaned: {leftovers:?}"
    );
}
