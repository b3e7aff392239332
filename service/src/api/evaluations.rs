//! Evaluations: `POST /v1/runs/{id}/evaluations` scores one of a run's checkpoints on its spec's
//! held-out data; `GET` lists a run's, `/v1/evaluations` everyone's; each with its scores,
//! sample predictions and their images.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, json_body, parse_id};
use crate::error::{Result, ServiceError};
use crate::requests::EvalRequest;
use crate::store::EvaluationRecord;

pub async fn create(
    State(service): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<EvaluationRecord>)> {
    let run = service.store.run(parse_id("run", &id)?)?;
    // An empty body asks for the defaults.
    let request: EvalRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EvalRequest::default()
    } else {
        json_body("the evaluation request", &body)?
    };
    let record = service.evaluations.submit(&run, request)?;
    Ok((StatusCode::CREATED, Json(record)))
}

pub async fn of_run(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EvaluationRecord>>> {
    let run = service.store.run(parse_id("run", &id)?)?;
    Ok(Json(service.store.evaluations(Some(run.id))?))
}

pub async fn list(State(service): State<AppState>) -> Result<Json<Vec<EvaluationRecord>>> {
    Ok(Json(service.store.evaluations(None)?))
}

pub async fn one(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EvaluationRecord>> {
    Ok(Json(
        service.store.evaluation(parse_id("evaluation", &id)?)?,
    ))
}

/// One sample's image, PNG: only names the evaluation's result lists are served.
pub async fn image(
    State(service): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    let evaluation = service.store.evaluation(parse_id("evaluation", &id)?)?;
    let listed = evaluation
        .result
        .iter()
        .flat_map(|r| &r.samples)
        .any(|s| s.images.contains(&name));
    if !listed {
        return Err(ServiceError::not_found(
            "image",
            format!("{name} in evaluation {}", evaluation.id),
        ));
    }
    let path = evaluation.dir.join(&name);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ServiceError::io(&path, e))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}
