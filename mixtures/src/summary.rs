//! The `paliforge mixture check` preview: per stage and task, the weight, the examples it
//! will get, the epochs that means for its source, and the tokens it costs.

use std::fmt::Write;

use serde::Serialize;

use crate::spec::{Budget, Mixture, Objective};

/// Rows of a source, by source name; `None` where unknown.
pub type RowsOf<'a> = dyn Fn(&str) -> Option<u64> + 'a;

/// What the summary needs beyond the spec.
#[derive(Clone, Copy)]
pub struct SummaryContext<'a> {
    /// Default 14.
    pub patch_size: u32,
    /// Rows of a source, when the caller knows them (e.g. from Parquet footers); otherwise
    /// the spec's `size` is used.
    pub rows_of: Option<&'a RowsOf<'a>>,
}

impl Default for SummaryContext<'_> {
    fn default() -> Self {
        SummaryContext {
            patch_size: 14,
            rows_of: None,
        }
    }
}

/// One stage of the preview.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub name: String,
    pub resolution: u32,
    pub image_tokens: u32,
    pub text_len: u32,
    pub batch_size: u32,
    /// Examples the stage draws, if known (an `epochs` budget needs its source's rows).
    pub examples: Option<u64>,
    pub tasks: Vec<TaskSummary>,
}

/// One task within a stage. Estimates assume no source runs out of `epochs` first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    pub task: String,
    /// Share of the stage's examples, in [0, 1].
    pub weight: f64,
    pub examples: Option<u64>,
    /// Passes over the task's source (rows before its filter, so a lower bound when filtered).
    pub epochs: Option<f64>,
    /// Sequence tokens: examples × (images × image tokens + text length), i.e. without packing.
    pub tokens: Option<u64>,
}

/// The preview as data (for the service's API and web page).
pub fn summarize(mixture: &Mixture, ctx: &SummaryContext) -> Vec<StageSummary> {
    let rows = |task: &str| {
        let source = &mixture.tasks.get(task)?.source;
        ctx.rows_of
            .and_then(|f| f(source))
            .or(mixture.sources.get(source)?.size)
    };
    mixture
        .stages
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            let weights = mixture.stage_weights(i).unwrap_or_default();
            let examples = match &stage.budget {
                Budget::Examples(n) => Some(*n),
                Budget::Epochs { epochs, task } => {
                    let share = weights
                        .iter()
                        .find(|(t, _)| t == task)
                        .map(|(_, w)| *w)
                        .filter(|w| *w > 0.0);
                    rows(task)
                        .zip(share)
                        .map(|(rows, share)| (*epochs as f64 * rows as f64 / share).round() as u64)
                }
            };
            let image_tokens = stage.image_tokens(ctx.patch_size);
            let tasks = weights
                .into_iter()
                .map(|(task, weight)| {
                    let task_examples = examples.map(|n| (n as f64 * weight).round() as u64);
                    let per_example = mixture.images_per_example(&task) as u64
                        * image_tokens as u64
                        + stage.text_len() as u64;
                    TaskSummary {
                        epochs: task_examples
                            .zip(rows(&task))
                            .map(|(n, rows)| n as f64 / rows.max(1) as f64),
                        tokens: task_examples.map(|n| n * per_example),
                        examples: task_examples,
                        weight,
                        task,
                    }
                })
                .collect();
            StageSummary {
                name: stage.name.clone(),
                resolution: stage.resolution(),
                image_tokens,
                text_len: stage.text_len(),
                batch_size: stage.batch_size(),
                examples,
                tasks,
            }
        })
        .collect()
}

/// The preview as a plain-text table, one block per stage.
pub fn summary_table(mixture: &Mixture, ctx: &SummaryContext) -> String {
    let mut out = String::new();
    for (i, stage) in summarize(mixture, ctx).iter().enumerate() {
        let spec = &mixture.stages[i];
        let training = mixture.stage_training(i);
        let budget = match &spec.budget {
            Budget::Examples(n) => format!("{} examples", grouped(*n)),
            Budget::Epochs { epochs, task } => format!("{epochs} epochs of {task}"),
        };
        let _ = writeln!(
            out,
            "stage {i} {:?}{}: {}px ({} image tokens), text {}, batch {}, {budget}, lr {:e} {}{}{}",
            stage.name,
            match spec.objective {
                Objective::PrefixLm => "",
                Objective::Siglip => " (siglip: the image encoder alone)",
            },
            stage.resolution,
            stage.image_tokens,
            stage.text_len,
            stage.batch_size,
            training.lr,
            training.schedule,
            if training.continues {
                " (continues the stage before)"
            } else {
                ""
            },
            if spec.packing() { ", packed" } else { "" },
        );
        let mut rows = vec![
            ["task", "weight", "examples", "epochs", "tokens"]
                .map(String::from)
                .to_vec(),
        ];
        for t in &stage.tasks {
            rows.push(vec![
                t.task.clone(),
                format!("{:.1}%", t.weight * 100.0),
                t.examples.map_or("?".into(), grouped),
                t.epochs.map_or("?".into(), |e| format!("{e:.2}")),
                t.tokens.map_or("?".into(), compact),
            ]);
        }
        let tokens: Option<u64> = stage.tasks.iter().map(|t| t.tokens).sum();
        rows.push(vec![
            "total".into(),
            "100.0%".into(),
            stage.examples.map_or("?".into(), grouped),
            String::new(),
            tokens.map_or("?".into(), compact),
        ]);
        out += &table(&rows);
        out.push('\n');
    }
    out += "tokens: image + text tokens per example, without packing (an upper bound with it).\n";
    out
}

/// Columns padded to their widest cell: the first left-aligned, the rest right-aligned.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let _ = match c {
                0 => write!(line, " {cell:<w$}", w = widths[c]),
                _ => write!(line, "  {cell:>w$}", w = widths[c]),
            };
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// 384_000_000_000 → "384.0B".
fn compact(n: u64) -> String {
    let units = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")];
    match units.iter().find(|(scale, _)| n as f64 >= *scale) {
        Some((scale, unit)) => format!("{:.1}{unit}", n as f64 / scale),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(compact(999), "999");
        assert_eq!(compact(1_500), "1.5k");
        assert_eq!(compact(384_000_000_000), "384.0B");
    }
}
