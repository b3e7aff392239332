//! One example formatted as the token layout of DESIGN.md, before packing.

use crate::image::SquareImage;
use crate::location::Location;

/// An example ready to pack: its tokens, where its prefix ends, and its preprocessed images.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `[<image>] * (K * N_img), <bos>, prefix, "\n", suffix, <eos>` (suffix possibly truncated).
    pub tokens: Vec<u32>,
    /// Positions `0..prefix_len` (images, `<bos>`, prefix, "\n") attend fully; the rest is causal.
    pub prefix_len: usize,
    /// Its images at the stage's resolution, in order.
    pub images: Vec<SquareImage>,
    /// Start position of each image's tokens in `tokens`.
    pub image_starts: Vec<usize>,
    pub task_id: u16,
    pub origin: Location,
    /// Whether the suffix was cut to fit the text length.
    pub truncated: bool,
}

impl Example {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Weight of predicting token `t + 1` at position `t`: 1 where that token is in the suffix
    /// (its `<eos>` included), 0 elsewhere.
    pub fn loss_weight(&self, t: usize) -> f32 {
        if t + 1 >= self.prefix_len && t + 1 < self.tokens.len() {
            1.0
        } else {
            0.0
        }
    }
}
