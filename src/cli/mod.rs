//! The command tree.

mod client;
mod data;
mod eval;
mod evaluations;
mod interrupt;
mod mixture;
mod model;
mod pipeline;
mod progress;
mod quickstart;
mod serve;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "paliforge",
    version,
    about = "Train PaliGemma-style vision-language models"
)]
pub struct Cli {
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole job on the embedded default: demo data, training through the quickstart
    /// spec's stages, held-out evaluation, an HTML report.
    Quickstart(quickstart::QuickstartArgs),
    /// Train a model through a mixture spec's stages, with checkpoints that resume exactly.
    Train(train::TrainArgs),
    /// Score a model on a spec's held-out data: exact match, VQA accuracy, CIDEr, box IoU.
    Eval(eval::EvalArgs),
    /// Generate the demo dataset: shapes with captions, questions, boxes and image pairs.
    DemoData(data::DemoArgs),
    /// Convert images with annotations, or existing Parquet, into paliforge shards.
    Prepare(data::PrepareArgs),
    /// Inspect and benchmark the data pipeline.
    #[command(subcommand)]
    Pipeline(pipeline::Command),
    /// Validate, summarise and preview mixture specs.
    #[command(subcommand)]
    Mixture(mixture::Command),
    /// Benchmark the model.
    #[command(subcommand)]
    Model(model::Command),
    /// Generate text for images and a prompt with a Hugging Face PaliGemma folder.
    Predict(model::PredictArgs),
    /// Run the service: HTTP API, web page and job pool.
    Serve(serve::ServeArgs),
    /// Submit a spec to the service as a training run.
    Submit(client::SubmitArgs),
    /// List the service's runs.
    Runs(client::ListArgs),
    /// Follow a run's progress live.
    Watch(client::RunArgs),
    /// Stop a run gracefully (it checkpoints first).
    Stop(client::RunArgs),
    /// Resume a stopped or failed run from its newest checkpoint.
    Resume(client::RunArgs),
    /// Append stages to a run (continuous pretraining).
    Stages(client::StagesArgs),
    /// Evaluate one of a run's checkpoints on its held-out data, on the service.
    Evaluate(evaluations::EvaluateArgs),
    /// List a run's evaluations on the service, with their scores.
    Evaluations(evaluations::EvaluationsArgs),
    /// Queue a preparation job on the service (demo data, Parquet or an image folder).
    SubmitData(client::SubmitDataArgs),
    /// List the service's preparation jobs.
    Datasets(client::ListArgs),
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,paliforge=info,pipeline=info,service=info",
        1 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Quickstart(args) => quickstart::run(args).map(|()| ExitCode::SUCCESS),
        Command::Train(args) => train::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::DemoData(args) => data::demo(args).map(|()| ExitCode::SUCCESS),
        Command::Prepare(args) => data::prepare_command(args).map(|()| ExitCode::SUCCESS),
        Command::Pipeline(command) => pipeline::run(command),
        Command::Mixture(command) => mixture::run(command),
        Command::Model(command) => model::run(command).map(|()| ExitCode::SUCCESS),
        Command::Predict(args) => model::predict(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Submit(args) => client::submit(args).map(|()| ExitCode::SUCCESS),
        Command::Runs(args) => client::runs(args).map(|()| ExitCode::SUCCESS),
        Command::Watch(args) => client::watch(args).map(|()| ExitCode::SUCCESS),
        Command::Stop(args) => client::stop(args).map(|()| ExitCode::SUCCESS),
        Command::Resume(args) => client::resume(args).map(|()| ExitCode::SUCCESS),
        Command::Stages(args) => client::stages(args).map(|()| ExitCode::SUCCESS),
        Command::Evaluate(args) => evaluations::evaluate(args).map(|()| ExitCode::SUCCESS),
        Command::Evaluations(args) => evaluations::evaluations(args).map(|()| ExitCode::SUCCESS),
        Command::SubmitData(args) => client::submit_data(args).map(|()| ExitCode::SUCCESS),
        Command::Datasets(args) => client::datasets(args).map(|()| ExitCode::SUCCESS),
    }
}
