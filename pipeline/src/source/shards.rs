//! Turning a source's `data` entries (paths, globs, URLs) into a sorted list of Parquet shards,
//! each addressed through an `object_store` so local files and remote buckets read alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use url::Url;

use super::SourceError;

/// One Parquet file, wherever it lives.
#[derive(Debug, Clone)]
pub struct Shard {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// As the user would write it: a local path or a URL. Used in every error and location.
    pub name: String,
    pub size: u64,
}

impl Shard {
    /// The folder holding the shard, in the same store: the root for relative image paths.
    pub fn parent(&self) -> Path {
        let parts: Vec<_> = self.path.parts().collect();
        Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
    }
}

/// Resolves every entry, expanding globs; the result is sorted by name and has no duplicates.
pub async fn resolve(entries: &[String]) -> Result<Vec<Shard>, SourceError> {
    let mut shards = BTreeMap::new();
    for entry in entries {
        let found = resolve_one(entry).await?;
        if found.is_empty() {
            return Err(SourceError::NoShards {
                entry: entry.clone(),
            });
        }
        for shard in found {
            shards.insert(shard.name.clone(), shard);
        }
    }
    Ok(shards.into_values().collect())
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

async fn resolve_one(entry: &str) -> Result<Vec<Shard>, SourceError> {
    match Url::parse(entry) {
        Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => {
            resolve_url(entry, url).await
        }
        Ok(url) if url.scheme() == "file" => {
            let path = url.to_file_path().map_err(|_| SourceError::BadUrl {
                entry: entry.to_string(),
                reason: "not a local file path".into(),
            })?;
            resolve_local(&path.to_string_lossy())
        }
        _ => resolve_local(entry),
    }
}

fn resolve_local(entry: &str) -> Result<Vec<Shard>, SourceError> {
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let paths: Vec<std::path::PathBuf> = if is_glob(entry) {
        let matches = glob::glob(entry).map_err(|e| SourceError::BadGlob {
            entry: entry.to_string(),
            reason: e.to_string(),
        })?;
        matches
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect()
    } else {
        let path = std::path::PathBuf::from(entry);
        if path.is_dir() {
            // A folder means every Parquet file in it.
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .map_err(|e| SourceError::io(entry, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect();
            files.sort();
            files
        } else {
            vec![path]
        }
    };
    paths
        .into_iter()
        .map(|path| {
            let name = path.to_string_lossy().into_owned();
            let meta = std::fs::metadata(&path).map_err(|e| SourceError::io(&name, e))?;
            let absolute = std::path::absolute(&path).map_err(|e| SourceError::io(&name, e))?;
            let path = Path::from_absolute_path(&absolute).map_err(|e| SourceError::BadUrl {
                entry: name.clone(),
                reason: e.to_string(),
            })?;
            Ok(Shard {
                store: store.clone(),
                path,
                name,
                size: meta.len(),
            })
        })
        .collect()
}

/// The store for a URL's scheme and host; credentials and options come from the environment
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as each cloud's own tools read them.
pub fn store_for(url: &Url) -> Result<(Arc<dyn ObjectStore>, Path), SourceError> {
    let bad = |reason: String| SourceError::BadUrl {
        entry: url.to_string(),
        reason,
    };
    match url.scheme() {
        "http" | "https" => {
            let base = &url[..url::Position::BeforePath];
            let options = ClientOptions::new()
                .with_allow_http(url.scheme() == "http")
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(60));
            let retry = RetryConfig {
                max_retries: 3,
                ..Default::default()
            };
            let store = HttpBuilder::new()
                .with_url(base)
                .with_client_options(options)
                .with_retry(retry)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            let path = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(store), path))
        }
        _ => {
            let (store, path) = object_store::parse_url_opts(url, std::env::vars())
                .map_err(|e| bad(e.to_string()))?;
            Ok((Arc::from(store), path))
        }
    }
}

async fn resolve_url(entry: &str, url: Url) -> Result<Vec<Shard>, SourceError> {
    let (store, path) = store_for(&url)?;
    let base = &entry[..entry.len() - url.path().len().min(entry.len())];
    let unreachable = |e: object_store::Error| SourceError::Unreachable {
        entry: entry.to_string(),
        reason: e.to_string(),
    };
    if !is_glob(url.path()) {
        let meta = store.head(&path).await.map_err(unreachable)?;
        return Ok(vec![Shard {
            store,
            path,
            name: entry.to_string(),
            size: meta.size,
        }]);
    }
    // List under the longest literal prefix, then match the pattern against each key.
    let pattern_text = path.as_ref();
    let pattern = glob::Pattern::new(pattern_text).map_err(|e| SourceError::BadGlob {
        entry: entry.to_string(),
        reason: e.to_string(),
    })?;
    let literal = &pattern_text[..pattern_text
        .find(['*', '?', '['])
        .unwrap_or(pattern_text.len())];
    let prefix = Path::from(literal.rsplit_once('/').map_or("", |(dir, _)| dir));
    let listed: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(unreachable)?;
    Ok(listed
        .into_iter()
        .filter(|meta| pattern.matches(meta.location.as_ref()))
        .map(|meta| Shard {
            store: store.clone(),
            name: format!("{}/{}", base.trim_end_matches('/'), meta.location),
            path: meta.location,
            size: meta.size,
        })
        .collect())
}
