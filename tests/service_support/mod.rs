//! What the service tests share: tiny demo data with a two-stage spec, and the real binary
//! serving on a loopback port.

#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../support/mod.rs"]
mod support;
pub use support::paliforge;

use service::api::RunView;
use service::client::Client;
use service::requests::{RunRequest, SpecInput, StartRequest};
use service::store::{RunRecord, TrainOptions};

/// A temporary folder with demo data (`demo/`), a spec of two stages (`a`: captions and
/// questions, `b`: questions; batches of 4 at 28 px) and the service's data directory.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Stage `a` trains on `a` examples, stage `b` on `b`.
    pub fn new(a: usize, b: usize) -> Fixture {
        Fixture::make(a, b, "")
    }

    /// As [`Fixture::new`], with the demo's test split held out for evaluation (4 examples a
    /// task, 8 new tokens at most).
    pub fn with_held_out(a: usize, b: usize) -> Fixture {
        let eval = r#"eval_data = "demo/scenes/test-*.parquet"
"#;
        Fixture::make(a, b, eval)
    }

    fn make(a: usize, b: usize, held_out: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let demo = dir.path().join("demo");
        paliforge(&[
            "demo-data",
            "--out",
            demo.to_str().unwrap(),
            "--rows",
            "40",
            "--pair-rows",
            "10",
            "--image-size",
            "56",
        ]);
        let spec = format!(
            r#"description = "tiny"
[sources.scenes]
data = "demo/scenes/train-*.parquet"
{held_out}image_columns = ["image"]

[tasks.caption]
source = "scenes"
prefix = "caption en"
suffix = "{{caption}}"

[tasks.vqa]
source = "scenes"
prefix = "answer en {{question}}"
suffix = "{{answer}}"

[[stages]]
name = "a"
resolution = 28
text_len = 48
batch_size = 4
budget = {{ examples = {a} }}
weights = {{ caption = 1, vqa = 1 }}
train = {{ lr = 1e-3 }}

[[stages]]
name = "b"
resolution = 28
text_len = 48
batch_size = 4
budget = {{ examples = {b} }}
weights = {{ vqa = 1 }}

[eval]
examples = 4
max_new_tokens = 8
"#
        );
        std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
        Fixture { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn spec(&self) -> PathBuf {
        self.root().join("spec.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// Submits the spec as a run of the tiny model.
    pub fn submit(&self, serve: &Serve, options: TrainOptions) -> RunView {
        serve
            .client
            .submit(&RunRequest {
                name: Some("tiny".into()),
                spec: Some(SpecInput::Text(
                    std::fs::read_to_string(self.spec()).unwrap(),
                )),
                base: Some(self.root().to_path_buf()),
                start: StartRequest::Fresh {
                    config: "tiny".into(),
                    image_encoder: None,
                },
                options: TrainOptions {
                    task_loss_every: 2,
                    ..options
                },
                ..RunRequest::default()
            })
            .unwrap()
    }

    /// The steps in a run's `metrics.jsonl`, in file order.
    pub fn metric_steps(&self, serve: &Serve, id: i64) -> Vec<u64> {
        self.metric_steps_in(&serve.client.run(id).unwrap().run.dir)
    }

    pub fn metric_steps_in(&self, run_dir: &Path) -> Vec<u64> {
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["step"].as_u64().unwrap())
            .collect()
    }
}

/// `paliforge serve` on 127.0.0.1, a free port, the fixture's data directory; its log in
/// `serve-N.log` beside it. Killed when dropped.
pub struct Serve {
    child: Child,
    pub client: Client,
    log: PathBuf,
}

impl Serve {
    pub fn start(fx: &Fixture, extra: &[&str]) -> Serve {
        let token = extra
            .iter()
            .position(|a| *a == "--token")
            .map(|i| extra[i + 1].to_string());
        let log = (0..)
            .map(|i| fx.root().join(format!("serve-{i}.log")))
            .find(|p| !p.exists())
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_paliforge"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--data-dir",
            ])
            .arg(fx.data_dir())
            .arg("--data-root")
            .arg(fx.root())
            .args(extra)
            .env_remove("PALIFORGE_TOKEN")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "serve said {line:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Serve {
            child,
            client: Client::new(&addr, token).unwrap(),
            log,
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for the graceful exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "serve exited with {exit}: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls run `id` until `done` holds (three minutes at most).
    pub fn wait(&self, id: i64, done: impl Fn(&RunRecord) -> bool) -> RunRecord {
        let started = Instant::now();
        loop {
            let run = self.client.run(id).unwrap().run;
            if done(&run) {
                return run;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "run {id} stuck: {run:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A GET's body as text.
    pub fn text(&self, path: &str) -> String {
        reqwest::blocking::get(format!("{}{path}", self.client.base()))
            .unwrap()
            .text()
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
