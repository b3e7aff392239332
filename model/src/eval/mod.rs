//! Evaluation on held-out data.
//!
//! - [`metrics`]: exact match, VQA accuracy, CIDEr-D, box IoU and mAP.
//! - [`evaluate`]: each task's held-out data decoded by the model and scored.
//! - [`saved_model`]: the same for a model on disk (a Hugging Face folder or a run's checkpoint).

pub mod evaluate;
pub mod metrics;
pub mod saved_model;

pub use evaluate::{EvalOptions, EvalReport, Sample, TaskScores, evaluate, held_out_tasks};
pub use saved_model::{SavedModelEval, SavedModelReport, evaluate_saved_model};
