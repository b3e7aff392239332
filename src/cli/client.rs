//! The service's command-line client: `submit`, `runs`, `watch`, `stop`, `resume`, `stages`,
//! `submit-data`, `datasets`.
//! Tables for people by default, JSON with `--json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use service::api::RunView;
use service::client::Client;
use service::datasets::{DatasetInput, DatasetRequest, PrepareOptions};
use service::events::Event;
use service::requests::{RunRequest, SpecInput, StartRequest};
use service::store::{Status, TrainOptions};

/// Which service, and how to print.
#[derive(Args)]
pub struct Remote {
    /// The service's address.
    #[arg(
        long,
        env = "PALIFORGE_SERVER",
        default_value = "http://127.0.0.1:8470"
    )]
    server: String,
    /// The service's bearer token.
    #[arg(long, env = "PALIFORGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// JSON instead of tables, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Remote {
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.server, self.token.clone())?)
    }
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The mixture spec (TOML or JSON); relative data paths are relative to its folder.
    spec: PathBuf,
    /// The run's name (default: the spec's description).
    #[arg(long)]
    name: Option<String>,
    /// Model size of a fresh model (tiny, small, paligemma-3b-pt-224, ...).
    #[arg(long, default_value = "small")]
    config: String,
    /// Start the fresh model's image encoder from this checkpoint (on the service's machine):
    /// a SigLIP, a PaliGemma, or an encoder saved alone.
    #[arg(long, conflicts_with_all = ["init", "from_run"])]
    image_encoder: Option<PathBuf>,
    /// Start from this Hugging Face PaliGemma folder (on the service's machine).
    #[arg(long, conflicts_with = "from_run")]
    init: Option<PathBuf>,
    /// Start from another run's newest checkpoint (RUN) or the one at a step (RUN@STEP).
    #[arg(long)]
    from_run: Option<String>,
    /// The run folder, new or empty, inside the service's data roots (default: the service's
    /// `DATA_DIR/runs/ID`); relative to the current folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = TrainOptions::default().checkpoint_every)]
    checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = TrainOptions::default().keep_checkpoints)]
    keep: usize,
    /// Per-task loss every N steps (0: never).
    #[arg(long, default_value_t = TrainOptions::default().task_loss_every)]
    task_loss_every: u64,
    /// Then watch it, as `paliforge watch` does.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct RunArgs {
    /// The run's id or name.
    run: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct StagesArgs {
    /// The run's id or name.
    run: String,
    /// A file of `[[stages]]` (TOML) or `{"stages": [...]}` (JSON) to append.
    stages: PathBuf,
    #[command(flatten)]
    remote: Remote,
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let base = args
        .spec
        .canonicalize()
        .with_context(|| args.spec.display().to_string())?
        .parent()
        .map(PathBuf::from);
    let start = match (&args.init, &args.from_run) {
        (Some(dir), _) => StartRequest::Init { dir: dir.clone() },
        (None, Some(from)) => {
            let (run, step) = match from.split_once('@') {
                Some((run, step)) => (run, Some(step.parse().context("--from-run RUN@STEP")?)),
                None => (from.as_str(), None),
            };
            StartRequest::Checkpoint {
                run: client.resolve_run(run)?,
                step,
            }
        }
        (None, None) => StartRequest::Fresh {
            config: args.config.clone(),
            image_encoder: args.image_encoder.clone(),
        },
    };
    let request = RunRequest {
        name: args.name.clone(),
        spec: Some(SpecInput::Text(text)),
        base,
        start,
        out: match &args.out {
            Some(out) => Some(std::path::absolute(out).with_context(|| out.display().to_string())?),
            None => None,
        },
        options: TrainOptions {
            checkpoint_every: args.checkpoint_every,
            keep_checkpoints: args.keep,
            task_loss_every: args.task_loss_every,
            ..TrainOptions::default()
        },
        ..RunRequest::default()
    };
    let run = client.submit(&request)?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&run)?);
    } else {
        println!(
            "run {} {:?} queued: {} stages, {} steps ({}/v1/runs/{})",
            run.run.id,
            run.run.name,
            run.stages.len(),
            run.run.total_steps,
            client.base(),
            run.run.id
        );
    }
    if args.watch {
        return watch_run(&client, run.run.id, args.remote.json);
    }
    Ok(())
}

pub fn runs(args: ListArgs) -> anyhow::Result<()> {
    let runs = args.remote.client()?.runs()?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&runs)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20} {:<9} {:<14} {:>13} {:>8} {:>8}",
        "ID", "NAME", "STATUS", "STAGE", "STEP", "LOSS", "EX/S"
    );
    for view in &runs {
        let run = &view.run;
        let (stage, loss, speed) = match &run.last {
            Some(e) => (
                e.stage_name.clone(),
                format!("{:.4}", e.loss),
                format!("{:.1}", e.examples_per_s),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let step = run.last.as_ref().map_or(0, |e| e.step);
        println!(
            "{:>4}  {:<20} {:<9} {:<14} {:>13} {:>8} {:>8}",
            run.id,
            truncate(&run.name, 20),
            run.status.as_str(),
            truncate(&stage, 14),
            format!("{step}/{}", run.total_steps),
            loss,
            speed
        );
        if let Some(error) = &run.error {
            println!("      error: {error}");
        }
    }
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    match text.char_indices().nth(width) {
        Some((end, _)) => format!("{}…", &text[..end - 1]),
        None => text.to_string(),
    }
}

fn print_run(view: &RunView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(view)?);
    } else {
        println!(
            "run {} {:?}: {}",
            view.run.id,
            view.run.name,
            view.run.status.as_str()
        );
    }
    Ok(())
}

