//! Checks a spec before anything runs, collecting every problem rather than the first.

use std::collections::BTreeMap;

use crate::error::{Problem, ValidationError, ValidationErrors};
use crate::lines::{index_path, key_path};
use crate::spec::{Budget, Mixture, Objective, Source, Stage};
use crate::suggest::closest;
use crate::training::{Schedule, TrainSpec, Warmup};
use crate::weights::Weights;

/// Columns of a source's files, by source name; `None` where unknown.
pub type ColumnsOf<'a> = dyn Fn(&str) -> Option<Vec<String>> + 'a;

/// What only the caller knows: the model's patch size, the sources' real columns (the
/// pipeline reads them from the Parquet schema) and a tokenizer to count prefix tokens.
#[derive(Clone, Copy)]
pub struct ValidationContext<'a> {
    /// Default 14 (SigLIP So400m/14).
    pub patch_size: u32,
    /// Where `None` (or the function returns `None`), column checks are skipped.
    pub columns_of: Option<&'a ColumnsOf<'a>>,
    /// Tokens of a prefix template's literal text (its fields left out, so a lower bound of any
    /// rendered prefix). Default: one token per whitespace-separated word, also a lower bound.
    pub prefix_token_count: Option<&'a dyn Fn(&str) -> usize>,
}

impl Default for ValidationContext<'_> {
    fn default() -> Self {
        ValidationContext {
            patch_size: 14,
            columns_of: None,
            prefix_token_count: None,
        }
    }
}

impl<'a> ValidationContext<'a> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_patch_size(self, patch_size: u32) -> Self {
        ValidationContext { patch_size, ..self }
    }
    pub fn with_columns(self, columns_of: &'a ColumnsOf<'a>) -> Self {
        ValidationContext {
            columns_of: Some(columns_of),
            ..self
        }
    }
    pub fn with_prefix_tokens(self, count: &'a dyn Fn(&str) -> usize) -> Self {
        ValidationContext {
            prefix_token_count: Some(count),
            ..self
        }
    }

    fn prefix_tokens(&self, literal: &str) -> usize {
        match self.prefix_token_count {
            Some(count) => count(literal),
            None => literal.split_whitespace().count(),
        }
    }
}

/// Text tokens every example spends besides its prefix: bos, the "\n" separator, at least one
/// suffix token, eos.
const TEXT_OVERHEAD: usize = 4;

impl Mixture {
    /// Every problem in the spec, each with its key path and (for TOML) line.
    pub fn validate(&self, ctx: &ValidationContext) -> Result<(), ValidationErrors> {
        let mut check = Checker {
            mixture: self,
            ctx,
            errors: Vec::new(),
        };
        check.sources();
        check.tasks();
        check.stages();
        check.eval();
        match check.errors.is_empty() {
            true => Ok(()),
            false => Err(ValidationErrors(check.errors)),
        }
    }
}

struct Checker<'m, 'c> {
    mixture: &'m Mixture,
    ctx: &'c ValidationContext<'c>,
    errors: Vec<ValidationError>,
}

impl Checker<'_, '_> {
    fn error(&mut self, path: impl Into<String>, problem: Problem) {
        let path = path.into();
        let line = self.mixture.lines.line(&path);
        self.errors.push(ValidationError {
            path,
            line,
            problem,
        });
    }

    fn positive(&mut self, path: impl Into<String>, value: Option<impl Into<u64>>) {
        if value.map(Into::into) == Some(0) {
            self.error(path, Problem::Zero);
        }
    }

    fn in_range(
        &mut self,
        path: String,
        value: Option<f64>,
        ok: fn(f64) -> bool,
        range: &'static str,
    ) {
        if let Some(value) = value.filter(|&v| !ok(v)) {
            self.error(path, Problem::OutOfRange { value, range });
        }
    }

    /// Names a source's template may use, if its files' columns are known: every file column,
    /// plus renames that point at one.
    fn names_of(&self, source_name: &str, source: &Source) -> Option<Vec<String>> {
        let file_columns = (self.ctx.columns_of?)(source_name)?;
        let renamed = source
            .columns
            .iter()
            .filter(|(_, to)| file_columns.contains(to))
            .map(|(from, _)| from.clone());
        let mut names: Vec<String> = file_columns.iter().cloned().chain(renamed).collect();
        names.sort();
        names.dedup();
        Some(names)
    }

