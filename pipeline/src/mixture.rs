//! A mixture spec's stage as a stream: its sources opened, its tasks formatted at the stage's
//! resolution and text length, drawn in the order of the mixture's exact weighted sampler.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mixtures::{Mixture, Problem, Sampler, SamplerState};

use crate::PipelineError;
use crate::bad_input::BadInputPolicy;
use crate::format::{FormatConfig, Formatter, OverLength};
use crate::pack::PackConfig;
use crate::schedule::Schedule;
use crate::source::{RowFilter, ShardSpec, SourceConfig};
use crate::stream::{BatchStream, StreamConfig, StreamState, StreamTask};
use crate::text::{PaliTokenizer, TokenFamily, TokenizerError};
use crate::visual_prompt::VisualPrompt;

/// SigLIP's patch: 14 pixels for every released PaliGemma.
pub const PATCH: usize = 14;

/// How this process runs a stage's stream (the spec says what; these say where and how fast).
#[derive(Clone)]
pub struct RunOptions {
    pub tokenizer: Arc<PaliTokenizer>,
    pub shard: ShardSpec,
    pub threads: usize,
    pub prefetch: usize,
    /// `max_fraction` comes from the spec; `min_examples` from here.
    pub bad_input: BadInputPolicy,
}

impl RunOptions {
    pub fn new(tokenizer: Arc<PaliTokenizer>) -> Self {
        Self {
            tokenizer,
            shard: ShardSpec::default(),
            threads: 0,
            prefetch: 4,
            bad_input: BadInputPolicy::default(),
        }
    }
}

/// The mixture's sampler, confined to one stage: the stream ends where the stage does.
pub struct StageSchedule {
    sampler: Sampler,
    stage: usize,
}

impl Schedule for StageSchedule {
    fn next_task(&mut self) -> Option<usize> {
        let before = self.sampler.state();
        match self.sampler.draw() {
            Some(draw) if draw.stage == self.stage => Some(draw.task),
            Some(_) => {
                // The next stage's first draw: leave it for that stage's stream.
                self.sampler.set_state(&before).expect("its own state");
                None
            }
            None => None,
        }
    }

    fn end_epoch(&mut self, task: usize) {
        self.sampler.end_epoch(task);
    }

    fn exhausted(&mut self, task: usize) {
        self.sampler.exhaust(task);
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("plain data")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), PipelineError> {
        let state: SamplerState = serde_json::from_value(state.clone())
            .map_err(|e| PipelineError::State(e.to_string()))?;
        self.sampler
            .set_state(&state)
            .map_err(|e| PipelineError::State(e.to_string()))
    }
}

/// The stage a stream state is in: where a run resumes, or where the next stage starts.
pub fn stage_of(mixture: &Mixture, state: &StreamState) -> Result<usize, PipelineError> {
    let mut sampler = Sampler::new(mixture).map_err(|e| PipelineError::Config(e.to_string()))?;
    if !state.schedule.is_null() {
        let saved: SamplerState = serde_json::from_value(state.schedule.clone())
            .map_err(|e| PipelineError::State(e.to_string()))?;
        sampler
            .set_state(&saved)
            .map_err(|e| PipelineError::State(e.to_string()))?;
    }
    Ok(sampler
        .current_stage()
        .map_or(mixture.stages.len(), |(i, _)| i))
}

/// The row length of a stage: its longest possible example (images and full text).
pub fn seq_len(mixture: &Mixture, stage: usize) -> usize {
    let s = &mixture.stages[stage];
    let tokens_per_image = (s.resolution() as usize / PATCH).pow(2);
    let images = mixture
        .tasks
        .keys()
        .map(|t| mixture.images_per_example(t) as usize)
        .max()
        .unwrap_or(0);
    images * tokens_per_image + s.text_len() as usize
}

/// Starts stage `stage` of `mixture` from `state` (the default state: the run's beginning).
pub fn stage_stream(
    mixture: &Mixture,
    stage: usize,
    options: &RunOptions,
    state: StreamState,
) -> Result<BatchStream, PipelineError> {
    let mut config = stage_config(mixture, stage, options)?;
    // The spec sets how much bad data its job tolerates.
    config.bad_input.max_fraction = mixture.max_bad_fraction;
    let sampler = Sampler::new(mixture).map_err(|e| PipelineError::Config(e.to_string()))?;
    BatchStream::start(config, Box::new(StageSchedule { sampler, stage }), state)
}

