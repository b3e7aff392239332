//! The HTTP client the command line uses: one blocking request at a time, or one run's event
//! stream read as it arrives.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{RequestBuilder, Response};
use serde::de::DeserializeOwned;

use crate::api::{CheckpointView, MixtureView, RunView};
use crate::error::{ErrorBody, Problem};
use crate::events::Event;
use crate::requests::{EvalRequest, RunRequest};
use crate::store::{DatasetRecord, EvaluationRecord};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error.
    #[error("{url}: {status}: {message}{}", problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Api {
        url: String,
        status: u16,
        message: String,
        problems: Vec<Problem>,
    },
    #[error("{url}: unexpected response: {message}")]
    Decode { url: String, message: String },
    #[error("no run named {0:?}")]
    UnknownRun(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A paliforge service's address and token.
pub struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

/// Requests other than event streams give up after this long.
const TIMEOUT: Duration = Duration::from_secs(120);

impl Client {
    /// `server`: `http://host:port` (a bare `host:port` gets `http://`).
    pub fn new(server: &str, token: Option<String>) -> Result<Client> {
        let base = if server.contains("://") {
            server.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", server.trim_end_matches('/'))
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .map_err(|source| ClientError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(Client { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> (String, RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut builder = self.http.request(method, &url);
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        (url, builder)
    }

    /// Sends, and turns an error status into [`ClientError::Api`] with the service's message.
    fn send(url: &str, builder: RequestBuilder) -> Result<Response> {
        let response = builder.send().map_err(|source| ClientError::Http {
            url: url.to_string(),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
        let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
        Err(ClientError::Api {
            url: url.to_string(),
            status: status.as_u16(),
            message: body.as_ref().map_or(text.clone(), |b| b.error.clone()),
            problems: body.map(|b| b.problems).unwrap_or_default(),
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> Result<T> {
        let (url, mut builder) = self.request(method, path);
        builder = builder.timeout(TIMEOUT);
        if let Some((body, content_type)) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let text = Self::send(&url, builder)?
            .text()
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            url,
            message: format!("{e}: {}", text.chars().take(200).collect::<String>()),
        })
    }

    /// Any GET returning JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None)
    }

    pub fn submit(&self, request: &RunRequest) -> Result<RunView> {
        let body = serde_json::to_string(request).expect("a request always serialises");
        self.call(Method::POST, "/v1/runs", Some((body, "application/json")))
    }

    pub fn runs(&self) -> Result<Vec<RunView>> {
        self.get("/v1/runs")
    }

    pub fn run(&self, id: i64) -> Result<RunView> {
        self.get(&format!("/v1/runs/{id}"))
    }

    /// A run's id from its id or its name (the newest run of that name).
    pub fn resolve_run(&self, id_or_name: &str) -> Result<i64> {
        if let Ok(id) = id_or_name.parse() {
            return Ok(id);
        }
        self.runs()?
            .iter()
            .rev()
            .find(|r| r.run.name == id_or_name)
            .map(|r| r.run.id)
            .ok_or_else(|| ClientError::UnknownRun(id_or_name.to_string()))
    }

    pub fn stop(&self, id: i64) -> Result<RunView> {
        self.call(Method::POST, &format!("/v1/runs/{id}/stop"), None)
    }

    pub fn resume(&self, id: i64) -> Result<RunView> {
        self.call(Method::POST, &format!("/v1/runs/{id}/resume"), None)
    }

    /// Appends stages (TOML `[[stages]]` or JSON) to a run.
    pub fn append_stages(&self, id: i64, stages: &str) -> Result<RunView> {
        self.call(
            Method::POST,
            &format!("/v1/runs/{id}/stages"),
            Some((stages.to_string(), "text/plain")),
        )
    }

    pub fn checkpoints(&self, id: i64) -> Result<Vec<CheckpointView>> {
        self.get(&format!("/v1/runs/{id}/checkpoints"))
    }

    /// Queues an evaluation of one of run `id`'s checkpoints.
    pub fn evaluate(&self, id: i64, request: &EvalRequest) -> Result<EvaluationRecord> {
        let body = serde_json::to_string(request).expect("a request always serialises");
        self.call(
            Method::POST,
            &format!("/v1/runs/{id}/evaluations"),
            Some((body, "application/json")),
        )
    }

    /// Run `id`'s evaluations, oldest first.
    pub fn evaluations(&self, id: i64) -> Result<Vec<EvaluationRecord>> {
        self.get(&format!("/v1/runs/{id}/evaluations"))
    }

    pub fn evaluation(&self, id: i64) -> Result<EvaluationRecord> {
        self.get(&format!("/v1/evaluations/{id}"))
    }

    pub fn create_mixture(&self, name: &str, text: &str) -> Result<MixtureView> {
        let content_type = if text.trim_start().starts_with('{') {
            "application/json"
        } else {
            "application/toml"
        };
        let path = format!("/v1/mixtures?name={}", url_escape(name));
        self.call(Method::POST, &path, Some((text.to_string(), content_type)))
    }

    /// Queues a preparation job.
    pub fn prepare(&self, request: &crate::datasets::DatasetRequest) -> Result<DatasetRecord> {
        let body = serde_json::to_string(request).expect("a request always serialises");
        self.call(
            Method::POST,
            "/v1/datasets",
            Some((body, "application/json")),
        )
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.get("/v1/datasets")
    }

    pub fn dataset(&self, id: i64) -> Result<DatasetRecord> {
        self.get(&format!("/v1/datasets/{id}"))
    }

    /// A run's events: its past steps, its status, then live ones, as they arrive.
    pub fn events(&self, id: i64) -> Result<Events> {
        let (url, builder) = self.request(Method::GET, &format!("/v1/runs/{id}/events"));
        let response = Self::send(
            &url,
            builder.header(reqwest::header::ACCEPT, "text/event-stream"),
        )?;
        Ok(Events {
            url,
            lines: BufReader::new(response),
        })
    }
}

/// Percent-encodes all but unreserved characters, for a query value.
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Server-Sent Events stream of [`Event`]s.
pub struct Events {
    url: String,
    lines: BufReader<Response>,
}

impl Iterator for Events {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut data = String::new();
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(ClientError::Decode {
                        url: self.url.clone(),
                        message: e.to_string(),
                    }));
                }
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if data.is_empty() {
                    continue; // a comment or keep-alive ended
                }
                return Some(
                    serde_json::from_str(&data).map_err(|e| ClientError::Decode {
                        url: self.url.clone(),
                        message: format!("{e}: {data}"),
                    }),
                );
            }
            if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
            // `event:` repeats the data's `type`; `:` lines are keep-alives.
        }
    }
}
