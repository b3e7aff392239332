//! Greedy and beam-search decoding with a KV cache.
//!
//! Prompts of different lengths are batched left-padded: padding has segment 0 (no query sees
//! it), real tokens count positions from 1 as transformers' PaliGemma does, and the whole prompt
//! (images, `<bos>`, prefix, `"\n"`) attends bidirectionally. Each step then feeds one token per
//! row, which sees every cached real token.

use dfdx::prelude::*;

use crate::Matrix;
use crate::attention::{Rope, additive_mask, allowed};
use crate::config::PaliGemmaConfig;
use crate::error::{ModelError, Result};
use crate::gemma::KvCache;
use crate::input::ModelInput;
use crate::paligemma::PaliGemma;

/// One prompt: tokens as the processor builds them (`<image>` x K per image, `<bos>`, prefix,
/// `"\n"`) and its images `[n_images, 3, R, R]`.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    pub n_images: usize,
    pub pixels: Vec<f32>,
}

impl Prompt {
    /// The prompt transformers' PaliGemmaProcessor builds: `<image>` x num_image_tokens for each
    /// image, then `text` (which must hold `<bos>`, the prompt's tokens and `"\n"`).
    pub fn with_images(
        cfg: &PaliGemmaConfig,
        text: &[u32],
        n_images: usize,
        pixels: Vec<f32>,
    ) -> Self {
        let mut tokens = vec![cfg.image_token_id; n_images * cfg.num_image_tokens()];
        tokens.extend_from_slice(text);
        Prompt {
            tokens,
            n_images,
            pixels,
        }
    }
}

/// Options of both decoders.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub max_new_tokens: usize,
    /// Stop a sequence at the config's `<eos>` (included in the output).
    pub stop_at_eos: bool,
    /// Keep each step's logits (greedy only), for inspection and tests.
    pub keep_logits: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_new_tokens: 32,
            stop_at_eos: true,
            keep_logits: false,
        }
    }
}

/// Options of [`beam_search`].
#[derive(Clone, Debug)]
pub struct BeamOptions {
    pub beams: usize,
    /// Score = sum of log-probabilities / (generated length ^ length_penalty).
    pub length_penalty: f32,
    pub decode: DecodeOptions,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beams: 4,
            length_penalty: 1.0,
            decode: DecodeOptions::default(),
        }
    }
}

/// A generated continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New tokens (an `<eos>` that stopped it included).
    pub tokens: Vec<u32>,
    /// Sum of the tokens' log-probabilities (beam search: divided by the length penalty).
    pub score: f32,
    /// Per step `[vocab]` logits, when asked for.
    pub step_logits: Vec<Vec<f32>>,
}

/// Decoding state of a batch of rows sharing one KV cache.
struct Session<'a> {
    model: &'a PaliGemma,
    cache: KvCache,
    /// Per row: which cached positions are real tokens.
    keys: Vec<Vec<bool>>,
    /// Per row: position of the next token.
    next_pos: Vec<u32>,
}

