//! `paliforge eval SPEC --model DIR`: held-out scores of a model on a spec's tasks, as a table
//! and, last, one JSON line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use ::model::eval::{SavedModelEval, evaluate_saved_model};
use ::model::train::read_spec;

/// The stage to evaluate at and what to change of the spec's `[eval]`; `paliforge evaluate`
/// asks the service for the same.
#[derive(Args)]
pub struct EvalSettings {
    /// The stage whose resolution and text length to use (its name); default the last.
    #[arg(long)]
    pub stage: Option<String>,
    /// Held-out examples per task (default: the spec's `eval.examples`).
    #[arg(long)]
    pub examples: Option<u32>,
    /// Beams (1: greedy; default: the spec's `eval.beams`).
    #[arg(long)]
    pub beams: Option<u32>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// The mixture spec: its tasks, their sources' `eval_data`, and its `[eval]` settings.
    spec: PathBuf,
    /// A Hugging Face PaliGemma folder, a run checkpoint, or a run folder (its newest
    /// checkpoint).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    settings: EvalSettings,
    /// The tokenizer (default: tokenizer.json beside the spec or the data).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Write the scores and sample predictions as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Sample predictions per task in `--out` (with their images): more of them show which
    /// answers a model gets wrong, not only how many.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Data pipeline workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut mixture = read_spec(&args.spec)?;
    if let Some(n) = args.settings.examples {
        mixture.eval.examples = n;
    }
    if let Some(n) = args.settings.beams {
        mixture.eval.beams = n;
    }
    ::model::tune_malloc();
    let saved = SavedModelEval {
        model: args.model,
        stage: args.settings.stage,
        tokenizer: args.tokenizer,
        spec: Some(args.spec),
        threads: args.threads,
        samples_per_task: args.samples,
    };
    let evaluated = evaluate_saved_model(&mixture, &saved, &::model::device())?;
    let report = &evaluated.report;
    eprintln!("evaluated {}", evaluated.model.display());
    print!("{}", report.table());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}",
        json!({ "model": evaluated.model.display().to_string(), "tasks": report.to_json() })
    );
    Ok(())
}
