//! The mixture spec: one serde schema, read from TOML or JSON, unknown keys rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::SpecError;
use crate::lines::Lines;
use crate::template::Template;
use crate::training::{Recipe, TrainSpec, Training};
use crate::weights::{self, Weights};

/// A whole multi-stage run: named data sources, the tasks that read them, and the stages
/// that mix those tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mixture {
    /// Free text shown in summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seeds the sampler's tie-breaking jitter and the pipeline's per-epoch shuffles. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The fraction of rows that may be bad (undecodable image, missing value): the pipeline
    /// logs and skips them, and fails the job once more are. Default 0.01.
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
    #[serde(deserialize_with = "unique_map")]
    pub sources: BTreeMap<String, Source>,
    #[serde(deserialize_with = "unique_map")]
    pub tasks: BTreeMap<String, Task>,
    /// Run in order; each ends when its budget is reached.
    pub stages: Vec<Stage>,
    /// Held-out evaluation: each task with its source's `eval_data`, scored by its
    /// `evaluator`.
    #[serde(default)]
    pub eval: Eval,
    #[serde(skip)]
    pub(crate) lines: Lines,
}

fn default_max_bad_fraction() -> f64 {
    0.01
}

/// A named dataset: Parquet files as the pipeline reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Local paths, globs (`demo/train-*.parquet`) or `s3://`, `gs://`, `https://` URLs; one
    /// string or a list.
    #[serde(deserialize_with = "one_or_many")]
    pub data: Vec<String>,
    /// Held-out shards of the same layout, for evaluation; never trained on.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub eval_data: Vec<String>,
    /// Columns holding images (an HF image struct, or a list of them for multi-image rows).
    /// Empty for text-only sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_columns: Vec<String>,
    /// Renames: the name templates use → the column in the files (`caption = "text"`).
    #[serde(
        default,
        deserialize_with = "unique_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub columns: BTreeMap<String, String>,
    /// Passes over the data allowed per task; default: unlimited (a spent epoch starts a new,
    /// reshuffled one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Rows, if known: drives proportional weights, epoch estimates and data-budget checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// One way of turning a source's rows into training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub source: String,
    /// Template of the prompt, e.g. `"answer en {question}"`.
    pub prefix: String,
    /// Template of the target, e.g. `"{answer}"` or `"{boxes:loc} {label}"`.
    pub suffix: String,
    /// Images per example, for image columns that hold lists (multi-image tasks);
    /// default: one per image column of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u32>,
    /// Text tokens this task may use (bos + prefix + separator + suffix + eos), below the
    /// stage's `text_len`; default: the stage's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_len: Option<u32>,
    #[serde(default)]
    pub over_length: OverLength,
    /// Keep only rows whose `column` equals `equals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub evaluator: Evaluator,
    /// A box or point from the row drawn onto the task's images before they are resized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_prompt: Option<VisualPrompt>,
}

/// The paper's visual prompts: a mark drawn into the image instead of (or as well as) naming the
/// region in text. `visual_prompt = { box = "region" }` outlines the box in column `region`
/// (`[y0, x0, y1, x1]` normalised to [0, 1], or an object with those keys); `{ point = "at" }`
/// draws a dot at `[y, x]`. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisualPrompt {
    #[serde(default, rename = "box", skip_serializing_if = "Option::is_none")]
    pub box_column: Option<String>,
    #[serde(default, rename = "point", skip_serializing_if = "Option::is_none")]
    pub point_column: Option<String>,
    /// RGB; default red.
    #[serde(default = "VisualPrompt::red")]
    pub colour: [u8; 3],
    /// The box's line width or the point's radius, a fraction of the image's side (default 0.02).
    #[serde(default = "VisualPrompt::default_thickness")]
    pub thickness: f64,
}

/// What a visual prompt draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `[y0, x0, y1, x1]`, outlined.
    Box,
    /// `[y, x]`, a filled dot.
    Point,
}

impl Mark {
    /// The spec's key for it.
    pub fn key(self) -> &'static str {
        match self {
            Mark::Box => "box",
            Mark::Point => "point",
        }
    }
}

impl VisualPrompt {
    /// The mark and the column holding it; `None` unless exactly one of `box`, `point` is set.
    pub fn mark(&self) -> Option<(Mark, &str)> {
        match (&self.box_column, &self.point_column) {
            (Some(column), None) => Some((Mark::Box, column)),
            (None, Some(column)) => Some((Mark::Point, column)),
            _ => None,
        }
    }

    fn red() -> [u8; 3] {
        [255, 0, 0]
    }
    fn default_thickness() -> f64 {
        0.02
    }
}

