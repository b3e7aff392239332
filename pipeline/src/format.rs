//! One record to one [`Example`]: the task's prefix and suffix templates rendered over the
//! record's columns, tokenized, and laid out as DESIGN.md draws it:
//! `[<image>] * (K * N_img), <bos>, prefix, "\n", suffix, <eos>`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bad_input::{BadInput, Reason};
use crate::example::Example;
use crate::image::SquareImage;
use crate::loc::{Detection, LocBox, render_detections};
use crate::location::Location;
use crate::text::PaliTokenizer;

use mixtures::{Part, Template};

/// What to do with an example whose text is longer than the text length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLength {
    /// Cut the end of the suffix (its `<eos>` first), as big_vision and HF's processor do.
    #[default]
    Truncate,
    /// Skip the example with [`Reason::OverLength`].
    Skip,
}

/// How one task's examples are formatted at one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatConfig {
    /// Index of the task in the mixture's task list.
    pub task_id: u16,
    /// Templates over the record's columns: `{column}` or `{column:format}` with format `loc` or
    /// `detections`; `{{` and `}}` are literal braces.
    pub prefix: String,
    pub suffix: String,
    pub resolution: usize,
    pub patch: usize,
    /// Cap on `<bos>` + prefix + "\n" + suffix + `<eos>`; image tokens come on top.
    pub text_len: usize,
    pub over_length: OverLength,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("{which} template {template:?}: {message}")]
    Template {
        which: &'static str,
        template: String,
        message: String,
    },
    #[error("resolution {resolution} is not a positive multiple of the patch {patch}")]
    Resolution { resolution: usize, patch: usize },
    #[error("text length {0} leaves no room for <bos>, \"\\n\" and one target token")]
    TextLen(usize),
}

/// How a template field turns a column's value into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Strings as they are; numbers and booleans printed.
    Plain,
    /// A box `[y0, x0, y1, x1]` or `{y0, x0, y1, x1}`, or a list of them, as loc tokens.
    Loc,
    /// A list of `{box, label}` (or `{y0, x0, y1, x1, label}`) objects as detection targets.
    Detections,
}

impl Format {
    fn parse(name: Option<&str>) -> Result<Self, String> {
        match name {
            None => Ok(Format::Plain),
            Some("loc") => Ok(Format::Loc),
            Some("detections") => Ok(Format::Detections),
            Some(other) => Err(format!(
                "unknown format {other:?} (expected loc or detections)"
            )),
        }
    }
}

/// Formats one task's records into examples; cheap to share across worker threads.
#[derive(Debug, Clone)]
pub struct Formatter {
    prefix: Vec<Field>,
    suffix: Vec<Field>,
    task_id: u16,
    tokens_per_image: usize,
    text_len: usize,
    over_length: OverLength,
}

/// A template part with its format resolved once.
#[derive(Debug, Clone)]
enum Field {
    Literal(String),
    Column { column: String, format: Format },
}

fn compile(which: &'static str, source: &str) -> Result<Vec<Field>, FormatError> {
    let error = |message: String| FormatError::Template {
        which,
        template: source.into(),
        message,
    };
    let template = Template::parse(source).map_err(|e| error(e.to_string()))?;
    template
        .into_parts()
        .into_iter()
        .map(|part| match part {
            Part::Literal(text) => Ok(Field::Literal(text)),
            Part::Field { column, format } => {
                let format = Format::parse(format.as_deref()).map_err(error)?;
                Ok(Field::Column { column, format })
            }
        })
        .collect()
}

impl Formatter {
    pub fn new(config: FormatConfig) -> Result<Self, FormatError> {
        let FormatConfig {
            task_id,
            prefix,
            suffix,
            resolution,
            patch,
            text_len,
            over_length,
        } = config;
        if patch == 0 || resolution == 0 || resolution % patch != 0 {
            return Err(FormatError::Resolution { resolution, patch });
        }
        if text_len < 3 {
            return Err(FormatError::TextLen(text_len));
        }
        Ok(Self {
            prefix: compile("prefix", &prefix)?,
            suffix: compile("suffix", &suffix)?,
            task_id,
            tokens_per_image: (resolution / patch).pow(2),
            text_len,
            over_length,
        })
    }

