//! Boxes as PaliGemma's location tokens: `<loc y0><loc x0><loc y1><loc x1> label`, several
//! joined by " ; ", and back.
//!
//! A coordinate `v` (normalised to the image side) becomes bin `round(clamp(v, 0, 1) * 1023)`,
//! rounding halves to even as the reference data generator (Python's `round`) and big_vision
//! (`tf.round`) do; bin `b` reads back as `b / 1023`.

use crate::text::{LOC_TOKENS, TokenFamily, loc_token};

const MAX_BIN: f64 = (LOC_TOKENS - 1) as f64;

/// A box in normalised coordinates, in PaliGemma's order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocBox {
    pub y0: f64,
    pub x0: f64,
    pub y1: f64,
    pub x1: f64,
}

/// A box and its label, as detection targets read.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: LocBox,
    pub label: String,
}

/// The bin of a normalised coordinate.
pub fn bin(v: f64) -> usize {
    (v.clamp(0.0, 1.0) * MAX_BIN).round_ties_even() as usize
}

/// The coordinate a bin stands for.
pub fn unbin(b: usize) -> f64 {
    b as f64 / MAX_BIN
}

impl LocBox {
    pub fn coords(&self) -> [f64; 4] {
        [self.y0, self.x0, self.y1, self.x1]
    }

    /// The four loc tokens of the box, e.g. `<loc0053><loc0072><loc0215><loc0190>`.
    pub fn render(&self) -> String {
        self.coords().iter().map(|&v| loc_token(bin(v))).collect()
    }
}

/// `<loc..>x4 label ; <loc..>x4 label ...`; an empty label leaves just the tokens.
pub fn render_detections(detections: &[Detection]) -> String {
    let parts: Vec<String> = detections
        .iter()
        .map(|d| match d.label.is_empty() {
            true => d.bbox.render(),
            false => format!("{} {}", d.bbox.render(), d.label),
        })
        .collect();
    parts.join(" ; ")
}

/// Reads detections back from target or generated text. Lenient, because model output is the
/// main input: parts (split on ";") that do not start with exactly four well-formed loc tokens
/// are skipped, and the rest of a part, trimmed, is its label.
pub fn parse_detections(text: &str) -> Vec<Detection> {
    text.split(';').filter_map(parse_detection).collect()
}

fn parse_detection(part: &str) -> Option<Detection> {
    let mut rest = part.trim_start();
    let mut coords = [0.0; 4];
    for c in &mut coords {
        let (b, tail) = parse_loc(rest)?;
        *c = unbin(b);
        rest = tail;
    }
    let label = rest.trim();
    if label.contains("<loc") {
        return None; // a fifth loc token: not a box of four
    }
    let [y0, x0, y1, x1] = coords;
    Some(Detection {
        bbox: LocBox { y0, x0, y1, x1 },
        label: label.to_string(),
    })
}

/// One `<locNNNN>` at the start of `s`: its bin and what follows.
fn parse_loc(s: &str) -> Option<(usize, &str)> {
    TokenFamily::Loc.parse_at(s)
}
