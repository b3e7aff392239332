//! Sources: Parquet shards, local or in object storage, read as a stream of [`Record`]s.
//!
//! [`Record`]: crate::Record

pub mod columns;
pub mod fetch;
pub mod parquet;
pub mod plan;
pub mod reader;
pub mod shards;

use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bad_input::{BadInput, Reason};
use crate::location::Location;
pub use fetch::{FetchConfig, Fetcher, ImageRoot};
pub use parquet::ShardFile;
pub use plan::{ShardSpec, Unit};
pub use reader::{Cursor, Reader, RowFilter, SourceItem};
pub use shards::Shard;

/// A dataset: which shards, which columns hold images, how to walk it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Paths, globs, folders or URLs (`s3://`, `gs://`, `az://`, `http(s)://`) of Parquet shards.
    pub data: Vec<String>,
    /// Columns holding images: HF image structs, binary, paths or URLs, or lists of those.
    #[serde(default)]
    pub image_columns: Vec<String>,
    /// Where relative image paths start (a folder or URL); by default each shard's folder.
    #[serde(default)]
    pub image_root: Option<String>,
    /// Visit row groups in a new seeded order every epoch.
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Stop after this many passes; `None` repeats forever.
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default)]
    pub fetch: FetchConfig,
}

fn yes() -> bool {
    true
}

impl SourceConfig {
    pub fn new(data: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            data: data.into_iter().map(Into::into).collect(),
            image_columns: Vec::new(),
            image_root: None,
            shuffle: true,
            epochs: None,
            fetch: FetchConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{entry}: no Parquet files match")]
    NoShards { entry: String },
    #[error("{entry}: bad glob pattern: {reason}")]
    BadGlob { entry: String, reason: String },
    #[error("{entry}: {reason}")]
    BadUrl { entry: String, reason: String },
    #[error("{entry}: unreachable: {reason}")]
    Unreachable { entry: String, reason: String },
    #[error("{entry}: {source}")]
    Io {
        entry: String,
        source: std::io::Error,
    },
    #[error("none of the {shards} shards of {entry} could be read; first: {first}")]
    AllUnreadable {
        entry: String,
        shards: usize,
        first: String,
    },
}

impl SourceError {
    pub fn io(entry: &str, source: std::io::Error) -> Self {
        Self::Io {
            entry: entry.to_string(),
            source,
        }
    }
}

/// A source with every shard's footer read: its row groups, schema and row count are known.
pub struct OpenSource {
    pub config: SourceConfig,
    pub files: Vec<ShardFile>,
    /// Shards whose footer could not be read, as bad input (their rows are unknown).
    pub unreadable: Vec<BadInput>,
    image_root: Option<ImageRoot>,
}

/// Footers are small; read several at once to hide object-store latency.
const OPEN_CONCURRENCY: usize = 16;

impl OpenSource {
    pub async fn open(config: SourceConfig) -> Result<Self, SourceError> {
        let shards = shards::resolve(&config.data).await?;
        let count = shards.len();
        let opened: Vec<_> = futures::stream::iter(shards)
            .map(|shard| async move {
                let name = shard.name.clone();
                ShardFile::open(shard).await.map_err(|e| (name, e))
            })
            .buffered(OPEN_CONCURRENCY)
            .collect()
            .await;
        let mut files = Vec::new();
        let mut unreadable = Vec::new();
        for result in opened {
            match result {
                Ok(file) => files.push(file),
                Err((name, e)) => {
                    tracing::warn!("{name}: unreadable Parquet file: {e}");
                    unreadable.push(BadInput::new(
                        Reason::UnreadableParquet,
                        Location::new(name, 0, 0),
                        e.to_string(),
                    ));
                }
            }
        }
        if files.is_empty() {
            let first = unreadable
                .first()
                .map(|b| b.to_string())
                .unwrap_or_default();
            return Err(SourceError::AllUnreadable {
                entry: config.data.join(", "),
                shards: count,
                first,
            });
        }
        let image_root = match &config.image_root {
            None => None,
            Some(root) => Some(image_root_of(root)?),
        };
        Ok(Self {
            config,
            files,
            unreadable,
            image_root,
        })
    }

    /// Rows in all readable shards.
    pub fn rows(&self) -> usize {
        self.files.iter().flat_map(ShardFile::row_groups).sum()
    }

    /// Top-level column names of the first readable shard.
    pub fn columns(&self) -> Vec<String> {
        self.files[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    pub fn image_root(&self, file: &ShardFile) -> ImageRoot {
        self.image_root.clone().unwrap_or_else(|| ImageRoot {
            store: file.shard.store.clone(),
            base: file.shard.parent(),
        })
    }
}

fn image_root_of(root: &str) -> Result<ImageRoot, SourceError> {
    match url::Url::parse(root) {
        Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => {
            let (store, base) = shards::store_for(&url)?;
            Ok(ImageRoot { store, base })
        }
        _ => {
            let path = root.strip_prefix("file://").unwrap_or(root);
            let absolute = std::path::absolute(path).map_err(|e| SourceError::io(root, e))?;
            let base = object_store::path::Path::from_absolute_path(&absolute).map_err(|e| {
                SourceError::BadUrl {
                    entry: root.to_string(),
                    reason: e.to_string(),
                }
            })?;
            Ok(ImageRoot {
                store: Arc::new(object_store::local::LocalFileSystem::new()),
                base,
            })
        }
    }
}
