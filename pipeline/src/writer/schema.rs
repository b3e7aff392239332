//! The declared shape of a split: its columns and their types. Rows are checked against it
//! before they are written, and it maps to Arrow in the Hugging Face `datasets` layout.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType as ArrowType, Field as ArrowField, Fields, Schema as ArrowSchema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::row::{ImageCell, ImageValue, Row};

/// A column's type. Serialised readably in the manifest: `"string"`, `{"list": "image"}`,
/// `{"struct": [{"name": "y0", "type": "float64"}, ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// The `datasets` Image feature: `struct<bytes: binary, path: string>`. Only as a column's
    /// type or as the item of a column's list: that is where `datasets` and our readers look.
    Image,
    String,
    Int64,
    Float64,
    Bool,
    List(Box<DataType>),
    Struct(Vec<Field>),
}

impl DataType {
    pub fn list(item: DataType) -> Self {
        DataType::List(Box::new(item))
    }

    /// A struct of required fields, e.g. a detection box.
    pub fn struct_of<'a>(fields: impl IntoIterator<Item = (&'a str, DataType)>) -> Self {
        DataType::Struct(
            fields
                .into_iter()
                .map(|(name, data_type)| Field::new(name, data_type))
                .collect(),
        )
    }

    fn contains_image(&self) -> bool {
        match self {
            DataType::Image => true,
            DataType::List(item) => item.contains_image(),
            DataType::Struct(fields) => fields.iter().any(|f| f.data_type.contains_image()),
            _ => false,
        }
    }

    /// Arrow's type, as `datasets` writes it: every field nullable, list items named `element`.
    pub fn to_arrow(&self) -> ArrowType {
        match self {
            DataType::Image => ArrowType::Struct(Fields::from(vec![
                ArrowField::new("bytes", ArrowType::Binary, true),
                ArrowField::new("path", ArrowType::Utf8, true),
            ])),
            DataType::String => ArrowType::Utf8,
            DataType::Int64 => ArrowType::Int64,
            DataType::Float64 => ArrowType::Float64,
            DataType::Bool => ArrowType::Boolean,
            DataType::List(item) => {
                ArrowType::List(Arc::new(ArrowField::new("element", item.to_arrow(), true)))
            }
            DataType::Struct(fields) => ArrowType::Struct(
                fields
                    .iter()
                    .map(|f| ArrowField::new(&f.name, f.data_type.to_arrow(), true))
                    .collect(),
            ),
        }
    }

    /// The `datasets` feature description, so `load_dataset("parquet", ...)` yields images.
    fn hf_feature(&self) -> Value {
        let value = |dtype: &str| json!({"dtype": dtype, "_type": "Value"});
        match self {
            DataType::Image => json!({"_type": "Image"}),
            DataType::String => value("string"),
            DataType::Int64 => value("int64"),
            DataType::Float64 => value("float64"),
            DataType::Bool => value("bool"),
            // A one-item JSON list is the list form every `datasets` version reads (2.x to 5.x).
            DataType::List(item) => json!([item.hf_feature()]),
            DataType::Struct(fields) => Value::Object(
                fields
                    .iter()
                    .map(|f| (f.name.clone(), f.data_type.hf_feature()))
                    .collect(),
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            DataType::Image => "image",
            DataType::String => "string",
            DataType::Int64 => "int64",
            DataType::Float64 => "float64",
            DataType::Bool => "bool",
            DataType::List(_) => "list",
            DataType::Struct(_) => "struct",
        }
    }
}

/// A named, typed column or struct member. `nullable`: whether a row may leave it out or null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nullable: bool,
}

impl Field {
    pub fn new(name: impl Into<String>, data_type: DataType) -> Self {
        Self {
            name: name.into(),
            data_type,
            nullable: false,
        }
    }

    pub fn nullable(self) -> Self {
        Self {
            nullable: true,
            ..self
        }
    }
}

/// The columns of a split, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Schema {
    pub columns: Vec<Field>,
}

