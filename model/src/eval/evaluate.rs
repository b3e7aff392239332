//! Held-out evaluation: each task's `eval_data` through the pipeline (the task's templates at a
//! stage's resolution and text length), the prompts decoded by the model, and the predictions
//! scored by the task's evaluator.

use mixtures::{Budget, Evaluator, Mixture, Weights};
use pipeline::Batch;
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::TokenFamily;
use serde::{Deserialize, Serialize};

use super::metrics::{DetectionScore, cider_d, exact_match, vqa_accuracy};
use dfdx::tensor::Cache;

use crate::PaliGemma;
use crate::decode::{BeamOptions, DecodeOptions, Generation, Prompt, beam_search, greedy};
use crate::train::trainer::{check_tokenizer, set_resolution};
use crate::train::{Result, TrainError};

/// Prompts decoded together.
const DECODE_ROWS: u32 = 16;

/// One task's scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    pub task: String,
    pub evaluator: Evaluator,
    pub examples: usize,
    /// The evaluator's figures, its headline first (see [`TaskScores::headline`]).
    pub metrics: Vec<(String, f64)>,
}

impl TaskScores {
    /// The figure the task is judged by.
    pub fn headline(&self) -> Option<&(String, f64)> {
        self.metrics.first()
    }

    /// The figures after the headline, as `name value, ...`.
    pub fn others(&self) -> String {
        let others: Vec<String> = self
            .metrics
            .iter()
            .skip(1)
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        others.join(", ")
    }
}

/// One held-out example and what the model made of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub task: String,
    /// The prompt's text (`<bos>` prefix "\n"), without the image tokens.
    pub prompt: String,
    pub prediction: String,
    pub reference: String,
    /// The example's images as the model saw them, PNG.
    #[serde(skip)]
    pub images_png: Vec<Vec<u8>>,
}

/// Scores of every evaluated task, and the first few samples of each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub tasks: Vec<TaskScores>,
    pub samples: Vec<Sample>,
}

impl EvalReport {
    /// `{task: {metric: value}}`, for JSON lines.
    pub fn to_json(&self) -> serde_json::Value {
        let tasks: serde_json::Map<String, serde_json::Value> = self
            .tasks
            .iter()
            .map(|t| {
                let metrics: serde_json::Map<String, serde_json::Value> = t
                    .metrics
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                    .collect();
                (t.task.clone(), metrics.into())
            })
            .collect();
        tasks.into()
    }

    /// A plain-text table: one row per task, its headline metric and the rest.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>8}  {:<14} {:>8}  others\n",
            "task", "examples", "metric", "value"
        );
        for t in &self.tasks {
            let (name, value) = t.headline().cloned().unwrap_or_default();
            out.push_str(&format!(
                "{:<12} {:>8}  {:<14} {:>8.3}  {}\n",
                t.task,
                t.examples,
                name,
                value,
                t.others()
            ));
        }
        out
    }
}

/// How to evaluate: the spec's `[eval]` section, at the settings of stage `stage`.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub stage: usize,
    /// Samples kept per task for reports.
    pub samples_per_task: usize,
}

/// How many of `mixture`'s tasks have held-out data (their source's `eval_data`).
pub fn held_out_tasks(mixture: &Mixture) -> usize {
    mixture
        .tasks
        .values()
        .filter(|t| {
            mixture
                .sources
                .get(&t.source)
                .is_some_and(|s| !s.eval_data.is_empty())
        })
        .count()
}

/// Evaluates `model` on the held-out data of every task whose source has `eval_data`.
pub fn evaluate(
    model: &mut PaliGemma,
    mixture: &Mixture,
    options: &RunOptions,
    eval: &EvalOptions,
) -> Result<EvalReport> {
    check_tokenizer(&model.cfg, &options.tokenizer, "the evaluated model")?;
    let mut report = EvalReport::default();
    for (name, task) in &mixture.tasks {
        if mixture.sources[&task.source].eval_data.is_empty() {
            continue;
        }
        if task.evaluator == Evaluator::DetectionIou {
            let needed_by = format!("task {name}'s detection_iou evaluator reads boxes from them");
            options.tokenizer.require(TokenFamily::Loc, &needed_by)?;
        }
        let held_out = eval_mixture(mixture, name, eval.stage)?;
        let mut examples = Vec::new();
        let stream =
            stage_stream(&held_out, 0, options, StreamState::default()).map_err(|source| {
                TrainError::Pipeline {
                    stage: format!("eval {name}"),
                    source,
                }
            })?;
        for batch in stream {
            let batch = batch.map_err(|source| TrainError::Pipeline {
                stage: format!("eval {name}"),
                source,
            })?;
            // Only the samples a report keeps carry their images.
            let with_images = eval.samples_per_task.saturating_sub(examples.len());
            examples.extend(decode_batch(
                model,
                &batch.batch,
                mixture,
                options,
                with_images,
            )?);
        }
        report.tasks.push(score(name, task.evaluator, &examples));
        report.samples.extend(
            examples
                .into_iter()
                .take(eval.samples_per_task)
                .map(|mut s| {
                    s.task = name.clone();
                    s
                }),
        );
    }
    Ok(report)
}

