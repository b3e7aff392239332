//! Training jobs: a bounded pool (one run at a time by default) runs queued runs through
//! [`model::train::open_run`] on a blocking thread, publishes their steps, and records how they
//! end (a finished run with held-out data gets evaluated). Stopping is graceful (the trainer checkpoints, then stops); at start-up, runs that were
//! queued or running continue from their newest checkpoint. Each run has at most one job: the
//! `active` map guards that within the process, the data directory's lock across processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::train::{Outcome, RunSetup, Start, TrainConfig, latest_checkpoint, open_run};
use tokio::sync::Semaphore;

use crate::error::{Result, ServiceError};
use crate::evaluations::{Evaluations, has_held_out};
use crate::events::{Event, Hub, StageTracker};
use crate::requests::EvalRequest;
use crate::store::{RunRecord, Status, Store};

/// A run with a job in this process.
struct Active {
    /// The trainer's stop flag.
    stop: Arc<AtomicBool>,
    /// Queue the run again when the job ends (its spec changed while it ran).
    requeue: bool,
}

pub struct Runner {
    store: Arc<Store>,
    hub: Hub,
    /// Where a finished run's final evaluation goes.
    evaluations: Arc<Evaluations>,
    slots: Arc<Semaphore>,
    active: Mutex<HashMap<i64, Active>>,
    /// Set at shutdown: stopped jobs stay queued, to continue at the next start.
    shutting_down: AtomicBool,
    /// Data pipeline workers per run; 0: every core.
    threads: usize,
}

