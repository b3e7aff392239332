//! `paliforge eval SPEC --model DIR`: held-out scores of a model on a spec's tasks, as a table
//! and, last, one JSON line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use pipeline::mixture::{RunOptions, load_tokenizer};
use serde_json::json;

use ::model::eval::{EvalOptions, evaluate};
use ::model::train::{latest_checkpoint, read_spec};

#[derive(Args)]
pub struct EvalArgs {
    /// The mixture spec: its tasks, their sources' `eval_data`, and its `[eval]` settings.
    spec: PathBuf,
    /// A Hugging Face PaliGemma folder, a run checkpoint, or a run folder (its newest
    /// checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// The stage whose resolution and text length to use (its name); default the last.
    #[arg(long)]
    stage: Option<String>,
    /// Held-out examples per task (default: the spec's `eval.examples`).
    #[arg(long)]
    examples: Option<u32>,
    /// Beams (1: greedy; default: the spec's `eval.beams`).
    #[arg(long)]
    beams: Option<u32>,
    /// The tokenizer (default: tokenizer.json beside the spec or the data).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Write the scores and sample predictions as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Data pipeline workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut mixture = read_spec(&args.spec)?;
    if let Some(n) = args.examples {
        mixture.eval.examples = n;
    }
    if let Some(n) = args.beams {
        mixture.eval.beams = n;
    }
    let stage = match &args.stage {
        Some(name) => mixture
            .stages
            .iter()
            .position(|s| &s.name == name)
            .with_context(|| format!("{}: no stage named {name}", args.spec.display()))?,
        None => mixture.stages.len().saturating_sub(1),
    };
    let model_dir = match latest_checkpoint(&args.model.join("checkpoints"))? {
        Some(newest) => newest,
        None => args.model.clone(),
    };
    let tokenizer = load_tokenizer(args.tokenizer.as_deref(), Some(&args.spec), &mixture)?;
    let options = RunOptions {
        threads: args.threads,
        ..RunOptions::new(Arc::new(tokenizer))
    };
    ::model::tune_malloc();
    let dev = ::model::device();
    let resolution = mixture.stages[stage].resolution() as usize;
    let mut model = ::model::checkpoint::load_at_resolution(&model_dir, &dev, resolution)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    eprintln!("evaluating {}", model_dir.display());
    let report = evaluate(
        &mut model,
        &mixture,
        &options,
        &EvalOptions {
            stage,
            samples_per_task: 8,
        },
    )?;
    anyhow::ensure!(
        !report.tasks.is_empty(),
        "{}: no source has `eval_data`, so there is nothing held out to evaluate on",
        args.spec.display()
    );
    print!("{}", report.table());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}",
        json!({ "model": model_dir.display().to_string(), "tasks": report.to_json() })
    );
    Ok(())
}
