//! The stream as a whole: deterministic whatever the thread count, resumable from any batch's
//! state (across a stage boundary too), bad rows counted by reason, and a limit that stops it.

use std::path::Path;
use std::sync::Arc;

use mixtures::Mixture;
use pipeline::mixture::{RunOptions, stage_of, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::{PaliTokenizer, train_tokenizer};
use pipeline::writer::{DataType, ImageValue, Row, Schema, ShardWriter, WriterConfig};
use pipeline::{BadInputPolicy, Batch, PipelineError, Reason};

const COLOURS: [&str; 4] = ["red", "green", "blue", "yellow"];

fn image(i: usize) -> Vec<u8> {
    let rgb = [
        (i * 40 % 256) as u8,
        (i * 90 % 256) as u8,
        (i * 13 % 256) as u8,
    ];
    let img = image::RgbImage::from_fn(24 + (i % 3) as u32 * 8, 20, |x, _| {
        image::Rgb(if x < 10 { rgb } else { [255, 255, 255] })
    });
    let mut out = std::io::Cursor::new(Vec::new());
    let format = if i.is_multiple_of(2) {
        image::ImageFormat::Png
    } else {
        image::ImageFormat::Jpeg
    };
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn caption(i: usize) -> String {
    let words = "a small square left of the big circle near one triangle"
        .split(' ')
        .collect::<Vec<_>>();
    format!(
        "{} {}",
        COLOURS[i % 4],
        words[..1 + i % words.len()].join(" ")
    )
}

/// `rows` rows in two shards, with a corrupt image every `corrupt_every` rows and a null caption
/// every `null_every` rows (0: never).
fn dataset(dir: &Path, rows: usize, corrupt_every: usize, null_every: usize) {
    let schema = Schema::new()
        .image("image")
        .column("colour", DataType::String)
        .nullable_column("caption", DataType::String);
    let config = WriterConfig {
        rows_per_row_group: 7,
        rows_per_shard: rows.div_ceil(2),
        ..WriterConfig::new("train", schema)
    };
    let mut writer = ShardWriter::create(dir, config).unwrap();
    for i in 0..rows {
        let bytes = if corrupt_every > 0 && i % corrupt_every == 3 {
            b"\xff\xd8\xff garbage".to_vec()
        } else {
            image(i)
        };
        let caption = if null_every > 0 && i % null_every == 5 {
            serde_json::Value::Null
        } else {
            caption(i).into()
        };
        writer
            .write(
                Row::new()
                    .image("image", ImageValue::from_bytes(bytes))
                    .field("colour", COLOURS[i % 4])
                    .field("caption", caption),
            )
            .unwrap();
    }
    writer.finish().unwrap();
    let texts: Vec<String> = (0..rows)
        .map(caption)
        .chain(["caption en", "colour"].map(String::from))
        .collect();
    let tokenizer = train_tokenizer(texts.iter().map(String::as_str), 300).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
}

fn spec(dir: &Path, stages: &str) -> Mixture {
    spec_with_limit(dir, stages, 0.01)
}

fn spec_with_limit(dir: &Path, stages: &str, max_bad: f64) -> Mixture {
    let toml = format!(
        r#"
        seed = 3
        max_bad_fraction = {max_bad}
        [sources.shapes]
        data = "{dir}/train-*.parquet"
        image_columns = ["image"]
        [tasks.caption]
        source = "shapes"
        prefix = "caption en"
        suffix = "{{caption}}"
        [tasks.colour]
        source = "shapes"
        prefix = "colour"
        suffix = "{{colour}}"
        {stages}
        "#,
        dir = dir.display()
    );
    Mixture::from_toml_str(&toml).unwrap()
}

const ONE_STAGE: &str = r#"
    [[stages]]
    name = "one"
    resolution = 28
    text_len = 40
    batch_size = 3
    packing = true
    budget = { examples = 150 }
    weights = { caption = 2, colour = 1 }
"#;

fn options(dir: &Path, threads: usize) -> RunOptions {
    let tokenizer = Arc::new(PaliTokenizer::from_file(dir.join("tokenizer.json")).unwrap());
    RunOptions {
        threads,
        prefetch: 2,
        ..RunOptions::new(tokenizer)
    }
}

fn run(
    mixture: &Mixture,
    stage: usize,
    options: &RunOptions,
    state: StreamState,
) -> Vec<(Batch, StreamState)> {
    stage_stream(mixture, stage, options, state)
        .unwrap()
        .map(|b| b.map(|b| (b.batch, b.state)).unwrap())
        .collect()
}

#[test]
fn same_batches_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 60, 0, 0);
    let mixture = spec(dir.path(), ONE_STAGE);
    let one = run(&mixture, 0, &options(dir.path(), 1), StreamState::default());
    let two = run(&mixture, 0, &options(dir.path(), 2), StreamState::default());
    let three = run(&mixture, 0, &options(dir.path(), 3), StreamState::default());
    assert!(one.len() > 10);
    assert!(
        one == two && two == three,
        "batches and states are identical"
    );
    let examples: usize = one.iter().map(|(b, _)| b.segments.len()).sum();
    assert_eq!(examples, 150, "the stage's budget, every example once");
    for (batch, _) in &one {
        batch.validate().unwrap();
        assert!(batch.segments.iter().all(|s| s.task_id < 2));
    }
    let caption = one
        .iter()
        .flat_map(|(b, _)| &b.segments)
        .filter(|s| s.task_id == 0)
        .count();
    assert_eq!(caption, 100, "weights 2:1, exactly");
    let packed_rows_with_two = one
        .iter()
        .any(|(b, _)| b.segments.iter().filter(|s| s.row == 0).count() > 1);
    assert!(
        packed_rows_with_two,
        "packing puts several examples in a row"
    );
}

