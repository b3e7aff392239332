//! Mixture specs for paliforge: what a multi-stage PaliGemma-style run trains on, checked
//! before anything runs, and sampled exactly and resumably.
//!
//! A spec ([`Mixture`], TOML or JSON) names **sources** (Parquet files), **tasks** (a source's
//! rows rendered through prefix and suffix [`Template`]s) and **stages** (resolution, text
//! length, budget, task weights, training knobs). [`Mixture::validate`] reports every problem
//! with its key path and line; [`Sampler`] decides which task supplies each next example;
//! [`summary_table`] previews a run.
//!
//! # Mixing semantics
//!
//! - **Schedule.** Within a stage, tasks are interleaved by smooth weighted round-robin over
//!   integer weights: in every window of `n` draws, a task with share `w` supplies `n·w`
//!   examples give or take about two. There are no coin flips, so the schedule is exact,
//!   identical on every machine, and a 1 % task comes once about every 100 examples.
//! - **Order.** Ties (equal weights) are broken by a per-stage jitter seeded by the spec's
//!   `seed`. Rows within a task are the pipeline's to shuffle, once per pass, with
//!   [`Sampler::epoch_seed`].
//! - **Passes and epochs.** Each task reads its source in its own passes (two tasks on one
//!   source, e.g. with different filters, keep separate positions). When a pass ends, the next
//!   one starts, reshuffled — unless the source's `epochs` limits it. A pass ends when the
//!   task has drawn [`Sampler::set_epoch_len`] examples, or when the caller reports it with
//!   [`Sampler::end_epoch`].
//! - **Spent sources.** A task whose source has had its `epochs` passes (or that the caller
//!   drops with [`Sampler::exhaust`]) leaves the schedule; the remaining tasks share its
//!   weight in proportion to their own (their weights are renormalised). A stage whose tasks
//!   are all spent ends early.
//! - **Stages.** A stage ends when its budget is reached: a number of examples, or a number of
//!   passes of one task counted from the stage's start. The next stage switches weights,
//!   resolution and text length. Task counters (examples drawn, passes, position in the pass)
//!   carry across stages.
//! - **Resumption.** [`Sampler::state`] is a small serde value; [`Sampler::restore`] continues
//!   exactly. Restoring a finished run's state into the same spec with stages appended
//!   (continuous pretraining) starts the first new stage with every task's position kept.

mod error;
mod lines;
mod sampler;
mod spec;
mod suggest;
mod summary;
mod template;
mod training;
mod validate;
mod weights;

pub use error::*;
pub use sampler::{Draw, Sampler, SamplerState, TaskCounters};
pub use spec::*;
pub use summary::{RowsOf, StageSummary, SummaryContext, TaskSummary, summarize, summary_table};
pub use template::{Part, Template};
pub use training::*;
pub use validate::{ColumnsOf, ValidationContext};
pub use weights::{Proportional, Weights};
