//! `paliforge demo-data` and `paliforge prepare`: datasets in, paliforge shards out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pipeline::demo::{DemoConfig, DemoImageFormat};
use pipeline::prepare::{
    PrepareConfig, PrepareInput, TEMPLATE_WORDS, prepare, source_texts, train_tokenizer_on,
};
use pipeline::source::SourceConfig;
use pipeline::word_tokenizer::word_tokenizer;

#[derive(Args)]
pub struct DemoArgs {
    /// Where to write `scenes/`, `pairs/`, `tokenizer.json` and a README.
    #[arg(long, default_value = "demo")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Single-image rows for training (and a tenth as many held out).
    #[arg(long, default_value_t = 4000)]
    rows: usize,
    /// Two-image rows for training (and a tenth as many held out).
    #[arg(long, default_value_t = 1000)]
    pair_rows: usize,
    /// Side of the square images, in pixels.
    #[arg(long, default_value_t = 112)]
    image_size: u32,
    /// Write PNG instead of JPEG.
    #[arg(long)]
    png: bool,
    /// Write a word-level tokenizer of exactly this many ids (<pad> 0, <eos> 1, <bos> 2,
    /// <image> last, no <loc>/<seg> tokens) instead of the BPE: for fine-tuning a model with a
    /// small vocabulary, such as the 300-id test model.
    #[arg(long, value_name = "IDS")]
    word_tokenizer: Option<usize>,
}

/// Which tokenizer to train on a dataset's text.
#[derive(Clone, Copy, Debug)]
pub enum TokenizerKind {
    /// Byte-level BPE of this many base tokens, plus PaliGemma's tokens.
    Bpe(usize),
    /// Word-level, exactly this many ids (`pipeline::word_tokenizer`).
    Words(usize),
}

impl Default for TokenizerKind {
    /// The demo's: enough BPE merges for its words.
    fn default() -> Self {
        TokenizerKind::Bpe(1024)
    }
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let config = DemoConfig {
        seed: args.seed,
        train_rows: args.rows,
        test_rows: (args.rows / 10).max(1),
        pair_train_rows: args.pair_rows,
        pair_test_rows: (args.pair_rows / 10).max(1),
        image_size: args.image_size,
        format: if args.png {
            DemoImageFormat::Png
        } else {
            DemoImageFormat::Jpeg { quality: 90 }
        },
        ..DemoConfig::default()
    };
    let tokenizer = match args.word_tokenizer {
        Some(ids) => TokenizerKind::Words(ids),
        None => TokenizerKind::default(),
    };
    let manifests = make_demo(&args.out, &config, tokenizer)?;
    println!(
        "{}: {} scene rows and {} pair rows (train and test), tokenizer {}",
        args.out.display(),
        manifests.scenes.total_rows,
        manifests.pairs.total_rows,
        args.out.join("tokenizer.json").display()
    );
    Ok(())
}

/// The demo dataset and a tokenizer trained on its text, in `out`.
pub fn make_demo(
    out: &std::path::Path,
    config: &DemoConfig,
    tokenizer: TokenizerKind,
) -> anyhow::Result<pipeline::demo::DemoManifests> {
    let manifests = pipeline::demo::generate(out, config)?;
    let train = |dir: &str, image: &str| SourceConfig {
        image_columns: vec![image.to_string()],
        ..SourceConfig::new([out.join(dir).join("train-*.parquet").display().to_string()])
    };
    write_tokenizer(
        &[train("scenes", "image"), train("pairs", "images")],
        &out.join("tokenizer.json"),
        tokenizer,
    )?;
    Ok(manifests)
}

fn write_tokenizer(
    sources: &[SourceConfig],
    out: &std::path::Path,
    kind: TokenizerKind,
) -> anyhow::Result<()> {
    let tokenizer = match kind {
        TokenizerKind::Bpe(vocab) => train_tokenizer_on(sources, &TEMPLATE_WORDS, vocab)?,
        TokenizerKind::Words(ids) => {
            let texts = source_texts(sources, &TEMPLATE_WORDS)?;
            word_tokenizer(texts.iter().map(String::as_str), ids)?
        }
    };
    tokenizer
        .save(out, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(())
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Output folder for the shards and manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// A folder of images (with --annotations).
    #[arg(long, requires = "annotations", conflicts_with = "parquet")]
    images: Option<PathBuf>,
    /// JSONL or CSV, one row per example, naming its image file(s) in --image-column.
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// Existing Parquet shards (paths, globs, folders or URLs).
    #[arg(long, num_args = 1.., required_unless_present = "images")]
    parquet: Vec<String>,
    /// Image columns: in the annotations, the file-name column; in Parquet, the image columns.
    #[arg(long = "image-column", default_value = "image")]
    image_columns: Vec<String>,
    /// The split's name, the shards' prefix.
    #[arg(long, default_value = "train")]
    split: String,
    #[arg(long, default_value_t = 100)]
    rows_per_row_group: usize,
    #[arg(long, default_value_t = 10_000)]
    rows_per_shard: usize,
    /// Re-encode images whose longer side exceeds this, as JPEG.
    #[arg(long)]
    max_side: Option<u32>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The share of rows that may be bad (skipped, listed in the manifest) before the job fails.
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
    /// Also train a tokenizer of this many base tokens on the text columns (tokenizer.json).
    #[arg(long)]
    train_tokenizer: Option<usize>,
}

pub fn prepare_command(args: PrepareArgs) -> anyhow::Result<()> {
    let input = match (&args.images, &args.annotations) {
        (Some(images), Some(annotations)) => PrepareInput::ImageFolder {
            images: images.clone(),
            annotations: annotations.clone(),
            image_column: args.image_columns[0].clone(),
        },
        _ => PrepareInput::Parquet(SourceConfig {
            image_columns: args.image_columns.clone(),
            ..SourceConfig::new(args.parquet.clone())
        }),
    };
    let config = PrepareConfig {
        split: args.split.clone(),
        rows_per_row_group: args.rows_per_row_group,
        rows_per_shard: args.rows_per_shard,
        max_side: args.max_side,
        threads: args.threads,
        bad_input: pipeline::BadInputPolicy {
            max_fraction: args.max_bad_fraction,
            ..Default::default()
        },
        ..PrepareConfig::new(&args.out)
    };
    let bar = super::progress::bar(0, "rows");
    let manifest = prepare(&input, &config, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let split = &manifest.splits[&args.split];
    println!(
        "{}: {} rows in {} shards, {} bad rows skipped",
        args.out.display(),
        split.rows,
        split.shards.len(),
        split.bad_rows.len()
    );
    for bad in split.bad_rows.iter().take(10) {
        println!("  skipped {bad}");
    }
    if let Some(vocab) = args.train_tokenizer {
        let path = args.out.join("tokenizer.json");
        let shards = SourceConfig {
            image_columns: args.image_columns.clone(),
            ..SourceConfig::new([args
                .out
                .join(format!("{}-*.parquet", args.split))
                .display()
                .to_string()])
        };
        write_tokenizer(&[shards], &path, TokenizerKind::Bpe(vocab))
            .context("training the tokenizer")?;
        println!("tokenizer: {}", path.display());
    }
    Ok(())
}