impl<'a> Session<'a> {
    /// Runs the prompts; returns the logits `[rows, vocab]` for the first new token.
    fn prefill(model: &'a PaliGemma, prompts: &[Prompt]) -> Result<(Self, Vec<f32>)> {
        let cfg = &model.cfg;
        let b = prompts.len();
        let len = prompts.iter().map(|p| p.tokens.len()).max().unwrap_or(0);
        if b == 0 || len == 0 {
            return Err(ModelError::Input("no prompt tokens".into()));
        }
        let k = cfg.num_image_tokens();
        let mut input = ModelInput {
            batch: b,
            len,
            ..Default::default()
        };
        for (r, p) in prompts.iter().enumerate() {
            let pad = len - p.tokens.len();
            input
                .tokens
                .extend(std::iter::repeat_n(cfg.pad_token_id, pad).chain(p.tokens.iter().copied()));
            input
                .segment_ids
                .extend((0..len).map(|i| (i >= pad) as u16));
            input
                .positions
                .extend((0..len).map(|i| if i >= pad { (i - pad + 1) as u32 } else { 0 }));
            let mut t = 0;
            let mut found = 0;
            while t < p.tokens.len() {
                if p.tokens[t] == cfg.image_token_id {
                    input.image_slots.push((r, pad + t));
                    found += 1;
                    t += k;
                } else {
                    t += 1;
                }
            }
            if found != p.n_images {
                return Err(ModelError::Input(format!(
                    "prompt {r}: {} images but <image> tokens for {found}",
                    p.n_images
                )));
            }
            input.pixels.extend_from_slice(&p.pixels);
            input.n_images += p.n_images;
        }
        input.causal = vec![false; b * len];
        input.loss_weights = vec![0.0; b * len];
        input.validate(cfg)?;
        let dev = &model.dev;
        let x = model.input_embeddings::<NoneTape>(&input);
        let mask = additive_mask(
            dev,
            &allowed(b, len, &input.segment_ids, &input.causal),
            b,
            len,
            len,
        );
        let rope = Rope::new(
            dev,
            &input.positions,
            cfg.text.head_dim,
            cfg.text.rope_theta,
        );
        let mut cache = KvCache::default();
        let h = model
            .language_model
            .forward(x, b, &rope, &mask, Some(&mut cache));
        let last: Vec<usize> = (0..b).map(|r| r * len + len - 1).collect();
        let logits = model
            .language_model
            .lm_head(h.gather(dev.tensor_from_vec(last, (b,))))
            .as_vec();
        let session = Session {
            model,
            cache,
            keys: (0..b)
                .map(|r| {
                    input.segment_ids[r * len..(r + 1) * len]
                        .iter()
                        .map(|&s| s != 0)
                        .collect()
                })
                .collect(),
            next_pos: prompts.iter().map(|p| p.tokens.len() as u32 + 1).collect(),
        };
        Ok((session, logits))
    }

    /// Feeds one token per row; returns the logits `[rows, vocab]` for the next.
    fn step(&mut self, tokens: &[u32]) -> Vec<f32> {
        let model = self.model;
        let (dev, t) = (&model.dev, &model.cfg.text);
        let b = tokens.len();
        for k in &mut self.keys {
            k.push(true);
        }
        let past = self.keys[0].len();
        let allowed: Vec<bool> = self.keys.iter().flatten().copied().collect();
        let mask = additive_mask(dev, &allowed, b, 1, past);
        let rope = Rope::new(dev, &self.next_pos, t.head_dim, t.rope_theta);
        for p in &mut self.next_pos {
            *p += 1;
        }
        let x: Matrix = model.language_model.embed::<NoneTape>(tokens);
        let h = model
            .language_model
            .forward(x, b, &rope, &mask, Some(&mut self.cache));
        model.language_model.lm_head(h).as_vec()
    }

