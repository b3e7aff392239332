//! `paliforge train SPEC --out RUN_DIR`: a mixture's stages through the trainer, with a
//! progress bar, `RUN_DIR/metrics.jsonl` (one event per step) and checkpoints in
//! `RUN_DIR/checkpoints`; `--resume` continues from the newest complete checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use mixtures::{Mixture, ValidationContext};
use pipeline::mixture::{RunOptions, inspect_sources};
use serde_json::json;

use ::model::train::{
    Outcome, TrainConfig, TrainEvent, Trainer, config_for_tokenizer, latest_checkpoint,
};
use ::model::{PaliGemma, PaliGemmaConfig};

#[derive(Args)]
pub struct TrainArgs {
    /// The mixture spec (TOML or JSON).
    spec: PathBuf,
    /// The run folder: checkpoints, metrics.jsonl, the spec.
    #[arg(long)]
    out: PathBuf,
    /// Start from this Hugging Face PaliGemma folder (config.json + safetensors) instead of a
    /// randomly initialised `--config`.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Model size of a fresh model (tiny, small, paligemma-3b-pt-224, ...); its vocabulary and
    /// special tokens are taken from the tokenizer.
    #[arg(long, default_value = "small")]
    config: String,
    /// The tokenizer (default: tokenizer.json beside the spec or the data).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Rows per micro-batch (gradient accumulation); 0: the whole batch at once.
    #[arg(long, default_value_t = 0)]
    micro_batch: usize,
    /// Checkpoint every N steps (0: only when stopping and at the end).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Stop (with a checkpoint) after this many steps of the run in all.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Per-task loss every N steps (an extra forward pass; 0: never).
    #[arg(long, default_value_t = 10)]
    task_loss_every: u64,
    /// Data pipeline workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mixture = Mixture::from_path(&args.spec)?;
    let facts = inspect_sources(&mixture);
    let columns_of = |s: &str| facts.get(s)?.as_ref().ok().map(|f| f.columns.clone());
    mixture
        .validate(&ValidationContext::new().with_columns(&columns_of))
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", args.spec.display()))?;
    let tokenizer =
        super::pipeline::load_tokenizer(args.tokenizer.as_deref(), Some(&args.spec), &mixture)?;
    let options = RunOptions {
        threads: args.threads,
        ..RunOptions::new(tokenizer.clone())
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let checkpoints = args.out.join("checkpoints");
    let config = TrainConfig {
        micro_batch_rows: args.micro_batch,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep,
        run_dir: Some(args.out.clone()),
        stop_after: args.max_steps,
        task_loss_every: args.task_loss_every,
    };
    ::model::tune_malloc();
    let dev = ::model::device();
    let metrics_path = args.out.join("metrics.jsonl");
    let mut trainer = if args.resume {
        let latest = latest_checkpoint(&checkpoints)?.with_context(|| {
            format!(
                "--resume: no complete checkpoint in {}",
                checkpoints.display()
            )
        })?;
        eprintln!("resuming from {}", latest.display());
        let trainer = Trainer::resume(&latest, mixture, options, config, &dev)
            .with_context(|| format!("resuming from {}", latest.display()))?;
        // The metrics file continues from the checkpoint: steps after it are redone.
        write_metrics(&metrics_path, trainer.metrics())?;
        trainer
    } else {
        if latest_checkpoint(&checkpoints)?.is_some() {
            bail!(
                "{} already holds checkpoints: pass --resume to continue that run, or choose another --out",
                checkpoints.display()
            );
        }
        let first = mixture.stages.first().context("the spec has no stages")?;
        let resolution = first.resolution() as usize;
        let model = match &args.init {
            Some(dir) => ::model::checkpoint::load_at_resolution(dir, &dev, resolution)
                .with_context(|| format!("loading --init {}", dir.display()))?,
            None => {
                let mut cfg =
                    config_for_tokenizer(PaliGemmaConfig::preset(&args.config)?, &tokenizer);
                cfg.vision.image_size = resolution;
                PaliGemma::new(&cfg, &dev, mixture.seed)?
            }
        };
        write_metrics(&metrics_path, &[])?;
        Trainer::new(mixture, model, options, config)?
    };
    let spec_copy = args.out.join("spec.json");
    std::fs::write(&spec_copy, trainer.mixture().to_json())
        .with_context(|| format!("writing {}", spec_copy.display()))?;

    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;
    let mut bar: Option<(usize, indicatif::ProgressBar)> = None;
    let mut write_error = None;
    let outcome = trainer.run(&mut |e: &TrainEvent| {
        if bar.as_ref().is_none_or(|(stage, _)| *stage != e.stage) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            let b = super::progress::bar(e.stage_steps, "steps");
            b.set_position(e.stage_step - 1);
            bar = Some((e.stage, b));
        }
        let (_, b) = bar.as_ref().expect("set above");
        b.set_position(e.stage_step.min(e.stage_steps));
        b.set_message(format!(
            "{} loss {:.4} lr {:.2e} |g| {:.3} {:.1} ex/s {:.0} tok/s wait {:.0}%",
            e.stage_name,
            e.loss,
            e.lr.llm,
            e.grad_norm,
            e.examples_per_s,
            e.tokens_per_s,
            100.0 * e.data_wait
        ));
        if write_error.is_none()
            && let Err(err) = serde_json::to_writer(&mut metrics, e)
                .map_err(std::io::Error::from)
                .and_then(|()| metrics.write_all(b"\n"))
        {
            write_error = Some(err);
        }
    });
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    if let Some(err) = write_error {
        return Err(err).with_context(|| format!("writing {}", metrics_path.display()));
    }
    let outcome = outcome?;
    let (status, steps) = match outcome {
        Outcome::Finished { steps } => ("finished", steps),
        Outcome::Stopped { steps } => ("stopped", steps),
    };
    let last = trainer.metrics().last();
    println!(
        "{}",
        json!({
            "status": status,
            "steps": steps,
            "last_loss": last.map(|e| e.loss),
            "checkpoint": latest_checkpoint(&checkpoints)?.map(|p| p.display().to_string()),
            "metrics": metrics_path.display().to_string(),
            "wall_s": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Rewrites `path` with `events`, one JSON object a line (written whole, then renamed).
fn write_metrics(path: &Path, events: &[TrainEvent]) -> anyhow::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
