//! Preparation jobs: the demo dataset generated, or Parquet shards / an image folder with
//! annotations converted into paliforge shards ([`pipeline::prepare`]), into
//! `DATA_DIR/datasets/NAME`, beside training on their own pool. Preparation writes shards
//! under temporary names, so a job interrupted by a restart is simply run again.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline::demo::{DemoConfig, DemoImageFormat};
use pipeline::prepare::{PrepareConfig, PrepareInput, TEMPLATE_WORDS, prepare, train_tokenizer_on};
use pipeline::source::SourceConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::{Problem, Result, ServiceError};
use crate::roots::DataRoots;
use crate::store::{DatasetRecord, Status, Store};

/// `POST /v1/datasets`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRequest {
    /// The output folder's name under `DATA_DIR/datasets/`.
    pub name: String,
    pub input: DatasetInput,
    #[serde(default)]
    pub options: PrepareOptions,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetInput {
    /// The generated demo dataset (`scenes/`, `pairs/`) and a tokenizer trained on its text.
    Demo {
        #[serde(default)]
        seed: u64,
        #[serde(default = "default_rows")]
        rows: usize,
        #[serde(default = "default_pair_rows")]
        pair_rows: usize,
        #[serde(default = "default_image_size")]
        image_size: u32,
    },
    /// Existing Parquet shards: paths or globs inside the data roots, or URLs.
    Parquet {
        data: Vec<String>,
        #[serde(default = "default_image_columns")]
        image_columns: Vec<String>,
    },
    /// A folder of images and a JSONL or CSV file naming them in `image_column`.
    Images {
        images: PathBuf,
        annotations: PathBuf,
        #[serde(default = "default_image_column")]
        image_column: String,
    },
}

fn default_rows() -> usize {
    4000
}
fn default_pair_rows() -> usize {
    1000
}
fn default_image_size() -> u32 {
    112
}
fn default_image_columns() -> Vec<String> {
    vec![default_image_column()]
}
fn default_image_column() -> String {
    "image".into()
}

/// How to write the shards (as `paliforge prepare`'s flags).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepareOptions {
    pub split: String,
    pub rows_per_row_group: usize,
    pub rows_per_shard: usize,
    pub max_side: Option<u32>,
    pub max_bad_fraction: f64,
    /// Train a tokenizer of this many base tokens on the text (the demo always gets one).
    pub train_tokenizer: Option<usize>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        let defaults = PrepareConfig::new("");
        PrepareOptions {
            split: defaults.split,
            rows_per_row_group: defaults.rows_per_row_group,
            rows_per_shard: defaults.rows_per_shard,
            max_side: None,
            max_bad_fraction: defaults.bad_input.max_fraction,
            train_tokenizer: None,
        }
    }
}

