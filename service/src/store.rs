//! The service's state in SQLite (`DATA_DIR/paliforge.db`): mixtures with their versions, runs
//! and preparation jobs with their status. Everything a restart needs is here or in the run
//! folders; nothing lives only in memory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use model::eval::TaskScores;
use model::train::{Start, TrainEvent};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError};
use crate::requests::EvalRequest;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    /// Stop requested: the job checkpoints after its current step, then is `Stopped`.
    Stopping,
    Stopped,
    Finished,
    Failed,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Stopping,
        Status::Stopped,
        Status::Finished,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Finished => "finished",
            Status::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Status {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .unwrap_or(Status::Failed)
    }

    /// Nothing runs and nothing will until someone asks.
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Stopped | Status::Finished | Status::Failed)
    }
}

/// How a run trains (the spec says what it trains on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Checkpoint every N steps (0: only when stopping and at the end).
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Per-task loss every N steps (an extra forward pass; 0: never).
    pub task_loss_every: u64,
    /// Rows per micro-batch (gradient accumulation); 0: the whole batch.
    pub micro_batch_rows: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            checkpoint_every: 100,
            keep_checkpoints: 3,
            task_loss_every: 10,
            micro_batch_rows: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixtureRecord {
    pub id: i64,
    pub name: String,
    pub version: i64,
    /// The validated spec, data paths absolute.
    pub spec: serde_json::Value,
    /// The text as submitted.
    pub text: String,
    pub created: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub name: String,
    pub status: Status,
    pub error: Option<String>,
    pub mixture_id: Option<i64>,
    pub start: Start,
    pub options: TrainOptions,
    /// The run folder: `spec.json`, `metrics.jsonl`, `checkpoints/`.
    pub dir: PathBuf,
    /// Planned optimiser steps over every stage.
    pub total_steps: u64,
    /// The last step's event.
    pub last: Option<TrainEvent>,
    /// The spec as JSON (data paths absolute), stages appended included.
    pub spec: serde_json::Value,
    pub created: i64,
    pub updated: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub id: i64,
    pub name: String,
    pub status: Status,
    pub error: Option<String>,
    /// What to prepare, as submitted (see [`crate::datasets::DatasetRequest`]).
    pub request: serde_json::Value,
    /// The output folder: shards, `manifest.json`, `tokenizer.json`.
    pub dir: PathBuf,
    pub done: u64,
    pub total: u64,
    pub created: i64,
    pub updated: i64,
}

impl RunRecord {
    /// The run's complete checkpoints as `(step, folder)`, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        model::train::complete_checkpoints(&self.dir.join("checkpoints"))
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    /// The complete checkpoint at `step`, or the newest; `Err(kept steps)` when there is none.
    pub fn checkpoint(&self, step: Option<u64>) -> Result<Result<(u64, PathBuf), Vec<u64>>> {
        let all = self.checkpoints()?;
        let found = all
            .iter()
            .rfind(|(s, _)| step.is_none_or(|want| *s == want))
            .cloned();
        Ok(found.ok_or_else(|| all.iter().map(|(s, _)| *s).collect()))
    }
}

/// An evaluation of one of a run's checkpoints on its spec's held-out data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationRecord {
    pub id: i64,
    pub run: i64,
    pub status: Status,
    pub error: Option<String>,
    pub request: EvalRequest,
    /// The checkpoint evaluated, once the job has chosen it.
    pub step: Option<u64>,
    /// The stage whose resolution and text length were used, once the job has run.
    pub stage: Option<String>,
    pub result: Option<EvalResult>,
    /// `RUN_DIR/evaluations/ID`: `eval.json` and the samples' images.
    pub dir: PathBuf,
    pub created: i64,
    pub updated: i64,
}

/// Scores per task and sample predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub tasks: Vec<TaskScores>,
    pub samples: Vec<SampleView>,
}

/// A sample prediction; its images are files of the evaluation's folder, served under
/// `/v1/evaluations/ID/images/NAME`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleView {
    pub task: String,
    pub prompt: String,
    pub prediction: String,
    pub reference: String,
    pub images: Vec<String>,
}

