//! Examples to [`Batch`]es of `examples` examples each. Unpacked, each example has its own row.
//! Packed, whole examples go first-fit into the rows the batch has opened so far, each row capped
//! in tokens (`seq_len`) and images (`max_images_per_row`), and a new row opens only when none has
//! room: the batch keeps its number of examples (what a recipe's batch size means) and packing
//! only removes padding, so a packed batch has as few rows as first-fit needs.
//!
//! Contiguity, which exact resumption relies on: when the open batch is full, it is emitted as
//! the next example arrives, and that example opens the next one. So every batch holds a contiguous
//! run of the example stream, in stream order, and the batch [`Packer::push`] returns never
//! holds the example passed to that same call. A stream that saves its position after receiving
//! a batch must therefore save the position *before* the example it just pushed.

use crate::batch::{Batch, ImageSlot, Segment};
use crate::example::Example;
use crate::image::SquareImage;
use crate::location::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackConfig {
    /// Examples per batch (the last batch of a stream may hold fewer).
    pub examples: usize,
    pub seq_len: usize,
    /// Cap on the images of one packed row.
    pub max_images_per_row: usize,
    /// Several examples per row; `false` puts one example in each row.
    pub packing: bool,
    pub resolution: usize,
    pub tokens_per_image: usize,
    pub pad_id: u32,
}

/// An example the packer cannot place. The formatter's lengths and the stage's settings should
/// make these impossible, so they are errors for the stream to stop on, never panics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackError {
    #[error("pack config: {0}")]
    Config(String),
    #[error(
        "example from {origin} has {len} tokens and {images} images; a row holds {seq_len} tokens \
         and {max_images} images"
    )]
    TooBig {
        origin: Location,
        len: usize,
        images: usize,
        seq_len: usize,
        max_images: usize,
    },
    #[error("example from {origin}: {message}")]
    Malformed { origin: Location, message: String },
}

#[derive(Debug)]
pub struct Packer {
    config: PackConfig,
    open: Option<Open>,
}

impl Packer {
    pub fn new(config: PackConfig) -> Result<Self, PackError> {
        if config.examples == 0 || config.seq_len == 0 {
            return Err(PackError::Config(format!(
                "examples and seq_len must be positive: {config:?}"
            )));
        }
        Ok(Self { config, open: None })
    }

    pub fn config(&self) -> &PackConfig {
        &self.config
    }

    /// Examples held in the batch being filled.
    pub fn pending(&self) -> usize {
        self.open.as_ref().map_or(0, |open| open.segments.len())
    }

    /// Places `example`; returns the previous batch when it was full (see the module's note on
    /// contiguity).
    pub fn push(&mut self, example: Example) -> Result<Option<Batch>, PackError> {
        self.check(&example)?;
        let config = self.config;
        let open = self.open.get_or_insert_with(|| Open::new(&config));
        if let Some(row) = open.row_for(&example, &config) {
            open.place(row, example, &config);
            return Ok(None);
        }
        let full = std::mem::replace(open, Open::new(&config));
        open.place(0, example, &config); // an example fits an empty row: checked above
        Ok(Some(full.finish(&config)))
    }

    /// The last, partly filled batch; `None` when nothing is pending.
    pub fn flush(&mut self) -> Option<Batch> {
        let config = self.config;
        self.open.take().map(|open| open.finish(&config))
    }

    fn check(&self, ex: &Example) -> Result<(), PackError> {
        let c = &self.config;
        let malformed = |message: String| {
            Err(PackError::Malformed {
                origin: ex.origin.clone(),
                message,
            })
        };
        if ex.len() > c.seq_len || ex.images.len() > c.max_images_per_row {
            return Err(PackError::TooBig {
                origin: ex.origin.clone(),
                len: ex.len(),
                images: ex.images.len(),
                seq_len: c.seq_len,
                max_images: c.max_images_per_row,
            });
        }
        if ex.is_empty() {
            return malformed("no tokens".into());
        }
        if ex.prefix_len > ex.len() {
            return malformed(format!(
                "prefix length {} is past its {} tokens",
                ex.prefix_len,
                ex.len()
            ));
        }
        if ex.image_starts.len() != ex.images.len() {
            return malformed(format!(
                "{} image starts for {} images",
                ex.image_starts.len(),
                ex.images.len()
            ));
        }
        for (image, &start) in ex.images.iter().zip(&ex.image_starts) {
            if image.side() as usize != c.resolution {
                return malformed(format!(
                    "an image is {0}x{0}, expected {1}x{1}",
                    image.side(),
                    c.resolution
                ));
            }
            if start + c.tokens_per_image > ex.prefix_len {
                return malformed(format!("image tokens at {start} run past the prefix"));
            }
        }
        Ok(())
    }
}