    fn unknown_column(&mut self, path: String, source_name: &str, column: &str, known: &[String]) {
        let suggestion = closest(column, known.iter().map(String::as_str));
        let problem = Problem::UnknownColumn {
            source_name: source_name.into(),
            column: column.into(),
            suggestion,
        };
        self.error(path, problem);
    }

    fn eval(&mut self) {
        let eval = &self.mixture.eval;
        self.positive("eval.examples", Some(eval.examples));
        self.positive("eval.max_new_tokens", Some(eval.max_new_tokens));
        self.positive("eval.beams", Some(eval.beams));
    }

    fn sources(&mut self) {
        for (name, source) in &self.mixture.sources {
            let path = key_path("sources", name);
            if name.is_empty() {
                self.error(&path, Problem::EmptyName);
            }
            if source.data.is_empty() || source.data.iter().any(|d| d.trim().is_empty()) {
                self.error(key_path(&path, "data"), Problem::NoData);
            }
            self.positive(key_path(&path, "epochs"), source.epochs);
            self.positive(key_path(&path, "size"), source.size);
            let Some(file_columns) = self.ctx.columns_of.and_then(|f| f(name)) else {
                continue;
            };
            for (from, to) in &source.columns {
                if !file_columns.contains(to) {
                    self.unknown_column(
                        key_path(&key_path(&path, "columns"), from),
                        name,
                        to,
                        &file_columns,
                    );
                }
            }
            let names = self.names_of(name, source).unwrap_or_default();
            for (i, column) in source.image_columns.iter().enumerate() {
                if !names.contains(column) {
                    self.unknown_column(
                        index_path(&key_path(&path, "image_columns"), i),
                        name,
                        column,
                        &names,
                    );
                }
            }
        }
    }

    fn tasks(&mut self) {
        for (name, task) in &self.mixture.tasks {
            let path = key_path("tasks", name);
            if name.is_empty() {
                self.error(&path, Problem::EmptyName);
            }
            self.positive(key_path(&path, "images"), task.images);
            self.positive(key_path(&path, "max_text_len"), task.max_text_len);
            if let Some(problem) = task
                .max_text_len
                .and_then(|cap| self.text_too_short(name, cap))
            {
                self.error(key_path(&path, "max_text_len"), problem);
            }
            let source = self.mixture.sources.get(&task.source);
            if source.is_none() {
                let suggestion = closest(
                    &task.source,
                    self.mixture.sources.keys().map(String::as_str),
                );
                self.error(
                    key_path(&path, "source"),
                    Problem::UnknownSource {
                        name: task.source.clone(),
                        suggestion,
                    },
                );
            }
            let names = source.and_then(|s| self.names_of(&task.source, s));
            for (key, text) in [("prefix", &task.prefix), ("suffix", &task.suffix)] {
                match crate::Template::parse(text) {
                    Err(e) => self.error(key_path(&path, key), Problem::Template(e)),
                    Ok(template) => {
                        for column in template.columns() {
                            if let Some(names) =
                                names.as_ref().filter(|n| !n.iter().any(|n| n == column))
                            {
                                self.unknown_column(
                                    key_path(&path, key),
                                    &task.source,
                                    column,
                                    names,
                                );
                            }
                        }
                    }
                }
            }
            if let (Some(filter), Some(names)) = (&task.filter, &names)
                && !names.contains(&filter.column)
            {
                let filter_path = key_path(&key_path(&path, "filter"), "column");
                self.unknown_column(filter_path, &task.source, &filter.column, names);
            }
            if let Some(prompt) = &task.visual_prompt {
                let prompt_path = key_path(&path, "visual_prompt");
                match prompt.mark() {
                    Some((mark, column)) => {
                        if let Some(names) =
                            names.as_ref().filter(|n| !n.iter().any(|n| n == column))
                        {
                            let column_path = key_path(&prompt_path, mark.key());
                            self.unknown_column(column_path, &task.source, column, names);
                        }
                    }
                    None => self.error(&prompt_path, Problem::VisualPromptMark),
                }
                self.in_range(
                    key_path(&prompt_path, "thickness"),
                    Some(prompt.thickness),
                    |t| t > 0.0 && t <= 0.5,
                    "(0, 0.5]",
                );
            }
        }
    }

