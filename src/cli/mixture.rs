//! `paliforge mixture check|preview`: a spec validated against its data before anything runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use mixtures::{Mixture, SummaryContext, ValidationContext, summary_table};
use pipeline::mixture::{RunOptions, inspect_sources};

#[derive(Subcommand)]
pub enum Command {
    /// Validate a spec against its data and print what each stage will draw.
    Check(CheckArgs),
    /// Print examples a stage would yield, formatted, with their task names.
    Preview(PreviewArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    spec: PathBuf,
    /// A tokenizer.json to count prefix tokens exactly (default: word counts, a lower bound).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub struct PreviewArgs {
    spec: PathBuf,
    #[arg(long)]
    stage: Option<String>,
    #[arg(short = 'n', long, default_value_t = 20)]
    examples: usize,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Where to write the examples' images (PNG).
    #[arg(long, default_value = "preview")]
    out: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => check(&args.spec, args.tokenizer.as_deref()),
        Command::Preview(args) => {
            let mixture = Mixture::from_path(&args.spec)
                .with_context(|| format!("reading {}", args.spec.display()))?;
            let stage = super::pipeline::stage_index(&mixture, args.stage.as_deref(), &args.spec)?;
            let tokenizer = super::pipeline::load_tokenizer(
                args.tokenizer.as_deref(),
                Some(&args.spec),
                &mixture,
            )?;
            super::pipeline::preview_stage(
                &mixture,
                stage,
                &RunOptions::new(tokenizer),
                args.examples,
                &args.out,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(path: &Path, tokenizer: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mixture = match Mixture::from_path(path) {
        Ok(mixture) => mixture,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    // Data paths in a spec are relative to where the command runs, as on the command line.
    let facts = inspect_sources(&mixture);
    for (source, fact) in &facts {
        if let Err(e) = fact {
            eprintln!("sources.{source}: {e}");
        }
    }
    let columns_of = |source: &str| facts.get(source)?.as_ref().ok().map(|f| f.columns.clone());
    let rows_of = |source: &str| facts.get(source)?.as_ref().ok().map(|f| f.rows);
    let tokenizer = tokenizer
        .map(pipeline::text::PaliTokenizer::from_file)
        .transpose()
        .context("loading the tokenizer")?;
    let count = |text: &str| {
        tokenizer
            .as_ref()
            .map_or(0, |t| t.encode(text).map_or(0, |ids| ids.len()))
    };
    let mut context = ValidationContext::default().with_columns(&columns_of);
    if tokenizer.is_some() {
        context = context.with_prefix_tokens(&count);
    }
    let unreadable = facts.values().filter(|f| f.is_err()).count();
    match mixture.validate(&context) {
        Ok(()) if unreadable == 0 => {
            println!(
                "{}",
                summary_table(
                    &mixture,
                    &SummaryContext {
                        rows_of: Some(&rows_of),
                        ..SummaryContext::default()
                    }
                )
            );
            println!("{}: valid", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(()) => Ok(ExitCode::from(1)),
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.len() + unreadable);
            Ok(ExitCode::from(1))
        }
    }
}