/// A row that does not fit the schema: which column, and what is wrong (with the path inside a
/// nested value, e.g. `objects[1].y0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowMismatch {
    pub column: String,
    pub message: String,
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn column(mut self, name: impl Into<String>, data_type: DataType) -> Self {
        self.columns.push(Field::new(name, data_type));
        self
    }

    pub fn nullable_column(mut self, name: impl Into<String>, data_type: DataType) -> Self {
        self.columns.push(Field::new(name, data_type).nullable());
        self
    }

    pub fn image(self, name: impl Into<String>) -> Self {
        self.column(name, DataType::Image)
    }

    pub fn image_list(self, name: impl Into<String>) -> Self {
        self.column(name, DataType::list(DataType::Image))
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Names unique and non-empty at every level; images only where readers look for them.
    pub fn validate(&self) -> Result<(), String> {
        if self.columns.is_empty() {
            return Err("a schema needs at least one column".into());
        }
        validate_fields(&self.columns, "")?;
        for column in &self.columns {
            if !is_image_column(&column.data_type) && column.data_type.contains_image() {
                return Err(format!(
                    "column {:?}: an image must be a column or the item of a column's list",
                    column.name
                ));
            }
        }
        Ok(())
    }

    /// The Arrow schema of the shards, with the `huggingface` metadata `datasets` reads.
    pub fn to_arrow(&self) -> ArrowSchema {
        let fields: Vec<ArrowField> = self
            .columns
            .iter()
            .map(|c| ArrowField::new(&c.name, c.data_type.to_arrow(), true))
            .collect();
        let features: serde_json::Map<String, Value> = self
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.hf_feature()))
            .collect();
        let metadata = json!({"info": {"features": features}}).to_string();
        ArrowSchema::new_with_metadata(
            fields,
            HashMap::from([("huggingface".to_string(), metadata)]),
        )
    }

    /// Whether `row` fits: every value of the declared type, no unknown column, no missing or
    /// null value where the column is not nullable. The schema must be valid.
    pub fn check(&self, row: &Row) -> Result<(), RowMismatch> {
        for name in row.fields.keys().chain(row.images.keys()) {
            if self.get(name).is_none() {
                let message = format!("{name}: not a column of the schema");
                return Err(RowMismatch {
                    column: name.clone(),
                    message,
                });
            }
        }
        for column in &self.columns {
            let name = &column.name;
            let value = row.fields.get(name).filter(|v| !v.is_null());
            let image = row.images.get(name);
            let result = if is_image_column(&column.data_type) {
                match (value, image) {
                    (Some(_), _) => {
                        Err(format!("{name}: an image column takes images, not values"))
                    }
                    (None, None) if column.nullable => Ok(()),
                    (None, None) => Err(format!("{name}: missing image")),
                    (None, Some(cell)) => check_images(&column.data_type, cell, name),
                }
            } else {
                match (value, image) {
                    (_, Some(_)) => Err(format!("{name}: not an image column")),
                    (None, None) if column.nullable => Ok(()),
                    (None, None) => Err(format!("{name}: missing value")),
                    (Some(value), None) => check_value(&column.data_type, value, name),
                }
            };
            result.map_err(|message| RowMismatch {
                column: name.clone(),
                message,
            })?;
        }
        Ok(())
    }
}

/// Whether a column holds images (one, or a list): valid schemas have images nowhere else.
pub(crate) fn is_image_column(data_type: &DataType) -> bool {
    match data_type {
        DataType::Image => true,
        DataType::List(item) => **item == DataType::Image,
        _ => false,
    }
}

fn validate_fields(fields: &[Field], parent: &str) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for field in fields {
        let path = format!("{parent}{}", field.name);
        if field.name.is_empty() {
            return Err(format!("an empty field name in {parent:?}"));
        }
        if !seen.insert(&field.name) {
            return Err(format!("field {path:?} declared twice"));
        }
        let mut data_type = &field.data_type;
        while let DataType::List(item) = data_type {
            data_type = item;
        }
        if let DataType::Struct(members) = data_type {
            if members.is_empty() {
                return Err(format!("struct {path:?} has no fields"));
            }
            validate_fields(members, &format!("{path}."))?;
        }
    }
    Ok(())
}

fn check_images(data_type: &DataType, cell: &ImageCell, path: &str) -> Result<(), String> {
    let check = |image: &ImageValue, path: &str| match image.bytes.is_none() && image.path.is_none()
    {
        true => Err(format!("{path}: an image needs bytes or a path")),
        false => Ok(()),
    };
    match (data_type, cell) {
        (DataType::Image, ImageCell::Single(image)) => check(image, path),
        (DataType::List(_), ImageCell::List(images)) => images
            .iter()
            .enumerate()
            .try_for_each(|(i, image)| check(image, &format!("{path}[{i}]"))),
        (DataType::Image, ImageCell::List(_)) => {
            Err(format!("{path}: expected one image, got a list"))
        }
        _ => Err(format!("{path}: expected a list of images, got one image")),
    }
}

/// Checks a non-null data value; `path` names it in messages.
fn check_value(data_type: &DataType, value: &Value, path: &str) -> Result<(), String> {
    let ok = match (data_type, value) {
        (DataType::String, Value::String(_)) | (DataType::Bool, Value::Bool(_)) => true,
        // An integer must fit i64 exactly; a float such as 2.0 is not silently truncated.
        (DataType::Int64, Value::Number(n)) => n.as_i64().is_some(),
        (DataType::Float64, Value::Number(_)) => true,
        (DataType::List(item), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                if v.is_null() {
                    return Err(format!("{item_path}: list items cannot be null"));
                }
                check_value(item, v, &item_path)?;
            }
            true
        }
        (DataType::Struct(fields), Value::Object(members)) => {
            for key in members.keys() {
                if !fields.iter().any(|f| &f.name == key) {
                    return Err(format!("{path}.{key}: not a field of the struct"));
                }
            }
            for field in fields {
                let member_path = format!("{path}.{}", field.name);
                match members.get(&field.name).filter(|v| !v.is_null()) {
                    Some(v) => check_value(&field.data_type, v, &member_path)?,
                    None if field.nullable => {}
                    None => return Err(format!("{member_path}: missing value")),
                }
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{path}: expected {}, got {}",
            data_type.name(),
            describe(value)
        ))
    }
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}
