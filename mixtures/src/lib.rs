//! mixtures
mod error;
mod lines;
mod spec;
mod suggest;
mod template;
mod training;
mod validate;
mod sampler;
mod weights;

pub use error::*;
pub use spec::*;
pub use template::{Part, Template};
pub use training::*;
pub use validate::{ColumnsOf, ValidationContext};
pub use weights::{Proportional, Weights};
pub use sampler::{Draw, Sampler, SamplerState, TaskCounters};
