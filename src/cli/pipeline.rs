//! `paliforge pipeline preview|bench`: look at what the pipeline makes, and time it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mixtures::Mixture;
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::stream::{StreamBatch, StreamState};
use pipeline::text::PaliTokenizer;
use serde_json::json;

#[derive(Subcommand)]
pub enum Command {
    /// Print formatted examples with their masks, and write their images as PNG.
    Preview(PreviewArgs),
    /// Run the whole pipeline as fast as it goes; print one JSON line of figures, last.
    Bench(BenchArgs),
}

/// What to read: either a mixture spec's stage, or one dataset and a task given by flags.
#[derive(Args, Clone)]
pub struct DataArgs {
    /// A mixture spec (TOML or JSON); its stage's settings override the flags below.
    #[arg(long, conflicts_with = "data")]
    spec: Option<PathBuf>,
    /// The stage of --spec to read (its name); default the first.
    #[arg(long, requires = "spec")]
    stage: Option<String>,
    /// Parquet shards: paths, globs, folders or URLs (s3://, gs://, az://, http(s)://).
    #[arg(long, num_args = 1.., required_unless_present = "spec")]
    data: Vec<String>,
    /// Image columns (HF image structs, binary, paths or URLs, or lists of them).
    #[arg(long = "image-column", default_value = "image")]
    image_columns: Vec<String>,
    /// The prefix template over the row's columns.
    #[arg(long, default_value = "{prefix}")]
    prefix: String,
    /// The suffix template over the row's columns.
    #[arg(long, default_value = "{suffix}")]
    suffix: String,
    /// A Hugging Face tokenizer.json; default: tokenizer.json beside the data or the spec.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 224)]
    resolution: u32,
    /// Text tokens per example: <bos>, prefix, "\n", suffix, <eos>.
    #[arg(long, default_value_t = 64)]
    text_len: u32,
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Pack several examples per row.
    #[arg(long)]
    packing: bool,
    /// CPU-stage workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl DataArgs {
    /// A spec and the index of its stage to read.
    fn mixture(&self, examples: u64) -> anyhow::Result<(Mixture, usize)> {
        if let Some(path) = &self.spec {
            let mixture =
                Mixture::from_path(path).with_context(|| format!("reading {}", path.display()))?;
            let stage = stage_index(&mixture, self.stage.as_deref(), path)?;
            return Ok((mixture, stage));
        }
        // One dataset, one task, one stage: the same path through the pipeline as any spec.
        let spec = json!({
            "seed": self.seed,
            "sources": { "data": { "data": self.data, "image_columns": self.image_columns, "epochs": 1 } },
            "tasks": { "task": { "source": "data", "prefix": self.prefix, "suffix": self.suffix } },
            "stages": [{
                "name": "stage",
                "resolution": self.resolution,
                "text_len": self.text_len,
                "batch_size": self.batch,
                "packing": self.packing,
                "budget": { "examples": examples.max(self.batch as u64) },
                "weights": { "task": 1 },
            }],
        });
        Ok((Mixture::from_json_str(&spec.to_string())?, 0))
    }

    fn tokenizer(&self, mixture: &Mixture) -> anyhow::Result<Arc<PaliTokenizer>> {
        load_tokenizer(self.tokenizer.as_deref(), self.spec.as_deref(), mixture)
    }

    fn options(&self, tokenizer: Arc<PaliTokenizer>) -> RunOptions {
        RunOptions {
            threads: self.threads,
            ..RunOptions::new(tokenizer)
        }
    }
}

/// The tokenizer given, or the one found beside the spec or the data.
pub fn load_tokenizer(
    given: Option<&Path>,
    spec: Option<&Path>,
    mixture: &Mixture,
) -> anyhow::Result<Arc<PaliTokenizer>> {
    Ok(Arc::new(pipeline::mixture::load_tokenizer(
        given, spec, mixture,
    )?))
}

#[derive(Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Examples to show.
    #[arg(short = 'n', long, default_value_t = 5)]
    examples: usize,
    /// Where to write the preprocessed images (PNG).
    #[arg(long, default_value = "preview")]
    out: PathBuf,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Examples to stream (the data repeats if it has fewer rows).
    #[arg(long, default_value_t = 4000)]
    examples: u64,
}

pub fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Preview(args) => preview(args)?,
        Command::Bench(args) => bench(args)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    let (mixture, stage) = args.data.mixture(args.examples as u64)?;
    let tokenizer = args.data.tokenizer(&mixture)?;
    preview_stage(
        &mixture,
        stage,
        &args.data.options(tokenizer),
        args.examples,
        &args.out,
    )
}

