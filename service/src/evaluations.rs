//! Evaluation jobs: one of a run's checkpoints scored on its spec's held-out data, one job at a
//! time beside training. A run that finishes with held-out data in its spec gets an evaluation
//! of its final checkpoint. Scores and sample predictions go to the database, the samples'
//! images and `eval.json` to `RUN_DIR/evaluations/ID/`; jobs a restart interrupted run again.

use std::sync::Arc;

use mixtures::Mixture;
use model::eval::{EvalReport, SavedModelEval, evaluate_saved_model, held_out_tasks};
use tokio::sync::Semaphore;

use crate::error::{Problem, Result, ServiceError};
use crate::events::{Event, Hub};
use crate::requests::EvalRequest;
use crate::store::{EvalResult, EvaluationRecord, RunRecord, SampleView, Status, Store};

/// Sample predictions kept per task.
const SAMPLES_PER_TASK: usize = 4;

pub struct Evaluations {
    store: Arc<Store>,
    hub: Hub,
    slots: Arc<Semaphore>,
    /// Data pipeline workers per job; 0: every core.
    threads: usize,
}

/// A stored spec (JSON) as a mixture; stored specs were validated when submitted.
fn mixture_of(run: &RunRecord) -> Result<Mixture> {
    Mixture::from_json_str(&run.spec.to_string())
        .map_err(|e| ServiceError::Internal(format!("run {}: its stored spec: {e}", run.id)))
}

/// Whether any task of the run's spec has held-out data to evaluate on.
pub fn has_held_out(run: &RunRecord) -> bool {
    mixture_of(run).is_ok_and(|m| held_out_tasks(&m) > 0)
}

impl Evaluations {
    pub fn new(store: Arc<Store>, hub: Hub, threads: usize) -> Arc<Self> {
        Arc::new(Evaluations {
            store,
            hub,
            slots: Arc::new(Semaphore::new(1)),
            threads,
        })
    }