    fn stages(&mut self) {
        if self.mixture.stages.is_empty() {
            self.error("stages", Problem::NoStages);
        }
        let mut first_use: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, stage) in self.mixture.stages.iter().enumerate() {
            let path = index_path("stages", i);
            if stage.name.is_empty() {
                self.error(key_path(&path, "name"), Problem::EmptyName);
            } else if let Some(&first) = first_use.get(stage.name.as_str()) {
                self.error(
                    key_path(&path, "name"),
                    Problem::DuplicateStage {
                        name: stage.name.clone(),
                        first,
                    },
                );
            } else {
                first_use.insert(&stage.name, i);
            }
            self.shape(&path, stage);
            self.weights(&path, stage);
            self.budget(i, &path, stage);
            self.fits(i, &path, stage);
            self.training(i, &path, stage);
            if stage.objective == Objective::Siglip {
                self.siglip(i, &path, stage);
            }
        }
    }

    fn shape(&mut self, path: &str, stage: &Stage) {
        let patch = self.ctx.patch_size;
        match stage.resolution {
            Some(0) => self.error(key_path(path, "resolution"), Problem::Zero),
            _ if patch > 0 && !stage.resolution().is_multiple_of(patch) => {
                let problem = Problem::Resolution {
                    resolution: stage.resolution(),
                    patch,
                };
                self.error(key_path(path, "resolution"), problem);
            }
            _ => {}
        }
        self.positive(key_path(path, "text_len"), stage.text_len);
        self.positive(key_path(path, "batch_size"), stage.batch_size);
        self.positive(key_path(path, "max_images"), stage.max_images);
    }

    fn unknown_task(&mut self, path: String, name: &str) {
        let suggestion = closest(name, self.mixture.tasks.keys().map(String::as_str));
        self.error(
            path,
            Problem::UnknownTask {
                name: name.into(),
                suggestion,
            },
        );
    }

    fn weights(&mut self, stage_path: &str, stage: &Stage) {
        let path = key_path(stage_path, "weights");
        match &stage.weights {
            Weights::Explicit(map) => {
                if map.is_empty() {
                    return self.error(path, Problem::NoWeights);
                }
                let mut bad = false;
                for (task, &w) in map {
                    if !self.mixture.tasks.contains_key(task) {
                        self.unknown_task(key_path(&path, task), task);
                    }
                    if !w.is_finite() || w < 0.0 {
                        bad = true;
                        self.error(key_path(&path, task), Problem::BadWeight(w));
                    }
                }
                if !bad && map.values().all(|&w| w == 0.0) {
                    self.error(path, Problem::AllWeightsZero);
                }
            }
            Weights::Proportional(p) => {
                let path = key_path(&path, "proportional");
                let temperature_ok: fn(f64) -> bool = |t| t.is_finite() && t > 0.0;
                self.in_range(
                    key_path(&path, "temperature"),
                    Some(p.temperature),
                    temperature_ok,
                    "(0, ∞)",
                );
                self.positive(key_path(&path, "cap"), p.cap);
                let all: Vec<&String> = self.mixture.tasks.keys().collect();
                let tasks = match &p.tasks {
                    Some(list) => list.iter().collect(),
                    None => all,
                };
                if tasks.is_empty() {
                    return self.error(path, Problem::NoWeights);
                }
                let mut missing_size = Vec::new();
                for (j, task) in tasks.into_iter().enumerate() {
                    let Some(t) = self.mixture.tasks.get(task) else {
                        self.unknown_task(index_path(&key_path(&path, "tasks"), j), task);
                        continue;
                    };
                    let has_size = self
                        .mixture
                        .sources
                        .get(&t.source)
                        .is_none_or(|s| s.size.is_some());
                    if !has_size && !missing_size.contains(&t.source) {
                        missing_size.push(t.source.clone());
                    }
                }
                for source_name in missing_size {
                    self.error(&path, Problem::MissingSize { source_name });
                }
            }
        }
    }

    fn budget(&mut self, index: usize, stage_path: &str, stage: &Stage) {
        let path = key_path(stage_path, "budget");
        let weighted = self.mixture.stage_weights(index).unwrap_or_default();
        match &stage.budget {
            Budget::Examples(0) => self.error(key_path(&path, "examples"), Problem::Zero),
            &Budget::Examples(examples) => {
                if examples < stage.batch_size() as u64 && stage.batch_size() > 0 {
                    let problem = Problem::BudgetBelowBatch {
                        examples,
                        batch_size: stage.batch_size(),
                    };
                    self.error(key_path(&path, "examples"), problem);
                }
                // Only decidable when every task's data is both limited and of known size.
                let limits: Option<Vec<u64>> = weighted
                    .iter()
                    .map(|(task, _)| {
                        let source = self.mixture.sources.get(&self.mixture.tasks[task].source)?;
                        Some(source.size? * source.epochs? as u64)
                    })
                    .collect();
                if let Some(available) = limits
                    .map(|l| l.iter().sum::<u64>())
                    .filter(|&a| a < examples && !weighted.is_empty())
                {
                    self.error(
                        key_path(&path, "examples"),
                        Problem::BudgetExceedsData {
                            budget: examples,
                            available,
                        },
                    );
                }
            }
            Budget::Epochs { epochs, task } => {
                if *epochs == 0 {
                    self.error(key_path(&path, "epochs"), Problem::Zero);
                }
                let Some(t) = self.mixture.tasks.get(task) else {
                    return self.unknown_task(key_path(&path, "task"), task);
                };
                if !weighted.iter().any(|(w, _)| w == task) {
                    self.error(
                        key_path(&path, "task"),
                        Problem::BudgetTaskUnweighted { task: task.clone() },
                    );
                }
                if let Some(limit) = self
                    .mixture
                    .sources
                    .get(&t.source)
                    .and_then(|s| s.epochs)
                    .filter(|l| l < epochs)
                {
                    let problem = Problem::BudgetBeyondEpochLimit {
                        epochs: *epochs,
                        limit,
                        source_name: t.source.clone(),
                    };
                    self.error(key_path(&path, "epochs"), problem);
                }
            }
        }
    }

    /// Each weighted task's images and text fit the stage.
    fn fits(&mut self, index: usize, stage_path: &str, stage: &Stage) {
        for (name, _) in self.mixture.stage_weights(index).unwrap_or_default() {
            let task = &self.mixture.tasks[&name];
            let images = self.mixture.images_per_example(&name);
            if let Some(cap) = stage.max_images.filter(|&cap| cap > 0 && images > cap) {
                self.error(
                    key_path(stage_path, "max_images"),
                    Problem::TooManyImages {
                        task: name.clone(),
                        images,
                        cap,
                    },
                );
            }
            // A task cap below the stage's length binds instead, and is checked with the task.
            if task.max_text_len.is_some_and(|cap| cap < stage.text_len()) {
                continue;
            }
            if let Some(problem) = self.text_too_short(&name, stage.text_len()) {
                self.error(key_path(stage_path, "text_len"), problem);
            }
        }
    }

    /// A SigLIP stage pairs one image with one text per row, and needs other pairs in the
    /// batch as negatives.
    fn siglip(&mut self, index: usize, stage_path: &str, stage: &Stage) {
        if stage.packing() {
            self.error(key_path(stage_path, "packing"), Problem::SiglipPacking);
        }
        if stage.batch_size() < 2 {
            let problem = Problem::SiglipBatch(stage.batch_size());
            self.error(key_path(stage_path, "batch_size"), problem);
        }
        let t = &stage.train;
        let prefix_lm_knobs = [
            ("freeze_vit", t.freeze_vit.is_some()),
            ("vit_warmup", t.vit_warmup.is_some()),
            ("image_lr_scale", t.image_lr_scale.is_some()),
            ("label_smoothing", t.label_smoothing.is_some()),
            ("llm_dropout", t.llm_dropout.is_some()),
            ("loss_norm", t.loss_norm.is_some()),
        ];
        let train = key_path(stage_path, "train");
        self.refuse_set(&train, prefix_lm_knobs, Problem::SiglipKnob);
        for (task, _) in self.mixture.stage_weights(index).unwrap_or_default() {
            let images = self.mixture.images_per_example(&task);
            if images != 1 {
                let path = key_path(&key_path(stage_path, "weights"), &task);
                self.error(path, Problem::SiglipImages { task, images });
            }
        }
    }

    /// Whether `text_len` tokens leave room for the task's prefix and the fixed tokens.
    fn text_too_short(&self, name: &str, text_len: u32) -> Option<Problem> {
        let prefix = self.mixture.tasks[name].prefix_template().ok()?;
        let prefix = self.ctx.prefix_tokens(&prefix.literal_text());
        let needed = prefix + TEXT_OVERHEAD;
        (text_len > 0 && (text_len as usize) < needed).then(|| Problem::TextTooShort {
            task: name.to_string(),
            text_len,
            prefix,
            needed,
        })
    }

    fn training(&mut self, index: usize, stage_path: &str, stage: &Stage) {
        let path = key_path(stage_path, "train");
        let t = &stage.train;
        if t.continues == Some(true) {
            self.continues(index, &path, t);
        }
        self.in_range(
            key_path(&path, "lr"),
            t.lr,
            |v| v.is_finite() && v > 0.0,
            "(0, ∞)",
        );
        self.in_range(
            key_path(&path, "image_lr_scale"),
            t.image_lr_scale,
            |v| v.is_finite() && v > 0.0,
            "(0, ∞)",
        );
        self.in_range(
            key_path(&path, "label_smoothing"),
            t.label_smoothing,
            |v| (0.0..1.0).contains(&v),
            "[0, 1)",
        );
        self.in_range(
            key_path(&path, "llm_dropout"),
            t.llm_dropout,
            |v| (0.0..1.0).contains(&v),
            "[0, 1)",
        );
        self.in_range(
            key_path(&path, "weight_decay"),
            t.weight_decay,
            |v| v.is_finite() && v >= 0.0,
            "[0, ∞)",
        );
        self.in_range(
            key_path(&path, "grad_clip"),
            t.grad_clip,
            |v| v.is_finite() && v >= 0.0,
            "[0, ∞)",
        );
        let schedule = self.mixture.stage_training(index).schedule;
        for (knob, value) in [("timescale", t.timescale), ("cooldown", t.cooldown)] {
            let at = key_path(&path, knob);
            match value {
                Some(_) if schedule != Schedule::Rsqrt => self.error(
                    at,
                    Problem::RsqrtOnly {
                        knob,
                        schedule: schedule.to_string(),
                    },
                ),
                Some(0) if knob == "timescale" => self.error(at, Problem::Zero),
                _ => {}
            }
        }
        for (key, warmup) in [("warmup", t.warmup), ("vit_warmup", t.vit_warmup)] {
            let fraction = match warmup {
                Some(Warmup::Fraction(f)) => Some(f),
                _ => None,
            };
            self.in_range(
                key_path(&key_path(&path, key), "fraction"),
                fraction,
                |v| (0.0..=1.0).contains(&v),
                "[0, 1]",
            );
        }
    }

    /// A stage that continues the one before it takes that stage's schedule knobs, and only
    /// rsqrt, without an end, can be carried on.
    fn continues(&mut self, index: usize, path: &str, t: &TrainSpec) {
        let at = key_path(path, "continues");
        match index.checked_sub(1) {
            None => self.error(at, Problem::NothingToContinue),
            Some(before) => {
                let schedule = self.mixture.stage_training(before).schedule;
                if schedule != Schedule::Rsqrt {
                    let stage = self.mixture.stages[before].name.clone();
                    let schedule = schedule.to_string();
                    self.error(at, Problem::ContinuesRsqrtOnly { stage, schedule });
                }
            }
        }
        let inherited = [
            ("lr", t.lr.is_some()),
            ("schedule", t.schedule.is_some()),
            ("warmup", t.warmup.is_some()),
            ("timescale", t.timescale.is_some()),
            ("vit_warmup", t.vit_warmup.is_some()),
        ];
        self.refuse_set(path, inherited, Problem::ContinuedKnob);
    }

    /// An error at `train_path.knob` for each knob set where it does not apply.
    fn refuse_set<const N: usize>(
        &mut self,
        train_path: &str,
        knobs: [(&'static str, bool); N],
        problem: fn(&'static str) -> Problem,
    ) {
        for (knob, set) in knobs {
            if set {
                self.error(key_path(train_path, knob), problem(knob));
            }
        }
    }
}
