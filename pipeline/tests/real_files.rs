//! Files written by real tools (pyarrow, Hugging Face `datasets`; see fixtures/parquet/README.md)
//! streamed end to end: every layout read, every bad row counted where it is.

use std::path::PathBuf;
use std::sync::Arc;

use mixtures::Mixture;
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::{PaliTokenizer, train_tokenizer};
use pipeline::{BadInputStats, Reason};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
        .display()
        .to_string()
}

fn tokenizer() -> Arc<PaliTokenizer> {
    let words = [
        "caption en",
        "answer en how many squares",
        "red green blue yellow square 0 1 2 3",
    ];
    Arc::new(PaliTokenizer::new(train_tokenizer(words.into_iter(), 300).unwrap()).unwrap())
}

/// Streams one file as one task; returns the examples' image counts and the bad-row stats.
fn stream(
    data: &str,
    image_column: &str,
    prefix: &str,
    suffix: &str,
    images: u32,
) -> (Vec<usize>, BadInputStats) {
    let spec = serde_json::json!({
        "max_bad_fraction": 0.5,
        "sources": { "s": { "data": data, "image_columns": [image_column], "epochs": 1 } },
        "tasks": { "t": { "source": "s", "prefix": prefix, "suffix": suffix, "images": images } },
        "stages": [{ "name": "all", "resolution": 28, "text_len": 32, "batch_size": 2,
                     "budget": { "examples": 1000 }, "weights": { "t": 1 } }],
    });
    let mixture = Mixture::from_json_str(&spec.to_string()).unwrap();
    let options = RunOptions::new(tokenizer());
    let mut images = Vec::new();
    let mut stats = BadInputStats::default();
    for batch in stage_stream(&mixture, 0, &options, StreamState::default()).unwrap() {
        let batch = batch.unwrap();
        batch.batch.validate().unwrap();
        for seg in &batch.batch.segments {
            let n = batch
                .batch
                .image_slots
                .iter()
                .filter(|s| {
                    s.row == seg.row && s.start >= seg.start && s.start < seg.start + seg.len
                })
                .count();
            images.push(n);
        }
        stats = batch.state.bad_inputs;
    }
    (images, stats)
}

fn located(stats: &BadInputStats) -> Vec<(Reason, usize, usize, Option<String>)> {
    stats
        .first
        .iter()
        .map(|b| {
            (
                b.reason,
                b.location.row_group,
                b.location.row,
                b.location.column.clone(),
            )
        })
        .collect()
}

#[test]
fn pyarrow_row_groups_with_a_null_and_a_corrupt_image() {
    let (images, stats) = stream(
        &fixture("pyarrow_row_groups.parquet"),
        "image",
        "{prefix}",
        "{suffix}",
        1,
    );
    assert_eq!(images, [1; 6], "8 rows, 2 bad; the RGBA PNG is fine");
    let mut bad = located(&stats);
    bad.sort();
    assert_eq!(
        bad,
        [
            (Reason::CorruptImage, 1, 2, Some("image".into())),
            (Reason::NullValue, 0, 2, Some("suffix".into()))
        ]
    );
}

#[test]
fn written_by_hf_datasets() {
    let (images, stats) = stream(
        &fixture("hf_datasets.parquet"),
        "image",
        "{prefix}",
        "{suffix}",
        1,
    );
    assert_eq!(images, [1; 6]);
    assert_eq!(stats.bad(), 0);
}

#[test]
fn plain_binary_column() {
    let (images, stats) = stream(
        &fixture("binary_column.parquet"),
        "jpg",
        "{prefix}",
        "{suffix}",
        1,
    );
    assert_eq!((images.len(), stats.bad()), (5, 0));
}

#[test]
fn paths_relative_to_the_dataset() {
    let (images, stats) = stream(
        &fixture("path_column/data.parquet"),
        "file_name",
        "{prefix}",
        "{suffix}",
        1,
    );
    assert_eq!(images.len(), 4);
    assert_eq!(
        located(&stats),
        [(Reason::MissingFile, 0, 4, Some("file_name".into()))]
    );
}

#[test]
fn a_list_of_images_per_row() {
    let (images, stats) = stream(
        &fixture("image_list.parquet"),
        "images",
        "answer en {question}",
        "{answer}",
        3,
    );
    assert_eq!(images.len(), 4);
    assert!(
        images.iter().all(|n| *n == 2 || *n == 3) && images.contains(&3),
        "{images:?}"
    );
    assert_eq!(stats.bad(), 0);
}

#[test]
fn a_truncated_file_is_named() {
    let spec = serde_json::json!({
        "sources": { "s": { "data": fixture("truncated.parquet"), "image_columns": ["image"] } },
        "tasks": { "t": { "source": "s", "prefix": "{prefix}", "suffix": "{suffix}" } },
        "stages": [{ "name": "all", "resolution": 28, "batch_size": 2, "budget": { "examples": 10 }, "weights": { "t": 1 } }],
    });
    let mixture = Mixture::from_json_str(&spec.to_string()).unwrap();
    let error = stage_stream(
        &mixture,
        0,
        &RunOptions::new(tokenizer()),
        StreamState::default(),
    )
    .err()
    .expect("nothing readable");
    let message = error.to_string();
    assert!(message.contains("truncated.parquet"), "{message}");
}