/// What to do with an example whose text exceeds its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverLength {
    /// Cut the suffix (the prefix is never cut), keeping `eos`. Default.
    #[default]
    Truncate,
    /// Drop the example; it still counts as drawn.
    Skip,
}

/// A row filter: `filter = { column = "split", equals = "train" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub column: String,
    pub equals: Scalar,
}

/// A plain value to compare a column against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// Held-out evaluation of every task whose source has `eval_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Eval {
    /// Held-out examples per task (fewer if the data has fewer). Default 100.
    pub examples: u32,
    /// Evaluate every this many steps during training, and at the end; 0: only at the end.
    pub every: u64,
    /// Tokens generated per answer at most. Default 32.
    pub max_new_tokens: u32,
    /// 1: greedy decoding; more: beam search with this many beams.
    pub beams: u32,
}

impl Default for Eval {
    fn default() -> Self {
        Eval {
            examples: 100,
            every: 0,
            max_new_tokens: 32,
            beams: 1,
        }
    }
}

/// How a task's predictions are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluator {
    #[default]
    ExactMatch,
    VqaAccuracy,
    Cider,
    DetectionIou,
}

/// One stage of training: a resolution, a text length, a budget and the task weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Which defaults the training knobs start from. Default `pretrain`.
    #[serde(default)]
    pub recipe: Recipe,
    /// What the stage trains: the prefix-LM (default) or, with `siglip`, the image encoder
    /// alone against a text tower, as SigLIP is trained.
    #[serde(default, skip_serializing_if = "is_default")]
    pub objective: Objective,
    /// Image side in pixels, a multiple of the patch size. Default 224.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<u32>,
    /// Text tokens per example: bos + prefix + separator + suffix + eos (image tokens come on
    /// top). Default 128, the paper's Stage 1 length; its Stage 2 uses 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_len: Option<u32>,
    /// Examples per batch. Default: 1024 for `pretrain`, 256 for `transfer` (the paper's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    pub budget: Budget,
    /// Pack several examples into one row (a batch keeps `batch_size` examples, in fewer rows).
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,
    /// Most images one packed row may carry; default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_images: Option<u32>,
    pub weights: Weights,
    #[serde(default, skip_serializing_if = "is_default")]
    pub train: TrainSpec,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// What a stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The whole model on the next-token loss of each example's suffix.
    #[default]
    PrefixLm,
    /// The image encoder only, with SigLIP's sigmoid loss (arXiv 2303.15343): each image's
    /// pooled embedding against a small text tower's embedding of its example's suffix (a
    /// caption), the other examples of the batch as negatives. The LLM and the projector rest.
    Siglip,
}

/// When a stage ends.
///
/// ```toml
/// budget = { examples = 1_000_000_000 }
/// budget = { epochs = 3, task = "vqa" }   # 3 passes over the task's data, counted in this stage
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawBudget", into = "RawBudget")]
pub enum Budget {
    Examples(u64),
    Epochs { epochs: u32, task: String },
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    examples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<String>,
}

impl TryFrom<RawBudget> for Budget {
    type Error = &'static str;
    fn try_from(raw: RawBudget) -> Result<Self, Self::Error> {
        match raw {
            RawBudget {
                examples: Some(n),
                epochs: None,
                task: None,
            } => Ok(Budget::Examples(n)),
            RawBudget {
                examples: None,
                epochs: Some(epochs),
                task: Some(task),
            } => Ok(Budget::Epochs { epochs, task }),
            RawBudget {
                examples: None,
                epochs: Some(_),
                task: None,
            } => Err("a budget in `epochs` needs `task`: the task whose passes are counted"),
            _ => Err("a budget is either `{ examples = N }` or `{ epochs = N, task = \"name\" }`"),
        }
    }
}

impl From<Budget> for RawBudget {
    fn from(budget: Budget) -> Self {
        match budget {
            Budget::Examples(n) => RawBudget {
                examples: Some(n),
                epochs: None,
                task: None,
            },
            Budget::Epochs { epochs, task } => RawBudget {
                examples: None,
                epochs: Some(epochs),
                task: Some(task),
            },
        }
    }
}

impl Mixture {
    pub fn from_toml_str(text: &str) -> Result<Mixture, SpecError> {
        let mut mixture: Mixture = toml::from_str(text).map_err(|e| SpecError::Toml {
            line: e
                .span()
                .map(|span| 1 + text[..span.start].matches('\n').count()),
            message: e.message().trim().to_string(),
        })?;
        mixture.lines = Lines::from_toml(text);
        Ok(mixture)
    }

