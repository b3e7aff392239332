//! `paliforge prepare`: turns a folder of images with a JSONL/CSV of annotations, or existing
//! Parquet shards (a Hugging Face dataset, say), into paliforge shards: the HF image layout,
//! every image checked (and optionally re-encoded smaller), a manifest, nothing half-written.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType as ArrowType;
use bytes::Bytes;
use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::PipelineError;
use crate::bad_input::{BadInput, BadInputPolicy, BadInputStats, Reason};
use crate::image::ImageProcessor;
use crate::location::Location;
use crate::source::{Cursor, Fetcher, OpenSource, Reader, ShardSpec, SourceConfig, SourceItem};
use crate::writer::{DataType, ImageValue, Manifest, Row, Schema, ShardWriter, WriterConfig};

/// What to convert.
#[derive(Debug, Clone)]
pub enum PrepareInput {
    /// A folder of image files and a JSONL or CSV file with one row per example; `image_column`
    /// holds a file name relative to `images` (or, in JSONL, a list of them).
    ImageFolder {
        images: PathBuf,
        annotations: PathBuf,
        image_column: String,
    },
    /// Existing Parquet shards in any layout the pipeline reads.
    Parquet(SourceConfig),
}

#[derive(Debug, Clone)]
pub struct PrepareConfig {
    pub out: PathBuf,
    /// The split's name: shards are `{split}-00000.parquet`, ...
    pub split: String,
    pub rows_per_row_group: usize,
    pub rows_per_shard: usize,
    /// Re-encode images whose longer side exceeds this (JPEG, quality `jpeg_quality`): every
    /// later epoch decodes less.
    pub max_side: Option<u32>,
    pub jpeg_quality: u8,
    pub threads: usize,
    pub bad_input: BadInputPolicy,
}

impl PrepareConfig {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            split: "train".into(),
            rows_per_row_group: 100,
            rows_per_shard: 10_000,
            max_side: None,
            jpeg_quality: 90,
            threads: 0,
            bad_input: BadInputPolicy::default(),
        }
    }
}

/// One input row: its text columns, and its images per column (a list column keeps a list).
struct InputRow {
    location: Location,
    fields: Map<String, Value>,
    images: Vec<(String, Vec<Bytes>, bool)>,
}

/// Rows handled per trip to the worker pool.
const CHUNK: usize = 256;

/// Converts `input` into shards in `config.out`; `progress(done, total)` is called as rows go.
pub fn prepare(
    input: &PrepareInput,
    config: &PrepareConfig,
    progress: &dyn Fn(u64, u64),
) -> Result<Manifest, PipelineError> {
    let (schema, total, rows) = match input {
        PrepareInput::ImageFolder {
            images,
            annotations,
            image_column,
        } => image_folder(images, annotations, image_column)?,
        PrepareInput::Parquet(source) => parquet_rows(source)?,
    };
    let writer_config = WriterConfig {
        rows_per_row_group: config.rows_per_row_group,
        rows_per_shard: config.rows_per_shard,
        source: serde_json::json!({ "input": format!("{input:?}"), "max_side": config.max_side }),
        ..WriterConfig::new(config.split.clone(), schema)
    };
    let mut writer =
        ShardWriter::create(&config.out, writer_config).map_err(|e| file_error(&config.out, e))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    let mut stats = BadInputStats::default();
    let mut done = 0;
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Result<InputRow, BadInput>> = rows.by_ref().take(CHUNK).collect();
        let checked: Vec<Result<Row, BadInput>> = pool.install(|| {
            chunk
                .into_par_iter()
                .map_init(ImageProcessor::new, |images, row| {
                    check_row(row?, images, config)
                })
                .collect()
        });
        for row in checked {
            match row {
                Ok(row) => {
                    writer.write(row).map_err(|e| file_error(&config.out, e))?;
                    stats.record_good();
                }
                Err(bad) => {
                    writer.report_bad(bad.clone());
                    stats.record_bad(bad);
                }
            }
            done += 1;
        }
        stats.check(&config.bad_input, false)?;
        progress(done, total);
    }
    stats.check(&config.bad_input, true)?;
    writer.finish().map_err(|e| file_error(&config.out, e))
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Decodes every image (a corrupt one makes the row bad) and re-encodes those over `max_side`.
fn check_row(
    row: InputRow,
    images: &mut ImageProcessor,
    config: &PrepareConfig,
) -> Result<Row, BadInput> {
    let mut out = Row {
        fields: row.fields,
        ..Row::new()
    };
    for (column, list, is_list) in row.images {
        let at = row.location.with_column(&column);
        let mut values = Vec::with_capacity(list.len());
        for bytes in list {
            let rgb = images
                .decode_rgb(&bytes, None)
                .map_err(|e| BadInput::new(e.reason(), at.clone(), e.to_string()))?;
            let bytes = match config.max_side {
                Some(side) if rgb.width().max(rgb.height()) > side => {
                    reencode(&rgb, side, config.jpeg_quality)
                        .map_err(|e| BadInput::new(Reason::CorruptImage, at.clone(), e))?
                }
                _ => bytes,
            };
            values.push(ImageValue::from_bytes(bytes));
        }
        out = if is_list {
            out.image_list(column, values)
        } else {
            out.image(column, values.pop().expect("one image"))
        };
    }
    Ok(out)
}

