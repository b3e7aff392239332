//! The shard writer: what it writes reads back with the `parquet` crate in the Hugging Face
//! layout, shards and row groups have the configured sizes, an interrupted writer leaves no
//! half shard, and the manifest's checksums are those of the files.

use std::fs::{self, File};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType as ArrowType, Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use pipeline::bad_input::{BadInput, Reason};
use pipeline::location::Location;
use pipeline::writer::{
    Codec, DataType, ImageValue, Manifest, Row, Schema, ShardWriter, WriterConfig, WriterError,
    sha256_file,
};
use serde_json::json;

fn box_type() -> DataType {
    DataType::struct_of([
        ("y0", DataType::Float64),
        ("x0", DataType::Float64),
        ("y1", DataType::Float64),
        ("x1", DataType::Float64),
        ("label", DataType::String),
    ])
}

fn schema() -> Schema {
    Schema::new()
        .image("image")
        .image_list("views")
        .column("caption", DataType::String)
        .nullable_column("score", DataType::Float64)
        .column("count", DataType::Int64)
        .column("flag", DataType::Bool)
        .column("objects", DataType::list(box_type()))
}

/// Row `i`: every value depends on `i`, so a misplaced row shows.
fn row(i: usize) -> Row {
    let image = ImageValue::from_bytes(format!("jpeg bytes of {i}").into_bytes())
        .with_path(format!("{i}.jpg"));
    let views = (0..i % 3)
        .map(|k| ImageValue::from_bytes(vec![i as u8, k as u8]))
        .collect();
    let objects: Vec<_> = (0..i % 2 + 1)
        .map(|k| json!({"y0": 0.1 * k as f64, "x0": 0.2, "y1": 0.5, "x1": 0.25 * i as f64, "label": format!("thing{k}")}))
        .collect();
    let mut row = Row::new()
        .image("image", image)
        .image_list("views", views)
        .field("caption", format!("caption {i}"))
        .field("count", i as i64 - 3)
        .field("flag", i.is_multiple_of(2))
        .field("objects", objects);
    if i % 4 != 1 {
        row = row.field("score", i as f64 / 8.0);
    }
    row
}

fn config(rows_per_row_group: usize, rows_per_shard: usize) -> WriterConfig {
    let mut config = WriterConfig::new("train", schema());
    config.rows_per_row_group = rows_per_row_group;
    config.rows_per_shard = rows_per_shard;
    config
}

fn read_all(path: &Path) -> Vec<RecordBatch> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    reader.map(Result::unwrap).collect()
}

fn row_group_sizes(path: &Path) -> Vec<i64> {
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect()
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".parquet"))
        .collect();
    names.sort();
    names
}

