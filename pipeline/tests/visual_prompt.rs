//! Visual prompts: a row's box or point drawn onto its image before the resize, and a row whose
//! mark is malformed skipped as bad input, naming its column.

use std::path::Path;
use std::sync::Arc;

use mixtures::Mixture;
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::{PaliTokenizer, train_tokenizer};
use pipeline::writer::{DataType, ImageValue, Row, Schema, ShardWriter, WriterConfig};
use pipeline::{Batch, Reason};
use serde_json::json;

/// Six white 56 x 56 images; row 4's box has three numbers.
fn dataset(dir: &Path) {
    let schema = Schema::new()
        .image("image")
        .column("label", DataType::String)
        .column("region", DataType::list(DataType::Float64))
        .column("spot", DataType::list(DataType::Float64));
    let mut writer = ShardWriter::create(dir, WriterConfig::new("train", schema)).unwrap();
    let white = image::RgbImage::from_pixel(56, 56, image::Rgb([255, 255, 255]));
    let mut png = std::io::Cursor::new(Vec::new());
    white.write_to(&mut png, image::ImageFormat::Png).unwrap();
    for i in 0..6 {
        let region = if i == 4 {
            json!([0.25, 0.25, 0.75])
        } else {
            json!([0.25, 0.25, 0.75, 0.75])
        };
        let row = Row::new()
            .image("image", ImageValue::from_bytes(png.get_ref().clone()))
            .field("label", "square")
            .field("region", region)
            .field("spot", json!([0.5, 0.5]));
        writer.write(row).unwrap();
    }
    writer.finish().unwrap();
    let tokenizer = train_tokenizer(["caption en square"].into_iter(), 300).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
}

fn batches(dir: &Path, prompt: &str) -> (Vec<Batch>, StreamState) {
    let toml = format!(
        r#"
        max_bad_fraction = 0.5
        [sources.s]
        data = "{dir}/train-*.parquet"
        image_columns = ["image"]
        [tasks.t]
        source = "s"
        prefix = "caption en"
        suffix = "{{label}}"
        visual_prompt = {prompt}
        [[stages]]
        name = "one"
        resolution = 28
        text_len = 16
        batch_size = 1
        budget = {{ examples = 6 }}
        weights = {{ t = 1 }}
        "#,
        dir = dir.display()
    );
    let mixture = Mixture::from_toml_str(&toml).unwrap();
    let tokenizer = Arc::new(PaliTokenizer::from_file(dir.join("tokenizer.json")).unwrap());
    let stream = stage_stream(
        &mixture,
        0,
        &RunOptions::new(tokenizer),
        StreamState::default(),
    )
    .unwrap();
    let mut last = StreamState::default();
    let batches = stream
        .map(|b| {
            let b = b.unwrap();
            last = b.state;
            b.batch
        })
        .collect();
    (batches, last)
}

/// `[r, g, b]` of pixel (y, x) of a batch's first image, back in 0..=255.
fn pixel(batch: &Batch, y: usize, x: usize) -> [f32; 3] {
    let (image, side) = (batch.image(0), batch.resolution);
    [0, 1, 2].map(|c| ((image[c * side * side + y * side + x] + 1.0) * 127.5).round())
}

#[test]
fn a_box_is_drawn_before_the_resize_and_a_malformed_one_skips_its_row() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let (batches, state) = batches(dir.path(), r#"{ box = "region", thickness = 0.1 }"#);
    assert_eq!(batches.len(), 5, "row 4 skipped");
    for batch in &batches {
        // The top edge: rows 7-9 of 28 (a line 0.1 thick from y = 0.25), columns 7-20.
        assert_eq!(pixel(batch, 8, 14), [255.0, 0.0, 0.0], "red on the edge");
        assert_eq!(pixel(batch, 14, 14), [255.0, 255.0, 255.0], "white inside");
        assert_eq!(pixel(batch, 8, 2), [255.0, 255.0, 255.0], "white outside");
    }
    let bad = &state.bad_inputs;
    assert_eq!(bad.counts.get(&Reason::BadTemplateValue), Some(&1));
    let first = &bad.first[0];
    assert_eq!(first.location.row, 4);
    assert_eq!(first.location.column.as_deref(), Some("region"));
    assert!(first.detail.contains("not a box"), "{}", first.detail);
}

#[test]
fn a_point_is_a_dot() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let (batches, _) = batches(
        dir.path(),
        r#"{ point = "spot", colour = [0, 0, 255], thickness = 0.1 }"#,
    );
    assert_eq!(batches.len(), 6);
    assert_eq!(
        pixel(&batches[0], 14, 14),
        [0.0, 0.0, 255.0],
        "blue at the centre"
    );
    assert_eq!(pixel(&batches[0], 3, 3), [255.0, 255.0, 255.0]);
}
