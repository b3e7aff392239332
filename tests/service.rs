//! `paliforge serve` as a user runs it: the real binary on a loopback port, driven over HTTP
//! with the service's client and the CLI; tiny demo data and a tiny model, so every run takes
//! seconds.

mod service_support;

use service::client::ClientError;
use service::datasets::DatasetRequest;
use service::events::Event;
use service::requests::{RunRequest, SpecInput, StartRequest};
use service::store::{Status, TrainOptions};
use service_support::{Fixture, Serve, paliforge};

#[test]
fn runs_a_spec_to_completion_with_its_events_checkpoints_and_metrics() {
    let fx = Fixture::new(24, 16);
    let serve = Serve::start(&fx, &[]);
    let run = fx.submit(&serve, TrainOptions::default());
    assert_eq!(run.run.total_steps, 10);
    assert_eq!(run.stages.len(), 2);

    let mut steps = Vec::new();
    let mut stages = Vec::new();
    for event in serve.client.events(run.run.id).unwrap() {
        match event.unwrap() {
            Event::Step { event, .. } => steps.push(event.step),
            Event::Stage { name, step, .. } => stages.push((name, step)),
            Event::Status { status, error, .. } => {
                assert_ne!(status, Status::Failed, "{error:?}");
                if status.is_settled() {
                    assert_eq!(status, Status::Finished);
                    break;
                }
            }
            Event::Evaluation { .. } => panic!("the spec holds nothing out: no evaluation"),
        }
    }
    assert_eq!(
        steps,
        (1..=10).collect::<Vec<_>>(),
        "every step once, in order"
    );
    assert_eq!(stages, [("a".to_string(), 1), ("b".to_string(), 7)]);
    assert_eq!(
        fx.metric_steps(&serve, run.run.id),
        (1..=10).collect::<Vec<_>>()
    );

    let done = serve.client.run(run.run.id).unwrap();
    assert_eq!(done.run.status, Status::Finished);
    assert_eq!(done.run.last.as_ref().map(|e| e.step), Some(10));

    // A late watcher gets the whole history, then the status.
    let replay: Vec<Event> = serve
        .client
        .events(run.run.id)
        .unwrap()
        .take_while(|e| !matches!(e, Ok(Event::Status { .. })))
        .map(Result::unwrap)
        .collect();
    assert_eq!(replay.iter().filter(|e| e.kind() == "step").count(), 10);

    let checkpoints = serve.client.checkpoints(run.run.id).unwrap();
    let last = checkpoints.last().expect("a final checkpoint");
    assert_eq!(last.step, 10);
    assert!(last.files.iter().any(|f| f.name == "model.safetensors"));
    let config: serde_json::Value = serve
        .client
        .get(&format!(
            "/v1/runs/{}/checkpoints/{}/config.json",
            run.run.id, last.name
        ))
        .unwrap();
    assert!(config.is_object());

    let metrics = serve.text("/metrics");
    assert!(
        metrics.contains("paliforge_runs{status=\"finished\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "paliforge_run_step{{run=\"{}\",name=\"tiny\"}} 10",
        run.run.id
    )));
    let openapi: serde_json::Value = serve.client.get("/openapi.json").unwrap();
    assert!(openapi["paths"]["/v1/runs/{id}/events"].is_object());

    let out = paliforge(&["runs", "--server", serve.client.base(), "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["status"], "finished");
    let table =
        String::from_utf8(paliforge(&["runs", "--server", serve.client.base()]).stdout).unwrap();
    assert!(
        table.contains("finished") && table.contains("10/10"),
        "{table}"
    );
}

/// The shipped quickstart spec, as a user submits it, with the tiny model: every stage to the
/// end, watched from the command line, then evaluated by itself on every task.
#[test]
fn the_quickstart_spec_runs_to_completion_and_is_evaluated() {
    let fx = Fixture::new(4, 4);
    let demo = fx.root().join("quickstart-demo");
    paliforge(&[
        "demo-data",
        "--out",
        demo.join("demo").to_str().unwrap(),
        "--rows",
        "200",
        "--pair-rows",
        "50",
        "--image-size",
        "112",
    ]);
    let spec = demo.join("quickstart.toml");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mixtures/specs/quickstart.toml"
    );
    std::fs::copy(shipped, &spec).unwrap();
    let serve = Serve::start(&fx, &[]);
    let out = paliforge(&[
        "submit",
        spec.to_str().unwrap(),
        "--config",
        "tiny",
        "--name",
        "quickstart",
        "--watch",
        "--server",
        serve.client.base(),
    ]);
    assert!(out.status.success());
    let run = serve.client.runs().unwrap().pop().unwrap().run;
    assert_eq!(run.status, Status::Finished);
    assert_eq!(run.last.as_ref().map(|e| e.step), Some(run.total_steps));
    let stages: Vec<String> = run.spec["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, ["pretrain", "reweight", "transfer-vqa"]);

    let started = std::time::Instant::now();
    let evaluation = loop {
        let evaluations = serve.client.evaluations(run.id).unwrap();
        if let Some(e) = evaluations.first().filter(|e| e.status.is_settled()) {
            break e.clone();
        }
        assert!(started.elapsed().as_secs() < 120, "{evaluations:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        evaluation.status,
        Status::Finished,
        "{:?}",
        evaluation.error
    );
    let tasks: Vec<&str> = evaluation
        .result
        .as_ref()
        .unwrap()
        .tasks
        .iter()
        .map(|t| t.task.as_str())
        .collect();
    assert_eq!(tasks, ["caption", "compare", "detect", "vqa"]);
}

#[test]
fn evaluations_score_a_runs_checkpoints_on_held_out_data() {
    let fx = Fixture::with_held_out(24, 16);
    let serve = Serve::start(&fx, &[]);
    let id = fx
        .submit(
            &serve,
            TrainOptions {
                checkpoint_every: 3,
                ..TrainOptions::default()
            },
        )
        .run
        .id;

    // The finished run is evaluated by itself; its events say so.
    let mut evaluation_events = Vec::new();
    for event in serve.client.events(id).unwrap() {
        match event.unwrap() {
            Event::Status { status, error, .. } => assert_ne!(status, Status::Failed, "{error:?}"),
            Event::Evaluation {
                evaluation, status, ..
            } => {
                evaluation_events.push(status);
                if status.is_settled() {
                    assert_eq!(status, Status::Finished);
                    assert_eq!(serve.client.evaluation(evaluation).unwrap().run, id);
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        evaluation_events,
        [Status::Queued, Status::Running, Status::Finished]
    );
    let evaluations = serve.client.evaluations(id).unwrap();
    let [final_eval] = evaluations.as_slice() else {
        panic!("one evaluation: {evaluations:?}");
    };
    assert_eq!(
        (final_eval.step, final_eval.stage.as_deref()),
        (Some(10), Some("b")),
        "the last checkpoint at the last stage's settings"
    );
    let result = final_eval.result.as_ref().unwrap();
    let tasks: Vec<(&str, usize, &str)> = result
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.examples, t.metrics[0].0.as_str()))
        .collect();
    assert_eq!(
        tasks,
        [("caption", 4, "exact_match"), ("vqa", 4, "exact_match")]
    );
    assert!(
        result
            .tasks
            .iter()
            .all(|t| (0.0..=1.0).contains(&t.metrics[0].1))
    );
    assert!(final_eval.dir.join("eval.json").is_file());
    assert_eq!(result.samples.len(), 8, "4 kept of each task");
    assert!(
        result.samples.iter().all(|s| s.images.len() == 1),
        "each with its image"
    );
    let sample = &result.samples[0];
    assert!(!sample.reference.is_empty());
    let image = reqwest::blocking::get(format!(
        "{}/v1/evaluations/{}/images/{}",
        serve.client.base(),
        final_eval.id,
        sample.images[0]
    ))
    .unwrap();
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(&image.bytes().unwrap()[1..4], b"PNG");
    let outside = serve.text(&format!(
        "/v1/evaluations/{}/images/..%2F..%2F..%2Fpaliforge.db",
        final_eval.id
    ));
    assert!(outside.contains("no image"), "{outside}");

    // An earlier checkpoint, fewer examples, from the command line.
    let out = paliforge(&[
        "evaluate",
        &id.to_string(),
        "--step",
        "6",
        "--examples",
        "3",
        "--server",
        serve.client.base(),
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("(checkpoint 6, stage b)")
            && table.contains("caption")
            && table.contains("vqa"),
        "{table}"
    );
    let all = serve.client.evaluations(id).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!((all[1].status, all[1].step), (Status::Finished, Some(6)));
    assert!(
        all[1]
            .result
            .as_ref()
            .unwrap()
            .tasks
            .iter()
            .all(|t| t.examples == 3)
    );
    let listed = String::from_utf8(
        paliforge(&["evaluations", "tiny", "--server", serve.client.base()]).stdout,
    )
    .unwrap();
    assert_eq!(listed.matches("exact_match").count(), 4, "{listed}");
    let metrics = serve.text("/metrics");
    assert!(
        metrics.contains(&format!(
            "paliforge_run_eval_score{{run=\"{id}\",name=\"tiny\",task=\"vqa\",metric=\"exact_match\"}}"
        )),
        "{metrics}"
    );

    // Requests that cannot be met: every problem, with its key.
    let problems =
        |request: service::requests::EvalRequest| match serve.client.evaluate(id, &request) {
            Err(ClientError::Api {
                status: 422,
                problems,
                ..
            }) => problems
                .into_iter()
                .map(|p| (p.key.unwrap_or_default(), p.message))
                .collect::<Vec<_>>(),
            other => panic!("expected a 422: {other:?}"),
        };
    let bad = problems(service::requests::EvalRequest {
        step: Some(1),
        stage: Some("nope".into()),
        examples: Some(0),
        ..Default::default()
    });
    let keys: Vec<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["stage", "examples", "step"], "{bad:?}");
    assert!(
        bad[2]
            .1
            .contains("no checkpoint at step 1 (kept: 6, 9, 10)"),
        "{bad:?}"
    );
    assert!(matches!(
        serve.client.evaluate(999, &Default::default()),
        Err(ClientError::Api { status: 404, .. })
    ));
    assert!(matches!(
        serve.client.evaluation(999),
        Err(ClientError::Api { status: 404, .. })
    ));
}

#[test]
fn a_stopped_run_resumes_without_losing_or_repeating_a_step() {
    let fx = Fixture::new(240, 160);
    let serve = Serve::start(&fx, &[]);
    let run = fx.submit(&serve, TrainOptions::default());
    let id = run.run.id.to_string();
    serve.wait(run.run.id, |r| r.last.as_ref().is_some_and(|e| e.step >= 3));
    let server = serve.client.base().to_string();
    paliforge(&["stop", &id, "--server", &server]);
    let stopped = serve.wait(run.run.id, |r| r.status.is_settled());
    assert_eq!(stopped.status, Status::Stopped);
    let at = stopped.last.as_ref().unwrap().step;
    assert!(at < 100, "stopped at step {at}, before the end");
    assert_eq!(
        serve
            .client
            .checkpoints(run.run.id)
            .unwrap()
            .last()
            .unwrap()
            .step,
        at,
        "stopping checkpoints the last step"
    );
    assert_eq!(
        fx.metric_steps(&serve, run.run.id),
        (1..=at).collect::<Vec<_>>()
    );

    // Stopping again is a conflict; resuming continues; a watcher sees it finish.
    let again = serve.client.stop(run.run.id).unwrap_err();
    assert!(
        matches!(again, ClientError::Api { status: 409, .. }),
        "{again}"
    );
    paliforge(&["resume", &id, "--server", &server]);
    paliforge(&["watch", &id, "--server", &server]);
    let done = serve.client.run(run.run.id).unwrap();
    assert_eq!(done.run.status, Status::Finished);
    assert_eq!(
        fx.metric_steps(&serve, run.run.id),
        (1..=100).collect::<Vec<_>>()
    );
}

#[test]
fn a_killed_service_resumes_its_run_from_the_last_checkpoint_after_restart() {
    let fx = Fixture::new(240, 160);
    let mut serve = Serve::start(&fx, &[]);
    let run = fx.submit(
        &serve,
        TrainOptions {
            checkpoint_every: 4,
            ..TrainOptions::default()
        },
    );
    serve.wait(run.run.id, |r| r.last.as_ref().is_some_and(|e| e.step >= 6));

    // One service per data directory.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(fx.data_dir())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another paliforge service"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    serve.kill();
    let killed_at = serve_steps_on_disk(&fx, run.run.id);
    assert!(killed_at < 100, "killed mid-run, at step {killed_at}");

    let mut serve = Serve::start(&fx, &[]);
    let resumed = serve.wait(run.run.id, |r| {
        r.last.as_ref().is_some_and(|e| e.step >= killed_at + 3)
    });
    assert_eq!(resumed.status, Status::Running);

    // SIGTERM: the run checkpoints and stays queued for the next start.
    serve.terminate();
    let serve = Serve::start(&fx, &[]);
    let done = serve.wait(run.run.id, |r| r.status.is_settled());
    assert_eq!(done.status, Status::Finished, "{:?}", done.error);
    assert!(
        serve.log().contains("continuing after a restart"),
        "{}",
        serve.log()
    );
    assert_eq!(
        fx.metric_steps(&serve, run.run.id),
        (1..=100).collect::<Vec<_>>(),
        "every step exactly once"
    );
}

fn serve_steps_on_disk(fx: &Fixture, id: i64) -> u64 {
    fx.metric_steps_in(&fx.data_dir().join("runs").join(id.to_string()))
        .last()
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_run_writes_to_the_folder_it_is_given_and_no_other_run_shares_it() {
    let fx = Fixture::new(4000, 16);
    let serve = Serve::start(&fx, &[]);
    // A long run holds the one training slot, so the next ones wait in the queue.
    let long = fx.submit(&serve, TrainOptions::default()).run.id;
    let chosen = fx.root().join("chosen");
    let short_spec = std::fs::read_to_string(fx.spec())
        .unwrap()
        .replace("examples = 4000", "examples = 24");
    let request = |out: &std::path::Path| RunRequest {
        spec: Some(SpecInput::Text(short_spec.clone())),
        base: Some(fx.root().to_path_buf()),
        start: StartRequest::Fresh {
            config: "tiny".into(),
            image_encoder: None,
        },
        out: Some(out.to_path_buf()),
        ..RunRequest::default()
    };
    let queued = serve.client.submit(&request(&chosen)).unwrap().run;
    assert_eq!(queued.dir, chosen);
    let refused = |out: &std::path::Path| match serve.client.submit(&request(out)) {
        Err(ClientError::Api {
            status,
            message,
            problems,
            ..
        }) => (status, problems.first().map_or(message, |p| format!("{p}"))),
        other => panic!("{out:?} accepted: {other:?}"),
    };
    let (status, message) = refused(&chosen);
    assert_eq!(status, 409);
    assert!(
        message.contains(&format!("run {} has the folder", queued.id)),
        "{message}"
    );
    for (out, expected) in [
        (
            std::path::PathBuf::from("/etc/paliforge-run"),
            "outside the data roots",
        ),
        (
            fx.data_dir().join("runs").join("99"),
            "the service's own run folders",
        ),
        (fx.root().join("demo"), "exists and is not empty"),
    ] {
        let (status, message) = refused(&out);
        assert_eq!(status, 422, "{out:?}");
        assert!(
            message.starts_with("out: ") && message.contains(expected),
            "{message}"
        );
    }
    // A fresh model's image encoder is read from inside the data roots only.
    let encoder_outside = RunRequest {
        start: StartRequest::Fresh {
            config: "tiny".into(),
            image_encoder: Some("/etc/encoder.safetensors".into()),
        },
        ..request(&fx.root().join("elsewhere"))
    };
    match serve.client.submit(&encoder_outside) {
        Err(ClientError::Api {
            status: 422,
            problems,
            ..
        }) => assert!(
            problems[0]
                .to_string()
                .starts_with("start.fresh.image_encoder: ")
                && problems[0].message.contains("outside the data roots"),
            "{problems:?}"
        ),
        other => panic!("an encoder outside the roots was accepted: {other:?}"),
    }

    serve.client.stop(long).unwrap();
    let done = serve.wait(queued.id, |r| r.status.is_settled());
    assert_eq!(done.status, Status::Finished, "{:?}", done.error);
    assert_eq!(fx.metric_steps_in(&chosen), (1..=10).collect::<Vec<_>>());
    assert!(
        std::fs::read_dir(chosen.join("checkpoints"))
            .unwrap()
            .count()
            > 0
    );
}

#[test]
fn appended_stages_continue_a_finished_run() {
    let fx = Fixture::new(24, 16);
    let serve = Serve::start(&fx, &[]);
    let run = fx.submit(&serve, TrainOptions::default());
    serve.wait(run.run.id, |r| r.status == Status::Finished);
    let more = r#"
        [[stages]]
        name = "c"
        resolution = 42
        text_len = 48
        batch_size = 4
        budget = { examples = 12 }
        weights = { caption = 1 }
        train = { continues = true }
    "#;
    let extended = serve.client.append_stages(run.run.id, more).unwrap();
    assert_eq!(extended.run.total_steps, 13);
    assert_eq!(extended.stages.len(), 3);
    let done = serve.wait(run.run.id, |r| {
        r.status == Status::Finished && r.total_steps == 13
    });
    assert_eq!(done.last.as_ref().map(|e| e.stage_name.as_str()), Some("c"));
    assert_eq!(
        fx.metric_steps(&serve, run.run.id),
        (1..=13).collect::<Vec<_>>()
    );
    // "c" carries stage "b"'s warm-up on (2e-5 over 1,000 steps) after b's 4 steps: its first
    // step is the schedule's fifth, where a fresh warm-up would start again at its first.
    let dir = serve.client.run(run.run.id).unwrap().run.dir;
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let first_of_c = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["stage_name"] == "c")
        .unwrap();
    let lr = first_of_c["lr"]["llm"].as_f64().unwrap();
    assert!((lr - 2e-5 * 5.0 / 1000.0).abs() < 1e-15, "{lr}");
    // A stage that names an unknown task is refused with its key.
    let bad = serve
        .client
        .append_stages(
            run.run.id,
            "[[stages]]\nname = \"d\"\nbudget = { examples = 4 }\nweights = { ocr = 1 }\n",
        )
        .unwrap_err();
    match bad {
        ClientError::Api {
            status, problems, ..
        } => {
            assert_eq!(status, 422);
            assert!(
                problems
                    .iter()
                    .any(|p| p.key.as_deref() == Some("stages[3].weights.ocr"))
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn bad_specs_unknown_ids_big_bodies_and_tokens_are_refused() {
    let fx = Fixture::new(24, 16);
    let serve = Serve::start(&fx, &["--max-body-mib", "1", "--token", "s3cret"]);

    // Every problem, each with its key; paths outside the roots are not read.
    let bad = "[sources.x]\ndata = \"../../etc/*.parquet\"\neval_data = \"/etc/*.parquet\"\n[tasks.t]\nsource = \"y\"\nprefix = \"a\"\nsuffix = \"b\"\n[[stages]]\nname = \"s\"\nresolution = 30\nbudget = { examples = 0 }\nweights = { zz = 1 }\n";
    let error = serve.client.create_mixture("bad", bad).unwrap_err();
    let ClientError::Api {
        status, problems, ..
    } = error
    else {
        panic!("{error}")
    };
    assert_eq!(status, 422);
    let keys: Vec<_> = problems.iter().filter_map(|p| p.key.clone()).collect();
    for key in [
        "sources.x.data[0]",
        "sources.x.eval_data[0]",
        "tasks.t.source",
        "stages[0].resolution",
        "stages[0].weights.zz",
        "stages[0].budget.examples",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }
    let absolute = "[sources.x]\ndata = \"/etc/*.parquet\"\n[tasks.t]\nsource = \"x\"\nprefix = \"a\"\nsuffix = \"b\"\n[[stages]]\nname = \"s\"\nbudget = { examples = 4 }\nweights = { t = 1 }\n".to_string();
    let error = serve
        .client
        .submit(&RunRequest {
            spec: Some(SpecInput::Text(absolute)),
            ..RunRequest::default()
        })
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Api { status: 422, problems, .. } if problems[0].message.contains("outside the data roots")),
        "{error}"
    );

    // A good spec is stored with a version per name.
    let spec = std::fs::read_to_string(fx.spec())
        .unwrap()
        .replace("demo/", &format!("{}/demo/", fx.root().display()));
    assert_eq!(
        serve
            .client
            .create_mixture("m", &spec)
            .unwrap()
            .mixture
            .version,
        1
    );
    let second = serve.client.create_mixture("m", &spec).unwrap();
    assert_eq!(second.mixture.version, 2);
    assert_eq!(second.stages[0].weights.len(), 2);

    for path in [
        "/v1/runs/42",
        "/v1/runs/nope",
        "/v1/runs/42/checkpoints",
        "/v1/runs/42/events",
        "/v1/mixtures/42",
        "/v1/elsewhere",
    ] {
        let error = serve.client.get::<serde_json::Value>(path).unwrap_err();
        assert!(
            matches!(error, ClientError::Api { status: 404, .. }),
            "{path}: {error}"
        );
    }
    assert!(matches!(
        serve.client.stop(42).unwrap_err(),
        ClientError::Api { status: 404, .. }
    ));
    let error = serve
        .client
        .submit(&RunRequest {
            mixture: Some(second.mixture.id),
            start: StartRequest::Checkpoint {
                run: 42,
                step: None,
            },
            ..RunRequest::default()
        })
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Api { status: 422, .. }),
        "{error}"
    );

    let big = "#".repeat(2 << 20);
    let error = serve.client.create_mixture("big", &big).unwrap_err();
    assert!(
        matches!(error, ClientError::Api { status: 413, .. }),
        "{error}"
    );

    // The token: required of the API, not of the page.
    let anonymous = service::client::Client::new(serve.client.base(), None).unwrap();
    let error = anonymous.runs().unwrap_err();
    assert!(
        matches!(error, ClientError::Api { status: 401, .. }),
        "{error}"
    );
    let page = reqwest::blocking::get(serve.client.base()).unwrap();
    assert!(page.status().is_success());

    // No token, no network: a non-loopback bind is refused at start-up.
    let open = std::process::Command::new(env!("CARGO_BIN_EXE_paliforge"))
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir"])
        .arg(fx.root().join("other"))
        .env_remove("PALIFORGE_TOKEN")
        .output()
        .unwrap();
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn preparation_jobs_make_datasets_that_runs_train_on() {
    let fx = Fixture::new(24, 16);
    let serve = Serve::start(&fx, &[]);
    let request =
        |json: serde_json::Value| -> DatasetRequest { serde_json::from_value(json).unwrap() };
    let demo = serve
        .client
        .prepare(&request(serde_json::json!({
            "name": "shapes",
            "input": { "kind": "demo", "rows": 40, "pair_rows": 10, "image_size": 56 }
        })))
        .unwrap();
    let demo = wait_dataset(&serve, demo.id);
    assert_eq!(demo.status, Status::Finished, "{:?}", demo.error);
    let manifest: serde_json::Value = serve
        .client
        .get(&format!("/v1/datasets/{}/manifest", demo.id))
        .unwrap();
    assert!(manifest["scenes"].is_object(), "{manifest}");

    // Re-encode its scenes smaller, as `paliforge prepare --parquet` does.
    let scenes = demo.dir.join("scenes/train-*.parquet");
    let smaller = serve
        .client
        .prepare(&request(serde_json::json!({
            "name": "small-shapes",
            "input": { "kind": "parquet", "data": [scenes.display().to_string()] },
            "options": { "max_side": 32, "rows_per_shard": 25 }
        })))
        .unwrap();
    let smaller = wait_dataset(&serve, smaller.id);
    assert_eq!(smaller.status, Status::Finished, "{:?}", smaller.error);
    assert_eq!(smaller.done, 40);
    assert!(smaller.dir.join("manifest.json").is_file());

    // A spec's relative paths are relative to the data directory: the prepared data trains.
    let spec = std::fs::read_to_string(fx.spec())
        .unwrap()
        .replace("demo/scenes", "datasets/shapes/scenes");
    let run = serve
        .client
        .submit(&RunRequest {
            spec: Some(SpecInput::Text(spec)),
            start: StartRequest::Fresh {
                config: "tiny".into(),
                image_encoder: None,
            },
            ..RunRequest::default()
        })
        .unwrap();
    let done = serve.wait(run.run.id, |r| r.status.is_settled());
    assert_eq!(done.status, Status::Finished, "{:?}", done.error);

    // Names are used once and must be plain; inputs stay inside the data roots.
    for (json, status) in [
        (
            serde_json::json!({"name": "shapes", "input": {"kind": "demo"}}),
            409,
        ),
        (
            serde_json::json!({"name": "../up", "input": {"kind": "demo"}}),
            422,
        ),
        (
            serde_json::json!({"name": "etc", "input": {"kind": "parquet", "data": ["/etc/*.parquet"]}}),
            422,
        ),
    ] {
        let error = serve.client.prepare(&request(json)).unwrap_err();
        assert!(
            matches!(error, ClientError::Api { status: s, .. } if s == status),
            "{error}"
        );
    }
    // The same from the command line.
    let server = serve.client.base().to_string();
    let out = paliforge(&[
        "submit-data",
        "cli-demo",
        "--demo",
        "--rows",
        "20",
        "--pair-rows",
        "5",
        "--server",
        &server,
        "--json",
    ]);
    let queued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = wait_dataset(&serve, queued["id"].as_i64().unwrap());
    assert_eq!(job.status, Status::Finished, "{:?}", job.error);
    let out = paliforge(&["datasets", "--server", &server]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.matches("finished").count(), 3, "{table}");
}

fn wait_dataset(serve: &Serve, id: i64) -> service::store::DatasetRecord {
    let started = std::time::Instant::now();
    loop {
        let job = serve.client.dataset(id).unwrap();
        if job.status.is_settled() {
            return job;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{job:?}\n{}",
            serve.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn concurrent_runs_queue_fail_with_their_cause_and_start_from_checkpoints() {
    let fx = Fixture::new(24, 16);
    let serve = Serve::start(&fx, &[]);
    let ids: Vec<i64> = std::thread::scope(|scope| {
        let submits: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| fx.submit(&serve, TrainOptions::default()).run.id))
            .collect();
        submits.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    // One training run at a time: the others wait, queued.
    loop {
        let runs = serve.client.runs().unwrap();
        let running = runs
            .iter()
            .filter(|r| matches!(r.run.status, Status::Running | Status::Stopping))
            .count();
        assert!(running <= 1, "{running} runs at once");
        if runs.iter().all(|r| r.run.status.is_settled()) {
            assert!(runs.iter().all(|r| r.run.status == Status::Finished));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A run that cannot start fails with its cause; the service keeps serving.
    let broken = serve
        .client
        .submit(&RunRequest {
            spec: Some(SpecInput::Text(std::fs::read_to_string(fx.spec()).unwrap())),
            base: Some(fx.root().to_path_buf()),
            start: StartRequest::Init {
                dir: fx.root().join("demo"),
            },
            ..RunRequest::default()
        })
        .unwrap();
    let failed = serve.wait(broken.run.id, |r| r.status.is_settled());
    assert_eq!(failed.status, Status::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("demo"),
        "the error names the folder: {error}"
    );
    let events: Vec<Event> = serve
        .client
        .events(broken.run.id)
        .unwrap()
        .take(1)
        .map(Result::unwrap)
        .collect();
    assert!(
        matches!(
            &events[0],
            Event::Status {
                status: Status::Failed,
                error: Some(_),
                ..
            }
        ),
        "{events:?}"
    );

    // Another run's checkpoint starts a new run.
    let child = serve
        .client
        .submit(&RunRequest {
            spec: Some(SpecInput::Text(std::fs::read_to_string(fx.spec()).unwrap())),
            base: Some(fx.root().to_path_buf()),
            start: StartRequest::Checkpoint {
                run: ids[0],
                step: Some(10),
            },
            ..RunRequest::default()
        })
        .unwrap();
    let child = serve.wait(child.run.id, |r| r.status.is_settled());
    assert_eq!(child.status, Status::Finished, "{:?}", child.error);
    assert_eq!(
        child.last.map(|e| e.step),
        Some(10),
        "a new run counts from 0"
    );
}
