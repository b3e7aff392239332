//! `/v1/datasets`: preparation jobs submitted, their status and their manifests.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{AppState, json_body, parse_id};
use crate::datasets::{DatasetRequest, manifest as read_manifest};
use crate::error::{Result, ServiceError};
use crate::store::DatasetRecord;

pub async fn create(
    State(service): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<DatasetRecord>)> {
    let request: DatasetRequest = json_body("the dataset request", &body)?;
    let request = request.confined(&service.roots)?;
    let value = serde_json::to_value(&request).expect("a request always serialises");
    let record =
        service
            .store
            .insert_dataset(&request.name, &value, &service.data_dir.join("datasets"))?;
    tracing::info!(
        dataset = record.id,
        name = request.name,
        kind = request.kind(),
        "queued"
    );
    service.preparer.enqueue(record.id);
    Ok((StatusCode::CREATED, Json(record)))
}

pub async fn list(State(service): State<AppState>) -> Result<Json<Vec<DatasetRecord>>> {
    Ok(Json(service.store.datasets()?))
}

pub async fn one(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DatasetRecord>> {
    Ok(Json(service.store.dataset(parse_id("dataset", &id)?)?))
}

pub async fn manifest(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>> {
    let job = service.store.dataset(parse_id("dataset", &id)?)?;
    read_manifest(&job.dir)?
        .map(Json)
        .ok_or_else(|| ServiceError::not_found("manifest of dataset", job.id))
}
