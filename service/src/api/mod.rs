//! The HTTP API: routes under `/v1/`, `/metrics`, `/openapi.json` and the web page at `/`.
//! Every route but the page and the OpenAPI document needs the bearer token when one is set.

mod datasets;
mod evaluations;
mod meta;
mod mixtures;
mod runs;

pub use mixtures::MixtureView;
pub use runs::{CheckpointFile, CheckpointView, RunView};

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::Service;
use crate::error::{ErrorBody, Problem, Result, ServiceError};

pub type AppState = Arc<Service>;

pub fn router(service: AppState, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/v1/mixtures", get(mixtures::list).post(mixtures::create))
        .route("/v1/mixtures/{id}", get(mixtures::one))
        .route("/v1/runs", get(runs::list).post(runs::create))
        .route("/v1/runs/{id}", get(runs::one))
        .route("/v1/runs/{id}/stop", post(runs::stop))
        .route("/v1/runs/{id}/resume", post(runs::resume))
        .route("/v1/runs/{id}/stages", post(runs::append_stages))
        .route("/v1/runs/{id}/events", get(runs::events))
        .route("/v1/runs/{id}/checkpoints", get(runs::checkpoints))
        .route(
            "/v1/runs/{id}/checkpoints/{checkpoint}/{file}",
            get(runs::checkpoint_file),
        )
        .route(
            "/v1/runs/{id}/evaluations",
            get(evaluations::of_run).post(evaluations::create),
        )
        .route("/v1/evaluations", get(evaluations::list))
        .route("/v1/evaluations/{id}", get(evaluations::one))
        .route(
            "/v1/evaluations/{id}/images/{name}",
            get(evaluations::image),
        )
        .route("/v1/datasets", get(datasets::list).post(datasets::create))
        .route("/v1/datasets/{id}", get(datasets::one))
        .route("/v1/datasets/{id}/manifest", get(datasets::manifest))
        .route("/metrics", get(meta::metrics))
        .route_layer(middleware::from_fn_with_state(
            service.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(meta::page))
        .route("/openapi.json", get(meta::openapi))
        .merge(api)
        .fallback(|| async { ServiceError::not_found("route", "here") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(service)
}

/// Bearer-token authentication: `Authorization: Bearer TOKEN`, or `?token=TOKEN` for the
/// browser's EventSource, which cannot set headers.
async fn require_token(State(service): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = service.token.as_deref() else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let from_query = Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.token);
    let given = from_header.or(from_query.as_deref()).unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        next.run(request).await
    } else {
        let body = ErrorBody {
            error: "missing or wrong token: send `Authorization: Bearer TOKEN`".into(),
            problems: Vec::new(),
        };
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(body),
        )
            .into_response()
    }
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An id from the path; one that is not a number names nothing, so it is a 404 too.
fn parse_id(kind: &'static str, text: &str) -> Result<i64> {
    text.parse()
        .map_err(|_| ServiceError::not_found(kind, text))
}

/// A JSON request body, its problems reported as a 422 with line and column.
fn json_body<T: DeserializeOwned>(what: &str, body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        ServiceError::invalid(
            what,
            vec![Problem {
                key: None,
                line: Some(e.line()),
                message: e.to_string(),
            }],
        )
    })
}

/// A request body as text.
fn text_body(body: &Bytes) -> Result<&str> {
    std::str::from_utf8(body)
        .map_err(|e| ServiceError::BadRequest(format!("the body is not UTF-8: {e}")))
}

/// Runs blocking work (spec checks read the data; training opens runs) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("a blocking task failed: {e}")))?
}