    pub fn from_json_str(text: &str) -> Result<Mixture, SpecError> {
        serde_json::from_str(text).map_err(|e| SpecError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// Reads a `.toml` or `.json` spec file.
    /// Reads a spec file. Relative data paths in it are relative to the file's folder, so a
    /// spec means the same data wherever the command runs.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Mixture, SpecError> {
        let path = path.as_ref();
        let read = || {
            std::fs::read_to_string(path).map_err(|source| SpecError::Io {
                path: path.into(),
                source,
            })
        };
        let mut mixture = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Mixture::from_toml_str(&read()?),
            Some("json") => Mixture::from_json_str(&read()?),
            _ => Err(SpecError::UnknownFormat { path: path.into() }),
        }?;
        mixture.rebase(path.parent().unwrap_or(Path::new("")));
        Ok(mixture)
    }

    /// Makes every relative local data path relative to `base` instead. URLs (`s3://...`) and
    /// absolute paths are left alone.
    pub fn rebase(&mut self, base: &Path) {
        for source in self.sources.values_mut() {
            for entry in source.data.iter_mut().chain(&mut source.eval_data) {
                let is_url = entry
                    .split_once("://")
                    .is_some_and(|(scheme, _)| scheme.len() > 1);
                if !is_url && Path::new(entry.as_str()).is_relative() {
                    *entry = base.join(entry.as_str()).display().to_string();
                }
            }
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a mixture always serialises")
    }

    /// Stage `stage`'s training knobs: its own, except that a stage that `continues` takes the
    /// schedule knobs (`lr`, `schedule`, warm-ups, `timescale`) of the stage before it.
    pub fn stage_training(&self, stage: usize) -> Training {
        let own = self.stages[stage].training();
        if !own.continues || stage == 0 {
            return own;
        }
        let before = self.stage_training(stage - 1);
        Training {
            lr: before.lr,
            schedule: before.schedule,
            warmup: before.warmup,
            timescale: before.timescale,
            vit_warmup: before.vit_warmup,
            ..own
        }
    }

    /// Normalised weights (summing to one) of the tasks stage `stage` draws from, in task-name
    /// order; `None` if no task has a positive weight.
    pub fn stage_weights(&self, stage: usize) -> Option<Vec<(String, f64)>> {
        let raw = self.stages.get(stage)?.weights.raw(self);
        let known: Vec<_> = raw
            .into_iter()
            .filter(|(t, _)| self.tasks.contains_key(t))
            .collect();
        weights::normalise(&known)
    }

    /// Images per example of `task`: its `images`, else one per image column of its source.
    pub fn images_per_example(&self, task: &str) -> u32 {
        let Some(task) = self.tasks.get(task) else {
            return 0;
        };
        task.images.unwrap_or_else(|| {
            self.sources
                .get(&task.source)
                .map_or(0, |s| s.image_columns.len() as u32)
        })
    }
}

impl Task {
    pub fn prefix_template(&self) -> Result<Template, crate::TemplateError> {
        Template::parse(&self.prefix)
    }
    pub fn suffix_template(&self) -> Result<Template, crate::TemplateError> {
        Template::parse(&self.suffix)
    }
}

impl Source {
    /// The column in the files that template name `name` reads (after renames).
    pub fn column<'a>(&'a self, name: &'a str) -> &'a str {
        self.columns.get(name).map_or(name, String::as_str)
    }
}

impl Stage {
    pub fn resolution(&self) -> u32 {
        self.resolution.unwrap_or(224)
    }
    pub fn text_len(&self) -> u32 {
        self.text_len.unwrap_or(128)
    }
    pub fn batch_size(&self) -> u32 {
        self.batch_size.unwrap_or(self.recipe.batch_size())
    }
    pub fn packing(&self) -> bool {
        self.packing.unwrap_or(false)
    }
    /// Image tokens per image: (resolution / patch)².
    pub fn image_tokens(&self, patch_size: u32) -> u32 {
        let side = self.resolution() / patch_size.max(1);
        side * side
    }
    /// The stage's own training knobs with the recipe's defaults filled in; see
    /// [`Mixture::stage_training`] for those of a stage that `continues` the one before.
    pub fn training(&self) -> Training {
        self.train.resolve(self.recipe)
    }
}

/// Deserialises a map, rejecting a repeated key (JSON allows them; TOML already does not).
pub(crate) fn unique_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table of named entries")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format!("duplicate name {key:?}")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique(PhantomData))
}

/// Accepts `"a"` as well as `["a", "b"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a path or a list of paths")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![s.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}