/// A new run's fields.
pub struct NewRun<'a> {
    pub name: &'a str,
    pub mixture_id: Option<i64>,
    pub spec: &'a serde_json::Value,
    pub start: &'a Start,
    pub options: &'a TrainOptions,
    pub total_steps: u64,
    /// The run gets the folder `runs_dir/ID`...
    pub runs_dir: &'a Path,
    /// ...or this one, which no other run may have.
    pub dir: Option<&'a Path>,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mixtures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    text TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    mixture_id INTEGER REFERENCES mixtures (id),
    start TEXT NOT NULL,
    options TEXT NOT NULL,
    dir TEXT NOT NULL,
    total_steps INTEGER NOT NULL,
    last TEXT,
    spec TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    error TEXT,
    request TEXT NOT NULL,
    dir TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    status TEXT NOT NULL,
    error TEXT,
    request TEXT NOT NULL,
    step INTEGER,
    stage TEXT,
    result TEXT,
    dir TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A JSON column: stored by us, so a failure to read it back is a corrupt database.
fn json<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records always serialise")
}

fn mixture_row(row: &Row) -> rusqlite::Result<MixtureRecord> {
    Ok(MixtureRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        version: row.get("version")?,
        spec: json(row, "spec")?,
        text: row.get("text")?,
        created: row.get("created")?,
    })
}

fn run_row(row: &Row) -> rusqlite::Result<RunRecord> {
    let last: Option<String> = row.get("last")?;
    Ok(RunRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        status: Status::parse(&row.get::<_, String>("status")?),
        error: row.get("error")?,
        mixture_id: row.get("mixture_id")?,
        start: json(row, "start")?,
        options: json(row, "options")?,
        dir: PathBuf::from(row.get::<_, String>("dir")?),
        total_steps: row.get::<_, i64>("total_steps")? as u64,
        last: last.and_then(|l| serde_json::from_str(&l).ok()),
        spec: json(row, "spec")?,
        created: row.get("created")?,
        updated: row.get("updated")?,
    })
}

fn dataset_row(row: &Row) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        status: Status::parse(&row.get::<_, String>("status")?),
        error: row.get("error")?,
        request: json(row, "request")?,
        dir: PathBuf::from(row.get::<_, String>("dir")?),
        done: row.get::<_, i64>("done")? as u64,
        total: row.get::<_, i64>("total")? as u64,
        created: row.get("created")?,
        updated: row.get("updated")?,
    })
}

