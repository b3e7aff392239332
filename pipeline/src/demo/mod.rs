//! `paliforge demo-data`: the project's own multitask dataset, generated (nothing to download)
//! and deterministic by seed: the same arguments give byte-identical files, on any number of
//! threads. Scenes of coloured shapes with captions, questions, and detection targets, plus a
//! two-image comparison task; small and regular enough for a tiny model to learn in minutes.
//!
//! ```text
//! DIR/README.md                         what the columns hold
//! DIR/scenes/{train,test}-NNNNN.parquet image, caption, question, answer, detect_label, objects
//! DIR/pairs/{train,test}-NNNNN.parquet  images (2), question, answer
//! DIR/{scenes,pairs}/manifest.json
//! ```

mod raster;
pub mod scene;

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::writer::{
    DataType, ImageValue, Manifest, Row, Schema, ShardWriter, WriterConfig, WriterError,
};
pub use scene::{Colour, Object, Position, Scene, Shape};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoImageFormat {
    Jpeg { quality: u8 },
    Png,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    pub seed: u64,
    /// Rows of `scenes/train` and `scenes/test`.
    pub train_rows: usize,
    pub test_rows: usize,
    /// Rows of `pairs/train` and `pairs/test`.
    pub pair_train_rows: usize,
    pub pair_test_rows: usize,
    /// Images are square, this many pixels a side.
    pub image_size: u32,
    pub format: DemoImageFormat,
    pub rows_per_row_group: usize,
    pub rows_per_shard: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train_rows: 4000,
            test_rows: 400,
            pair_train_rows: 1000,
            pair_test_rows: 100,
            image_size: 112,
            format: DemoImageFormat::Jpeg { quality: 90 },
            rows_per_row_group: 256,
            rows_per_shard: 5000,
        }
    }
}

/// The held-out split is drawn from other seeds than the training split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSplit {
    Train,
    Test,
}

impl DemoSplit {
    pub fn name(self) -> &'static str {
        match self {
            DemoSplit::Train => "train",
            DemoSplit::Test => "test",
        }
    }
}