impl DatasetRequest {
    /// The request with its name checked and its paths made absolute inside the data roots.
    pub fn confined(mut self, roots: &DataRoots) -> Result<Self> {
        let mut problems = Vec::new();
        let simple = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if self.name.is_empty() || self.name.starts_with('.') || !self.name.chars().all(simple) {
            problems.push(Problem::at(
                "name",
                format!("{:?}: use letters, digits, '-', '_' and '.'", self.name),
            ));
        }
        let base = roots.base().to_path_buf();
        match &mut self.input {
            DatasetInput::Demo { .. } => {}
            DatasetInput::Parquet { data, .. } => {
                for (i, entry) in data.iter_mut().enumerate() {
                    match roots.confine_data(entry, &base, &format!("input.data[{i}]")) {
                        Ok(confined) => *entry = confined,
                        Err(problem) => problems.push(problem),
                    }
                }
            }
            DatasetInput::Images {
                images,
                annotations,
                ..
            } => {
                for (path, key) in [(images, "input.images"), (annotations, "input.annotations")] {
                    match roots.confine(path, &base, key) {
                        Ok(confined) => *path = confined,
                        Err(problem) => problems.push(problem),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ServiceError::invalid("the dataset request", problems))
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.input {
            DatasetInput::Demo { .. } => "demo",
            DatasetInput::Parquet { .. } => "parquet",
            DatasetInput::Images { .. } => "images",
        }
    }
}

/// Runs preparation jobs, a few at once.
pub struct Preparer {
    store: Arc<Store>,
    slots: Arc<Semaphore>,
    threads: usize,
}

impl Preparer {
    pub fn new(store: Arc<Store>, slots: usize, threads: usize) -> Arc<Self> {
        Arc::new(Preparer {
            store,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            threads,
        })
    }

    /// Starts the queued job `id`. Needs a tokio runtime.
    pub fn enqueue(self: &Arc<Self>, id: i64) {
        let preparer = self.clone();
        tokio::spawn(async move {
            let _permit = preparer.slots.clone().acquire_owned().await;
            let outcome = match preparer.store.set_dataset_status(id, Status::Running, None) {
                Ok(()) => {
                    let job = preparer.clone();
                    tokio::task::spawn_blocking(move || job.run(id))
                        .await
                        .unwrap_or_else(|e| Err(format!("the preparation job panicked: {e}")))
                }
                Err(e) => Err(e.to_string()),
            };
            let recorded = match outcome {
                Ok(()) => preparer
                    .store
                    .set_dataset_status(id, Status::Finished, None),
                Err(message) => {
                    tracing::error!(dataset = id, "{message}");
                    preparer
                        .store
                        .set_dataset_status(id, Status::Failed, Some(&message))
                }
            };
            if let Err(e) = recorded {
                tracing::error!(dataset = id, "recording how the job ended: {e}");
            }
        });
    }

    /// At start-up: jobs that were queued or running run again.
    pub fn recover(self: &Arc<Self>) -> Result<()> {
        for job in self.store.datasets()? {
            if matches!(job.status, Status::Queued | Status::Running) {
                tracing::info!(dataset = job.id, "preparing again after a restart");
                self.enqueue(job.id);
            }
        }
        Ok(())
    }

    /// The job, on a blocking thread, its progress recorded twice a second at most.
    fn run(&self, id: i64) -> Result<(), String> {
        let job: DatasetRecord = self.store.dataset(id).map_err(|e| e.to_string())?;
        let request: DatasetRequest =
            serde_json::from_value(job.request.clone()).map_err(|e| e.to_string())?;
        let last = Cell::new(Instant::now() - Duration::from_secs(1));
        let progress = |done: u64, total: u64| {
            if done == total || last.get().elapsed() > Duration::from_millis(500) {
                last.set(Instant::now());
                if let Err(e) = self.store.set_dataset_progress(id, done, total) {
                    tracing::warn!(dataset = id, "{e}");
                }
            }
        };
        let result = prepare_dataset(&request, &job.dir, self.threads, &progress);
        tracing::info!(dataset = id, dir = %job.dir.display(), ok = result.is_ok(), "prepared");
        result
    }
}

/// Writes the dataset `request` describes into `dir`.
fn prepare_dataset(
    request: &DatasetRequest,
    dir: &Path,
    threads: usize,
    progress: &dyn Fn(u64, u64),
) -> Result<(), String> {
    let options = &request.options;
    let tokenizer_sources = match &request.input {
        DatasetInput::Demo {
            seed,
            rows,
            pair_rows,
            image_size,
        } => {
            let config = DemoConfig {
                seed: *seed,
                train_rows: *rows,
                test_rows: (rows / 10).max(1),
                pair_train_rows: *pair_rows,
                pair_test_rows: (pair_rows / 10).max(1),
                image_size: *image_size,
                format: DemoImageFormat::Jpeg { quality: 90 },
                ..DemoConfig::default()
            };
            let total = (rows + config.test_rows + pair_rows + config.pair_test_rows) as u64;
            progress(0, total);
            let bar = indicatif::ProgressBar::hidden();
            pipeline::demo::generate_with_progress(dir, &config, &bar)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            progress(total, total);
            let train = |folder: &str, image: &str| SourceConfig {
                image_columns: vec![image.to_string()],
                ..SourceConfig::new([dir
                    .join(folder)
                    .join("train-*.parquet")
                    .display()
                    .to_string()])
            };
            Some((
                vec![train("scenes", "image"), train("pairs", "images")],
                options.train_tokenizer.unwrap_or(1024),
            ))
        }
        input => {
            let (input, image_columns) = match input {
                DatasetInput::Parquet {
                    data,
                    image_columns,
                } => (
                    PrepareInput::Parquet(SourceConfig {
                        image_columns: image_columns.clone(),
                        ..SourceConfig::new(data.clone())
                    }),
                    image_columns.clone(),
                ),
                DatasetInput::Images {
                    images,
                    annotations,
                    image_column,
                } => (
                    PrepareInput::ImageFolder {
                        images: images.clone(),
                        annotations: annotations.clone(),
                        image_column: image_column.clone(),
                    },
                    vec![image_column.clone()],
                ),
                DatasetInput::Demo { .. } => unreachable!("handled above"),
            };
            let config = PrepareConfig {
                split: options.split.clone(),
                rows_per_row_group: options.rows_per_row_group,
                rows_per_shard: options.rows_per_shard,
                max_side: options.max_side,
                threads,
                bad_input: pipeline::BadInputPolicy {
                    max_fraction: options.max_bad_fraction,
                    ..Default::default()
                },
                ..PrepareConfig::new(dir)
            };
            prepare(&input, &config, progress).map_err(|e| e.to_string())?;
            options.train_tokenizer.map(|vocab| {
                let shards = dir.join(format!("{}-*.parquet", options.split));
                let source = SourceConfig {
                    image_columns,
                    ..SourceConfig::new([shards.display().to_string()])
                };
                (vec![source], vocab)
            })
        }
    };
    if let Some((sources, vocab)) = tokenizer_sources {
        let path = dir.join("tokenizer.json");
        let tokenizer = train_tokenizer_on(&sources, &TEMPLATE_WORDS, vocab)
            .map_err(|e| format!("training the tokenizer: {e}"))?;
        tokenizer
            .save(&path, false)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// A prepared dataset's manifest: `manifest.json`, or those of its sub-folders by name (the
/// demo's `scenes` and `pairs`).
pub fn manifest(dir: &Path) -> Result<Option<serde_json::Value>> {
    let read = |path: &Path| -> Result<Option<serde_json::Value>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ServiceError::Internal(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ServiceError::io(path, e)),
        }
    };
    if let Some(manifest) = read(&dir.join("manifest.json"))? {
        return Ok(Some(manifest));
    }
    let mut parts = serde_json::Map::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            if let Some(manifest) = read(&entry.path().join("manifest.json"))? {
                parts.insert(entry.file_name().to_string_lossy().into_owned(), manifest);
            }
        }
    }
    Ok((!parts.is_empty()).then_some(serde_json::Value::Object(parts)))
}
