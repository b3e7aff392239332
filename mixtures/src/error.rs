//! Every error the crate reports. Validation errors carry the spec's key path and, for TOML
//! specs, the line, so a user can jump straight to the mistake.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A spec that could not be read or parsed at all.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: unknown spec format: expected a .toml or .json file", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}{message}", line_prefix(*line))]
    Toml {
        line: Option<usize>,
        message: String,
    },
    #[error("line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// A template string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at byte {position}: {problem}")]
pub struct TemplateError {
    /// Byte offset into the template where the problem starts.
    pub position: usize,
    pub problem: TemplateProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateProblem {
    #[error("'{{' is never closed (write '{{{{' for a literal brace)")]
    Unclosed,
    #[error("'}}' without a matching '{{' (write '}}}}' for a literal brace)")]
    StrayClose,
    #[error("empty field name")]
    EmptyField,
    #[error("empty format after ':'")]
    EmptyFormat,
    #[error("field {0:?} may only hold letters, digits, '_', '-' and '.'")]
    BadName(String),
}

/// One problem found by [`crate::Mixture::validate`].
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{path}{}: {problem}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct ValidationError {
    /// Key path in the spec, e.g. `stages[1].weights.ocr`.
    pub path: String,
    /// 1-based line in the TOML text, when the spec came from TOML.
    pub line: Option<usize>,
    pub problem: Problem,
}

/// What is wrong, independent of where.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Problem {
    #[error("no task named {name:?}{}", did_you_mean(suggestion))]
    UnknownTask {
        name: String,
        suggestion: Option<String>,
    },
    #[error("no source named {name:?}{}", did_you_mean(suggestion))]
    UnknownSource {
        name: String,
        suggestion: Option<String>,
    },
    #[error(
        "source {source_name:?} has no column {column:?}{}",
        did_you_mean(suggestion)
    )]
    UnknownColumn {
        source_name: String,
        column: String,
        suggestion: Option<String>,
    },
    #[error("bad template: {0}")]
    Template(#[from] TemplateError),
    #[error("a source needs at least one file, glob or URL in `data`")]
    NoData,
    #[error("a mixture needs at least one stage")]
    NoStages,
    #[error("a name may not be empty")]
    EmptyName,
    #[error("stage name {name:?} is already used by stages[{first}]")]
    DuplicateStage { name: String, first: usize },
    #[error("the stage weights no task")]
    NoWeights,
    #[error("a weight must be a finite number >= 0, got {0}")]
    BadWeight(f64),
    #[error("every weight is zero: the stage could never draw an example")]
    AllWeightsZero,
    #[error("proportional weights need `size` (rows) of source {source_name:?}")]
    MissingSize { source_name: String },
    #[error("must be at least 1")]
    Zero,
    #[error("only the rsqrt schedule has a {knob}; this stage's schedule is {schedule}")]
    RsqrtOnly {
        knob: &'static str,
        schedule: String,
    },
    #[error("a visual prompt needs exactly one of `box` or `point` (a column name)")]
    VisualPromptMark,
    #[error("must be in {range}, got {value}")]
    OutOfRange { value: f64, range: &'static str },
    #[error("resolution {resolution} is not a multiple of the patch size {patch}")]
    Resolution { resolution: u32, patch: u32 },
    #[error(
        "text length {text_len} is too short for task {task:?}: bos + prefix ({prefix} tokens) + \
         separator + one suffix token + eos need {needed}"
    )]
    TextTooShort {
        task: String,
        text_len: u32,
        prefix: usize,
        needed: usize,
    },
    #[error("task {task:?} has {images} images per example, over this stage's cap of {cap}")]
    TooManyImages { task: String, images: u32, cap: u32 },
    #[error("a budget of {examples} examples is less than one batch of {batch_size}")]
    BudgetBelowBatch { examples: u64, batch_size: u32 },
    #[error("the budget counts epochs of task {task:?}, which has no weight in this stage")]
    BudgetTaskUnweighted { task: String },
    #[error("the budget asks for {epochs} epochs but source {source_name:?} allows only {limit}")]
    BudgetBeyondEpochLimit {
        epochs: u32,
        limit: u32,
        source_name: String,
    },
    #[error("a siglip stage pairs one image with one text per row: packing must be off")]
    SiglipPacking,
    #[error(
        "a siglip stage needs at least 2 examples per batch (the others are each pair's negatives), got {0}"
    )]
    SiglipBatch(u32),
    #[error(
        "a siglip stage trains the image encoder and a text tower at the stage's rate: `{0}`, a prefix-LM knob, does not apply"
    )]
    SiglipKnob(&'static str),
    #[error("the first stage has no schedule before it to continue")]
    NothingToContinue,
    #[error(
        "the stage before, {stage:?}, runs a {schedule} schedule: only rsqrt, without an end, can be continued"
    )]
    ContinuesRsqrtOnly { stage: String, schedule: String },
    #[error(
        "a stage that continues the one before it takes `{0}` from it: leave `{0}` out, or drop `continues`"
    )]
    ContinuedKnob(&'static str),
    #[error("a siglip stage needs one image per example; task {task:?} has {images}")]
    SiglipImages { task: String, images: u32 },
    #[error(
        "the budget of {budget} examples exceeds the {available} that the sources' epoch limits allow"
    )]
    BudgetExceedsData { budget: u64, available: u64 },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default()
}

/// Every problem found in a spec, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ValidationError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a ValidationError;
    type IntoIter = std::slice::Iter<'a, ValidationError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Why a sampler could not be built or restored.
#[derive(Debug, Error)]
pub enum SamplerError {
    #[error("invalid mixture:\n{0}")]
    Invalid(#[from] ValidationErrors),
    #[error("state is at stage {stage} but the mixture has only {stages} stages")]
    StageOutOfRange { stage: usize, stages: usize },
    #[error("state holds credit for task {task:?}, which stage {stage} does not weight")]
    StateMismatch { stage: usize, task: String },
}