    /// Image tokens per image: `(resolution / patch)^2`.
    pub fn tokens_per_image(&self) -> usize {
        self.tokens_per_image
    }

    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// The template (`"prefix"` or `"suffix"`) that writes boxes as loc tokens, if one does: its
    /// task needs a tokenizer with them.
    pub fn loc_template(&self) -> Option<&'static str> {
        let writes_loc = |template: &[Field]| {
            template.iter().any(|f| {
                matches!(
                    f,
                    Field::Column {
                        format: Format::Loc | Format::Detections,
                        ..
                    }
                )
            })
        };
        [("prefix", &self.prefix), ("suffix", &self.suffix)]
            .into_iter()
            .find(|(_, template)| writes_loc(template))
            .map(|(which, _)| which)
    }

    /// The example of one record. `images` are its preprocessed images in order; the example's
    /// length is `images.len() * tokens_per_image` plus at most `text_len`.
    pub fn format(
        &self,
        fields: &Map<String, Value>,
        images: Vec<SquareImage>,
        origin: Location,
        tok: &PaliTokenizer,
    ) -> Result<Example, BadInput> {
        let prefix = render(&self.prefix, fields, &origin)?;
        let suffix = render(&self.suffix, fields, &origin)?;
        let encode = |text: &str| {
            tok.check_text(text)
                .and_then(|()| tok.encode(text))
                .map_err(|e| BadInput::new(Reason::BadTemplateValue, origin.clone(), e.to_string()))
        };
        let (prefix, mut suffix) = (encode(&prefix)?, encode(&suffix)?);

        // <bos> prefix "\n" must leave room for at least one target, whatever the policy.
        let prefix_text = 1 + prefix.len() + 1;
        let full_text = prefix_text + suffix.len() + 1;
        if prefix_text >= self.text_len {
            let detail = format!(
                "prefix needs {prefix_text} of {} text tokens, leaving none for the suffix",
                self.text_len
            );
            return Err(BadInput::new(Reason::OverLength, origin, detail));
        }
        let truncated = full_text > self.text_len;
        if truncated && self.over_length == OverLength::Skip {
            let detail = format!(
                "text is {full_text} tokens, over the text length {}",
                self.text_len
            );
            return Err(BadInput::new(Reason::OverLength, origin, detail));
        }

        let ids = tok.special();
        let n_image_tokens = images.len() * self.tokens_per_image;
        let mut tokens = Vec::with_capacity(n_image_tokens + full_text.min(self.text_len));
        tokens.resize(n_image_tokens, ids.image);
        tokens.push(ids.bos);
        tokens.extend_from_slice(&prefix);
        tokens.push(ids.sep);
        let prefix_len = tokens.len();
        if truncated {
            suffix.truncate(self.text_len - prefix_text);
        } else {
            suffix.push(ids.eos);
        }
        tokens.extend_from_slice(&suffix);

        Ok(Example {
            tokens,
            prefix_len,
            image_starts: (0..images.len())
                .map(|i| i * self.tokens_per_image)
                .collect(),
            images,
            task_id: self.task_id,
            origin,
            truncated,
        })
    }
}

/// The text of a compiled template over a record's columns.
fn render(
    template: &[Field],
    fields: &Map<String, Value>,
    origin: &Location,
) -> Result<String, BadInput> {
    let mut out = String::new();
    for field in template {
        match field {
            Field::Literal(text) => out.push_str(text),
            Field::Column { column, format } => {
                let bad = |reason, detail: String| {
                    BadInput::new(reason, origin.with_column(column), detail)
                };
                let value = fields
                    .get(column)
                    .ok_or_else(|| bad(Reason::MissingColumn, format!("no column {column:?}")))?;
                if value.is_null() {
                    return Err(bad(Reason::NullValue, format!("column {column:?} is null")));
                }
                let text = match format {
                    Format::Plain => {
                        plain(value).ok_or((Reason::WrongType, "a string or a number"))
                    }
                    Format::Loc => loc(value).map_err(|what| (Reason::BadTemplateValue, what)),
                    Format::Detections => {
                        detections(value).map_err(|what| (Reason::BadTemplateValue, what))
                    }
                };
                let text = text.map_err(|(reason, what)| {
                    bad(reason, format!("expected {what}, got {}", short(value)))
                })?;
                out.push_str(&text);
            }
        }
    }
    Ok(out)
}

fn plain(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One box, or a list of boxes joined by " ; ".
fn loc(value: &Value) -> Result<String, &'static str> {
    const BOXES: &str = "a box [y0, x0, y1, x1] or {y0, x0, y1, x1}, or a list of them";
    if let Some(bbox) = parse_box(value) {
        return Ok(bbox.render());
    }
    let items = value
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or(BOXES)?;
    let boxes = items
        .iter()
        .map(parse_box)
        .collect::<Option<Vec<_>>>()
        .ok_or(BOXES)?;
    let detections: Vec<Detection> = boxes
        .into_iter()
        .map(|bbox| Detection {
            bbox,
            label: String::new(),
        })
        .collect();
    Ok(render_detections(&detections))
}

fn detections(value: &Value) -> Result<String, &'static str> {
    const WHAT: &str = "a list of {box, label} or {y0, x0, y1, x1, label} objects";
    let items = value.as_array().ok_or(WHAT)?;
    let detections = items
        .iter()
        .map(|item| {
            let object = item.as_object()?;
            let label = object.get("label")?.as_str()?.trim().to_string();
            let bbox = parse_box(object.get("box").unwrap_or(item))?;
            Some(Detection { bbox, label })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or(WHAT)?;
    Ok(render_detections(&detections))
}

/// `[y0, x0, y1, x1]` or an object with those keys (others ignored).
pub(crate) fn parse_box(value: &Value) -> Option<LocBox> {
    let number = |v: Option<&Value>| v?.as_f64().filter(|v| v.is_finite());
    let [y0, x0, y1, x1] = match value {
        Value::Array(items) if items.len() == 4 => [
            number(items.first())?,
            number(items.get(1))?,
            number(items.get(2))?,
            number(items.get(3))?,
        ],
        Value::Object(o) => [
            number(o.get("y0"))?,
            number(o.get("x0"))?,
            number(o.get("y1"))?,
            number(o.get("x1"))?,
        ],
        _ => return None,
    };
    Some(LocBox { y0, x0, y1, x1 })
}

/// A value for an error message, cut to a readable length.
pub(crate) fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}
