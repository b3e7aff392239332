//! Rows to an Arrow record batch, column by column. Rows were checked against the schema first,
//! so every value here has its declared type, and anything else reads as null.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType as ArrowType, Field as ArrowField, Fields, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::row::{ImageCell, ImageValue, Row};
use super::schema::{DataType, Schema, is_image_column};

pub(crate) fn record_batch(
    schema: &Schema,
    arrow: &SchemaRef,
    rows: &[Row],
) -> Result<RecordBatch, ArrowError> {
    let columns = schema
        .columns
        .iter()
        .map(|column| {
            if is_image_column(&column.data_type) {
                let cells: Vec<Option<&ImageCell>> =
                    rows.iter().map(|r| r.images.get(&column.name)).collect();
                image_column(&column.data_type, &cells)
            } else {
                let values: Vec<&Value> = rows
                    .iter()
                    .map(|r| r.fields.get(&column.name).unwrap_or(&Value::Null))
                    .collect();
                data_array(&column.data_type, &values)
            }
        })
        .collect();
    RecordBatch::try_new(arrow.clone(), columns)
}

fn image_column(data_type: &DataType, cells: &[Option<&ImageCell>]) -> ArrayRef {
    if let DataType::List(item) = data_type {
        let lists: Vec<Option<&[ImageValue]>> = cells
            .iter()
            .map(|cell| match cell {
                Some(ImageCell::List(images)) => Some(images.as_slice()),
                _ => None,
            })
            .collect();
        list_array(item, &lists, |images| {
            images_array(&images.into_iter().map(Some).collect::<Vec<_>>())
        })
    } else {
        let images: Vec<Option<&ImageValue>> = cells
            .iter()
            .map(|cell| match cell {
                Some(ImageCell::Single(image)) => Some(image),
                _ => None,
            })
            .collect();
        images_array(&images)
    }
}

fn images_array(images: &[Option<&ImageValue>]) -> ArrayRef {
    let bytes = BinaryArray::from_iter(images.iter().map(|i| i.and_then(|i| i.bytes.as_deref())));
    let paths = StringArray::from_iter(images.iter().map(|i| i.and_then(|i| i.path.as_deref())));
    let children: Vec<ArrayRef> = vec![Arc::new(bytes), Arc::new(paths)];
    let valid = nulls(images.iter().map(Option::is_some));
    Arc::new(StructArray::new(
        struct_fields(&DataType::Image),
        children,
        valid,
    ))
}

fn data_array(data_type: &DataType, values: &[&Value]) -> ArrayRef {
    match data_type {
        DataType::String => Arc::new(StringArray::from_iter(values.iter().map(|v| v.as_str()))),
        DataType::Int64 => Arc::new(Int64Array::from_iter(values.iter().map(|v| v.as_i64()))),
        DataType::Float64 => Arc::new(Float64Array::from_iter(values.iter().map(|v| v.as_f64()))),
        DataType::Bool => Arc::new(BooleanArray::from_iter(values.iter().map(|v| v.as_bool()))),
        DataType::List(item) => {
            let lists: Vec<Option<&[Value]>> = values
                .iter()
                .map(|v| v.as_array().map(Vec::as_slice))
                .collect();
            list_array(item, &lists, |items| data_array(item, &items))
        }
        DataType::Struct(fields) => {
            let children = fields
                .iter()
                .map(|f| {
                    let members: Vec<&Value> = values
                        .iter()
                        .map(|v| v.get(&f.name).unwrap_or(&Value::Null))
                        .collect();
                    data_array(&f.data_type, &members)
                })
                .collect();
            let valid = nulls(values.iter().map(|v| v.is_object()));
            Arc::new(StructArray::new(struct_fields(data_type), children, valid))
        }
        DataType::Image => unreachable!("a valid schema has images only in image columns"),
    }
}

/// A list array: the items of all lists flattened into one child array, plus offsets.
fn list_array<'a, T>(
    item: &DataType,
    lists: &[Option<&'a [T]>],
    items_array: impl FnOnce(Vec<&'a T>) -> ArrayRef,
) -> ArrayRef {
    let mut offsets = Vec::with_capacity(lists.len() + 1);
    offsets.push(0i32);
    let mut items = Vec::new();
    for list in lists {
        items.extend(list.iter().flat_map(|l| l.iter()));
        offsets.push(i32::try_from(items.len()).expect("fewer than 2^31 list items in a batch"));
    }
    let field = Arc::new(ArrowField::new("element", item.to_arrow(), true));
    let valid = nulls(lists.iter().map(Option::is_some));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::new(offsets.into()),
        items_array(items),
        valid,
    ))
}

/// A validity buffer, or none when every slot is valid (the cheaper form for Arrow).
fn nulls(valid: impl Iterator<Item = bool>) -> Option<NullBuffer> {
    let buffer = NullBuffer::from_iter(valid);
    (buffer.null_count() > 0).then_some(buffer)
}

fn struct_fields(data_type: &DataType) -> Fields {
    match data_type.to_arrow() {
        ArrowType::Struct(fields) => fields,
        other => unreachable!("{other} is not a struct"),
    }
}