impl Runner {
    pub fn new(
        store: Arc<Store>,
        hub: Hub,
        evaluations: Arc<Evaluations>,
        training_slots: usize,
        threads: usize,
    ) -> Arc<Self> {
        Arc::new(Runner {
            store,
            hub,
            evaluations,
            slots: Arc::new(Semaphore::new(training_slots.max(1))),
            active: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            threads,
        })
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_status(&self, id: i64, status: Status, error: Option<&str>) -> Result<()> {
        self.store.set_run_status(id, status, error)?;
        self.hub.publish(Event::Status {
            run: id,
            status,
            error: error.map(String::from),
        });
        Ok(())
    }

    /// Starts a job for the queued run `id`; one still waiting for a slot (stopped meanwhile)
    /// is un-stopped instead. Needs a tokio runtime.
    pub fn enqueue(self: &Arc<Self>, id: i64) {
        {
            let mut active = self.active();
            if let Some(waiting) = active.get(&id) {
                waiting.stop.store(false, Ordering::Relaxed);
                return;
            }
            active.insert(
                id,
                Active {
                    stop: Arc::new(AtomicBool::new(false)),
                    requeue: false,
                },
            );
        }
        let runner = self.clone();
        tokio::spawn(async move { runner.drive(id).await });
    }

    async fn drive(self: Arc<Self>, id: i64) {
        let permit = self.slots.clone().acquire_owned().await;
        let stop = self.active().get(&id).map(|a| a.stop.clone());
        let still_queued = self
            .store
            .run(id)
            .is_ok_and(|run| run.status == Status::Queued);
        let result = match stop {
            Some(stop) if still_queued => match self.set_status(id, Status::Running, None) {
                Ok(()) => {
                    let runner = self.clone();
                    tokio::task::spawn_blocking(move || runner.train(id, stop))
                        .await
                        .unwrap_or_else(|e| Err(format!("the training job panicked: {e}")))
                }
                Err(e) => Err(e.to_string()),
            },
            // Stopped while it waited for a slot.
            _ => {
                self.active().remove(&id);
                return;
            }
        };
        drop(permit);
        let requeue = self.active().remove(&id).is_some_and(|a| a.requeue);
        // Stopped for the shutdown or a new spec, not because someone asked: it goes on.
        let asked_to_stop = self
            .store
            .run(id)
            .is_ok_and(|r| r.status == Status::Stopping);
        let shutting_down = self.shutting_down.load(Ordering::Relaxed);
        let recorded = match result {
            Err(message) => {
                tracing::error!(run = id, "{message}");
                self.set_status(id, Status::Failed, Some(&message))
            }
            Ok(Outcome::Stopped { .. }) if shutting_down && !asked_to_stop => {
                self.set_status(id, Status::Queued, None)
            }
            Ok(_) if requeue && !asked_to_stop && !shutting_down => self
                .set_status(id, Status::Queued, None)
                .map(|()| self.enqueue(id)),
            Ok(_) if requeue && shutting_down => self.set_status(id, Status::Queued, None),
            Ok(Outcome::Finished { steps }) => {
                tracing::info!(run = id, steps, "finished");
                self.set_status(id, Status::Finished, None)
                    .and_then(|()| self.evaluate_final(id))
            }
            Ok(Outcome::Stopped { steps }) => {
                tracing::info!(run = id, steps, "stopped");
                self.set_status(id, Status::Stopped, None)
            }
        };
        if let Err(e) = recorded {
            tracing::error!(run = id, "recording how the job ended: {e}");
        }
    }

    /// The job itself, on a blocking thread: the run opened from its folder (continuing from
    /// its newest checkpoint if it has one), trained, every step published.
    fn train(&self, id: i64, stop: Arc<AtomicBool>) -> Result<Outcome, String> {
        let run = self.store.run(id).map_err(|e| e.to_string())?;
        let setup = self.setup(&run, stop).map_err(|e| e.to_string())?;
        let mut trainer = open_run(setup, &model::device()).map_err(|e| e.to_string())?;
        tracing::info!(run = id, step = trainer.step(), "training");
        let mut stages = StageTracker::default();
        trainer
            .run(&mut |e| {
                if let Some(stage) = stages.observe(id, e) {
                    self.hub.publish(stage);
                }
                if let Err(error) = self.store.set_run_progress(id, e) {
                    tracing::warn!(run = id, "{error}");
                }
                self.hub.publish(Event::Step {
                    run: id,
                    event: e.clone(),
                });
            })
            .map_err(|e| e.to_string())
    }

    fn setup(&self, run: &RunRecord, stop: Arc<AtomicBool>) -> Result<RunSetup> {
        std::fs::create_dir_all(&run.dir).map_err(|e| ServiceError::io(&run.dir, e))?;
        let spec = run.dir.join("spec.json");
        let text = serde_json::to_string_pretty(&run.spec).expect("a spec always serialises");
        std::fs::write(&spec, text).map_err(|e| ServiceError::io(&spec, e))?;
        let checkpoints = run.dir.join("checkpoints");
        let resume = latest_checkpoint(&checkpoints)
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .is_some();
        Ok(RunSetup {
            spec,
            out: run.dir.clone(),
            start: if resume {
                Start::Resume
            } else {
                run.start.clone()
            },
            tokenizer: None,
            threads: self.threads,
            train: TrainConfig {
                micro_batch_rows: run.options.micro_batch_rows,
                checkpoint_every: run.options.checkpoint_every,
                keep_checkpoints: run.options.keep_checkpoints,
                task_loss_every: run.options.task_loss_every,
                stop: Some(stop),
                ..Default::default()
            },
        })
    }

    /// A finished run whose spec holds data out gets an evaluation of its final checkpoint.
    fn evaluate_final(&self, id: i64) -> Result<()> {
        let run = self.store.run(id)?;
        if has_held_out(&run) {
            self.evaluations.submit(&run, EvalRequest::default())?;
        }
        Ok(())
    }

    /// Asks run `id` to stop: a running one checkpoints after its current step.
    pub fn stop(&self, id: i64) -> Result<RunRecord> {
        let run = self.store.run(id)?;
        let flag = self.active().get(&id).map(|a| a.stop.clone());
        match run.status {
            Status::Running => {
                if let Some(flag) = flag {
                    flag.store(true, Ordering::Relaxed);
                }
                self.set_status(id, Status::Stopping, None)?;
            }
            // Its job, waiting for a slot, sees the status and ends.
            Status::Queued => {
                if let Some(flag) = flag {
                    flag.store(true, Ordering::Relaxed);
                }
                self.set_status(id, Status::Stopped, None)?;
            }
            Status::Stopping => {}
            status => {
                return Err(ServiceError::Conflict(format!(
                    "run {id} is {}: nothing to stop",
                    status.as_str()
                )));
            }
        }
        self.store.run(id)
    }

    /// Queues a stopped or failed run again: it continues from its newest checkpoint.
    pub fn resume(self: &Arc<Self>, id: i64) -> Result<RunRecord> {
        let run = self.store.run(id)?;
        match run.status {
            Status::Stopped | Status::Failed => {
                self.set_status(id, Status::Queued, None)?;
                self.enqueue(id);
            }
            Status::Finished => {
                return Err(ServiceError::Conflict(format!(
                    "run {id} is finished: append stages (POST /v1/runs/{id}/stages) to train it further"
                )));
            }
            status => {
                return Err(ServiceError::Conflict(format!(
                    "run {id} is {}: only a stopped or failed run resumes",
                    status.as_str()
                )));
            }
        }
        self.store.run(id)
    }

    /// Run `id`'s spec has changed (stages appended): a running job restarts from a checkpoint
    /// with it, a finished run continues; others pick it up when they next start.
    pub fn spec_changed(self: &Arc<Self>, id: i64) -> Result<()> {
        let run = self.store.run(id)?;
        match run.status {
            Status::Running => {
                if let Some(active) = self.active().get_mut(&id) {
                    active.requeue = true;
                    active.stop.store(true, Ordering::Relaxed);
                }
            }
            Status::Finished => {
                self.set_status(id, Status::Queued, None)?;
                self.enqueue(id);
            }
            _ => {}
        }
        Ok(())
    }

    /// At start-up: runs that were queued or running are queued again (they continue from their
    /// newest checkpoint); a run that was stopping is stopped.
    pub fn recover(self: &Arc<Self>) -> Result<()> {
        for run in self.store.runs()? {
            match run.status {
                Status::Queued | Status::Running => {
                    tracing::info!(run = run.id, "continuing after a restart");
                    self.set_status(run.id, Status::Queued, None)?;
                    self.enqueue(run.id);
                }
                Status::Stopping => self.set_status(run.id, Status::Stopped, None)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops every job with a checkpoint, leaving the runs queued for the next start.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        for active in self.active().values() {
            active.stop.store(true, Ordering::Relaxed);
        }
        while !self.active().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs with a job in this process.
    pub fn active_runs(&self) -> usize {
        self.active().len()
    }
}
