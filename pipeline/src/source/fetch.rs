//! Fetching the images a row only names: paths beside the dataset (through the shard's store)
//! and URLs over HTTP, with timeouts, bounded retries and a limit on requests in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::try_join_all;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::columns::{ImageRef, RawRow};
use crate::bad_input::{BadInput, Reason};
use crate::record::{EncodedImage, Record};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Per request.
    pub timeout_secs: f64,
    /// Attempts after the first, for connection errors, timeouts, 429 and 5xx.
    pub retries: u32,
    /// Requests in flight at once, over the whole source.
    pub concurrency: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 20.0,
            retries: 3,
            concurrency: 32,
        }
    }
}

/// Where relative image paths are read from.
#[derive(Debug, Clone)]
pub struct ImageRoot {
    pub store: Arc<dyn ObjectStore>,
    pub base: Path,
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
    config: FetchConfig,
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_secs))
            .connect_timeout(Duration::from_secs_f64(config.timeout_secs.min(10.0)))
            .build()
            .expect("a TLS backend is compiled in");
        Self {
            client,
            in_flight: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
        }
    }

    /// The row with every image as bytes, or the first image that could not be had.
    pub async fn resolve(&self, row: RawRow, root: &ImageRoot) -> Result<Record, BadInput> {
        let RawRow {
            location,
            fields,
            images,
        } = row;
        let fetches = images.into_iter().map(|(column, image)| {
            let at = location.with_column(&column);
            async move {
                let bytes = match image {
                    ImageRef::Bytes(bytes) => bytes,
                    ImageRef::Path(path) => self
                        .read_path(&path, root)
                        .await
                        .map_err(|(reason, detail)| BadInput::new(reason, at, detail))?,
                    ImageRef::Url(url) => self
                        .get_url(&url)
                        .await
                        .map_err(|detail| BadInput::new(Reason::UnreachableUrl, at, detail))?,
                };
                Ok(EncodedImage { bytes, column })
            }
        });
        let images = try_join_all(fetches).await?;
        Ok(Record {
            location,
            fields,
            images,
        })
    }

    async fn read_path(&self, path: &str, root: &ImageRoot) -> Result<Bytes, (Reason, String)> {
        let missing = |detail: String| (Reason::MissingFile, format!("{path}: {detail}"));
        let full = if path.starts_with('/') {
            Path::from_absolute_path(path).map_err(|e| missing(e.to_string()))?
        } else {
            // `Path::parse` refuses `..`, so a row cannot reach outside the dataset's root.
            let relative = Path::parse(path).map_err(|e| missing(e.to_string()))?;
            root.base.parts().chain(relative.parts()).collect()
        };
        let _permit = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let got = root
            .store
            .get(&full)
            .await
            .map_err(|e| missing(e.to_string()))?;
        got.bytes().await.map_err(|e| missing(e.to_string()))
    }

    async fn get_url(&self, url: &str) -> Result<Bytes, String> {
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            }
            let _permit = self
                .in_flight
                .acquire()
                .await
                .expect("the semaphore is never closed");
            match self.client.get(url).send().await {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(bytes) => return Ok(bytes),
                    Err(e) => last = format!("{url}: {e}"),
                },
                Ok(response) => {
                    let status = response.status();
                    last = format!("{url}: HTTP {status}");
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        break;
                    }
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }
}
