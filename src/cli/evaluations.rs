//! The service's evaluations from the command line: `paliforge evaluate RUN` queues one of a
//! run's checkpoints for held-out evaluation and waits for its scores; `paliforge evaluations
//! RUN` lists a run's evaluations.

use std::time::Duration;

use ::model::eval::EvalReport;
use clap::Args;
use indicatif::ProgressBar;
use service::requests::EvalRequest;
use service::store::{EvaluationRecord, Status};

use super::client::Remote;
use super::eval::EvalSettings;

#[derive(Args)]
pub struct EvaluateArgs {
    /// The run's id or name.
    run: String,
    /// The checkpoint's step (default: the newest).
    #[arg(long)]
    step: Option<u64>,
    #[command(flatten)]
    settings: EvalSettings,
    /// Queue it and return, without waiting for the scores.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct EvaluationsArgs {
    /// The run's id or name.
    run: String,
    #[command(flatten)]
    remote: Remote,
}

pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let run = client.resolve_run(&args.run)?;
    let request = EvalRequest {
        step: args.step,
        stage: args.settings.stage,
        examples: args.settings.examples,
        beams: args.settings.beams,
    };
    let mut evaluation = client.evaluate(run, &request)?;
    if !args.no_wait {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        while !evaluation.status.is_settled() {
            spinner.set_message(format!(
                "evaluation {} of run {run}: {}",
                evaluation.id,
                evaluation.status.as_str()
            ));
            std::thread::sleep(Duration::from_millis(500));
            evaluation = client.evaluation(evaluation.id)?;
        }
        spinner.finish_and_clear();
    }
    if args.remote.json {
        println!("{}", serde_json::to_string(&evaluation)?);
    } else {
        print_evaluation(&evaluation);
    }
    match (evaluation.status, &evaluation.error) {
        (Status::Failed, Some(error)) => {
            anyhow::bail!("evaluation {} failed: {error}", evaluation.id)
        }
        _ => Ok(()),
    }
}

pub fn evaluations(args: EvaluationsArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let run = client.resolve_run(&args.run)?;
    let evaluations = client.evaluations(run)?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&evaluations)?);
        return Ok(());
    }
    if evaluations.is_empty() {
        println!("run {run} has no evaluations: paliforge evaluate {run}");
    }
    for evaluation in &evaluations {
        print_evaluation(evaluation);
    }
    Ok(())
}

/// A heading line, then the per-task table once there are scores.
fn print_evaluation(e: &EvaluationRecord) {
    let step = e.step.map_or("newest".to_string(), |s| s.to_string());
    let stage = e.stage.as_deref().unwrap_or("last");
    println!(
        "evaluation {} of run {}: {} (checkpoint {step}, stage {stage})",
        e.id,
        e.run,
        e.status.as_str()
    );
    if let Some(error) = &e.error {
        println!("  error: {error}");
    }
    if let Some(result) = &e.result {
        let report = EvalReport {
            tasks: result.tasks.clone(),
            samples: Vec::new(),
        };
        print!("{}", report.table());
    }
}
