//! `/v1/mixtures`: specs submitted (TOML or JSON), validated against their data and stored
//! with a version per name.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{AppState, blocking, parse_id, text_body};
use crate::error::{Result, ServiceError};
use crate::specs::{self, StageOutline};
use crate::store::MixtureRecord;

/// A mixture as the API shows it: its record and its stages' normalised weights.
#[derive(Debug, Serialize, Deserialize)]
pub struct MixtureView {
    #[serde(flatten)]
    pub mixture: MixtureRecord,
    pub stages: Vec<StageOutline>,
}

impl From<MixtureRecord> for MixtureView {
    fn from(mixture: MixtureRecord) -> Self {
        MixtureView {
            stages: specs::outline(&mixture.spec),
            mixture,
        }
    }
}

#[derive(Deserialize)]
pub struct CreateQuery {
    /// The mixture's name; each submission under a name is its next version.
    name: Option<String>,
}

pub async fn create(
    State(service): State<AppState>,
    Query(query): Query<CreateQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<MixtureView>)> {
    let text = text_body(&body)?.to_string();
    let name = query.name.unwrap_or_else(|| "mixture".into());
    if name.trim().is_empty() {
        return Err(ServiceError::BadRequest(
            "a mixture name may not be empty".into(),
        ));
    }
    let roots = service.roots.clone();
    let checked = {
        let text = text.clone();
        blocking(move || specs::check(specs::parse(&text)?, None, &roots)).await?
    };
    let spec = serde_json::to_value(&checked).expect("a mixture always serialises");
    let record = service.store.insert_mixture(&name, &spec, &text)?;
    tracing::info!(
        id = record.id,
        name,
        version = record.version,
        "mixture stored"
    );
    Ok((StatusCode::CREATED, Json(record.into())))
}

pub async fn list(State(service): State<AppState>) -> Result<Json<Vec<MixtureView>>> {
    let mixtures = service.store.mixtures()?;
    Ok(Json(mixtures.into_iter().map(MixtureView::from).collect()))
}

pub async fn one(
    State(service): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MixtureView>> {
    Ok(Json(
        service.store.mixture(parse_id("mixture", &id)?)?.into(),
    ))
}
