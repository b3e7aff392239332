//! `paliforge quickstart`: the whole job on the embedded default. Demo data made on the spot,
//! the shipped quickstart spec trained stage by stage on a small model, held-out evaluation,
//! a per-task table, an HTML report, and last one JSON line of the figures.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pipeline::demo::DemoConfig;

use super::data::TokenizerKind;
use serde_json::json;

use ::model::eval::{EvalOptions, evaluate};
use ::model::train::{RunSetup, Start, TrainConfig, latest_checkpoint, open_run, write_report};

/// The shipped quickstart spec, embedded so the binary needs nothing beside it.
const SPEC: &str = include_str!("../../mixtures/specs/quickstart.toml");

/// The `small` model's image encoder, pretrained on the demo's training scenes: PaliGemma's
/// first stage starts from a pretrained SigLIP too (model/pretrained/README.md says how it was
/// made).
const SMALL_IMAGE_ENCODER: &[u8] =
    include_bytes!("../../model/pretrained/small-image-encoder.safetensors");

#[derive(Args)]
pub struct QuickstartArgs {
    /// The folder for everything: demo data, the spec, and the run.
    #[arg(long, default_value = "quickstart")]
    out: PathBuf,
    /// Model size (`paliforge train --help` lists them).
    #[arg(long, default_value = "small")]
    config: String,
    /// Start the `small` model's image encoder at random instead of from the shipped
    /// pretrained one (other sizes always start at random).
    #[arg(long)]
    random_image_encoder: bool,
    /// Data pipeline workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Train at most this many steps in all, then evaluate (a smoke test; running again
    /// continues the run).
    #[arg(long)]
    max_steps: Option<u64>,
}

pub fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let demo = args.out.join("demo");
    if !demo.join("tokenizer.json").is_file() {
        eprintln!("making the demo dataset in {}", demo.display());
        super::data::make_demo(&demo, &DemoConfig::default(), TokenizerKind::default())?;
    }
    let spec = args.out.join("spec.toml");
    std::fs::write(&spec, SPEC).with_context(|| format!("writing {}", spec.display()))?;
    let run_dir = args.out.join("run");
    let start = if latest_checkpoint(&run_dir.join("checkpoints"))?.is_some() {
        eprintln!(
            "continuing the run in {} (delete it to start over)",
            run_dir.display()
        );
        Start::Resume
    } else {
        let image_encoder = if args.config == "small" && !args.random_image_encoder {
            let path = args.out.join("image-encoder.safetensors");
            std::fs::write(&path, SMALL_IMAGE_ENCODER)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        } else {
            None
        };
        Start::Fresh {
            config: args.config.clone(),
            image_encoder,
        }
    };
    ::model::tune_malloc();
    let dev = ::model::device();
    let mut trainer = open_run(
        RunSetup {
            spec,
            out: run_dir.clone(),
            start,
            tokenizer: Some(demo.join("tokenizer.json")),
            threads: args.threads,
            train: TrainConfig {
                checkpoint_every: 100,
                keep_checkpoints: 2,
                task_loss_every: 5,
                stop_after: args.max_steps,
                stop: Some(super::interrupt::stop_on_ctrl_c()),
                ..Default::default()
            },
        },
        &dev,
    )?;
    let outcome = super::train::train_with_progress(&mut trainer)?;
    let reached_max = args.max_steps.is_some_and(|n| trainer.step() >= n);
    if matches!(outcome, ::model::train::Outcome::Stopped { .. }) && !reached_max {
        eprintln!("stopped; run the quickstart again to continue");
        return Ok(());
    }
    let train_s = started.elapsed().as_secs_f64();

    eprintln!("evaluating on held-out data");
    let last_stage = trainer.mixture().stages.len() - 1;
    let mixture = trainer.mixture().clone();
    let options = trainer.options().clone();
    let report = evaluate(
        &mut trainer.model,
        &mixture,
        &options,
        &EvalOptions {
            stage: last_stage,
            samples_per_task: 6,
        },
    )?;
    print!("{}", report.table());
    let eval_path = run_dir.join("eval.json");
    std::fs::write(&eval_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", eval_path.display()))?;
    let report_path = run_dir.join("report.html");
    write_report(
        &report_path,
        "paliforge quickstart",
        trainer.metrics(),
        Some(&report),
    )?;
    eprintln!("report: {}", report_path.display());
    println!(
        "{}",
        json!({
            "tasks": report.to_json(),
            "steps": trainer.step(),
            "train_s": train_s,
            "wall_s": started.elapsed().as_secs_f64(),
            "report": report_path.display().to_string(),
        })
    );
    Ok(())
}
