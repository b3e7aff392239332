//! The long-lived paliforge service: mixture specs, training runs and dataset preparation jobs
//! over HTTP, their state in SQLite, a per-run event stream, Prometheus metrics, an OpenAPI
//! document, a web page, and the HTTP client the command line uses.
//!
//! One concept per file:
//! - [`server`]: start-up (bind, data directory lock, restart of interrupted jobs) and shutdown.
//! - [`api`]: the routes; [`requests`]: the bodies clients send.
//! - [`store`]: SQLite; [`jobs`]: the training pool; [`datasets`]: preparation jobs;
//!   [`evaluations`]: evaluation jobs; [`events`]: the event stream.
//! - [`specs`]: submitted specs parsed, confined ([`roots`]) and validated.
//! - [`client`]: the HTTP client.

pub mod api;
pub mod client;
pub mod datasets;
pub mod error;
pub mod evaluations;
pub mod events;
pub mod jobs;
pub mod lock;
pub mod requests;
pub mod roots;
pub mod server;
pub mod specs;
pub mod store;
mod web;

use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Problem, Result, ServiceError};
pub use server::{ServeConfig, Server};

/// What every request handler shares.
pub struct Service {
    pub store: Arc<store::Store>,
    pub hub: events::Hub,
    pub runner: Arc<jobs::Runner>,
    pub preparer: Arc<datasets::Preparer>,
    pub evaluations: Arc<evaluations::Evaluations>,
    pub roots: Arc<roots::DataRoots>,
    /// `paliforge.db`, `runs/`, `datasets/`.
    pub data_dir: PathBuf,
    pub token: Option<String>,
}
