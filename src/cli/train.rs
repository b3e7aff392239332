//! `paliforge train SPEC --out RUN_DIR`: a mixture's stages through the trainer, with a
//! progress bar, `RUN_DIR/metrics.jsonl` (one event per step) and checkpoints in
//! `RUN_DIR/checkpoints`; `--resume` continues from the newest complete checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use ::model::train::trainer::METRICS_FILE;
use ::model::train::{
    Outcome, RunSetup, Start, TrainConfig, TrainError, TrainEvent, Trainer, latest_checkpoint,
    open_run,
};

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
    /// Start the fresh model's image encoder from this checkpoint (a SigLIP, a PaliGemma, or
    /// an encoder saved alone; file or folder) instead of at random.
    #[arg(long, conflicts_with_all = ["init", "resume"])]
    image_encoder: Option<PathBuf>,
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
    let start = match (&args.init, args.resume) {
        (_, true) => Start::Resume,
        (Some(dir), false) => Start::Init { dir: dir.clone() },
        (None, false) => Start::Fresh {
            config: args.config.clone(),
            image_encoder: args.image_encoder.clone(),
        },
    };
    let checkpoints = args.out.join("checkpoints");
    ::model::tune_malloc();
    let dev = ::model::device();
    let mut trainer = open_run(
        RunSetup {
            spec: args.spec.clone(),
            out: args.out.clone(),
            start,
            tokenizer: args.tokenizer.clone(),
            threads: args.threads,
            train: TrainConfig {
                micro_batch_rows: args.micro_batch,
                checkpoint_every: args.checkpoint_every,
                keep_checkpoints: args.keep,
                stop_after: args.max_steps,
                task_loss_every: args.task_loss_every,
                stop: Some(super::interrupt::stop_on_ctrl_c()),
                ..Default::default()
            },
        },
        &dev,
    )
    .map_err(|e| match e {
        TrainError::RunExists { checkpoints } => anyhow::anyhow!(
            "{} already holds checkpoints: pass --resume to continue that run, or choose another --out",
            checkpoints.display()
        ),
        e => e.into(),
    })?;
    if trainer.step() > 0 {
        eprintln!("resumed at step {}", trainer.step());
    }
    let outcome = train_with_progress(&mut trainer)?;
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
            "metrics": args.out.join(METRICS_FILE).display().to_string(),
            "wall_s": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Runs `trainer` with one progress bar per stage.
pub fn train_with_progress(trainer: &mut Trainer) -> anyhow::Result<Outcome> {
    let mut bar: Option<(usize, indicatif::ProgressBar)> = None;
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
            e.lr.peak(),
            e.grad_norm,
            e.examples_per_s,
            e.tokens_per_s,
            100.0 * e.data_wait
        ));
    });
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    Ok(outcome?)
}
