//! One row to write: its data columns as JSON-like values and its image columns as encoded
//! images, both by column name.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

/// One image as the Hugging Face `datasets` Image feature stores it: the encoded file, its path,
/// or both (`datasets` keeps the original file name beside the embedded bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageValue {
    pub bytes: Option<Bytes>,
    pub path: Option<String>,
}

impl ImageValue {
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: Some(bytes.into()),
            path: None,
        }
    }

    pub fn from_path(path: impl Into<String>) -> Self {
        Self {
            bytes: None,
            path: Some(path.into()),
        }
    }

    pub fn with_path(self, path: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
            ..self
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.as_ref().map_or(0, Bytes::len) + self.path.as_ref().map_or(0, String::len)
    }
}

/// What an image column holds in one row: one image, or a list of them (multi-image examples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCell {
    Single(ImageValue),
    List(Vec<ImageValue>),
}

/// A row: a column left out is null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub fields: Map<String, Value>,
    pub images: BTreeMap<String, ImageCell>,
}

impl Row {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn field(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.fields.insert(column.into(), value.into());
        self
    }

    pub fn image(mut self, column: impl Into<String>, image: ImageValue) -> Self {
        self.images.insert(column.into(), ImageCell::Single(image));
        self
    }

    pub fn image_list(mut self, column: impl Into<String>, images: Vec<ImageValue>) -> Self {
        self.images.insert(column.into(), ImageCell::List(images));
        self
    }

    /// Roughly the bytes this row adds to a row group: what bounds a batch's memory.
    pub(crate) fn approx_bytes(&self) -> usize {
        let images: usize = self
            .images
            .values()
            .map(|cell| match cell {
                ImageCell::Single(image) => image.len(),
                ImageCell::List(images) => images.iter().map(ImageValue::len).sum(),
            })
            .sum();
        // Data columns are small next to images: a rough measure is enough.
        images + self.fields.values().map(value_len).sum::<usize>()
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(value_len).sum(),
        Value::Object(fields) => fields.iter().map(|(k, v)| k.len() + value_len(v)).sum(),
        _ => 8,
    }
}