/// The spec reduced to one stage that reads `task`'s held-out data once, unpacked, at the
/// resolution and text length of stage `stage`.
fn eval_mixture(mixture: &Mixture, task: &str, stage: usize) -> Result<Mixture> {
    let mut held_out = mixture.clone();
    held_out.tasks.retain(|name, _| name == task);
    let source_name = &held_out.tasks[task].source;
    held_out.sources.retain(|name, _| name == source_name);
    for source in held_out.sources.values_mut() {
        source.data = std::mem::take(&mut source.eval_data);
        source.epochs = Some(1);
        source.size = None;
    }
    let mut s = mixture
        .stages
        .get(stage)
        .cloned()
        .ok_or_else(|| TrainError::Config(format!("eval: no stage {stage}")))?;
    s.name = format!("eval-{task}");
    s.budget = Budget::Examples(u64::from(mixture.eval.examples));
    s.batch_size = Some(DECODE_ROWS.min(mixture.eval.examples.max(1)));
    s.packing = Some(false);
    s.weights = Weights::Explicit([(task.to_string(), 1.0)].into_iter().collect());
    held_out.stages = vec![s];
    Ok(held_out)
}

/// Decodes every example of `batch` (one per row, unpacked); the first `with_images` samples
/// keep their images as PNG.
fn decode_batch(
    model: &mut PaliGemma,
    batch: &Batch,
    mixture: &Mixture,
    options: &RunOptions,
    with_images: usize,
) -> Result<Vec<Sample>> {
    set_resolution(model, batch.resolution)?;
    let image_len = batch.pixels.len() / batch.n_images().max(1);
    let mut prompts = Vec::new();
    let mut samples = Vec::new();
    for seg in &batch.segments {
        let row = seg.row as usize * batch.seq_len;
        let span = row + seg.start as usize..row + (seg.start + seg.len) as usize;
        let prompt_end = span.clone().find(|&i| batch.causal[i]).unwrap_or(span.end);
        let reference: Vec<u32> = batch.tokens[prompt_end..span.end]
            .iter()
            .copied()
            .filter(|&t| t != model.cfg.eos_token_id)
            .collect();
        let images: Vec<usize> = (0..batch.n_images())
            .filter(|&i| {
                let slot = &batch.image_slots[i];
                slot.row == seg.row && span.contains(&(row + slot.start as usize))
            })
            .collect();
        let pixels: Vec<f32> = images
            .iter()
            .flat_map(|&i| batch.image(i))
            .copied()
            .collect();
        let text_start = span.start + images.len() * batch.tokens_per_image;
        let decode = |ids: &[u32]| options.tokenizer.decode(ids).map_err(TrainError::from);
        samples.push(Sample {
            task: String::new(),
            prompt: decode(&batch.tokens[text_start..prompt_end])?,
            prediction: String::new(),
            reference: decode(&reference)?,
            images_png: match samples.len() < with_images {
                true => images
                    .iter()
                    .map(|&i| pipeline::preview::png_bytes(batch.image(i), batch.resolution))
                    .collect(),
                false => Vec::new(),
            },
        });
        debug_assert_eq!(pixels.len(), images.len() * image_len);
        prompts.push(Prompt {
            tokens: batch.tokens[span.start..prompt_end].to_vec(),
            n_images: images.len(),
            pixels,
        });
    }
    if prompts.is_empty() {
        return Ok(samples);
    }
    let decode = DecodeOptions {
        max_new_tokens: mixture.eval.max_new_tokens as usize,
        ..Default::default()
    };
    let generations: Vec<Generation> = match mixture.eval.beams {
        0 | 1 => greedy(model, &prompts, &decode)?,
        beams => beam_search(
            model,
            &prompts,
            &BeamOptions {
                beams: beams as usize,
                decode,
                ..Default::default()
            },
        )?,
    };
    model.dev.empty_cache(); // every prompt length leaves buffers of its own sizes
    for (sample, g) in samples.iter_mut().zip(generations) {
        let ids: Vec<u32> = g
            .tokens
            .into_iter()
            .filter(|&t| t != model.cfg.eos_token_id)
            .collect();
        sample.prediction = options.tokenizer.decode(&ids)?;
    }
    Ok(samples)
}

fn score(task: &str, evaluator: Evaluator, samples: &[Sample]) -> TaskScores {
    let n = samples.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let em = mean(&|s| exact_match(&s.prediction, &s.reference));
    let metrics = match evaluator {
        Evaluator::ExactMatch => vec![("exact_match".into(), em)],
        Evaluator::VqaAccuracy => vec![
            (
                "vqa_accuracy".into(),
                mean(&|s| vqa_accuracy(&s.prediction, &[s.reference.as_str()])),
            ),
            ("exact_match".into(), em),
        ],
        Evaluator::Cider => {
            let candidates: Vec<&str> = samples.iter().map(|s| s.prediction.as_str()).collect();
            let references: Vec<Vec<&str>> =
                samples.iter().map(|s| vec![s.reference.as_str()]).collect();
            let scores = cider_d(&candidates, &references);
            vec![
                ("cider".into(), scores.iter().sum::<f64>() / n),
                ("exact_match".into(), em),
            ]
        }
        Evaluator::DetectionIou => {
            let mut d = DetectionScore::default();
            for s in samples {
                d.add(&s.prediction, &s.reference);
            }
            vec![
                ("boxes_iou>0.5".into(), d.recall_at(0.5)),
                ("mean_iou".into(), d.mean_iou()),
                ("map50".into(), d.map50()),
                ("exact_match".into(), em),
            ]
        }
    };
    TaskScores {
        task: task.to_string(),
        evaluator,
        examples: samples.len(),
        metrics,
    }
}