    /// Keeps rows `rows` (in that order) of the cache and bookkeeping.
    fn select_rows(&mut self, rows: &[usize]) {
        self.cache.select_rows(&self.model.dev, rows);
        self.keys = rows.iter().map(|&r| self.keys[r].clone()).collect();
        self.next_pos = rows.iter().map(|&r| self.next_pos[r]).collect();
    }
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
    row.iter().map(|x| x - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// Greedy decoding of a batch of prompts (of any lengths).
pub fn greedy(
    model: &PaliGemma,
    prompts: &[Prompt],
    opts: &DecodeOptions,
) -> Result<Vec<Generation>> {
    let v = model.cfg.text.vocab_size;
    let eos = model.cfg.eos_token_id;
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|_| Generation {
            tokens: vec![],
            score: 0.0,
            step_logits: vec![],
        })
        .collect();
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let (mut s, mut logits) = Session::prefill(model, prompts)?;
    let mut done = vec![false; prompts.len()];
    for step in 0..opts.max_new_tokens {
        let mut next = vec![model.cfg.pad_token_id; prompts.len()];
        for (r, g) in out.iter_mut().enumerate() {
            if done[r] {
                continue;
            }
            let row = &logits[r * v..(r + 1) * v];
            let tok = argmax(row);
            g.score += log_softmax(row)[tok];
            g.tokens.push(tok as u32);
            if opts.keep_logits {
                g.step_logits.push(row.to_vec());
            }
            next[r] = tok as u32;
            done[r] = opts.stop_at_eos && tok as u32 == eos;
        }
        if done.iter().all(|&d| d) || step + 1 == opts.max_new_tokens {
            break;
        }
        logits = s.step(&next);
    }
    Ok(out)
}

/// Beam search of a batch of prompts: `beams` hypotheses per prompt; a hypothesis ending in
/// `<eos>` is finished; a prompt is done when it has `beams` finished ones or at
/// `max_new_tokens`, then the best by length-penalised score is returned.
pub fn beam_search(
    model: &PaliGemma,
    prompts: &[Prompt],
    opts: &BeamOptions,
) -> Result<Vec<Generation>> {
    let w = opts.beams.max(1);
    let v = model.cfg.text.vocab_size;
    let eos = model.cfg.eos_token_id;
    let n = prompts.len();
    let max_new = opts.decode.max_new_tokens;
    if max_new == 0 {
        return Ok(prompts
            .iter()
            .map(|_| Generation {
                tokens: vec![],
                score: 0.0,
                step_logits: vec![],
            })
            .collect());
    }
    let norm = |sum: f32, len: usize| sum / (len.max(1) as f32).powf(opts.length_penalty);
    let (mut s, logits) = Session::prefill(model, prompts)?;
    // every prompt starts with w copies of its single row; only copy 0 is live at first
    let rows: Vec<usize> = (0..n).flat_map(|p| std::iter::repeat_n(p, w)).collect();
    s.select_rows(&rows);
    let mut logits: Vec<f32> = rows
        .iter()
        .flat_map(|&r| logits[r * v..(r + 1) * v].to_vec())
        .collect();
    let mut beams: Vec<Vec<(Vec<u32>, f32)>> = (0..n)
        .map(|_| {
            (0..w)
                .map(|i| (vec![], if i == 0 { 0.0 } else { f32::NEG_INFINITY }))
                .collect()
        })
        .collect();
    let mut finished: Vec<Vec<(Vec<u32>, f32, f32)>> = vec![vec![]; n]; // (tokens, sum, score)
    let mut done = vec![false; n];
    for step in 0..max_new {
        let mut next_tokens = vec![model.cfg.pad_token_id; n * w];
        let mut next_rows = vec![0usize; n * w];
        for p in 0..n {
            if done[p] {
                for i in 0..w {
                    next_rows[p * w + i] = p * w + i;
                }
                continue;
            }
            let mut cands: Vec<(f32, usize, u32)> = Vec::with_capacity(w * v);
            for i in 0..w {
                let base = beams[p][i].1;
                if base == f32::NEG_INFINITY {
                    continue;
                }
                let lp = log_softmax(&logits[(p * w + i) * v..(p * w + i + 1) * v]);
                cands.extend(lp.iter().enumerate().map(|(t, &l)| (base + l, i, t as u32)));
            }
            if cands.is_empty() {
                done[p] = true;
                for i in 0..w {
                    next_rows[p * w + i] = p * w + i;
                }
                continue;
            }
            let keep = (2 * w).min(cands.len());
            cands.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            cands.truncate(keep);
            cands.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut live = Vec::with_capacity(w);
            for (rank, (sum, i, t)) in cands.into_iter().enumerate() {
                let mut toks = beams[p][i].0.clone();
                toks.push(t);
                if opts.decode.stop_at_eos && t == eos {
                    if rank < w {
                        let score = norm(sum, toks.len());
                        finished[p].push((toks, sum, score));
                    }
                    continue;
                }
                if live.len() < w {
                    live.push((toks, sum, i));
                }
            }
            while live.len() < w {
                live.push((vec![], f32::NEG_INFINITY, 0));
            }
            for (j, (toks, sum, i)) in live.into_iter().enumerate() {
                next_rows[p * w + j] = p * w + i;
                next_tokens[p * w + j] = toks.last().copied().unwrap_or(model.cfg.pad_token_id);
                beams[p][j] = (toks, sum);
            }
            let best_live = beams[p]
                .iter()
                .map(|b| norm(b.1, b.0.len()))
                .fold(f32::NEG_INFINITY, f32::max);
            let worst_done = finished[p]
                .iter()
                .map(|f| f.2)
                .fold(f32::INFINITY, f32::min);
            if finished[p].len() >= w && best_live <= worst_done {
                done[p] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == max_new {
            break;
        }
        s.select_rows(&next_rows);
        logits = s.step(&next_tokens);
    }
    Ok((0..n)
        .map(|p| {
            let mut all = finished[p].clone();
            all.extend(
                beams[p]
                    .iter()
                    .filter(|b| b.1 > f32::NEG_INFINITY)
                    .map(|b| (b.0.clone(), b.1, norm(b.1, b.0.len()))),
            );
            let best = all
                .into_iter()
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .expect("a hypothesis");
            Generation {
                tokens: best.0,
                score: best.2,
                step_logits: vec![],
            }
        })
        .collect())
}
