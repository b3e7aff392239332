//! The paliforge data pipeline: Parquet shards (local or object storage) to packed prefix-LM
//! batches, streamed in bounded memory, deterministically and resumably.
//!
//! Stages: [`source`] reads rows as [`Record`]s, [`image`] decodes and resizes, [`text`]
//! tokenizes, [`format`] lays out an [`Example`], [`pack`] fills [`Batch`] rows, and [`stream`]
//! runs them in order on a worker pool.

pub mod bad_input;
pub mod batch;
pub mod bench;
pub mod demo;
pub mod error;
pub mod example;
pub mod format;
pub mod image;
pub mod loc;
pub mod location;
pub mod malloc;
pub mod mixture;
pub mod pack;
pub mod prepare;
pub mod preview;
pub mod record;
pub mod rng;
pub mod schedule;
pub mod source;
pub mod stream;
pub mod text;
pub mod tokenizer_file;
pub mod visual_prompt;
pub mod word_tokenizer;
pub mod writer;

pub use bad_input::{BadInput, BadInputPolicy, BadInputStats, Reason};
pub use batch::{Batch, ImageSlot, Segment};
pub use error::PipelineError;
pub use example::Example;
pub use location::Location;
pub use record::{EncodedImage, Record};