#[test]
fn rows_read_back_in_the_hugging_face_layout() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::create(dir.path(), config(4, 10)).unwrap();
    for i in 0..23 {
        writer.write(row(i)).unwrap();
    }
    let manifest = writer.finish().unwrap();

    assert_eq!(
        parquet_files(dir.path()),
        [
            "train-00000.parquet",
            "train-00001.parquet",
            "train-00002.parquet"
        ]
    );
    let split = &manifest.splits["train"];
    assert_eq!(
        split.shards.iter().map(|s| s.rows).collect::<Vec<_>>(),
        [10, 10, 3]
    );
    assert_eq!(manifest.total_rows, 23);
    assert_eq!(
        row_group_sizes(&dir.path().join("train-00000.parquet")),
        [4, 4, 2]
    );
    assert_eq!(
        row_group_sizes(&dir.path().join("train-00002.parquet")),
        [3]
    );
    assert_eq!(split.shards[0].row_groups, 3);

    let batches: Vec<RecordBatch> = manifest
        .shard_paths(dir.path(), "train")
        .iter()
        .flat_map(|p| read_all(p))
        .collect();
    let file = File::open(dir.path().join("train-00000.parquet")).unwrap();
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    let image_struct = ArrowType::Struct(
        vec![
            arrow::datatypes::Field::new("bytes", ArrowType::Binary, true),
            arrow::datatypes::Field::new("path", ArrowType::Utf8, true),
        ]
        .into(),
    );
    assert_eq!(
        schema.field_with_name("image").unwrap().data_type(),
        &image_struct
    );
    match schema.field_with_name("views").unwrap().data_type() {
        ArrowType::List(item) => assert_eq!(item.data_type(), &image_struct),
        other => panic!("views is {other}"),
    }
    let features: serde_json::Value =
        serde_json::from_str(&schema.metadata()["huggingface"]).unwrap();
    assert_eq!(
        features["info"]["features"]["image"],
        json!({"_type": "Image"})
    );
    assert_eq!(
        features["info"]["features"]["views"],
        json!([{"_type": "Image"}])
    );

    let mut i = 0usize;
    for batch in &batches {
        let image = batch.column_by_name("image").unwrap().as_struct();
        let bytes = image.column_by_name("bytes").unwrap().as_binary::<i32>();
        let paths = image.column_by_name("path").unwrap().as_string::<i32>();
        let views = batch.column_by_name("views").unwrap().as_list::<i32>();
        let captions = batch.column_by_name("caption").unwrap().as_string::<i32>();
        let scores = batch
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float64Type>();
        let counts = batch
            .column_by_name("count")
            .unwrap()
            .as_primitive::<Int64Type>();
        let flags = batch.column_by_name("flag").unwrap().as_boolean();
        let objects = batch.column_by_name("objects").unwrap().as_list::<i32>();
        for r in 0..batch.num_rows() {
            assert_eq!(bytes.value(r), format!("jpeg bytes of {i}").as_bytes());
            assert_eq!(paths.value(r), format!("{i}.jpg"));
            let view = views.value(r);
            let view_bytes = view
                .as_struct()
                .column_by_name("bytes")
                .unwrap()
                .as_binary::<i32>();
            let expected: Vec<Vec<u8>> = (0..i % 3).map(|k| vec![i as u8, k as u8]).collect();
            assert_eq!(
                view_bytes
                    .iter()
                    .map(|b| b.unwrap().to_vec())
                    .collect::<Vec<_>>(),
                expected
            );
            assert_eq!(captions.value(r), format!("caption {i}"));
            assert_eq!(scores.is_null(r), i % 4 == 1, "row {i}");
            if i % 4 != 1 {
                assert_eq!(scores.value(r), i as f64 / 8.0);
            }
            assert_eq!(counts.value(r), i as i64 - 3);
            assert_eq!(flags.value(r), i.is_multiple_of(2));
            let boxes = objects.value(r);
            let boxes = boxes.as_struct();
            assert_eq!(boxes.len(), i % 2 + 1);
            let x1 = boxes
                .column_by_name("x1")
                .unwrap()
                .as_primitive::<Float64Type>();
            let labels = boxes.column_by_name("label").unwrap().as_string::<i32>();
            assert_eq!(x1.value(0), 0.25 * i as f64);
            assert_eq!(labels.value(boxes.len() - 1), format!("thing{}", i % 2));
            i += 1;
        }
    }
    assert_eq!(i, 23);
}

#[test]
fn image_bytes_are_stored_plain_and_other_columns_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::create(dir.path(), config(100, 100)).unwrap();
    for i in 0..20 {
        writer.write(row(i)).unwrap();
    }
    writer.finish().unwrap();
    let reader =
        SerializedFileReader::new(File::open(dir.path().join("train-00000.parquet")).unwrap())
            .unwrap();
    for column in reader.metadata().row_group(0).columns() {
        let path = column.column_path().string();
        // (A file records the codec, not its level.)
        let zstd = matches!(column.compression(), Compression::ZSTD(_));
        match path.as_str() {
            "image.bytes" | "views.list.element.bytes" => {
                assert_eq!(column.compression(), Compression::UNCOMPRESSED, "{path}");
                assert!(
                    column.dictionary_page_offset().is_none(),
                    "{path}: no dictionary for images"
                );
            }
            _ => assert!(zstd, "{path}: {}", column.compression()),
        }
    }
}

