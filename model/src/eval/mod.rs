//! Evaluation on held-out data.
//!
//! - [`metrics`]: exact match, VQA accuracy, CIDEr-D, box IoU and mAP.
//! - [`evaluate`]: each task's held-out data decoded by the model and scored.

pub mod evaluate;
pub mod metrics;

pub use evaluate::{EvalOptions, EvalReport, Sample, TaskScores, evaluate};
