//! What is not a resource: the web page, the OpenAPI document and Prometheus metrics.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::AppState;
use crate::error::Result;
use crate::store::Status;

pub async fn page() -> Html<&'static str> {
    Html(crate::web::PAGE)
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// Prometheus's text format: runs by status, and each run's step, loss and throughput.
pub async fn metrics(State(service): State<AppState>) -> Result<impl IntoResponse> {
    let runs = service.store.runs()?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = match labels.is_empty() {
                true => writeln!(out, "{name} {value}"),
                false => writeln!(out, "{name}{{{labels}}} {value}"),
            };
        }
    };
    gauge(
        "paliforge_runs",
        "Runs by status.",
        Status::ALL
            .iter()
            .map(|s| {
                let n = runs.iter().filter(|r| r.status == *s).count();
                (format!("status=\"{}\"", s.as_str()), n as f64)
            })
            .collect(),
    );
    let labels = |id: i64, name: &str| {
        let name = name
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        format!("run=\"{id}\",name=\"{name}\"")
    };
    let per_run = |value: &dyn Fn(&model::train::TrainEvent) -> f64| {
        runs.iter()
            .filter_map(|r| Some((labels(r.id, &r.name), value(r.last.as_ref()?))))
            .collect::<Vec<_>>()
    };
    gauge(
        "paliforge_run_step",
        "Steps done.",
        per_run(&|e| e.step as f64),
    );
    gauge(
        "paliforge_run_loss",
        "Loss of the last step.",
        per_run(&|e| f64::from(e.loss)),
    );
    gauge(
        "paliforge_run_examples_per_second",
        "Examples per second of the last step.",
        per_run(&|e| e.examples_per_s),
    );
    gauge(
        "paliforge_run_tokens_per_second",
        "Tokens per second of the last step.",
        per_run(&|e| e.tokens_per_s),
    );
    gauge(
        "paliforge_run_planned_steps",
        "Planned steps over every stage.",
        runs.iter()
            .map(|r| (labels(r.id, &r.name), r.total_steps as f64))
            .collect(),
    );
    // Each run's newest finished evaluation: its headline figure per task.
    let mut scores = Vec::new();
    for evaluation in service.store.newest_results()? {
        let Some(run) = runs.iter().find(|r| r.id == evaluation.run) else {
            continue;
        };
        for task in evaluation.result.iter().flat_map(|r| &r.tasks) {
            if let Some((metric, value)) = task.headline() {
                let task_labels = format!(
                    "{},task=\"{}\",metric=\"{metric}\"",
                    labels(run.id, &run.name),
                    task.task
                );
                scores.push((task_labels, *value));
            }
        }
    }
    gauge(
        "paliforge_run_eval_score",
        "Held-out headline score per task of the run's newest evaluation.",
        scores,
    );
    gauge(
        "paliforge_active_jobs",
        "Training jobs running or waiting for a slot in this process.",
        vec![(String::new(), service.runner.active_runs() as f64)],
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