#[test]
fn rows_that_do_not_fit_the_schema_are_refused_by_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ShardWriter::create(dir.path(), config(4, 10)).unwrap();
    writer.write(row(0)).unwrap();

    let refused = |writer: &mut ShardWriter, row: Row| match writer.write(row) {
        Err(WriterError::Row {
            row,
            column,
            message,
        }) => (row, column, message),
        other => panic!("expected a row error, got {other:?}"),
    };
    let (at, column, message) =
        refused(&mut writer, row(1).field("objects", json!([{"y0": "top"}])));
    assert_eq!((at, column.as_str()), (1, "objects"));
    assert!(
        message.contains("objects[0].y0") && message.contains("float64"),
        "{message}"
    );

    let mut missing = row(1);
    missing.fields.remove("caption");
    assert_eq!(refused(&mut writer, missing).1, "caption");
    assert_eq!(refused(&mut writer, row(1).field("count", 2.5)).1, "count");
    assert_eq!(refused(&mut writer, row(1).field("typo", "x")).1, "typo");
    let one_image_in_a_list = row(1).image("views", ImageValue::from_bytes(vec![1]));
    assert_eq!(refused(&mut writer, one_image_in_a_list).1, "views");

    // Refused rows are not written and do not count; the writer goes on.
    writer.write(row(1)).unwrap();
    let manifest = writer.finish().unwrap();
    assert_eq!(manifest.total_rows, 2);
}

#[test]
fn schemas_with_images_inside_structs_or_duplicate_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let nested = Schema::new().column("boxes", DataType::struct_of([("crop", DataType::Image)]));
    let duplicate = Schema::new()
        .image("image")
        .column("image", DataType::String);
    for schema in [nested, duplicate, Schema::new()] {
        let result = ShardWriter::create(dir.path(), WriterConfig::new("train", schema.clone()));
        assert!(matches!(result, Err(WriterError::Config(_))), "{schema:?}");
    }
}