fn reencode(rgb: &image::RgbImage, max_side: u32, quality: u8) -> Result<Bytes, String> {
    let scale = max_side as f64 / rgb.width().max(rgb.height()) as f64;
    let (w, h) = (
        ((rgb.width() as f64 * scale).round() as u32).max(1),
        ((rgb.height() as f64 * scale).round() as u32).max(1),
    );
    let small = image::imageops::resize(rgb, w, h, image::imageops::FilterType::CatmullRom);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&small)
        .map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

type Rows = Box<dyn Iterator<Item = Result<InputRow, BadInput>>>;

/// Reads the annotations (small: text only), infers the columns' types, and yields rows whose
/// images are read from the folder as they are needed.
fn image_folder(
    images: &Path,
    annotations: &Path,
    image_column: &str,
) -> Result<(Schema, u64, Rows), PipelineError> {
    let records = read_annotations(annotations)?;
    let name = annotations.display().to_string();
    let mut types: BTreeMap<String, DataType> = BTreeMap::new();
    let mut image_is_list = false;
    for (line, record) in records.iter().enumerate() {
        for (key, value) in record {
            if key == image_column {
                image_is_list |= value.is_array();
                continue;
            }
            if let Some(ty) = infer(value) {
                let merged = match types.get(key) {
                    None => Some(ty),
                    Some(old) => unify(old, &ty),
                };
                let merged = merged.ok_or_else(|| PipelineError::File {
                    path: name.clone(),
                    message: format!("row {line}: column {key:?} mixes types"),
                })?;
                types.insert(key.clone(), merged);
            }
        }
    }
    let mut schema = if image_is_list {
        Schema::new().image_list(image_column)
    } else {
        Schema::new().image(image_column)
    };
    for (column, ty) in types {
        schema = schema.nullable_column(column, ty);
    }
    let total = records.len() as u64;
    let (images, image_column, shard) = (images.to_path_buf(), image_column.to_string(), name);
    let rows = records.into_iter().enumerate().map(move |(i, mut fields)| {
        let location = Location::new(&shard, 0, i);
        let at = location.with_column(&image_column);
        let names: Vec<String> = match fields.remove(&image_column) {
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::Null) | None => {
                return Err(BadInput::new(Reason::NullValue, at, "no image file named"));
            }
            Some(other) => {
                return Err(BadInput::new(
                    Reason::WrongType,
                    at,
                    format!("{other} is not a file name"),
                ));
            }
        };
        let mut list = Vec::with_capacity(names.len());
        for file in &names {
            if Path::new(file)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(BadInput::new(
                    Reason::MissingFile,
                    at,
                    format!("{file}: `..` may not leave the image folder"),
                ));
            }
            let path = images.join(file);
            let bytes = std::fs::read(&path).map_err(|e| {
                BadInput::new(
                    Reason::MissingFile,
                    at.clone(),
                    format!("{}: {e}", path.display()),
                )
            })?;
            list.push(Bytes::from(bytes));
        }
        Ok(InputRow {
            location,
            fields,
            images: vec![(image_column.clone(), list, image_is_list)],
        })
    });
    Ok((schema, total, Box::new(rows)))
}

