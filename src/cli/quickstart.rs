//! `paliforge quickstart`: the whole job on the embedded default — demo data made on the spot,
//! the shipped quickstart spec checked against it, and every stage streamed through the
//! pipeline with a progress bar. (Training joins here when the trainer lands: see the README.)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use mixtures::{Mixture, Sampler, ValidationContext};
use pipeline::demo::DemoConfig;
use pipeline::mixture::{RunOptions, inspect_sources, stage_stream};
use pipeline::stream::StreamState;
use serde_json::json;

/// The shipped quickstart spec, embedded so the binary needs nothing beside it.
const SPEC: &str = include_str!("../../mixtures/specs/quickstart.toml");

#[derive(Args)]
pub struct QuickstartArgs {
    /// The run folder: demo data, the spec, and what the run writes.
    #[arg(long, default_value = "quickstart")]
    out: PathBuf,
    /// CPU-stage workers; 0 uses every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: QuickstartArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let demo = args.out.join("demo");
    if !demo.join("tokenizer.json").is_file() {
        eprintln!("making the demo dataset in {}", demo.display());
        super::data::make_demo(&demo, &DemoConfig::default())?;
    }
    let spec_path = args.out.join("spec.toml");
    std::fs::write(&spec_path, SPEC).with_context(|| format!("writing {}", spec_path.display()))?;
    let mixture = Mixture::from_path(&spec_path)?;
    let facts = inspect_sources(&mixture);
    let columns_of = |s: &str| facts.get(s)?.as_ref().ok().map(|f| f.columns.clone());
    mixture
        .validate(&ValidationContext::new().with_columns(&columns_of))
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", spec_path.display()))?;

    let tokenizer =
        super::pipeline::load_tokenizer(Some(&demo.join("tokenizer.json")), None, &mixture)?;
    let options = RunOptions {
        threads: args.threads,
        ..RunOptions::new(tokenizer)
    };
    let names = Sampler::new(&mixture)?.task_names().to_vec();
    let mut state = StreamState::default();
    let mut stages = Vec::new();
    for (index, stage) in mixture.stages.iter().enumerate() {
        let budget = match stage.budget {
            mixtures::Budget::Examples(n) => n,
            mixtures::Budget::Epochs { .. } => 0,
        };
        let bar = super::progress::bar(budget, "examples");
        bar.set_message(stage.name.clone());
        let stage_started = Instant::now();
        let mut per_task = vec![0u64; names.len()];
        let mut tokens = 0u64;
        for batch in stage_stream(&mixture, index, &options, state.clone())? {
            let batch = batch?;
            for seg in &batch.batch.segments {
                per_task[seg.task_id as usize] += 1;
            }
            tokens += batch.batch.segment_ids.iter().filter(|s| **s != 0).count() as u64;
            bar.inc(batch.batch.segments.len() as u64);
            state = batch.state;
        }
        bar.finish_and_clear();
        let seconds = stage_started.elapsed().as_secs_f64();
        let examples: u64 = per_task.iter().sum();
        println!(
            "stage {:<14} {:>4}px  {examples:>6} examples  {:>8.0} examples/s  {:>9.0} tokens/s",
            stage.name,
            stage.resolution(),
            examples as f64 / seconds,
            tokens as f64 / seconds
        );
        for (task, n) in names.iter().zip(&per_task).filter(|(_, n)| **n > 0) {
            println!("  {task:<12} {n:>6}");
        }
        let tasks: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&per_task)
            .map(|(t, n)| (t.clone(), json!(n)))
            .collect();
        stages.push(json!({ "stage": stage.name, "examples": examples, "seconds": seconds, "tasks": tasks }));
    }
    let bad = state.bad_inputs.bad();
    println!(
        "{}",
        json!({ "stages": stages, "bad_rows": bad, "wall_s": started.elapsed().as_secs_f64() })
    );
    Ok(())
}