#[test]
fn a_dropped_writer_leaves_no_shard_and_a_crashed_one_only_a_temporary_file_the_next_run_removes() {
    let dir = tempfile::tempdir().unwrap();
    // A complete first run, whose files a re-run must replace.
    let mut writer = ShardWriter::create(dir.path(), config(8, 100)).unwrap();
    for i in 0..150 {
        writer.write(row(i)).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(
        parquet_files(dir.path()),
        ["train-00000.parquet", "train-00001.parquet"]
    );

    // A re-run that crashes (no destructor runs) in its second shard, mid row group.
    let mut writer = ShardWriter::create(dir.path(), config(8, 100)).unwrap();
    assert!(
        Manifest::read(dir.path()).is_err(),
        "the manifest stops listing a split being rewritten"
    );
    for i in 0..180 {
        writer.write(row(i)).unwrap();
    }
    std::mem::forget(writer);
    // Only whole shards have real names; the partial one is hidden and unreadable.
    assert_eq!(
        parquet_files(dir.path()),
        [".train-00001.parquet.tmp", "train-00000.parquet"]
    );
    assert_eq!(
        read_all(&dir.path().join("train-00000.parquet"))
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        100
    );
    let partial = File::open(dir.path().join(".train-00001.parquet.tmp")).unwrap();
    assert!(ParquetRecordBatchReaderBuilder::try_new(partial).is_err());

    // A run that fails and drops its writer cleans up after itself.
    let mut writer = ShardWriter::create(dir.path(), config(8, 100)).unwrap();
    assert_eq!(
        parquet_files(dir.path()),
        Vec::<String>::new(),
        "stale shards and temporary files removed"
    );
    for i in 0..90 {
        writer.write(row(i)).unwrap();
    }
    assert_eq!(parquet_files(dir.path()), [".train-00000.parquet.tmp"]);
    drop(writer);
    assert_eq!(parquet_files(dir.path()), Vec::<String>::new());

    // The next complete run is whole.
    let mut writer = ShardWriter::create(dir.path(), config(8, 100)).unwrap();
    for i in 0..120 {
        writer.write(row(i)).unwrap();
    }
    let manifest = writer.finish().unwrap();
    assert_eq!(
        parquet_files(dir.path()),
        ["train-00000.parquet", "train-00001.parquet"]
    );
    assert_eq!(manifest.total_rows, 120);
    manifest.verify(dir.path()).unwrap();
}

#[test]
fn the_manifest_lists_splits_with_checksums_bad_rows_and_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let mut train = config(4, 6);
    train.source = json!({"made by": "this test"});
    train.compression = Codec::Snappy;
    let mut writer = ShardWriter::create(dir.path(), train).unwrap();
    for i in 0..13 {
        writer.write(row(i)).unwrap();
    }
    let bad = BadInput::new(
        Reason::CorruptImage,
        Location::new("in.parquet", 0, 5).with_column("image"),
        "eof",
    );
    writer.report_bad(bad.clone());
    writer.finish().unwrap();

    let mut test = config(4, 6);
    test.prefix = "test".into();
    let mut writer = ShardWriter::create(dir.path(), test).unwrap();
    for i in 0..4 {
        writer.write(row(i)).unwrap();
    }
    let returned = writer.finish().unwrap();

    let manifest = Manifest::read(dir.path()).unwrap();
    assert_eq!(manifest, returned);
    assert_eq!(manifest.total_rows, 17);
    let train = &manifest.splits["train"];
    assert_eq!(train.rows, 13);
    assert_eq!(train.schema, schema());
    assert_eq!(train.bad_rows, [bad]);
    assert_eq!(train.parameters.rows_per_shard, 6);
    assert_eq!(train.parameters.compression, Codec::Snappy);
    assert_eq!(train.parameters.source, json!({"made by": "this test"}));
    assert_eq!(manifest.splits["test"].shards.len(), 1);
    for split in manifest.splits.values() {
        for shard in &split.shards {
            let (sha256, bytes) = sha256_file(&dir.path().join(&shard.file)).unwrap();
            assert_eq!(
                (sha256.as_str(), bytes),
                (shard.sha256.as_str(), shard.bytes),
                "{}",
                shard.file
            );
            assert_eq!(sha256.len(), 64);
        }
    }
    manifest.verify(dir.path()).unwrap();

    // A changed byte is caught.
    let path = dir.path().join("train-00001.parquet");
    let mut data = fs::read(&path).unwrap();
    data[10] ^= 1;
    fs::write(&path, data).unwrap();
    let error = manifest.verify(dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("train-00001.parquet") && !error.contains("train-00000"),
        "{error}"
    );
}

#[test]
fn an_empty_split_still_has_a_shard_with_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = ShardWriter::create(dir.path(), config(4, 10))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(manifest.splits["train"].shards.len(), 1);
    let reader = ParquetRecordBatchReaderBuilder::try_new(
        File::open(dir.path().join("train-00000.parquet")).unwrap(),
    )
    .unwrap();
    assert_eq!(reader.schema().fields().len(), schema().columns.len());
    assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
}

#[test]
fn image_columns_have_the_arrow_type_and_features_that_datasets_and_pyarrow_write() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet");
    let arrow_schema = |path: &Path| {
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .schema()
            .clone()
    };
    let hf = arrow_schema(&fixtures.join("hf_datasets.parquet"));
    let pyarrow_list = arrow_schema(&fixtures.join("image_list.parquet"));
    let ours = Schema::new().image("image").image_list("images").to_arrow();

    assert_eq!(
        ours.field_with_name("image").unwrap().data_type(),
        hf.field_with_name("image").unwrap().data_type()
    );
    let item_type = |t: &ArrowType| match t {
        ArrowType::List(item) => item.data_type().clone(),
        other => panic!("{other} is not a list"),
    };
    assert_eq!(
        item_type(ours.field_with_name("images").unwrap().data_type()),
        item_type(pyarrow_list.field_with_name("images").unwrap().data_type())
    );
    let features = |schema: &arrow::datatypes::Schema| -> serde_json::Value {
        serde_json::from_str(&schema.metadata()["huggingface"]).unwrap()
    };
    assert_eq!(
        features(&ours)["info"]["features"]["image"],
        features(&hf)["info"]["features"]["image"]
    );
}
