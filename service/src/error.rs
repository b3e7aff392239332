//! Every error the service reports. Each names the run, mixture, dataset, file or spec key at
//! fault, and maps to one HTTP status.

use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// One problem with a submitted spec or request: its key path (`stages[1].weights.ocr`,
/// `sources.scenes.data[0]`), the line for TOML specs, and what is wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: Some(key.into()),
            line: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(key) = &self.key {
            write!(f, "{key}")?;
            if let Some(line) = self.line {
                write!(f, " (line {line})")?;
            }
            write!(f, ": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no {kind} {id}")]
    NotFound { kind: &'static str, id: String },
    /// A spec or request that cannot run, with every problem found.
    #[error("{what} is invalid: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        what: String,
        problems: Vec<Problem>,
    },
    #[error("{0}")]
    BadRequest(String),
    /// The request does not fit the resource's state (resuming a running run, ...).
    #[error("{0}")]
    Conflict(String),
    #[error("database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {}: {message}", path.display())]
    DataDir { path: PathBuf, message: String },
    #[error(
        "refusing to listen on {addr} without a token: set --token or PALIFORGE_TOKEN, or bind a loopback address (127.0.0.1)"
    )]
    InsecureBind { addr: String },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

impl ServiceError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServiceError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        ServiceError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub fn invalid(what: impl Into<String>, problems: Vec<Problem>) -> Self {
        ServiceError::Invalid {
            what: what.into(),
            problems,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ServiceError::NotFound { .. } => StatusCode::NOT_FOUND,
            ServiceError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let problems = match &self {
            ServiceError::Invalid { problems, .. } => problems.clone(),
            _ => Vec::new(),
        };
        let body = ErrorBody {
            error: self.to_string(),
            problems,
        };
        (status, Json(body)).into_response()
    }
}
