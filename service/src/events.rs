//! The per-run event stream: every step, stage change, status change and evaluation status is
//! published on a hub; a client of `/v1/runs/{id}/events` first gets the run's past steps from its
//! `metrics.jsonl`, then live events, each step exactly once.

use std::convert::Infallible;
use std::path::Path;

use axum::response::sse;
use futures::{Stream, StreamExt};
use model::train::TrainEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::{RunRecord, Status};

/// One event of a run. As SSE, `event:` is the `type` and `data:` this, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An optimiser step.
    Step {
        run: i64,
        #[serde(flatten)]
        event: TrainEvent,
    },
    /// The run entered `stage` at `step` (its first step there).
    Stage {
        run: i64,
        step: u64,
        stage: usize,
        name: String,
        steps: u64,
    },
    Status {
        run: i64,
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One of the run's evaluations changed status (`GET /v1/evaluations/{evaluation}`).
    Evaluation {
        run: i64,
        evaluation: i64,
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Event {
    pub fn run(&self) -> i64 {
        match self {
            Event::Step { run, .. }
            | Event::Stage { run, .. }
            | Event::Status { run, .. }
            | Event::Evaluation { run, .. } => *run,
        }
    }

    /// The step the event belongs to; status and evaluation events belong to none.
    pub fn step(&self) -> Option<u64> {
        match self {
            Event::Step { event, .. } => Some(event.step),
            Event::Stage { step, .. } => Some(*step),
            Event::Status { .. } | Event::Evaluation { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Event::Step { .. } => "step",
            Event::Stage { .. } => "stage",
            Event::Status { .. } => "status",
            Event::Evaluation { .. } => "evaluation",
        }
    }
}

/// Turns a run's steps into stage-change events.
#[derive(Default)]
pub struct StageTracker(Option<usize>);

impl StageTracker {
    pub fn observe(&mut self, run: i64, e: &TrainEvent) -> Option<Event> {
        if self.0 == Some(e.stage) {
            return None;
        }
        self.0 = Some(e.stage);
        Some(Event::Stage {
            run,
            step: e.step,
            stage: e.stage,
            name: e.stage_name.clone(),
            steps: e.stage_steps,
        })
    }
}

/// Where events are published; every subscriber gets all of them.
#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Event>,
    /// Ends every stream at shutdown (an open stream would hold the server up).
    closed: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            sender: broadcast::channel(4096).0,
            closed: CancellationToken::new(),
        }
    }
}

impl Hub {
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is fine: nobody is watching.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

/// The steps recorded in a run's metrics file; a line being written is skipped.
pub async fn past_steps(metrics: &Path) -> Vec<TrainEvent> {
    match tokio::fs::read_to_string(metrics).await {
        Ok(text) => text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn sse_event(event: &Event) -> Result<sse::Event, Infallible> {
    let data = serde_json::to_string(event).expect("events always serialise");
    Ok(sse::Event::default().event(event.kind()).data(data))
}

/// A run's stream: its past steps (with their stage changes), its status now, then live
/// events, none of a step already sent.
pub async fn run_stream(
    hub: &Hub,
    run: &RunRecord,
) -> impl Stream<Item = Result<sse::Event, Infallible>> + use<> {
    // Subscribe before reading the past: a step in between arrives twice, never zero times.
    let receiver = hub.subscribe();
    let id = run.id;
    let past = past_steps(&run.dir.join(model::train::trainer::METRICS_FILE)).await;
    let mut stages = StageTracker::default();
    let mut replay = Vec::new();
    for event in past {
        replay.extend(stages.observe(id, &event));
        replay.push(Event::Step { run: id, event });
    }
    let sent = replay.iter().filter_map(Event::step).max().unwrap_or(0);
    replay.push(Event::Status {
        run: id,
        status: run.status,
        error: run.error.clone(),
    });
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "an event stream fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |event| {
        let keep = event.run() == id && event.step().is_none_or(|step| step > sent);
        futures::future::ready(keep)
    });
    futures::stream::iter(replay)
        .chain(live)
        .map(|event| sse_event(&event))
        .take_until(hub.closed.clone().cancelled_owned())
}
