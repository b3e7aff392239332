//! A task's visual prompt: the box or point of a row drawn onto its images before they are
//! resized, as the PaliGemma paper marks regions in the image instead of naming them in text.

use image::{Rgb, RgbImage};
use serde_json::{Map, Value};

pub use mixtures::Mark;

use crate::format::{parse_box, short};
use crate::image::{draw_box, draw_point};

/// Which field of the row holds the mark, and how to draw it.
#[derive(Debug, Clone, PartialEq)]
pub struct VisualPrompt {
    /// The field's name in the row (as the templates name it).
    pub field: String,
    pub mark: Mark,
    pub colour: Rgb<u8>,
    /// Line width or radius, a fraction of each side.
    pub thickness: f32,
}

impl VisualPrompt {
    /// Draws the row's mark onto `rgb`; the error says what the field held instead.
    pub fn draw(&self, rgb: &mut RgbImage, fields: &Map<String, Value>) -> Result<(), String> {
        let value = fields.get(&self.field).unwrap_or(&Value::Null);
        match self.mark {
            Mark::Box => {
                let b = parse_box(value)
                    .ok_or_else(|| format!("not a box [y0, x0, y1, x1]: {}", short(value)))?;
                let yxyx = [b.y0, b.x0, b.y1, b.x1].map(|v| v as f32);
                draw_box(rgb, yxyx, self.colour, self.thickness);
            }
            Mark::Point => {
                let yx = parse_point(value)
                    .ok_or_else(|| format!("not a point [y, x]: {}", short(value)))?;
                draw_point(rgb, yx, self.colour, self.thickness);
            }
        }
        Ok(())
    }
}

/// `[y, x]` or an object with those keys, finite numbers.
fn parse_point(value: &Value) -> Option<[f32; 2]> {
    let number = |v: Option<&Value>| Some(v?.as_f64().filter(|v| v.is_finite())? as f32);
    match value {
        Value::Array(items) if items.len() == 2 => {
            Some([number(items.first())?, number(items.get(1))?])
        }
        Value::Object(o) => Some([number(o.get("y"))?, number(o.get("x"))?]),
        _ => None,
    }
}