    /// Checks `request` against run `run` (held-out data, the stage, the checkpoint) and
    /// queues it.
    pub fn submit(
        self: &Arc<Self>,
        run: &RunRecord,
        request: EvalRequest,
    ) -> Result<EvaluationRecord> {
        let mixture = mixture_of(run)?;
        let mut problems = Vec::new();
        if held_out_tasks(&mixture) == 0 {
            problems.push(Problem::at(
                "spec",
                format!(
                    "run {}'s spec has no `eval_data` in any task's source: nothing is held out",
                    run.id
                ),
            ));
        }
        if let Some(stage) = &request.stage
            && !mixture.stages.iter().any(|s| &s.name == stage)
        {
            let names: Vec<&str> = mixture.stages.iter().map(|s| s.name.as_str()).collect();
            problems.push(Problem::at(
                "stage",
                format!(
                    "run {} has no stage {stage:?} (stages: {})",
                    run.id,
                    names.join(", ")
                ),
            ));
        }
        for (key, value) in [("examples", request.examples), ("beams", request.beams)] {
            if value == Some(0) {
                problems.push(Problem::at(key, "must be at least 1"));
            }
        }
        if let Err(kept) = run.checkpoint(request.step)? {
            let message = match request.step {
                _ if kept.is_empty() => format!("run {} has no checkpoint yet", run.id),
                Some(step) => format!(
                    "run {} has no checkpoint at step {step} (kept: {})",
                    run.id,
                    kept.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => unreachable!("the newest of a non-empty list exists"),
            };
            problems.push(Problem::at("step", message));
        }
        if !problems.is_empty() {
            return Err(ServiceError::invalid("the evaluation request", problems));
        }
        let record = self.store.insert_evaluation(run, &request)?;
        tracing::info!(run = run.id, evaluation = record.id, "evaluation queued");
        self.publish(&record, Status::Queued, None);
        self.enqueue(record.id);
        Ok(record)
    }

    fn publish(&self, record: &EvaluationRecord, status: Status, error: Option<String>) {
        self.hub.publish(Event::Evaluation {
            run: record.run,
            evaluation: record.id,
            status,
            error,
        });
    }

    fn set_status(
        &self,
        record: &EvaluationRecord,
        status: Status,
        error: Option<&str>,
    ) -> Result<()> {
        self.store.set_evaluation_status(record.id, status, error)?;
        self.publish(record, status, error.map(String::from));
        Ok(())
    }

    /// Starts the queued evaluation `id`. Needs a tokio runtime.
    pub fn enqueue(self: &Arc<Self>, id: i64) {
        let jobs = self.clone();
        tokio::spawn(async move {
            let _permit = jobs.slots.clone().acquire_owned().await;
            let Ok(record) = jobs.store.evaluation(id) else {
                return;
            };
            let outcome = match jobs.set_status(&record, Status::Running, None) {
                Ok(()) => {
                    let job = jobs.clone();
                    tokio::task::spawn_blocking(move || job.run(id))
                        .await
                        .unwrap_or_else(|e| Err(format!("the evaluation panicked: {e}")))
                }
                Err(e) => Err(e.to_string()),
            };
            let recorded = match outcome {
                Ok(result) => jobs.store.finish_evaluation(id, &result).map(|()| {
                    jobs.publish(&record, Status::Finished, None);
                }),
                Err(message) => {
                    tracing::error!(evaluation = id, "{message}");
                    jobs.set_status(&record, Status::Failed, Some(&message))
                }
            };
            if let Err(e) = recorded {
                tracing::error!(evaluation = id, "recording how the evaluation ended: {e}");
            }
        });
    }

    /// At start-up: evaluations that were queued or running run again.
    pub fn recover(self: &Arc<Self>) -> Result<()> {
        for job in self.store.evaluations(None)? {
            if matches!(job.status, Status::Queued | Status::Running) {
                tracing::info!(evaluation = job.id, "evaluating again after a restart");
                self.enqueue(job.id);
            }
        }
        Ok(())
    }

    /// The job, on a blocking thread.
    fn run(&self, id: i64) -> Result<EvalResult, String> {
        let job = self.store.evaluation(id).map_err(|e| e.to_string())?;
        let run = self.store.run(job.run).map_err(|e| e.to_string())?;
        let mut mixture = mixture_of(&run).map_err(|e| e.to_string())?;
        if let Some(n) = job.request.examples {
            mixture.eval.examples = n;
        }
        if let Some(n) = job.request.beams {
            mixture.eval.beams = n;
        }
        let (step, folder) = run
            .checkpoint(job.request.step)
            .map_err(|e| e.to_string())?
            .map_err(|_| match job.request.step {
                Some(step) => format!("run {}'s checkpoint at step {step} is gone", run.id),
                None => format!("run {} has no checkpoint", run.id),
            })?;
        let stage = job
            .request
            .stage
            .clone()
            .or_else(|| mixture.stages.last().map(|s| s.name.clone()))
            .unwrap_or_default();
        self.store
            .set_evaluation_target(id, step, &stage)
            .map_err(|e| e.to_string())?;
        let evaluated = evaluate_saved_model(
            &mixture,
            &SavedModelEval {
                model: folder,
                stage: Some(stage),
                tokenizer: None,
                spec: Some(run.dir.join("spec.json")),
                threads: self.threads,
                samples_per_task: SAMPLES_PER_TASK,
            },
            &model::device(),
        )
        .map_err(|e| e.to_string())?;
        let result = save(&job, &evaluated.report).map_err(|e| e.to_string())?;
        tracing::info!(run = run.id, evaluation = id, step, "evaluated");
        Ok(result)
    }
}

/// Writes `eval.json` and the samples' images (`sample-I-K.png`) to the evaluation's folder.
fn save(job: &EvaluationRecord, report: &EvalReport) -> Result<EvalResult> {
    let write = |name: &str, bytes: &[u8]| {
        let path = job.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| ServiceError::io(path, e))
    };
    std::fs::create_dir_all(&job.dir).map_err(|e| ServiceError::io(&job.dir, e))?;
    let json = serde_json::to_vec_pretty(report).expect("a report always serialises");
    write("eval.json", &json)?;
    let mut samples = Vec::new();
    for (i, sample) in report.samples.iter().enumerate() {
        let mut images = Vec::new();
        for (k, png) in sample.images_png.iter().enumerate() {
            let name = format!("sample-{i}-{k}.png");
            write(&name, png)?;
            images.push(name);
        }
        samples.push(SampleView {
            task: sample.task.clone(),
            prompt: sample.prompt.clone(),
            prediction: sample.prediction.clone(),
            reference: sample.reference.clone(),
            images,
        });
    }
    Ok(EvalResult {
        tasks: report.tasks.clone(),
        samples,
    })
}