fn read_annotations(path: &Path) -> Result<Vec<Map<String, Value>>, PipelineError> {
    let error = |message: String| PipelineError::File {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        let mut reader = csv::Reader::from_reader(file);
        let headers = reader.headers().map_err(|e| error(e.to_string()))?.clone();
        return reader
            .records()
            .enumerate()
            .map(|(i, record)| {
                let record = record.map_err(|e| error(format!("row {}: {e}", i + 1)))?;
                Ok(headers
                    .iter()
                    .zip(record.iter())
                    .map(|(k, v)| (k.to_string(), csv_value(v)))
                    .collect())
            })
            .collect();
    }
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| error(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(Value::Object(map)) => rows.push(map),
            Ok(other) => {
                return Err(error(format!(
                    "line {}: expected a JSON object, got {other}",
                    i + 1
                )));
            }
            Err(e) => return Err(error(format!("line {}: {e}", i + 1))),
        }
    }
    Ok(rows)
}

/// CSV cells are text; numbers that look like numbers become numbers.
fn csv_value(cell: &str) -> Value {
    if cell.is_empty() {
        return Value::Null;
    }
    if let Ok(i) = cell.parse::<i64>() {
        return i.into();
    }
    match cell.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            serde_json::Number::from_f64(f).map_or(Value::String(cell.into()), Value::Number)
        }
        _ => Value::String(cell.into()),
    }
}

/// The column type a JSON value asks for; `None` for null (it says nothing).
fn infer(value: &Value) -> Option<DataType> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(_) => DataType::Bool,
        Value::Number(n) if n.is_i64() || n.is_u64() => DataType::Int64,
        Value::Number(_) => DataType::Float64,
        Value::String(_) => DataType::String,
        Value::Array(items) => DataType::list(items.iter().filter_map(infer).try_fold(
            None,
            |acc: Option<DataType>, t| match acc {
                None => Some(Some(t)),
                Some(a) => unify(&a, &t).map(Some),
            },
        )??),
        Value::Object(map) => DataType::Struct(
            map.iter()
                .map(|(k, v)| {
                    crate::writer::Field::new(k.clone(), infer(v).unwrap_or(DataType::String))
                        .nullable()
                })
                .collect(),
        ),
    })
}

/// The type both values fit: ints widen to floats, structs merge their fields.
fn unify(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match (a, b) {
        _ if a == b => a.clone(),
        (Int64, Float64) | (Float64, Int64) => Float64,
        (List(x), List(y)) => DataType::list(unify(x, y)?),
        (Struct(x), Struct(y)) => {
            let mut fields = x.clone();
            for f in y {
                match fields.iter_mut().find(|g| g.name == f.name) {
                    Some(g) => g.data_type = unify(&g.data_type, &f.data_type)?,
                    None => fields.push(f.clone()),
                }
            }
            Struct(fields)
        }
        _ => return None,
    })
}

