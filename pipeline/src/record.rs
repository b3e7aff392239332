//! What a source yields: one row, its text columns as values and its images as encoded bytes.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::location::Location;

/// One image of a row, still encoded (JPEG, PNG, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedImage {
    pub bytes: Bytes,
    /// The column it came from, for error locations.
    pub column: String,
}

/// One row of a source, with everything fetched that needs I/O: the CPU stage only computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub location: Location,
    /// Non-image columns by name, as JSON-like values (strings, numbers, lists, structs).
    pub fields: Map<String, Value>,
    /// Images in order: the image columns in their configured order, list items in list order.
    pub images: Vec<EncodedImage>,
}