#[test]
fn resuming_from_any_batch_yields_what_followed() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 40, 0, 0);
    let mixture = spec(dir.path(), ONE_STAGE);
    let options = options(dir.path(), 2);
    let all = run(&mixture, 0, &options, StreamState::default());
    for k in [0, 1, all.len() / 2, all.len() - 2] {
        // Through JSON, as a checkpoint stores it.
        let saved = serde_json::to_string(&all[k].1).unwrap();
        let state: StreamState = serde_json::from_str(&saved).unwrap();
        let rest = run(&mixture, 0, &options, state);
        assert!(rest == all[k + 1..], "resume after batch {k}");
    }
}

#[test]
fn resuming_across_a_stage_boundary_and_appending_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 30, 0, 0);
    let two_stages = format!(
        "{ONE_STAGE}\n{}",
        r#"
        [[stages]]
        name = "two"
        resolution = 42
        text_len = 16
        batch_size = 2
        budget = { examples = 40 }
        weights = { colour = 1 }
        "#
    );
    let mixture = spec(dir.path(), &two_stages);
    let options = options(dir.path(), 2);
    let first = run(&mixture, 0, &options, StreamState::default());
    let end_of_first = first.last().unwrap().1.clone();
    assert_eq!(stage_of(&mixture, &end_of_first).unwrap(), 1);
    let second = run(&mixture, 1, &options, end_of_first.clone());
    assert_eq!(
        second.iter().map(|(b, _)| b.segments.len()).sum::<usize>(),
        40
    );
    assert!(
        second
            .iter()
            .all(|(b, _)| b.resolution == 42 && b.segments.iter().all(|s| s.task_id == 1))
    );
    assert_eq!(
        stage_of(&mixture, &second.last().unwrap().1).unwrap(),
        2,
        "finished"
    );
    let resumed = run(&mixture, 1, &options, second[3].1.clone());
    assert!(resumed == second[4..]);

    // Continuous pretraining: the finished one-stage run gets a second stage appended.
    let one_stage = spec(dir.path(), ONE_STAGE);
    let finished = run(&one_stage, 0, &options, StreamState::default())
        .last()
        .unwrap()
        .1
        .clone();
    assert_eq!(
        stage_of(&one_stage, &finished).unwrap(),
        1,
        "past its only stage"
    );
    let appended = run(&mixture, 1, &options, finished);
    assert!(
        appended == second,
        "appending a stage continues as if it had always been there"
    );
}

/// A stage counted in passes over a task's data ends when the pass does: the last batch's
/// state is already in the next stage, which starts from it.
#[test]
fn an_epoch_budget_ends_its_stage_with_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 20, 0, 0);
    let stages = r#"
        [[stages]]
        name = "passes"
        resolution = 28
        text_len = 40
        batch_size = 3
        budget = { epochs = 2, task = "caption" }
        weights = { caption = 1 }
        [[stages]]
        name = "after"
        resolution = 28
        text_len = 16
        batch_size = 2
        budget = { examples = 6 }
        weights = { colour = 1 }
    "#;
    let mixture = spec(dir.path(), stages);
    let options = options(dir.path(), 2);
    let first = run(&mixture, 0, &options, StreamState::default());
    let examples: usize = first.iter().map(|(b, _)| b.segments.len()).sum();
    assert_eq!(examples, 40, "two passes over 20 rows");
    let last = first.last().unwrap().1.clone();
    assert_eq!(stage_of(&mixture, &last).unwrap(), 1);
    let second = run(&mixture, 1, &options, last);
    assert_eq!(
        second.iter().map(|(b, _)| b.segments.len()).sum::<usize>(),
        6
    );
}

#[test]
fn bad_rows_are_counted_by_reason_and_a_limit_stops_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), 50, 10, 25);
    let stages = ONE_STAGE.replace("caption = 2, colour = 1", "caption = 1");
    let mixture = spec_with_limit(dir.path(), &stages, 0.5);
    let mut options = options(dir.path(), 2);
    options.bad_input = BadInputPolicy {
        max_fraction: 0.5,
        min_examples: 10,
    };
    let all = run(&mixture, 0, &options, StreamState::default());
    let stats = &all.last().unwrap().1.bad_inputs;
    // Rows 3, 13, 23, ... carry corrupt images; rows 5 and 30 null captions.
    assert_eq!(stats.count(Reason::CorruptImage), 15, "{stats:?}");
    assert_eq!(stats.count(Reason::NullValue), 6, "{stats:?}");
    let first = stats
        .first
        .iter()
        .find(|b| b.reason == Reason::CorruptImage)
        .unwrap();
    assert_eq!(first.location.column.as_deref(), Some("image"));
    assert!(first.location.shard.ends_with(".parquet"));

    let mixture = spec_with_limit(dir.path(), &stages, 0.05);
    options.bad_input = BadInputPolicy {
        max_fraction: 0.05,
        min_examples: 20,
    };
    let error = stage_stream(&mixture, 0, &options, StreamState::default())
        .unwrap()
        .find_map(Result::err)
        .expect("the limit is crossed");
    let PipelineError::TooManyBadInputs(too_many) = &error else {
        panic!("{error}")
    };
    let message = too_many.to_string();
    assert!(
        message.contains("corrupt_image") && message.contains("row group"),
        "{message}"
    );
}