/// The manifests of the two sources.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoManifests {
    pub scenes: Manifest,
    pub pairs: Manifest,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("invalid demo configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Write(#[from] WriterError),
    #[error("encoding a demo image: {0}")]
    Image(#[from] image::ImageError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Generates the dataset into `dir`, showing a progress bar on a terminal.
pub fn generate(dir: impl AsRef<Path>, config: &DemoConfig) -> Result<DemoManifests, DemoError> {
    let total =
        config.train_rows + config.test_rows + config.pair_train_rows + config.pair_test_rows;
    let progress = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("demo-data {bar:30} {pos}/{len} rows, {per_sec}, ETA {eta}")
            .expect("a valid template"),
    );
    let manifests = generate_with_progress(dir, config, &progress)?;
    progress.finish();
    Ok(manifests)
}

/// Generates the dataset into `dir`, advancing `progress` by one per row (any bar: a hidden one
/// lets a service poll the position).
pub fn generate_with_progress(
    dir: impl AsRef<Path>,
    config: &DemoConfig,
    progress: &ProgressBar,
) -> Result<DemoManifests, DemoError> {
    let dir = dir.as_ref();
    if config.image_size < 16 {
        return Err(DemoError::Config(format!(
            "image_size {} is below 16 pixels",
            config.image_size
        )));
    }
    if let DemoImageFormat::Jpeg { quality } = config.format
        && !(1..=100).contains(&quality)
    {
        return Err(DemoError::Config(format!(
            "JPEG quality {quality} is outside 1..=100"
        )));
    }
    let scenes_dir = dir.join("scenes");
    let pairs_dir = dir.join("pairs");
    let sources = [
        (
            &scenes_dir,
            Source::Scenes,
            DemoSplit::Train,
            config.train_rows,
        ),
        (
            &scenes_dir,
            Source::Scenes,
            DemoSplit::Test,
            config.test_rows,
        ),
        (
            &pairs_dir,
            Source::Pairs,
            DemoSplit::Train,
            config.pair_train_rows,
        ),
        (
            &pairs_dir,
            Source::Pairs,
            DemoSplit::Test,
            config.pair_test_rows,
        ),
    ];
    for (source_dir, source, split, rows) in sources {
        write_split(source_dir, source, split, rows, config, progress)?;
    }
    let readme = dir.join("README.md");
    fs::write(&readme, readme_text(config)).map_err(|source| DemoError::Io {
        path: readme,
        source,
    })?;
    Ok(DemoManifests {
        scenes: Manifest::read(&scenes_dir)?,
        pairs: Manifest::read(&pairs_dir)?,
    })
}

/// The scene of row `index` of `scenes/{split}`, as the generator drew it.
pub fn scene_at(seed: u64, split: DemoSplit, index: u64) -> Scene {
    Scene::random(&mut row_rng(seed, Source::Scenes, split, index))
}

/// The two scenes of row `index` of `pairs/{split}`, and the shape whose count they compare.
pub fn pair_at(seed: u64, split: DemoSplit, index: u64) -> (Scene, Scene, Shape) {
    let mut rng = row_rng(seed, Source::Pairs, split, index);
    draw_pair(&mut rng)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Scenes,
    Pairs,
}

impl Source {
    fn schema(self) -> Schema {
        match self {
            Source::Scenes => Schema::new()
                .image("image")
                .column("caption", DataType::String)
                .column("question", DataType::String)
                .column("answer", DataType::String)
                .column("detect_label", DataType::String)
                .column("objects", DataType::list(object_type())),
            Source::Pairs => Schema::new()
                .image_list("images")
                .column("question", DataType::String)
                .column("answer", DataType::String),
        }
    }
}

/// A detection box: normalised corners and the class name.
fn object_type() -> DataType {
    DataType::struct_of([
        ("y0", DataType::Float64),
        ("x0", DataType::Float64),
        ("y1", DataType::Float64),
        ("x1", DataType::Float64),
        ("label", DataType::String),
    ])
}

/// Each row has its own generator, seeded from (seed, source, split, row): rows can be made in
/// any order on any thread, and train and test never share one.
fn row_rng(seed: u64, source: Source, split: DemoSplit, index: u64) -> StdRng {
    let stream = (source as u64) << 1 | split as u64;
    let mut x = seed;
    for word in [stream, index] {
        // SplitMix64's finaliser: nearby inputs give unrelated seeds.
        x = (x ^ word).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    StdRng::seed_from_u64(x)
}

fn write_split(
    dir: &Path,
    source: Source,
    split: DemoSplit,
    rows: usize,
    config: &DemoConfig,
    progress: &ProgressBar,
) -> Result<(), DemoError> {
    let mut writer_config = WriterConfig::new(split.name(), source.schema());
    writer_config.rows_per_row_group = config.rows_per_row_group;
    writer_config.rows_per_shard = config.rows_per_shard;
    writer_config.source = json!({"generator": "paliforge demo-data", "config": config});
    let mut writer = ShardWriter::create(dir, writer_config)?;
    // Rows are made in parallel a row group's worth at a time and written in order.
    let chunk = config.rows_per_row_group.max(1);
    for start in (0..rows).step_by(chunk) {
        let made: Vec<Result<Row, DemoError>> = (start..rows.min(start + chunk))
            .into_par_iter()
            .map(|index| {
                let mut rng = row_rng(config.seed, source, split, index as u64);
                match source {
                    Source::Scenes => scene_row(&mut rng, split, index, config),
                    Source::Pairs => pair_row(&mut rng, split, index, config),
                }
            })
            .collect();
        for row in made {
            writer.write(row?)?;
            progress.inc(1);
        }
    }
    writer.finish()?;
    Ok(())
}

fn scene_row(
    rng: &mut StdRng,
    split: DemoSplit,
    index: usize,
    config: &DemoConfig,
) -> Result<Row, DemoError> {
    let scene = Scene::random(rng);
    let (question, answer) = scene.question(rng);
    let label = scene.detect_label(rng);
    let objects: Vec<Value> = scene
        .boxes(label)
        .into_iter()
        .map(|[y0, x0, y1, x1]| json!({"y0": y0, "x0": x0, "y1": y1, "x1": x1, "label": label.name()}))
        .collect();
    let image = encode(
        &raster::render(&scene, config.image_size, rng),
        config.format,
    )?;
    let name = format!("{}-{index:06}.{}", split.name(), extension(config.format));
    Ok(Row::new()
        .image("image", ImageValue::from_bytes(image).with_path(name))
        .field("caption", scene.caption())
        .field("question", question)
        .field("answer", answer)
        .field("detect_label", label.name())
        .field("objects", objects))
}

fn pair_row(
    rng: &mut StdRng,
    split: DemoSplit,
    index: usize,
    config: &DemoConfig,
) -> Result<Row, DemoError> {
    let (first, second, shape) = draw_pair(rng);
    let answer = if first.count(shape) > second.count(shape) {
        "first"
    } else {
        "second"
    };
    let images = [&first, &second]
        .into_iter()
        .enumerate()
        .map(|(k, scene)| {
            let bytes = encode(
                &raster::render(scene, config.image_size, rng),
                config.format,
            )?;
            let name = format!(
                "{}-{index:06}-{k}.{}",
                split.name(),
                extension(config.format)
            );
            Ok(ImageValue::from_bytes(bytes).with_path(name))
        })
        .collect::<Result<Vec<_>, DemoError>>()?;
    Ok(Row::new()
        .image_list("images", images)
        .field(
            "question",
            format!("which image has more {}?", shape.plural()),
        )
        .field("answer", answer))
}

/// Two scenes whose counts of some shape differ, so "which has more" has one answer.
fn draw_pair(rng: &mut impl Rng) -> (Scene, Scene, Shape) {
    let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
    let first = Scene::random(rng);
    loop {
        // Each draw differs with probability above 1/2: this ends after a few draws.
        let second = Scene::random(rng);
        if second.count(shape) != first.count(shape) {
            return (first, second, shape);
        }
    }
}

fn encode(image: &RgbImage, format: DemoImageFormat) -> Result<Vec<u8>, DemoError> {
    let mut bytes = Vec::new();
    match format {
        DemoImageFormat::Jpeg { quality } => {
            JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(image)?
        }
        DemoImageFormat::Png => image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?,
    }
    Ok(bytes)
}

fn extension(format: DemoImageFormat) -> &'static str {
    match format {
        DemoImageFormat::Jpeg { .. } => "jpg",
        DemoImageFormat::Png => "png",
    }
}

fn readme_text(config: &DemoConfig) -> String {
    let format = match config.format {
        DemoImageFormat::Jpeg { quality } => format!("JPEG (quality {quality})"),
        DemoImageFormat::Png => "PNG".to_string(),
    };
    let size = config.image_size;
    format!(
        "# paliforge demo data

Generated by `paliforge demo-data` with seed {seed}: the same arguments give the same bytes.
Images are {size}x{size} {format}: one to three shapes (circle, square, triangle; red, green, blue,
yellow), one per third of the image, on a plain or lightly noisy grey background. No two shapes
of a scene have both the same shape and colour. Test rows come from other seeds than train rows.

Shards are Parquet in the Hugging Face `datasets` layout (an image is a struct of `bytes` and
`path`); each folder's `manifest.json` lists them with row counts and SHA-256 checksums.

## scenes/ ({train} train rows, {test} test rows)

| column | type | example |
| --- | --- | --- |
| `image` | image | |
| `caption` | string | `a red circle left of a blue square` (objects left to right) |
| `question` | string | `what colour is the circle?`, `how many squares are there?`, `where is the red circle?` |
| `answer` | string | `red`; `0` to `3`; `left`, `middle` or `right` |
| `detect_label` | string | `circle`: the class to detect (sometimes absent from the image) |
| `objects` | list of struct<y0, x0, y1, x1: double, label: string> | the boxes of that class, left to right, corners as fractions of the side |

## pairs/ ({pair_train} train rows, {pair_test} test rows)

| column | type | example |
| --- | --- | --- |
| `images` | list of 2 images | |
| `question` | string | `which image has more circles?` |
| `answer` | string | `first` or `second` (the counts always differ) |
",
        seed = config.seed,
        train = config.train_rows,
        test = config.test_rows,
        pair_train = config.pair_train_rows,
        pair_test = config.pair_test_rows,
    )
}