pub fn stop(args: RunArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let view = client.stop(client.resolve_run(&args.run)?)?;
    print_run(&view, args.remote.json)
}

pub fn resume(args: RunArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let view = client.resume(client.resolve_run(&args.run)?)?;
    print_run(&view, args.remote.json)
}

pub fn stages(args: StagesArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let text = std::fs::read_to_string(&args.stages)
        .with_context(|| format!("reading {}", args.stages.display()))?;
    let view = client.append_stages(client.resolve_run(&args.run)?, &text)?;
    print_run(&view, args.remote.json)
}

pub fn watch(args: RunArgs) -> anyhow::Result<()> {
    let client = args.remote.client()?;
    let id = client.resolve_run(&args.run)?;
    watch_run(&client, id, args.remote.json)
}

/// Follows a run's events until it settles (finished, stopped or failed): a progress bar per
/// stage, or one JSON line per event.
fn watch_run(client: &Client, id: i64, json: bool) -> anyhow::Result<()> {
    let mut bar: Option<ProgressBar> = None;
    for event in client.events(id)? {
        let event = event?;
        if json {
            println!("{}", serde_json::to_string(&event)?);
        }
        match &event {
            Event::Stage {
                name, steps, step, ..
            } if !json => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                let b = super::progress::bar(*steps, "steps");
                b.set_prefix(name.clone());
                b.set_position(step.saturating_sub(1));
                bar = Some(b);
            }
            Event::Step { event: e, .. } if !json => {
                if let Some(b) = &bar {
                    b.set_position(e.stage_step.min(e.stage_steps));
                    b.set_message(format!(
                        "{} loss {:.4} lr {:.2e} {:.1} ex/s",
                        e.stage_name,
                        e.loss,
                        e.lr.peak(),
                        e.examples_per_s
                    ));
                }
            }
            Event::Status { status, error, .. } if status.is_settled() => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                if !json {
                    println!("run {id}: {}", status.as_str());
                }
                return match (status, error) {
                    (Status::Failed, Some(error)) => anyhow::bail!("run {id} failed: {error}"),
                    (Status::Failed, None) => anyhow::bail!("run {id} failed"),
                    _ => Ok(()),
                };
            }
            _ => {}
        }
    }
    anyhow::bail!("run {id}: the service closed the event stream")
}

#[derive(Args)]
pub struct SubmitDataArgs {
    /// The dataset's name: the service writes it to DATA_DIR/datasets/NAME.
    name: String,
    /// Generate the demo dataset (with a tokenizer).
    #[arg(long, conflicts_with_all = ["parquet", "images"])]
    demo: bool,
    /// Demo rows (single-image, then two-image).
    #[arg(long, default_value_t = 4000)]
    rows: usize,
    #[arg(long, default_value_t = 1000)]
    pair_rows: usize,
    /// Existing Parquet shards: paths in the service's data roots, globs or URLs.
    #[arg(long, num_args = 1..)]
    parquet: Vec<String>,
    /// A folder of images in the service's data roots (with --annotations).
    #[arg(long, requires = "annotations")]
    images: Option<PathBuf>,
    /// JSONL or CSV naming each row's image in --image-column.
    #[arg(long)]
    annotations: Option<PathBuf>,
    #[arg(long = "image-column", default_value = "image")]
    image_columns: Vec<String>,
    /// Re-encode images whose longer side exceeds this, as JPEG.
    #[arg(long)]
    max_side: Option<u32>,
    /// Also train a tokenizer of this many base tokens on the text.
    #[arg(long)]
    train_tokenizer: Option<usize>,
    #[command(flatten)]
    remote: Remote,
}

/// Queues a preparation job on the service.
pub fn submit_data(args: SubmitDataArgs) -> anyhow::Result<()> {
    let input = match (&args.images, &args.annotations) {
        _ if args.demo => DatasetInput::Demo {
            seed: 0,
            rows: args.rows,
            pair_rows: args.pair_rows,
            image_size: 112,
        },
        (Some(images), Some(annotations)) => DatasetInput::Images {
            images: images.clone(),
            annotations: annotations.clone(),
            image_column: args.image_columns[0].clone(),
        },
        _ if !args.parquet.is_empty() => DatasetInput::Parquet {
            data: args.parquet.clone(),
            image_columns: args.image_columns.clone(),
        },
        _ => anyhow::bail!("give --demo, --parquet or --images with --annotations"),
    };
    let request = DatasetRequest {
        name: args.name.clone(),
        input,
        options: PrepareOptions {
            max_side: args.max_side,
            train_tokenizer: args.train_tokenizer,
            ..PrepareOptions::default()
        },
    };
    let job = args.remote.client()?.prepare(&request)?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&job)?);
    } else {
        println!(
            "dataset {} {:?} queued: {}",
            job.id,
            job.name,
            job.dir.display()
        );
    }
    Ok(())
}

/// Lists the service's preparation jobs.
pub fn datasets(args: ListArgs) -> anyhow::Result<()> {
    let jobs = args.remote.client()?.datasets()?;
    if args.remote.json {
        println!("{}", serde_json::to_string(&jobs)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20} {:<9} {:>15}  FOLDER",
        "ID", "NAME", "STATUS", "ROWS"
    );
    for job in &jobs {
        println!(
            "{:>4}  {:<20} {:<9} {:>15}  {}",
            job.id,
            truncate(&job.name, 20),
            job.status.as_str(),
            format!("{}/{}", job.done, job.total),
            job.dir.display()
        );
        if let Some(error) = &job.error {
            println!("      error: {error}");
        }
    }
    Ok(())
}