/// The batch being filled: its arrays, pre-padded for a row per example, written as examples are
/// placed, cut to the rows used when it is finished.
#[derive(Debug)]
struct Open {
    tokens: Vec<u32>,
    segment_ids: Vec<u16>,
    positions: Vec<u32>,
    causal: Vec<bool>,
    loss_weights: Vec<f32>,
    /// Per opened row: tokens used, images, examples.
    rows: Vec<RowUse>,
    images: Vec<(ImageSlot, SquareImage)>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Copy, Default)]
struct RowUse {
    tokens: usize,
    images: usize,
    examples: u16,
}

impl Open {
    fn new(c: &PackConfig) -> Self {
        let cells = c.examples * c.seq_len;
        Self {
            tokens: vec![c.pad_id; cells],
            segment_ids: vec![0; cells],
            positions: vec![0; cells],
            causal: vec![false; cells],
            loss_weights: vec![0.0; cells],
            rows: Vec::with_capacity(c.examples),
            images: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// The first opened row with room for `ex`, else a new row; `None` when the batch is full.
    fn row_for(&self, ex: &Example, c: &PackConfig) -> Option<usize> {
        if self.segments.len() == c.examples {
            return None;
        }
        let with_room = self.rows.iter().position(|row| {
            c.packing
                && row.tokens + ex.len() <= c.seq_len
                && row.images + ex.images.len() <= c.max_images_per_row
                && row.examples < u16::MAX // segment ids are u16
        });
        Some(with_room.unwrap_or(self.rows.len()))
    }

    fn place(&mut self, row: usize, ex: Example, c: &PackConfig) {
        if row == self.rows.len() {
            self.rows.push(RowUse::default());
        }
        let use_ = &mut self.rows[row];
        let start = use_.tokens;
        use_.tokens += ex.len();
        use_.images += ex.images.len();
        use_.examples += 1;
        let id = use_.examples;

        let base = row * c.seq_len + start;
        for (t, &token) in ex.tokens.iter().enumerate() {
            let at = base + t;
            self.tokens[at] = token;
            self.segment_ids[at] = id;
            self.positions[at] = t as u32;
            self.causal[at] = t >= ex.prefix_len;
            self.loss_weights[at] = ex.loss_weight(t);
        }
        for (image, &image_start) in ex.images.into_iter().zip(&ex.image_starts) {
            let slot = ImageSlot {
                row: row as u32,
                start: (start + image_start) as u32,
            };
            self.images.push((slot, image));
        }
        self.segments.push(Segment {
            row: row as u32,
            id,
            start: start as u32,
            len: ex.tokens.len() as u32,
            task_id: ex.task_id,
            origin: ex.origin,
        });
    }

    /// Images go out in row-major slot order, the order a mask scan over `tokens` meets them (as
    /// HF's `masked_scatter` does), normalised to f32 only here; segments stay in stream order.
    fn finish(mut self, c: &PackConfig) -> Batch {
        let cells = self.rows.len() * c.seq_len;
        self.tokens.truncate(cells);
        self.segment_ids.truncate(cells);
        self.positions.truncate(cells);
        self.causal.truncate(cells);
        self.loss_weights.truncate(cells);
        self.images.sort_by_key(|(slot, _)| (slot.row, slot.start));
        let mut pixels = Vec::with_capacity(self.images.len() * 3 * c.resolution * c.resolution);
        let mut image_slots = Vec::with_capacity(self.images.len());
        for (slot, image) in self.images {
            image_slots.push(slot);
            image.normalise_onto(&mut pixels);
        }
        Batch {
            rows: self.rows.len(),
            seq_len: c.seq_len,
            resolution: c.resolution,
            tokens_per_image: c.tokens_per_image,
            pixels,
            image_slots,
            tokens: self.tokens,
            segment_ids: self.segment_ids,
            positions: self.positions,
            causal: self.causal,
            loss_weights: self.loss_weights,
            segments: self.segments,
        }
    }
}
