//! `manifest.json`: what the writers of a shard folder made, per split (a shard prefix such as
//! `train`): schema, shards with row counts and checksums, bad rows, creation parameters. A
//! split is listed only once all its shards are complete, so the manifest is the folder's
//! statement of what is whole.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::schema::Schema;
use super::{Codec, WriterError, publish};
use crate::bad_input::BadInput;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT: &str = "paliforge-shards/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Rows of all splits together.
    pub total_rows: u64,
    pub splits: BTreeMap<String, Split>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub schema: Schema,
    pub rows: u64,
    pub shards: Vec<ShardInfo>,
    /// Rows the caller skipped while writing, with where they came from and why.
    #[serde(default)]
    pub bad_rows: Vec<BadInput>,
    pub parameters: Parameters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The file name, relative to the manifest's folder.
    pub file: String,
    pub rows: u64,
    pub row_groups: usize,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

/// How a split was written, so it can be written again the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    pub created_by: String,
    pub rows_per_row_group: usize,
    pub rows_per_shard: usize,
    pub compression: Codec,
    pub image_compression: Codec,
    /// The caller's own record (a demo's seed and sizes, a preparation's sources, ...).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub source: Value,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    pub fn read(dir: &Path) -> Result<Manifest, WriterError> {
        let path = Self::path(dir);
        let text = fs::read_to_string(&path).map_err(|e| WriterError::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| WriterError::Json {
                path: path.clone(),
                source,
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(WriterError::Manifest(format!(
                "{}: format {:?}, expected {MANIFEST_FORMAT:?}",
                path.display(),
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// The shard files of a split, in order.
    pub fn shard_paths(&self, dir: &Path, split: &str) -> Vec<PathBuf> {
        self.splits.get(split).map_or_else(Vec::new, |s| {
            s.shards.iter().map(|f| dir.join(&f.file)).collect()
        })
    }

    /// Checks every listed shard against its size and checksum; the error lists each mismatch.
    pub fn verify(&self, dir: &Path) -> Result<(), WriterError> {
        let mut problems = Vec::new();
        for shard in self.splits.values().flat_map(|s| &s.shards) {
            let path = dir.join(&shard.file);
            match sha256_file(&path) {
                Ok((sha256, bytes)) if sha256 == shard.sha256 && bytes == shard.bytes => {}
                Ok((sha256, bytes)) => problems.push(format!(
                    "{}: {bytes} bytes with sha256 {sha256}, the manifest says {} bytes with {}",
                    shard.file, shard.bytes, shard.sha256
                )),
                Err(e) => problems.push(format!("{}: {e}", shard.file)),
            }
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(WriterError::Manifest(format!(
                "{}: {}",
                dir.display(),
                problems.join("; ")
            ))),
        }
    }

    /// Reads the folder's manifest (an empty one if there is none), applies `change`, and
    /// replaces the file atomically; a manifest left without splits is removed.
    pub(crate) fn update(
        dir: &Path,
        change: impl FnOnce(&mut Manifest),
    ) -> Result<Manifest, WriterError> {
        let path = Self::path(dir);
        let mut manifest = match path.exists() {
            true => Self::read(dir)?,
            false => Manifest {
                format: MANIFEST_FORMAT.into(),
                total_rows: 0,
                splits: BTreeMap::new(),
            },
        };
        change(&mut manifest);
        manifest.total_rows = manifest.splits.values().map(|s| s.rows).sum();
        if manifest.splits.is_empty() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(WriterError::io(&path, e));
                }
                _ => return Ok(manifest),
            }
        }
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
        text.push('\n');
        let mut file = File::create(&tmp).map_err(|e| WriterError::io(&tmp, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| WriterError::io(&tmp, e))?;
        publish(&file, &tmp, &path)?;
        Ok(manifest)
    }
}

/// The lowercase hex SHA-256 of a file and its length.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex(&hasher.finalize()), bytes));
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
