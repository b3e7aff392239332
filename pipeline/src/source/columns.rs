//! Arrow record batches to rows: text columns become JSON-like values, image columns become
//! references to encoded images in whichever layout the dataset uses.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use bytes::Bytes;
use serde_json::{Map, Number, Value};

use crate::bad_input::{BadInput, Reason};
use crate::location::Location;

/// An image as a row names it. Bytes are ready; paths and URLs still need fetching.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    Bytes(Bytes),
    /// Relative to the dataset root (by default the shard's folder), or absolute.
    Path(String),
    Url(String),
}

/// A row before its images are fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub location: Location,
    pub fields: Map<String, Value>,
    pub images: Vec<(String, ImageRef)>,
}

/// Splits `batch` (rows `first_row..` of a row group) into rows, or the reason each is bad.
pub fn rows(
    batch: &RecordBatch,
    at: &Location,
    image_columns: &[String],
    text_columns: &[String],
) -> Vec<Result<RawRow, BadInput>> {
    (0..batch.num_rows())
        .map(|i| {
            let location = Location {
                row: at.row + i,
                ..at.clone()
            };
            row(batch, i, location, image_columns, text_columns)
        })
        .collect()
}

fn row(
    batch: &RecordBatch,
    i: usize,
    location: Location,
    image_columns: &[String],
    text_columns: &[String],
) -> Result<RawRow, BadInput> {
    let column = |name: &String| {
        batch.column_by_name(name).ok_or_else(|| {
            BadInput::new(
                Reason::MissingColumn,
                location.with_column(name),
                "the shard has no such column",
            )
        })
    };
    let mut fields = Map::new();
    for name in text_columns {
        let value = cell_value(column(name)?.as_ref(), i).map_err(|ty| {
            BadInput::new(
                Reason::WrongType,
                location.with_column(name),
                format!("{ty} is not a text or number"),
            )
        })?;
        fields.insert(name.clone(), value);
    }
    let mut images = Vec::new();
    for name in image_columns {
        let at = location.with_column(name);
        let array = column(name)?;
        if array.is_null(i) {
            return Err(BadInput::new(Reason::NullValue, at, "no image"));
        }
        match array.data_type() {
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
                let items = list_item(array.as_ref(), i);
                if items.is_empty() {
                    return Err(BadInput::new(
                        Reason::NullValue,
                        at,
                        "an empty list of images",
                    ));
                }
                for j in 0..items.len() {
                    images.push((name.clone(), image_ref(items.as_ref(), j, &at)?));
                }
            }
            _ => images.push((name.clone(), image_ref(array.as_ref(), i, &at)?)),
        }
    }
    Ok(RawRow {
        location,
        fields,
        images,
    })
}

fn list_item(array: &dyn Array, i: usize) -> arrow::array::ArrayRef {
    match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().value(i),
        DataType::LargeList(_) => array.as_list::<i64>().value(i),
        _ => array.as_fixed_size_list().value(i),
    }
}

fn string_at(array: &dyn Array, i: usize) -> Option<&str> {
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(array.as_string_view().value(i)),
        _ => None,
    }
}

fn binary_at(array: &dyn Array, i: usize) -> Option<&[u8]> {
    match array.data_type() {
        DataType::Binary => Some(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(array.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(array.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => Some(array.as_fixed_size_binary().value(i)),
        _ => None,
    }
}

/// A path or URL string, told apart by its scheme.
fn path_or_url(s: &str) -> ImageRef {
    if s.starts_with("http://") || s.starts_with("https://") {
        ImageRef::Url(s.to_string())
    } else {
        ImageRef::Path(s.to_string())
    }
}

/// One image cell: the Hugging Face struct `{bytes, path}` (bytes win when both are set), raw
/// binary, or a path/URL string.
fn image_ref(array: &dyn Array, i: usize, at: &Location) -> Result<ImageRef, BadInput> {
    if array.is_null(i) {
        return Err(BadInput::new(Reason::NullValue, at.clone(), "no image"));
    }
    if let Some(bytes) = binary_at(array, i) {
        return Ok(ImageRef::Bytes(Bytes::copy_from_slice(bytes)));
    }
    if let Some(s) = string_at(array, i) {
        return Ok(path_or_url(s));
    }
    if let DataType::Struct(_) = array.data_type() {
        let fields = array.as_struct();
        if let Some(bytes) = fields.column_by_name("bytes").filter(|b| !b.is_null(i))
            && let Some(b) = binary_at(bytes.as_ref(), i)
        {
            return Ok(ImageRef::Bytes(Bytes::copy_from_slice(b)));
        }
        if let Some(path) = fields.column_by_name("path").filter(|p| !p.is_null(i))
            && let Some(s) = string_at(path.as_ref(), i)
        {
            return Ok(path_or_url(s));
        }
        if fields.column_by_name("bytes").is_some() || fields.column_by_name("path").is_some() {
            return Err(BadInput::new(
                Reason::NullValue,
                at.clone(),
                "image struct with neither bytes nor path",
            ));
        }
    }
    Err(BadInput::new(
        Reason::WrongType,
        at.clone(),
        format!(
            "{} is not an image layout (struct<bytes, path>, binary, or a path/URL string)",
            array.data_type()
        ),
    ))
}

fn number(n: f64) -> Value {
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// One cell as a JSON-like value; `Err` names a type with no textual meaning (e.g. binary).
pub fn cell_value(array: &dyn Array, i: usize) -> Result<Value, String> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    if let Some(s) = string_at(array, i) {
        return Ok(Value::String(s.to_string()));
    }
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(i).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).into(),
        DataType::Float16 => number(array.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => number(array.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => number(array.as_primitive::<Float64Type>().value(i)),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
            let items = list_item(array, i);
            Value::Array(
                (0..items.len())
                    .map(|j| cell_value(items.as_ref(), j))
                    .collect::<Result<_, _>>()?,
            )
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = Map::new();
            for (k, field) in fields.iter().enumerate() {
                map.insert(field.name().clone(), cell_value(s.column(k).as_ref(), i)?);
            }
            Value::Object(map)
        }
        DataType::Dictionary(..) => {
            let cast = arrow::compute::cast(&array.slice(i, 1), &DataType::Utf8)
                .map_err(|e| e.to_string())?;
            cell_value(cast.as_ref(), 0)?
        }
        other => return Err(other.to_string()),
    })
}
