//! The pipeline's errors. Bad rows are not errors (see [`crate::bad_input`]) until too many.

use crate::bad_input::TooManyBadInputs;
use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    TooManyBadInputs(#[from] TooManyBadInputs),
    #[error(transparent)]
    Pack(#[from] crate::pack::PackError),
    #[error("{0}")]
    Config(String),
    #[error("cannot restore the stream's state: {0}")]
    State(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("the stream's consumer went away")]
    Closed,
    #[error("the stream stopped on a bug (a panic): {0}")]
    Panicked(String),
}
