//! The batch contract between the pipeline and the model (see DESIGN.md).
//!
//! Plain, row-major arrays with no tensor-library types, so the model crate can move them into
//! whatever device memory it uses.

use serde::{Deserialize, Serialize};

use crate::location::Location;

/// Where one image's `tokens_per_image` embeddings go: row `row`, positions `start..start+n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSlot {
    pub row: u32,
    pub start: u32,
}

/// One packed example inside a row, for per-task losses, metrics and error reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub row: u32,
    /// The value of `segment_ids` for this example's positions (1-based).
    pub id: u16,
    /// Positions `start..start+len` of the row.
    pub start: u32,
    pub len: u32,
    /// Index of the task (in the mixture's task list) this example came from.
    pub task_id: u16,
    /// Where the example was read, so a bad batch can be traced back to its rows.
    pub origin: Location,
}

/// A batch of `rows` rows of `seq_len` tokens each, with the images they reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub seq_len: usize,
    /// Square side of every image in `pixels`.
    pub resolution: usize,
    /// Image tokens per image: `(resolution / patch)^2`.
    pub tokens_per_image: usize,
    /// `[n_images, 3, resolution, resolution]`, values in [-1, 1].
    pub pixels: Vec<f32>,
    /// `[n_images]`, in the order of `pixels`.
    pub image_slots: Vec<ImageSlot>,
    /// `[rows, seq_len]`; image slots hold the `<image>` id.
    pub tokens: Vec<u32>,
    /// `[rows, seq_len]`; 0 is padding, 1.. numbers the packed examples of a row.
    pub segment_ids: Vec<u16>,
    /// `[rows, seq_len]`; restart at 0 for each packed example.
    pub positions: Vec<u32>,
    /// `[rows, seq_len]`; false for image/prefix positions (full attention), true for the suffix.
    pub causal: Vec<bool>,
    /// `[rows, seq_len]`; weight of predicting token `t + 1` at position `t`.
    pub loss_weights: Vec<f32>,
    pub segments: Vec<Segment>,
}

impl Batch {
    pub fn n_images(&self) -> usize {
        self.image_slots.len()
    }

    /// Pixels of image `i`, `[3, resolution, resolution]`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * self.resolution * self.resolution;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The prefix-LM attention rule of the contract: may position `i` of `row` attend to `j`?
    pub fn attends(&self, row: usize, i: usize, j: usize) -> bool {
        let at = |t: usize| row * self.seq_len + t;
        let (si, sj) = (self.segment_ids[at(i)], self.segment_ids[at(j)]);
        si != 0 && si == sj && (j <= i || (!self.causal[at(i)] && !self.causal[at(j)]))
    }

    /// Number of positions that carry loss.
    pub fn target_tokens(&self) -> usize {
        self.loss_weights.iter().filter(|w| **w > 0.0).count()
    }

    /// Checks every length and cross-reference of the contract; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let cells = self.rows * self.seq_len;
        let image_len = 3 * self.resolution * self.resolution;
        for (name, len) in [
            ("tokens", self.tokens.len()),
            ("segment_ids", self.segment_ids.len()),
            ("positions", self.positions.len()),
            ("causal", self.causal.len()),
            ("loss_weights", self.loss_weights.len()),
        ] {
            if len != cells {
                return Err(format!("{name} has {len} cells, expected {cells}"));
            }
        }
        if self.pixels.len() != self.n_images() * image_len {
            return Err(format!(
                "pixels has {} values, expected {} images of {image_len}",
                self.pixels.len(),
                self.n_images()
            ));
        }
        for (i, slot) in self.image_slots.iter().enumerate() {
            let (row, start) = (slot.row as usize, slot.start as usize);
            if row >= self.rows || start + self.tokens_per_image > self.seq_len {
                return Err(format!("image {i}: slot {slot:?} is outside the batch"));
            }
        }
        for seg in &self.segments {
            let base = seg.row as usize * self.seq_len;
            let range = base + seg.start as usize..base + (seg.start + seg.len) as usize;
            if range.end > base + self.seq_len {
                return Err(format!("segment {seg:?} runs past its row"));
            }
            if self.segment_ids[range].iter().any(|s| *s != seg.id) {
                return Err(format!("segment {seg:?} disagrees with segment_ids"));
            }
        }
        Ok(())
    }
}
