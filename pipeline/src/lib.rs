//! The paliforge data pipeline: Parquet shards (local or object storage) to packed prefix-LM
//! batches, streamed in bounded memory, deterministically and resumably.
//!
//! Stages: [`source`] reads rows as [`Record`]s, [`image`] decodes and resizes, [`text`]
//! tokenizes, [`format`] lays out an [`Example`], [`pack`] fills [`Batch`] rows, and [`stream`]
//! runs them in order on a worker pool.

pub mod bad_input;
pub mod batch;
pub mod example;
pub mod location;
pub mod record;

pub use bad_input::{BadInput, BadInputPolicy, BadInputStats, Reason};
pub use batch::{Batch, ImageSlot, Segment};
pub use example::Example;
pub use location::Location;
pub use record::{EncodedImage, Record};