/// The paliforge type of an Arrow column; `None` for types a text template cannot use.
fn from_arrow(ty: &ArrowType) -> Option<DataType> {
    Some(match ty {
        ArrowType::Utf8
        | ArrowType::LargeUtf8
        | ArrowType::Utf8View
        | ArrowType::Dictionary(..) => DataType::String,
        ArrowType::Boolean => DataType::Bool,
        t if t.is_integer() => DataType::Int64,
        t if t.is_floating() => DataType::Float64,
        ArrowType::List(f) | ArrowType::LargeList(f) | ArrowType::FixedSizeList(f, _) => {
            DataType::list(from_arrow(f.data_type())?)
        }
        ArrowType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| {
                    Some(
                        crate::writer::Field::new(f.name().clone(), from_arrow(f.data_type())?)
                            .nullable(),
                    )
                })
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// Reads existing shards through the pipeline's own source (every layout, local or remote).
fn parquet_rows(source: &SourceConfig) -> Result<(Schema, u64, Rows), PipelineError> {
    let config = SourceConfig {
        epochs: Some(1),
        shuffle: false,
        ..source.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    let opened = Arc::new(runtime.block_on(OpenSource::open(config))?);
    let arrow_schema = opened.files[0].schema().clone();
    let mut schema = Schema::new();
    let mut text_columns = Vec::new();
    let mut list_images = Vec::new();
    for field in arrow_schema.fields() {
        let name = field.name();
        if opened.config.image_columns.contains(name) {
            let is_list = matches!(
                field.data_type(),
                ArrowType::List(_) | ArrowType::LargeList(_) | ArrowType::FixedSizeList(..)
            );
            schema = if is_list {
                schema.image_list(name.clone())
            } else {
                schema.image(name.clone())
            };
            list_images.push((name.clone(), is_list));
        } else if let Some(ty) = from_arrow(field.data_type()) {
            schema = schema.nullable_column(name.clone(), ty);
            text_columns.push((name.clone(), name.clone()));
        } else {
            tracing::warn!(
                "{}: column {name:?} of type {} is not kept",
                opened.config.data.join(", "),
                field.data_type()
            );
        }
    }
    let total = opened.rows() as u64;
    let reader = Reader {
        source: opened.clone(),
        text_columns,
        filter: None,
        shard: ShardSpec::default(),
        seed: 0,
        fetcher: Fetcher::new(opened.config.fetch.clone()),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(CHUNK);
    runtime.spawn(reader.run(Cursor::default(), tx));
    let unreadable = opened.unreadable.clone().into_iter().map(Err);
    let rows = std::iter::from_fn(move || {
        loop {
            // Keep the runtime alive as long as the rows are read.
            let _runtime = &runtime;
            match rx.blocking_recv()? {
                SourceItem::Row { item, .. } => {
                    return Some(item.map(|record| {
                        let mut images: Vec<(String, Vec<Bytes>, bool)> = list_images
                            .iter()
                            .map(|(c, l)| (c.clone(), Vec::new(), *l))
                            .collect();
                        for image in record.images {
                            if let Some(slot) =
                                images.iter_mut().find(|(c, _, _)| *c == image.column)
                            {
                                slot.1.push(image.bytes);
                            }
                        }
                        InputRow {
                            location: record.location,
                            fields: record.fields,
                            images,
                        }
                    }));
                }
                SourceItem::EpochEnd { .. } => continue,
            }
        }
    });
    Ok((schema, total, Box::new(unreadable.chain(rows))))
}

/// The shipped templates' own words, so a tokenizer trained on data alone still encodes
/// prompts compactly (`paliforge demo-data`, `paliforge prepare` and the service's preparation
/// jobs add them).
pub const TEMPLATE_WORDS: [&str; 5] = [
    "caption en",
    "answer en",
    "detect",
    "ocr",
    "which image has more",
];

/// Trains a tokenizer (byte-level BPE plus PaliGemma's tokens) on every text column of the
/// sources' shards, for datasets that come without one; `extra` adds the templates' own words.
pub fn train_tokenizer_on(
    sources: &[SourceConfig],
    extra: &[&str],
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, PipelineError> {
    let texts = source_texts(sources, extra)?;
    crate::text::train_tokenizer(texts.iter().map(String::as_str), vocab_size)
        .map_err(|e| PipelineError::Config(e.to_string()))
}

/// Every string of every text column of the sources' shards, after `extra`: what a tokenizer
/// is trained on.
pub fn source_texts(
    sources: &[SourceConfig],
    extra: &[&str],
) -> Result<Vec<String>, PipelineError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    let mut texts: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for source in sources {
        let config = SourceConfig {
            image_columns: Vec::new(),
            epochs: Some(1),
            shuffle: false,
            ..source.clone()
        };
        runtime.block_on(async {
            let opened = Arc::new(OpenSource::open(config).await?);
            let text_columns = opened
                .columns()
                .into_iter()
                .filter(|c| !source.image_columns.contains(c))
                .map(|c| (c.clone(), c))
                .collect();
            let reader = Reader {
                source: opened,
                text_columns,
                filter: None,
                shard: ShardSpec::default(),
                seed: 0,
                fetcher: Fetcher::new(Default::default()),
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            tokio::spawn(reader.run(Cursor::default(), tx));
            while let Some(item) = rx.recv().await {
                if let SourceItem::Row {
                    item: Ok(record), ..
                } = item
                {
                    collect_text(&Value::Object(record.fields), &mut texts);
                }
            }
            Ok::<_, PipelineError>(())
        })?;
    }
    Ok(texts)
}

/// Every string inside a value (labels inside lists of structs included).
fn collect_text(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_text(v, out)),
        _ => {}
    }
}
