//! The model's commands: `model bench` (training-step timing) and `predict` (generation from a
//! Hugging Face PaliGemma folder).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use model::{BeamOptions, DecodeOptions, Generation, PaliGemma, PaliGemmaConfig, Prompt};
use pipeline::image::ImageProcessor;
use serde_json::json;
use tokenizers::Tokenizer;

#[derive(Subcommand)]
pub enum Command {
    /// Time inference forwards and training steps (forward, backward, AdamW) of a random model on
    /// a synthetic batch; print one JSON line of figures, last. Threads: RAYON_NUM_THREADS.
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    /// A preset: tiny, small, paligemma-3b-pt-224, -448 or -896.
    #[arg(long, default_value = "small")]
    config: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Text tokens per row (24 of them prefix), after the image tokens.
    #[arg(long, default_value_t = 64)]
    text_len: usize,
    /// Timed steps (after 2 warm-up steps); the figures are their medians.
    #[arg(long, default_value_t = 8)]
    steps: usize,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Bench(args) => bench(args),
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let cfg = PaliGemmaConfig::preset(&args.config)?;
    let r = model::bench(&cfg, args.batch, args.text_len, args.steps)
        .with_context(|| format!("benchmarking config {}", args.config))?;
    println!(
        "{}: {:.1} M parameters, batch {} x {} tokens, {} threads, median of {} steps",
        args.config,
        r.params as f64 / 1e6,
        r.batch,
        r.seq_len,
        r.threads,
        r.steps
    );
    println!(
        "  forward        {:9.1} ms  {:9.0} tokens/s",
        r.forward_ms, r.forward_tokens_per_s
    );
    println!(
        "  training step  {:9.1} ms  {:9.0} tokens/s  (forward {:.1}, backward {:.1}, AdamW {:.1}; CPU {:.0} ms)",
        r.train_step_ms,
        r.train_tokens_per_s,
        r.train_forward_ms,
        r.backward_ms,
        r.optimizer_ms,
        r.train_step_cpu_ms
    );
    println!("  loss {:.4} -> {:.4}", r.first_loss, r.last_loss);
    let mut line = serde_json::to_value(&r)?;
    line["config"] = json!(args.config);
    println!("{line}");
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    /// A Hugging Face PaliGemma folder: config.json, safetensors and tokenizer.json.
    #[arg(long = "model", value_name = "DIR")]
    dir: PathBuf,
    /// An image file (JPEG, PNG, WebP, GIF, BMP, TIFF); repeat for several images, in order.
    #[arg(long = "image", value_name = "FILE", required = true)]
    images: Vec<PathBuf>,
    /// The prompt (prefix), e.g. "caption en".
    #[arg(long)]
    prompt: String,
    /// Stop after this many new tokens if no <eos> came.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Beam search with this many beams; 1 decodes greedily.
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Print a JSON object: the text, the generated token ids and the prompt's.
    #[arg(long)]
    json: bool,
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let dev = model::device();
    let m = model::checkpoint::load(dir, &dev)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    let tok_path = dir.join("tokenizer.json");
    let tok = pipeline::tokenizer_file::read_tokenizer(&tok_path)?;

    let text = prompt_text(&tok, &tok_path, &m.cfg, &args.prompt)?;
    let mut images = ImageProcessor::new();
    let mut pixels = Vec::new();
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let chw = images
            .process(&bytes, m.cfg.vision.image_size as u32)
            .with_context(|| format!("{}", path.display()))?;
        pixels.extend(chw);
    }
    let prompt = Prompt::with_images(&m.cfg, &text, args.images.len(), pixels);

    let generation = generate(&m, &prompt, &args)?;
    // The text stops before <eos>; the ids keep it, as the model returned them.
    let eos = m.cfg.eos_token_id;
    let content: Vec<u32> = generation
        .tokens
        .iter()
        .copied()
        .take_while(|&t| t != eos)
        .collect();
    let decoded = tok
        .decode(&content, true)
        .map_err(|e| anyhow!("{}: decoding: {e}", tok_path.display()))?;
    if args.json {
        let out =
            json!({ "text": decoded, "tokens": generation.tokens, "prompt_tokens": prompt.tokens });
        println!("{out}");
    } else {
        println!("{decoded}");
    }
    Ok(())
}

/// `<bos>`, the prompt's tokens and `"\n"`, laid out as the pipeline lays out a prefix: the
/// prompt encoded without special tokens, then the id that "\n" alone encodes to.
fn prompt_text(
    tok: &Tokenizer,
    tok_path: &Path,
    cfg: &PaliGemmaConfig,
    prompt: &str,
) -> anyhow::Result<Vec<u32>> {
    let encode = |text: &str| -> anyhow::Result<Vec<u32>> {
        let encoding = tok
            .encode_fast(text, false)
            .map_err(|e| anyhow!("{}: encoding {text:?}: {e}", tok_path.display()))?;
        Ok(encoding.get_ids().to_vec())
    };
    let sep = match encode("\n")?.as_slice() {
        &[sep] => sep,
        ids => bail!(
            "{}: \"\\n\" encodes to {ids:?}, not one token",
            tok_path.display()
        ),
    };
    let mut text = vec![cfg.bos_token_id];
    text.extend(encode(prompt)?);
    text.push(sep);
    // A tokenizer bigger than the model would index past the embedding table.
    let vocab = cfg.text.vocab_size as u32;
    if let Some(&id) = text.iter().find(|&&id| id >= vocab) {
        bail!(
            "{}: token id {id} is outside the model's vocabulary of {vocab} (config.json)",
            tok_path.display()
        );
    }
    Ok(text)
}

fn generate(m: &PaliGemma, prompt: &Prompt, args: &PredictArgs) -> anyhow::Result<Generation> {
    let decode = DecodeOptions {
        max_new_tokens: args.max_new_tokens,
        stop_at_eos: true,
        keep_logits: false,
    };
    let prompts = std::slice::from_ref(prompt);
    let mut out = if args.beams > 1 {
        model::beam_search(
            m,
            prompts,
            &BeamOptions {
                beams: args.beams,
                decode,
                ..Default::default()
            },
        )?
    } else {
        model::greedy(m, prompts, &decode)?
    };
    Ok(out.remove(0))
}
