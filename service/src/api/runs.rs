//! `/v1/runs`: training runs submitted, listed, stopped, resumed, extended with stages; their
//! event streams and checkpoints.

use std::convert::Infallible;
use std::path::PathBuf;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use model::train::Start;
use serde::{Deserialize, Serialize};

use super::{AppState, blocking, json_body, parse_id, text_body};
use crate::error::{Problem, Result, ServiceError};
use crate::requests::{RunRequest, StartRequest};
use crate::specs::{self, StageOutline};
use crate::store::{NewRun, RunRecord};

/// A run as the API shows it: its record and its stages.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: RunRecord,
    pub stages: Vec<StageOutline>,
}

impl From<RunRecord> for RunView {
    fn from(run: RunRecord) -> Self {
        RunView {
            stages: specs::outline(&run.spec),
            run,
        }
    }
}

fn invalid(key: &str, message: String) -> ServiceError {
    ServiceError::invalid("the run request", vec![Problem::at(key, message)])
}

pub async fn create(
    State(service): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>)> {
    let request: RunRequest = json_body("the run request", &body)?;
    let (text, mixture_id) = match (request.mixture, request.spec) {
        (Some(id), None) => {
            let mixture = service
                .store
                .mixture(id)
                .map_err(|_| invalid("mixture", format!("no mixture {id}")))?;
            (mixture.spec.to_string(), Some(id))
        }
        (None, Some(spec)) => (spec.into_text(), None),
        _ => {
            return Err(invalid(
                "spec",
                "give either `mixture` (a stored mixture's id) or `spec`".into(),
            ));
        }
    };
    let start = resolve_start(&service, request.start)?;
    let out = match &request.out {
        Some(out) => Some(resolve_out(&service, out, request.base.as_deref())?),
        None => None,
    };
    let roots = service.roots.clone();
    let base = request.base;
    let (mixture, total_steps) = blocking(move || {
        let mixture = specs::check(specs::parse(&text)?, base.as_deref(), &roots)?;
        let total = specs::planned_total(&mixture)?;
        Ok((mixture, total))
    })
    .await?;
    let name = request
        .name
        .or_else(|| mixture.description.clone())
        .unwrap_or_else(|| "run".into());
    let spec = serde_json::to_value(&mixture).expect("a mixture always serialises");
    let record = service.store.insert_run(NewRun {
        name: &name,
        mixture_id,
        spec: &spec,
        start: &start,
        options: &request.options,
        total_steps,
        runs_dir: &service.data_dir.join("runs"),
        dir: out.as_deref(),
    })?;
    tracing::info!(run = record.id, name, total_steps, "run queued");
    service.runner.enqueue(record.id);
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// A chosen run folder: confined to the data roots, outside the service's own `runs/`, and
/// empty (a folder with files in it may be another run's or anything else of value).
fn resolve_out(
    service: &AppState,
    out: &std::path::Path,
    base: Option<&std::path::Path>,
) -> Result<PathBuf> {
    let dir = service
        .roots
        .confine(out, base.unwrap_or(service.roots.base()), "out")
        .map_err(|p| ServiceError::invalid("the run request", vec![p]))?;
    let runs = service.data_dir.join("runs");
    if dir.starts_with(&runs) {
        return Err(invalid(
            "out",
            format!(
                "{}: {} holds the service's own run folders",
                dir.display(),
                runs.display()
            ),
        ));
    }
    let occupied = dir.is_file()
        || match std::fs::read_dir(&dir) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ServiceError::io(&dir, e)),
        };
    if occupied {
        return Err(invalid(
            "out",
            format!(
                "{} exists and is not empty: choose a new folder",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// `path` inside the data roots (relative: to the service's base), or the request's problem at
/// `key`.
fn confine(service: &AppState, path: &std::path::Path, key: &str) -> Result<PathBuf> {
    service
        .roots
        .confine(path, service.roots.base(), key)
        .map_err(|p| ServiceError::invalid("the run request", vec![p]))
}

/// The model's [`Start`] for a request: folders confined to the data roots, another run's
/// checkpoint found.
fn resolve_start(service: &AppState, start: StartRequest) -> Result<Start> {
    match start {
        StartRequest::Fresh {
            config,
            image_encoder,
        } => Ok(Start::Fresh {
            config,
            image_encoder: image_encoder
                .map(|path| confine(service, &path, "start.fresh.image_encoder"))
                .transpose()?,
        }),
        StartRequest::Init { dir } => Ok(Start::Init {
            dir: confine(service, &dir, "start.init.dir")?,
        }),
        StartRequest::Checkpoint { run, step } => {
            let source = service
                .store
                .run(run)
                .map_err(|_| invalid("start.checkpoint.run", format!("no run {run}")))?;
            match source.checkpoint(step)? {
                Ok((_, dir)) => Ok(Start::Init { dir }),
                Err(_) => Err(invalid(
                    "start.checkpoint",
                    match step {
                        Some(step) => format!("run {run} has no checkpoint at step {step}"),
                        None => format!("run {run} has no checkpoint yet"),
                    },
                )),
            }
        }
    }
}

pub async fn list(State(service): State<AppState>) -> Result<Json<Vec<RunView>>> {
    let runs = service.store.runs()?;
    Ok(Json(runs.into_iter().map(RunView::from).collect()))
}

pub async fn one(State(service): State<AppState>, Path(id): Path<String>) -> Result<Json<RunView>> {
    Ok(Json(service.store.run(parse_id("run", &id)?)?.into()))
}

pub async fn stop(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>> {
    Ok(Json(service.runner.stop(parse_id("run", &id)?)?.into()))
}

pub async fn resume(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>> {
    Ok(Json(service.runner.resume(parse_id("run", &id)?)?.into()))
}

/// Continuous pretraining: the body's stages (TOML `[[stages]]` or JSON) are appended to the
/// run's spec; the run trains through them from where it is.
pub async fn append_stages(
    State(service): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RunView>> {
    let id = parse_id("run", &id)?;
    let run = service.store.run(id)?;
    let text = text_body(&body)?.to_string();
    let roots = service.roots.clone();
    let (mixture, total_steps) = blocking(move || {
        let appended = specs::append_stages(&run.spec.to_string(), &text)?;
        let mixture = specs::check(appended, None, &roots)?;
        let total = specs::planned_total(&mixture)?;
        Ok((mixture, total))
    })
    .await?;
    let spec = serde_json::to_value(&mixture).expect("a mixture always serialises");
    service.store.set_run_spec(id, &spec, total_steps)?;
    tracing::info!(run = id, stages = mixture.stages.len(), "stages appended");
    service.runner.spec_changed(id)?;
    Ok(Json(service.store.run(id)?.into()))
}

pub async fn events(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let run = service.store.run(parse_id("run", &id)?)?;
    let stream = crate::events::run_stream(&service.hub, &run).await;
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One complete checkpoint of a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointView {
    pub name: String,
    pub step: u64,
    pub files: Vec<CheckpointFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub name: String,
    pub bytes: u64,
}

pub async fn checkpoints(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CheckpointView>>> {
    let run = service.store.run(parse_id("run", &id)?)?;
    let mut views = Vec::new();
    for (step, dir) in run.checkpoints()? {
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // removed meanwhile: the trainer keeps the newest few
        };
        let mut files: Vec<CheckpointFile> = entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                Some(CheckpointFile {
                    name: entry.file_name().into_string().ok()?,
                    bytes: entry.metadata().ok()?.len(),
                })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        views.push(CheckpointView { name, step, files });
    }
    Ok(Json(views))
}

/// Downloads one file of a checkpoint, streamed.
pub async fn checkpoint_file(
    State(service): State<AppState>,
    Path((id, checkpoint, file)): Path<(String, String, String)>,
) -> Result<Response> {
    let run = service.store.run(parse_id("run", &id)?)?;
    let plain =
        |name: &str| !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']);
    let path: PathBuf = run.dir.join("checkpoints").join(&checkpoint).join(&file);
    if !checkpoint.starts_with("step-") || !plain(&checkpoint) || !plain(&file) || !path.is_file() {
        return Err(ServiceError::not_found(
            "checkpoint file",
            format!("{checkpoint}/{file} in run {}", run.id),
        ));
    }
    let opened = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ServiceError::io(&path, e))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(opened));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}