fn stage_config(
    mixture: &Mixture,
    stage: usize,
    options: &RunOptions,
) -> Result<StreamConfig, PipelineError> {
    let spec = mixture.stages.get(stage).ok_or_else(|| {
        PipelineError::Config(format!(
            "stages[{stage}]: the mixture has {} stages",
            mixture.stages.len()
        ))
    })?;
    let resolution = spec.resolution() as usize;
    let text_len = spec.text_len() as usize;
    let weights = mixture.stage_weights(stage).unwrap_or_default();
    let source_names: Vec<&String> = mixture.sources.keys().collect();
    let sources = mixture
        .sources
        .values()
        .map(|s| SourceConfig {
            data: s.data.clone(),
            image_columns: s.image_columns.clone(),
            epochs: s.epochs.map(u64::from),
            ..SourceConfig::new(Vec::<String>::new())
        })
        .collect();
    let sampler = Sampler::new(mixture).map_err(|e| PipelineError::Config(e.to_string()))?;
    let mut tasks = Vec::new();
    for (id, name) in sampler.task_names().iter().enumerate() {
        let task = &mixture.tasks[name];
        let source = &mixture.sources[&task.source];
        let key = |field: &str| format!("tasks.{name}.{field}");
        let templates = [task.prefix_template(), task.suffix_template()];
        let mut columns: Vec<(String, String)> = Vec::new();
        for template in &templates {
            let template = template
                .as_ref()
                .map_err(|e| PipelineError::Config(format!("{}: {e}", key("prefix/suffix"))))?;
            for column in template.columns() {
                let pair = (column.to_string(), source.column(column).to_string());
                if !columns.contains(&pair) {
                    columns.push(pair);
                }
            }
        }
        let formatter = Formatter::new(FormatConfig {
            task_id: id as u16,
            prefix: task.prefix.clone(),
            suffix: task.suffix.clone(),
            resolution,
            patch: PATCH,
            text_len: task
                .max_text_len
                .map_or(text_len, |cap| (cap as usize).min(text_len)),
            over_length: match task.over_length {
                mixtures::OverLength::Truncate => OverLength::Truncate,
                mixtures::OverLength::Skip => OverLength::Skip,
            },
        })
        .map_err(|e| PipelineError::Config(format!("{}: {e}", key("prefix"))))?;
        if let Some(which) = formatter.loc_template() {
            let template = if which == "prefix" {
                &task.prefix
            } else {
                &task.suffix
            };
            let needed_by = format!("the template {template:?} writes boxes with them");
            options
                .tokenizer
                .require(TokenFamily::Loc, &needed_by)
                .map_err(|e| PipelineError::Config(format!("{}: {e}", key(which))))?;
        }
        let visual_prompt = match &task.visual_prompt {
            None => None,
            Some(prompt) => {
                let (mark, field) = prompt.mark().ok_or_else(|| {
                    PipelineError::Config(format!(
                        "{}: {}",
                        key("visual_prompt"),
                        Problem::VisualPromptMark
                    ))
                })?;
                let pair = (field.to_string(), source.column(field).to_string());
                if !columns.contains(&pair) {
                    columns.push(pair);
                }
                Some(VisualPrompt {
                    field: field.to_string(),
                    mark,
                    colour: image::Rgb(prompt.colour),
                    thickness: prompt.thickness as f32,
                })
            }
        };
        let filter = task.filter.as_ref().map(|f| RowFilter {
            column: source.column(&f.column).to_string(),
            value: serde_json::to_value(&f.equals).expect("plain data"),
        });
        let active = weights.iter().any(|(t, w)| t == name && *w > 0.0);
        let source = source_names
            .iter()
            .position(|s| **s == task.source)
            .expect("validated");
        tasks.push(StreamTask {
            name: name.clone(),
            source,
            columns,
            filter,
            formatter,
            visual_prompt,
            active,
        });
    }
    let tokens_per_image = (resolution / PATCH).pow(2);
    let pack = PackConfig {
        examples: spec.batch_size() as usize,
        seq_len: seq_len(mixture, stage),
        max_images_per_row: spec.max_images.map_or(usize::MAX, |m| m as usize),
        packing: spec.packing(),
        resolution,
        tokens_per_image,
        pad_id: options.tokenizer.special().pad,
    };
    Ok(StreamConfig {
        sources,
        tasks,
        pack,
        tokenizer: options.tokenizer.clone(),
        seed: mixture.seed,
        shard: options.shard,
        threads: options.threads,
        prefetch: options.prefetch,
        bad_input: options.bad_input,
    })
}

/// What the data of one source says about itself: its columns and rows, or why it can't be read.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub columns: Vec<String>,
    pub rows: u64,
}

/// Reads every source's footers (not its rows): the facts a spec is checked against.
pub fn inspect_sources(
    mixture: &Mixture,
) -> std::collections::BTreeMap<String, Result<SourceFacts, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut facts = std::collections::BTreeMap::new();
        for (name, source) in &mixture.sources {
            let config = SourceConfig {
                image_columns: source.image_columns.clone(),
                ..SourceConfig::new(source.data.clone())
            };
            let opened = crate::source::OpenSource::open(config).await;
            let fact = opened
                .map(|s| SourceFacts {
                    columns: s.columns(),
                    rows: s.rows() as u64,
                })
                .map_err(|e| e.to_string());
            facts.insert(name.clone(), fact);
        }
        facts
    })
}

/// The tokenizer `given`, or else the one found beside the spec or the data
/// ([`find_tokenizer`]).
pub fn load_tokenizer(
    given: Option<&Path>,
    spec: Option<&Path>,
    mixture: &Mixture,
) -> Result<PaliTokenizer, TokenizerError> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => find_tokenizer(spec, mixture).ok_or(TokenizerError::NotFound)?,
    };
    PaliTokenizer::from_file(path)
}

/// `tokenizer.json` in the spec's folder, or in the folder (or its parent) of a source's first
/// shard: where `demo-data` and `prepare` put it.
pub fn find_tokenizer(spec: Option<&Path>, mixture: &Mixture) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(spec) = spec {
        candidates.push(spec.with_file_name("tokenizer.json"));
    }
    for source in mixture.sources.values() {
        for entry in &source.data {
            let entry = Path::new(entry);
            let dir = if entry.is_dir() {
                entry.to_path_buf()
            } else {
                entry.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            candidates.push(dir.join("tokenizer.json"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("tokenizer.json"));
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}