/// Prints the first `examples` examples of a stage and writes their images into `out`.
pub fn preview_stage(
    mixture: &Mixture,
    stage: usize,
    options: &RunOptions,
    examples: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let options = RunOptions {
        prefetch: 1,
        ..options.clone()
    };
    let stream = stage_stream(mixture, stage, &options, StreamState::default())?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let names: Vec<String> = mixtures::Sampler::new(mixture)?.task_names().to_vec();
    let mut shown = 0;
    for batch in stream {
        let StreamBatch { batch, .. } = batch?;
        for text in pipeline::preview::describe(&batch, &options.tokenizer, &names, out)? {
            if shown == examples {
                return Ok(());
            }
            println!("{text}");
            shown += 1;
        }
    }
    if shown == 0 {
        bail!("the data yielded no examples");
    }
    Ok(())
}

/// The index of the stage called `name` (the first when `None`).
pub fn stage_index(mixture: &Mixture, name: Option<&str>, spec: &Path) -> anyhow::Result<usize> {
    let Some(name) = name else { return Ok(0) };
    mixture
        .stages
        .iter()
        .position(|s| s.name == name)
        .with_context(|| {
            let names: Vec<_> = mixture.stages.iter().map(|s| s.name.as_str()).collect();
            format!(
                "{}: no stage named {name:?} (stages: {})",
                spec.display(),
                names.join(", ")
            )
        })
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    // Batches and row groups reuse freed heap memory instead of fresh pages: 5-8 % more
    // examples a second on the bench dataset, for about 25 MiB more at the peak.
    pipeline::malloc::keep_freed(64 << 20, None);
    let (mut mixture, stage) = args.data.mixture(args.examples)?;
    // Repeat the data as often as the example count needs.
    for source in mixture.sources.values_mut() {
        source.epochs = None;
    }
    let tokenizer = args.data.tokenizer(&mixture)?;
    let options = args.data.options(tokenizer);
    let bar = super::progress::bar(args.examples, "examples");
    let started = Instant::now();
    let cpu_before = pipeline::bench::process_cpu_seconds();
    let mut stream = stage_stream(&mixture, stage, &options, StreamState::default())?;
    let (mut batches, mut examples, mut tokens, mut images) = (0u64, 0u64, 0u64, 0u64);
    let mut wait = std::time::Duration::ZERO;
    // The first batch waits for the sources to open and the workers to fill; the rest is the
    // steady rate (the Python peer reports both the same way).
    let mut first_batch = None;
    while examples < args.examples {
        let asked = Instant::now();
        let Some(batch) = stream.next() else { break };
        wait += asked.elapsed();
        let batch = batch?.batch;
        batches += 1;
        examples += batch.segments.len() as u64;
        images += batch.n_images() as u64;
        tokens += batch.segment_ids.iter().filter(|s| **s != 0).count() as u64;
        bar.set_position(examples.min(args.examples));
        first_batch.get_or_insert_with(|| (started.elapsed().as_secs_f64(), examples));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = pipeline::bench::process_cpu_seconds() - cpu_before;
    let steady = match first_batch {
        Some((first_s, first_examples)) if batches > 1 => {
            Some((examples - first_examples) as f64 / (seconds - first_s))
        }
        _ => None,
    };
    drop(stream);
    bar.finish_and_clear();
    let peak_rss_mib = pipeline::bench::peak_rss_mib();
    let decode = pipeline::bench::decode_only(&mixture, stage, options.threads, 1000)?;
    let report = json!({
        "examples": examples,
        "batches": batches,
        "images": images,
        "seconds": seconds,
        "examples_per_s": examples as f64 / seconds,
        "first_batch_s": first_batch.map(|(s, _)| s),
        "steady_examples_per_s": steady,
        "tokens_per_s": tokens as f64 / seconds,
        // CPU spent per example (every thread), and how much of the machine the run kept busy.
        "cpu_ms_per_example": 1e3 * cpu_seconds / examples.max(1) as f64,
        "cores_busy": cpu_seconds / seconds,
        "peak_rss_mib": peak_rss_mib,
        "decode_only_examples_per_s": decode.images_per_s,
        "decode_only_images": decode.images,
        "threads": options.threads,
        "consumer_wait_fraction": wait.as_secs_f64() / seconds,
    });
    println!("{report}");
    Ok(())
}