fn evaluation_row(row: &Row) -> rusqlite::Result<EvaluationRecord> {
    let result: Option<String> = row.get("result")?;
    Ok(EvaluationRecord {
        id: row.get("id")?,
        run: row.get("run_id")?,
        status: Status::parse(&row.get::<_, String>("status")?),
        error: row.get("error")?,
        request: json(row, "request")?,
        step: row.get::<_, Option<i64>>("step")?.map(|s| s as u64),
        stage: row.get("stage")?,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        dir: PathBuf::from(row.get::<_, String>("dir")?),
        created: row.get("created")?,
        updated: row.get("updated")?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db_error = |source| ServiceError::Database {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(db_error)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(db_error)?;
        conn.execute_batch(SCHEMA).map_err(db_error)?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` on the connection, naming the database in its errors.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        // A panic while holding the lock cannot leave SQLite half-written: keep going.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| ServiceError::Database {
            path: self.path.clone(),
            source,
        })
    }

    /// Stores a validated mixture as the next version of `name`.
    pub fn insert_mixture(
        &self,
        name: &str,
        spec: &serde_json::Value,
        text: &str,
    ) -> Result<MixtureRecord> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let version: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM mixtures WHERE name = ?1",
                [name],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO mixtures (name, version, spec, text, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, version, to_json(spec), text, now()],
            )?;
            let id = tx.last_insert_rowid();
            let record = tx.query_row("SELECT * FROM mixtures WHERE id = ?1", [id], mixture_row)?;
            tx.commit()?;
            Ok(record)
        })
    }

    pub fn mixtures(&self) -> Result<Vec<MixtureRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT * FROM mixtures ORDER BY id")?;
            statement.query_map([], mixture_row)?.collect()
        })
    }

    pub fn mixture(&self, id: i64) -> Result<MixtureRecord> {
        self.with(|conn| {
            conn.query_row("SELECT * FROM mixtures WHERE id = ?1", [id], mixture_row)
                .optional()
        })?
        .ok_or_else(|| ServiceError::not_found("mixture", id))
    }

    /// Records a queued run and gives it its folder; a folder another run has is a conflict.
    pub fn insert_run(&self, run: NewRun) -> Result<RunRecord> {
        let inserted = self.with(|conn| {
            let tx = conn.transaction()?;
            if let Some(dir) = run.dir {
                let owner: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM runs WHERE dir = ?1",
                        [dir.display().to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(owner) = owner {
                    return Ok(Err(owner));
                }
            }
            let t = now();
            tx.execute(
                "INSERT INTO runs (name, status, mixture_id, start, options, dir, total_steps, spec, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7, ?8, ?8)",
                params![
                    run.name,
                    Status::Queued.as_str(),
                    run.mixture_id,
                    to_json(run.start),
                    to_json(run.options),
                    run.total_steps as i64,
                    to_json(run.spec),
                    t
                ],
            )?;
            let id = tx.last_insert_rowid();
            let dir = match run.dir {
                Some(dir) => dir.to_path_buf(),
                None => run.runs_dir.join(id.to_string()),
            };
            tx.execute(
                "UPDATE runs SET dir = ?2 WHERE id = ?1",
                params![id, dir.display().to_string()],
            )?;
            let record = tx.query_row("SELECT * FROM runs WHERE id = ?1", [id], run_row)?;
            tx.commit()?;
            Ok(Ok(record))
        })?;
        inserted.map_err(|owner| {
            ServiceError::Conflict(format!(
                "run {owner} has the folder {} already",
                run.dir
                    .map(Path::display)
                    .expect("only a chosen folder conflicts")
            ))
        })
    }

    pub fn runs(&self) -> Result<Vec<RunRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT * FROM runs ORDER BY id")?;
            statement.query_map([], run_row)?.collect()
        })
    }

    pub fn run(&self, id: i64) -> Result<RunRecord> {
        self.with(|conn| {
            conn.query_row("SELECT * FROM runs WHERE id = ?1", [id], run_row)
                .optional()
        })?
        .ok_or_else(|| ServiceError::not_found("run", id))
    }

    /// Sets a run's status (and its error: `None` clears it).
    pub fn set_run_status(&self, id: i64, status: Status, error: Option<&str>) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET status = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                params![id, status.as_str(), error, now()],
            )
        })?;
        Ok(())
    }

    pub fn set_run_progress(&self, id: i64, last: &TrainEvent) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET last = ?2, updated = ?3 WHERE id = ?1",
                params![id, to_json(last), now()],
            )
        })?;
        Ok(())
    }

    /// Replaces a run's spec (stages appended) and its planned steps.
    pub fn set_run_spec(&self, id: i64, spec: &serde_json::Value, total_steps: u64) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET spec = ?2, total_steps = ?3, updated = ?4 WHERE id = ?1",
                params![id, to_json(spec), total_steps as i64, now()],
            )
        })?;
        Ok(())
    }

    /// Records a queued preparation job writing to `datasets_dir/NAME`; a name is used once.
    pub fn insert_dataset(
        &self,
        name: &str,
        request: &serde_json::Value,
        datasets_dir: &Path,
    ) -> Result<DatasetRecord> {
        let dir = datasets_dir.join(name);
        let inserted = self.with(|conn| {
            let t = now();
            conn.execute(
                "INSERT INTO datasets (name, status, request, dir, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (name) DO NOTHING",
                params![
                    name,
                    Status::Queued.as_str(),
                    to_json(request),
                    dir.display().to_string(),
                    t
                ],
            )?;
            Ok((conn.changes(), conn.last_insert_rowid()))
        })?;
        match inserted {
            (0, _) => Err(ServiceError::Conflict(format!(
                "a dataset named {name:?} exists already"
            ))),
            (_, id) => self.dataset(id),
        }
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT * FROM datasets ORDER BY id")?;
            statement.query_map([], dataset_row)?.collect()
        })
    }

    pub fn dataset(&self, id: i64) -> Result<DatasetRecord> {
        self.with(|conn| {
            conn.query_row("SELECT * FROM datasets WHERE id = ?1", [id], dataset_row)
                .optional()
        })?
        .ok_or_else(|| ServiceError::not_found("dataset", id))
    }

    pub fn set_dataset_status(&self, id: i64, status: Status, error: Option<&str>) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE datasets SET status = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                params![id, status.as_str(), error, now()],
            )
        })?;
        Ok(())
    }

    pub fn set_dataset_progress(&self, id: i64, done: u64, total: u64) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE datasets SET done = ?2, total = ?3, updated = ?4 WHERE id = ?1",
                params![id, done as i64, total as i64, now()],
            )
        })?;
        Ok(())
    }
}

impl Store {
    /// Records a queued evaluation of run `run`, in the run's folder.
    pub fn insert_evaluation(
        &self,
        run: &RunRecord,
        request: &EvalRequest,
    ) -> Result<EvaluationRecord> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let t = now();
            tx.execute(
                "INSERT INTO evaluations (run_id, status, request, dir, created, updated)
                 VALUES (?1, ?2, ?3, '', ?4, ?4)",
                params![run.id, Status::Queued.as_str(), to_json(request), t],
            )?;
            let id = tx.last_insert_rowid();
            let dir = run.dir.join("evaluations").join(id.to_string());
            tx.execute(
                "UPDATE evaluations SET dir = ?2 WHERE id = ?1",
                params![id, dir.display().to_string()],
            )?;
            let record = tx.query_row(
                "SELECT * FROM evaluations WHERE id = ?1",
                [id],
                evaluation_row,
            )?;
            tx.commit()?;
            Ok(record)
        })
    }

    /// Every evaluation, or run `run`'s, oldest first.
    pub fn evaluations(&self, run: Option<i64>) -> Result<Vec<EvaluationRecord>> {
        self.with(|conn| {
            let mut statement = conn
                .prepare("SELECT * FROM evaluations WHERE ?1 IS NULL OR run_id = ?1 ORDER BY id")?;
            statement.query_map([run], evaluation_row)?.collect()
        })
    }

    /// Each run's newest evaluation with a result.
    pub fn newest_results(&self) -> Result<Vec<EvaluationRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare(
                "SELECT * FROM evaluations WHERE id IN
                 (SELECT MAX(id) FROM evaluations WHERE result IS NOT NULL GROUP BY run_id)
                 ORDER BY run_id",
            )?;
            statement.query_map([], evaluation_row)?.collect()
        })
    }

    pub fn evaluation(&self, id: i64) -> Result<EvaluationRecord> {
        self.with(|conn| {
            conn.query_row(
                "SELECT * FROM evaluations WHERE id = ?1",
                [id],
                evaluation_row,
            )
            .optional()
        })?
        .ok_or_else(|| ServiceError::not_found("evaluation", id))
    }

    pub fn set_evaluation_status(
        &self,
        id: i64,
        status: Status,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE evaluations SET status = ?2, error = ?3, updated = ?4 WHERE id = ?1",
                params![id, status.as_str(), error, now()],
            )
        })?;
        Ok(())
    }

    /// Records what an evaluation is evaluating: the checkpoint's step and the stage.
    pub fn set_evaluation_target(&self, id: i64, step: u64, stage: &str) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE evaluations SET step = ?2, stage = ?3, updated = ?4 WHERE id = ?1",
                params![id, step as i64, stage, now()],
            )
        })?;
        Ok(())
    }

    /// Records a finished evaluation's result.
    pub fn finish_evaluation(&self, id: i64, result: &EvalResult) -> Result<()> {
        self.with(|conn| {
            conn.execute(
                "UPDATE evaluations SET status = ?2, error = NULL, result = ?3, updated = ?4 WHERE id = ?1",
                params![id, Status::Finished.as_str(), to_json(result), now()],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtures_get_versions_per_name_and_runs_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let spec = serde_json::json!({"stages": []});
        assert_eq!(store.insert_mixture("a", &spec, "t").unwrap().version, 1);
        assert_eq!(store.insert_mixture("b", &spec, "t").unwrap().version, 1);
        assert_eq!(store.insert_mixture("a", &spec, "t").unwrap().version, 2);
        assert!(matches!(
            store.mixture(99),
            Err(ServiceError::NotFound { .. })
        ));

        let run = store
            .insert_run(NewRun {
                name: "r",
                mixture_id: Some(1),
                spec: &spec,
                start: &Start::Fresh {
                    config: "tiny".into(),
                    image_encoder: None,
                },
                options: &TrainOptions::default(),
                total_steps: 7,
                runs_dir: Path::new("/d/runs"),
                dir: None,
            })
            .unwrap();
        assert_eq!(run.dir, Path::new("/d/runs").join(run.id.to_string()));
        assert_eq!(run.status, Status::Queued);
        store
            .set_run_status(run.id, Status::Failed, Some("boom"))
            .unwrap();
        let run = store.run(run.id).unwrap();
        assert_eq!(
            (run.status, run.error.as_deref()),
            (Status::Failed, Some("boom"))
        );

        let request = serde_json::json!({});
        store
            .insert_dataset("d", &request, Path::new("/d/datasets"))
            .unwrap();
        assert!(matches!(
            store.insert_dataset("d", &request, Path::new("/d/datasets")),
            Err(ServiceError::Conflict(_))
        ));
    }
}
