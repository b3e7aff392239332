//! Submitted mixture specs: parsed (TOML or JSON), their data paths confined to the data roots,
//! and validated against their data, every problem reported with its key. Blocking (the
//! pipeline reads the sources' footers): call it from a blocking thread.

use std::path::Path;

use mixtures::{Mixture, SpecError, ValidationContext};
use pipeline::mixture::inspect_sources;

use crate::error::{Problem, Result, ServiceError};
use crate::roots::DataRoots;

/// Parses a spec's text: JSON when it starts with `{`, TOML otherwise.
pub fn parse(text: &str) -> Result<Mixture> {
    let parsed = if text.trim_start().starts_with('{') {
        Mixture::from_json_str(text)
    } else {
        Mixture::from_toml_str(text)
    };
    parsed.map_err(|e| ServiceError::invalid("the spec", vec![spec_problem(&e)]))
}

fn spec_problem(error: &SpecError) -> Problem {
    let line = match error {
        SpecError::Toml { line, .. } => *line,
        SpecError::Json { line, .. } => Some(*line),
        _ => None,
    };
    let message = match error {
        SpecError::Toml { message, .. } => message.clone(),
        other => other.to_string(),
    };
    Problem {
        key: None,
        line,
        message,
    }
}

/// `mixture` with its local data paths (training and held-out) made absolute (relative ones
/// against `base`, default the first data root) and confined to the roots, checked against its
/// sources' columns.
pub fn check(mut mixture: Mixture, base: Option<&Path>, roots: &DataRoots) -> Result<Mixture> {
    let base = base.unwrap_or(roots.base());
    let mut problems = Vec::new();
    for (name, source) in &mut mixture.sources {
        for (key, entries) in [
            ("data", &mut source.data),
            ("eval_data", &mut source.eval_data),
        ] {
            for (i, entry) in entries.iter_mut().enumerate() {
                match roots.confine_data(entry, base, &format!("sources.{name}.{key}[{i}]")) {
                    Ok(confined) => *entry = confined,
                    Err(problem) => problems.push(problem),
                }
            }
        }
    }
    // Sources outside the roots are never read: the spec is checked without their columns.
    let confined = problems.is_empty();
    let facts = if confined {
        inspect_sources(&mixture)
    } else {
        Default::default()
    };
    for (name, fact) in &facts {
        if let Err(e) = fact {
            problems.push(Problem::at(format!("sources.{name}.data"), e.clone()));
        }
    }
    let columns_of = |s: &str| facts.get(s)?.as_ref().ok().map(|f| f.columns.clone());
    if let Err(errors) = mixture.validate(&ValidationContext::new().with_columns(&columns_of)) {
        problems.extend(errors.iter().map(|e| Problem {
            key: Some(e.path.clone()),
            line: e.line,
            message: e.problem.to_string(),
        }));
    }
    if problems.is_empty() {
        Ok(mixture)
    } else {
        Err(ServiceError::invalid("the spec", problems))
    }
}

/// `spec` (a stored spec's JSON) with the stages of `text` appended: TOML `[[stages]]` tables,
/// or JSON `{"stages": [...]}` or `[...]`. The result still needs [`check`].
pub fn append_stages(spec: &str, text: &str) -> Result<Mixture> {
    let bad = |message: String| {
        ServiceError::invalid(
            "the stages",
            vec![Problem {
                key: Some("stages".into()),
                line: None,
                message,
            }],
        )
    };
    // `[...]` opens both a JSON list and TOML's `[[stages]]`: JSON first, then TOML.
    let added: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(json) if text.trim_start().starts_with('{') => return Err(bad(json.to_string())),
        Err(_) => {
            let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
            serde_json::to_value(table).map_err(|e| bad(e.to_string()))?
        }
    };
    let added = match added {
        serde_json::Value::Array(stages) => stages,
        serde_json::Value::Object(mut object) => match object.remove("stages") {
            Some(serde_json::Value::Array(stages)) => stages,
            _ => return Err(bad("expected a list of stages under `stages`".into())),
        },
        _ => return Err(bad("expected a list of stages".into())),
    };
    if added.is_empty() {
        return Err(bad("no stages to append".into()));
    }
    let mut whole: serde_json::Value = serde_json::from_str(spec)
        .map_err(|e| ServiceError::Internal(format!("a stored spec does not parse: {e}")))?;
    match whole.get_mut("stages").and_then(|s| s.as_array_mut()) {
        Some(stages) => stages.extend(added),
        None => return Err(ServiceError::Internal("a stored spec has no stages".into())),
    }
    parse(&whole.to_string())
}

/// Optimiser steps over every stage of `mixture`.
pub fn planned_total(mixture: &Mixture) -> Result<u64> {
    (0..mixture.stages.len())
        .map(|stage| model::train::planned_steps(mixture, stage))
        .sum::<Result<u64, _>>()
        .map_err(|e| ServiceError::invalid("the spec", vec![Problem::at("stages", e.to_string())]))
}

/// A stage as the web page and the CLI show it: its name, size and normalised task weights.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StageOutline {
    pub name: String,
    pub resolution: u32,
    pub batch_size: u32,
    pub weights: Vec<(String, f64)>,
}

/// The stages of a stored spec (JSON); empty if it does not parse.
pub fn outline(spec: &serde_json::Value) -> Vec<StageOutline> {
    let Ok(mixture) = Mixture::from_json_str(&spec.to_string()) else {
        return Vec::new();
    };
    mixture
        .stages
        .iter()
        .enumerate()
        .map(|(i, stage)| StageOutline {
            name: stage.name.clone(),
            resolution: stage.resolution(),
            batch_size: stage.batch_size(),
            weights: mixture.stage_weights(i).unwrap_or_default(),
        })
        .collect()
}
