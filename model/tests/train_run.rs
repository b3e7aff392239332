//! The trainer on real pipeline batches: a tiny dataset written with the pipeline's shard
//! writer and tokenizer trainer, a tiny model whose vocabulary is the tokenizer's.
//! Exact resume (across a stage boundary and a resolution change), freezing, gradient
//! accumulation, label smoothing, the NaN guard and checkpoint files.

use std::path::Path;
use std::sync::Arc;

use mixtures::Mixture;
use model::layers::Params;
use model::train::{
    Outcome, TrainConfig, TrainError, TrainEvent, Trainer, config_for_tokenizer, latest_checkpoint,
};
use model::{PaliGemma, PaliGemmaConfig};
use pipeline::Batch;
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::stream::StreamState;
use pipeline::text::{PaliTokenizer, train_tokenizer};
use pipeline::writer::{DataType, ImageValue, Row, Schema, ShardWriter, WriterConfig};

const COLOURS: [&str; 4] = ["red", "green", "blue", "yellow"];

fn png(i: usize) -> Vec<u8> {
    let rgb = [
        (i * 40 % 256) as u8,
        (i * 90 % 256) as u8,
        (i * 13 % 256) as u8,
    ];
    let img = image::RgbImage::from_fn(28, 28, |x, y| {
        image::Rgb(if (x + y) % 9 < 4 {
            rgb
        } else {
            [255, 255, 255]
        })
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn caption(i: usize) -> String {
    let words: Vec<&str> = "a small square left of the big circle".split(' ').collect();
    format!(
        "{} {}",
        COLOURS[i % 4],
        words[..1 + i % words.len()].join(" ")
    )
}

/// 40 rows in two shards and a tokenizer trained on their text.
fn dataset(dir: &Path) -> Arc<PaliTokenizer> {
    let rows = 40;
    let schema = Schema::new()
        .image("image")
        .column("colour", DataType::String)
        .column("caption", DataType::String);
    let config = WriterConfig {
        rows_per_row_group: 7,
        rows_per_shard: rows / 2,
        ..WriterConfig::new("train", schema)
    };
    let mut writer = ShardWriter::create(dir, config).unwrap();
    for i in 0..rows {
        writer
            .write(
                Row::new()
                    .image("image", ImageValue::from_bytes(png(i)))
                    .field("colour", COLOURS[i % 4])
                    .field("caption", caption(i)),
            )
            .unwrap();
    }
    writer.finish().unwrap();
    let texts: Vec<String> = (0..rows)
        .map(caption)
        .chain(["caption en", "colour"].map(String::from))
        .collect();
    let tokenizer = train_tokenizer(texts.iter().map(String::as_str), 300).unwrap();
    Arc::new(PaliTokenizer::new(tokenizer).unwrap())
}

/// Two stages: 28 px then 42 px (the position embeddings are resampled between them).
fn spec(dir: &Path, stage_one_train: &str) -> Mixture {
    let toml = format!(
        r#"
        seed = 5
        [sources.shapes]
        data = "{dir}/train-*.parquet"
        image_columns = ["image"]
        [tasks.caption]
        source = "shapes"
        prefix = "caption en"
        suffix = "{{caption}}"
        [tasks.colour]
        source = "shapes"
        prefix = "colour"
        suffix = "{{colour}}"
        [[stages]]
        name = "one"
        resolution = 28
        text_len = 24
        batch_size = 4
        budget = {{ examples = 20 }}
        weights = {{ caption = 2, colour = 1 }}
        train = {stage_one_train}
        [[stages]]
        name = "two"
        recipe = "transfer"
        resolution = 42
        text_len = 16
        batch_size = 3
        budget = {{ examples = 9 }}
        weights = {{ colour = 1 }}
        train = {{ lr = 1e-3 }}
        "#,
        dir = dir.display()
    );
    Mixture::from_toml_str(&toml).unwrap()
}

const TRAIN: &str =
    "{ lr = 3e-3, warmup = { steps = 2 }, vit_warmup = { steps = 3 }, schedule = \"cosine\" }";

fn options(tokenizer: &Arc<PaliTokenizer>) -> RunOptions {
    RunOptions {
        threads: 1,
        prefetch: 2,
        ..RunOptions::new(tokenizer.clone())
    }
}

fn tiny_model(tokenizer: &PaliTokenizer, resolution: usize) -> PaliGemma {
    let mut cfg = config_for_tokenizer(PaliGemmaConfig::tiny(), tokenizer);
    cfg.vision.image_size = resolution;
    PaliGemma::new(&cfg, &model::device(), 11).unwrap()
}

fn run_all(trainer: &mut Trainer) -> (Outcome, Vec<TrainEvent>) {
    let mut events = Vec::new();
    let outcome = trainer.run(&mut |e| events.push(e.clone())).unwrap();
    (outcome, events)
}

fn loss_bits(events: &[TrainEvent]) -> Vec<(u64, u32)> {
    events.iter().map(|e| (e.step, e.loss.to_bits())).collect()
}

fn params(m: &PaliGemma) -> Vec<(String, Vec<f32>)> {
    m.named_params()
        .into_iter()
        .map(|(n, p)| (n, p.to_vec()))
        .collect()
}

#[test]
fn a_run_stopped_and_resumed_gives_the_same_losses_bit_for_bit() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(data.path(), TRAIN);
    let dev = model::device();

    let whole_dir = tempfile::tempdir().unwrap();
    let config = |dir: &Path| TrainConfig {
        run_dir: Some(dir.to_path_buf()),
        checkpoint_every: 2,
        keep_checkpoints: 2,
        ..Default::default()
    };
    let mut whole = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        config(whole_dir.path()),
    )
    .unwrap();
    let (outcome, all) = run_all(&mut whole);
    assert_eq!(
        outcome,
        Outcome::Finished { steps: 8 },
        "5 steps of 4 examples, then 3 of 3"
    );
    assert_eq!(
        all.iter().map(|e| e.stage).collect::<Vec<_>>(),
        [0, 0, 0, 0, 0, 1, 1, 1]
    );
    assert_eq!(
        whole.model.cfg.vision.image_size, 42,
        "stage two's resolution"
    );
    assert!(
        all.windows(2).all(|w| w[0].loss != w[1].loss),
        "the model is learning something"
    );
    assert!(
        all.iter()
            .all(|e| e.grad_norm.is_finite() && e.grad_norm > 0.0)
    );
    // keep 2: the newest two checkpoints remain, the end one among them
    let kept: Vec<String> = std::fs::read_dir(whole_dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(kept, ["step-00000006", "step-00000008"]);
    let final_params = params(&whole.model);

    // Mid-stage, and right at the stage boundary (the resumed run switches resolution).
    for k in [3, 5] {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(
            mixture.clone(),
            tiny_model(&tokenizer, 28),
            options(&tokenizer),
            TrainConfig {
                stop_after: Some(k),
                ..config(dir.path())
            },
        )
        .unwrap();
        let (outcome, before) = run_all(&mut first);
        assert_eq!(outcome, Outcome::Stopped { steps: k });
        drop(first);
        // a kill -9 in the middle of writing a later checkpoint leaves a temporary folder and
        // maybe a step folder without its state file: neither is taken for a checkpoint
        let checkpoints = dir.path().join("checkpoints");
        std::fs::create_dir_all(checkpoints.join(".tmp-step-00000099")).unwrap();
        std::fs::write(
            checkpoints.join(".tmp-step-00000099/model.safetensors"),
            b"partial",
        )
        .unwrap();
        std::fs::create_dir_all(checkpoints.join("step-00000098")).unwrap();
        let latest = latest_checkpoint(&checkpoints).unwrap().unwrap();
        assert!(
            latest.ends_with(format!("step-{k:08}")),
            "{}",
            latest.display()
        );

        let mut resumed = Trainer::resume(
            &latest,
            mixture.clone(),
            options(&tokenizer),
            config(dir.path()),
            &dev,
        )
        .unwrap();
        assert_eq!(resumed.step(), k);
        assert_eq!(
            loss_bits(resumed.metrics()),
            loss_bits(&before),
            "metrics so far come back with the checkpoint"
        );
        let (outcome, after) = run_all(&mut resumed);
        assert_eq!(outcome, Outcome::Finished { steps: 8 });
        let joined: Vec<TrainEvent> = before.into_iter().chain(after).collect();
        assert_eq!(loss_bits(&joined), loss_bits(&all), "stopped at step {k}");
        assert_eq!(
            params(&resumed.model),
            final_params,
            "stopped at step {k}: final weights"
        );
        assert!(
            !checkpoints.join(".tmp-step-00000099").exists(),
            "the next save clears leftovers"
        );
    }
}

/// A stage counted in passes over a task's data hands over to the next stage when its last
/// pass ends, as planned.
#[test]
fn an_epoch_budget_ends_its_stage_and_the_run_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let text = spec(data.path(), TRAIN);
    let mut mixture = text.clone();
    mixture.stages[0].budget = mixtures::Budget::Epochs {
        epochs: 1,
        task: "caption".into(),
    };
    let planned = model::train::planned_steps(&mixture, 0).unwrap();
    let mut trainer = Trainer::new(
        mixture,
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig::default(),
    )
    .unwrap();
    let (outcome, events) = run_all(&mut trainer);
    let stage_one = events.iter().filter(|e| e.stage == 0).count() as u64;
    assert_eq!(
        stage_one, planned,
        "40 captions and 20 colours in batches of 4"
    );
    assert_eq!(outcome, Outcome::Finished { steps: planned + 3 });
}

#[test]
fn resuming_without_the_optimiser_state_is_an_error_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(data.path(), TRAIN);
    let dev = model::device();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        run_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut first = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig {
            stop_after: Some(3),
            ..config.clone()
        },
    )
    .unwrap();
    run_all(&mut first);
    let latest = latest_checkpoint(&dir.path().join("checkpoints"))
        .unwrap()
        .unwrap();
    for file in [
        "optimizer-vision.safetensors",
        "optimizer-projector.safetensors",
        "optimizer-llm.safetensors",
    ] {
        std::fs::remove_file(latest.join(file)).unwrap();
    }
    let err = Trainer::resume(
        &latest,
        mixture.clone(),
        options(&tokenizer),
        config.clone(),
        &dev,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("optimizer-vision.safetensors"),
        "{err}"
    );
}

/// A siglip first stage trains the image encoder against a text tower (saved with each
/// checkpoint) and leaves the projector and the LLM as they were; the prefix-LM stage after it
/// trains everything, and a run stopped inside the siglip stage resumes bit for bit.
#[test]
fn a_siglip_stage_trains_only_the_image_encoder_and_resumes_bit_for_bit() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mut mixture = spec(
        data.path(),
        "{ lr = 3e-3, warmup = { steps = 2 }, schedule = \"cosine\" }",
    );
    mixture.stages[0].objective = mixtures::Objective::Siglip;
    let dev = model::device();
    let config = |dir: &Path, stop_after| TrainConfig {
        run_dir: Some(dir.to_path_buf()),
        checkpoint_every: 2,
        keep_checkpoints: 0,
        stop_after,
        ..Default::default()
    };
    let fresh = params(&tiny_model(&tokenizer, 28));

    let whole_dir = tempfile::tempdir().unwrap();
    let mut whole = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        config(whole_dir.path(), None),
    )
    .unwrap();
    let (outcome, all) = run_all(&mut whole);
    assert_eq!(outcome, Outcome::Finished { steps: 8 });
    let (siglip, prefix_lm) = all.split_at(5);
    assert!(
        siglip.iter().all(|e| e.lr.llm == 0.0
            && e.lr.projector == 0.0
            && e.lr.text == e.lr.vision
            && e.loss.is_finite()),
        "{siglip:#?}"
    );
    assert!(siglip[1..].iter().any(|e| e.lr.vision > 0.0));
    assert!(prefix_lm.iter().all(|e| e.lr.text == 0.0 && e.lr.llm > 0.0));
    let checkpoints = whole_dir.path().join("checkpoints");
    for step in [2, 4, 6, 8] {
        let dir = checkpoints.join(format!("step-{step:08}"));
        assert!(dir.join("contrastive.safetensors").is_file(), "step {step}");
        assert!(dir.join("optimizer-contrastive.safetensors").is_file());
    }

    // At step 4, inside the siglip stage: only the image encoder has moved.
    let at_four = model::checkpoint::load(&checkpoints.join("step-00000004"), &dev).unwrap();
    let mut vision_moved = false;
    for ((name, before), (_, after)) in fresh.iter().zip(&params(&at_four)) {
        if name.starts_with("vision_tower.") {
            vision_moved |= before != after;
        } else {
            assert_eq!(before, after, "{name} moved in the siglip stage");
        }
    }
    assert!(vision_moved);

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        config(dir.path(), Some(3)),
    )
    .unwrap();
    let (_, before) = run_all(&mut first);
    let latest = latest_checkpoint(&dir.path().join("checkpoints"))
        .unwrap()
        .unwrap();
    let mut resumed = Trainer::resume(
        &latest,
        mixture.clone(),
        options(&tokenizer),
        config(dir.path(), None),
        &dev,
    )
    .unwrap();
    let (_, after) = run_all(&mut resumed);
    let joined: Vec<TrainEvent> = before.into_iter().chain(after).collect();
    assert_eq!(loss_bits(&joined), loss_bits(&all));
    assert_eq!(params(&resumed.model), params(&whole.model));
}

fn first_batches(mixture: &Mixture, tokenizer: &Arc<PaliTokenizer>, n: usize) -> Vec<Batch> {
    stage_stream(mixture, 0, &options(tokenizer), StreamState::default())
        .unwrap()
        .take(n)
        .map(|b| b.unwrap().batch)
        .collect()
}

/// The tiny dataset's first batch and a fresh trainer (keep the folder alive while used).
fn first_batch_and_trainer() -> (tempfile::TempDir, Mixture, Batch, Trainer) {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(data.path(), TRAIN);
    let batch = first_batches(&mixture, &tokenizer, 1).remove(0);
    let trainer = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig::default(),
    )
    .unwrap();
    (data, mixture, batch, trainer)
}

#[test]
fn freeze_vit_leaves_the_image_encoder_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(
        data.path(),
        "{ lr = 1e-2, warmup = { steps = 1 }, freeze_vit = true }",
    );
    let before = params(&tiny_model(&tokenizer, 28));
    let mut t = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig {
            stop_after: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, events) = run_all(&mut t);
    assert!(events.iter().all(|e| e.lr.vision == 0.0 && e.lr.llm > 0.0));
    let after = params(&t.model);
    let mut changed = std::collections::BTreeSet::new();
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let group = name.split('.').next().unwrap().to_string();
        if name.starts_with("vision_tower.") {
            assert_eq!(a, b, "{name} moved although the image encoder is frozen");
        } else if a != b {
            changed.insert(group);
        }
    }
    assert!(
        changed.contains("multi_modal_projector") && changed.contains("language_model"),
        "{changed:?}"
    );

    // and without freezing, the image encoder does move
    let mixture = spec(
        data.path(),
        "{ lr = 1e-2, warmup = { steps = 1 }, vit_warmup = { steps = 1 } }",
    );
    let mut t = Trainer::new(
        mixture,
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig {
            stop_after: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    run_all(&mut t);
    let moved = params(&t.model)
        .iter()
        .zip(&before)
        .any(|((n, a), (_, b))| n.starts_with("vision_tower.") && a != b);
    assert!(moved);
}

#[test]
fn four_micro_batches_give_the_gradient_of_one_batch() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(data.path(), TRAIN);
    let batch = first_batches(&mixture, &tokenizer, 1).remove(0);
    assert_eq!(batch.rows, 4);
    let row_weight = |r: usize| {
        batch.loss_weights[r * batch.seq_len..(r + 1) * batch.seq_len]
            .iter()
            .sum::<f32>()
    };
    assert!(
        (0..4).any(|r| row_weight(r) != row_weight(0)),
        "rows of different lengths make the weighting matter"
    );
    let training = mixture.stages[0].training();
    let trainer = |rows| {
        Trainer::new(
            mixture.clone(),
            tiny_model(&tokenizer, 28),
            options(&tokenizer),
            TrainConfig {
                micro_batch_rows: rows,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (mut one, mut four) = (trainer(0), trainer(1));
    let (l1, mut g1) = one.batch_loss_and_grads(&batch, &training).unwrap();
    let (l4, mut g4) = four.batch_loss_and_grads(&batch, &training).unwrap();
    assert!((l1 - l4).abs() <= 1e-5 * l1.abs(), "loss {l1} vs {l4}");
    let mut worst = 0.0f32;
    for ((name, p1), (_, p4)) in one
        .model
        .named_params()
        .into_iter()
        .zip(four.model.named_params())
    {
        let (a, b) = (p1.grad(&mut g1), p4.grad(&mut g4));
        let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: max diff {diff} (largest gradient {scale})"
        );
    }
    println!("worst relative gradient difference: {worst:e}");
    // Averaging the micro-batches' losses equally (ignoring their weights) would differ.
    let naive: f32 = (0..4)
        .map(|r| {
            let mut m = TrainConfig::default();
            m.micro_batch_rows = 0;
            let mut single = batch.clone();
            single.rows = 1;
            let cells = r * batch.seq_len..(r + 1) * batch.seq_len;
            single.tokens = batch.tokens[cells.clone()].to_vec();
            single.segment_ids = batch.segment_ids[cells.clone()].to_vec();
            single.positions = batch.positions[cells.clone()].to_vec();
            single.causal = batch.causal[cells.clone()].to_vec();
            single.loss_weights = batch.loss_weights[cells].to_vec();
            let imgs: Vec<usize> = (0..batch.n_images())
                .filter(|&i| batch.image_slots[i].row as usize == r)
                .collect();
            single.image_slots = imgs
                .iter()
                .map(|&i| pipeline::ImageSlot {
                    row: 0,
                    ..batch.image_slots[i]
                })
                .collect();
            single.pixels = imgs.iter().flat_map(|&i| batch.image(i).to_vec()).collect();
            single.segments = batch
                .segments
                .iter()
                .filter(|s| s.row as usize == r)
                .map(|s| pipeline::Segment {
                    row: 0,
                    ..s.clone()
                })
                .collect();
            let mut t = Trainer::new(
                mixture.clone(),
                tiny_model(&tokenizer, 28),
                options(&tokenizer),
                m,
            )
            .unwrap();
            t.batch_loss_and_grads(&single, &training).unwrap().0
        })
        .sum::<f32>()
        / 4.0;
    assert!(
        (naive - l1).abs() > 1e-4,
        "equal weighting {naive} vs token weighting {l1}"
    );
}

#[test]
fn label_smoothing_moves_the_loss_toward_the_mean_log_probability() {
    let (_data, mixture, batch, mut t) = first_batch_and_trainer();
    // a few steps on this batch, so that the target is likelier than the average token
    let mut training = mixture.stages[0].training();
    training.lr = 1e-2;
    for _ in 0..6 {
        let schedule = model::train::LrSchedule::from_training(&training, 100);
        t.train_batch(&batch, &training, &schedule).unwrap();
    }
    let input = model::train::model_input(&batch, &t.model.cfg).unwrap();
    let vocab = t.model.cfg.text.vocab_size;
    let logits = t.model.predict_logits(&input).unwrap();
    let targets = input.targets();
    // by hand: per target token, nll = lse - z[target], uniform = lse - mean(z)
    let (mut nll, mut uniform, mut weight) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &w) in input
        .loss_weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0.0)
    {
        let z = &logits[i * vocab..(i + 1) * vocab];
        let m = z.iter().copied().fold(f32::MIN, f32::max) as f64;
        let lse = m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        nll += w as f64 * (lse - z[targets[i] as usize] as f64);
        uniform += w as f64 * (lse - z.iter().map(|&x| x as f64).sum::<f64>() / vocab as f64);
        weight += w as f64;
    }
    let (nll, uniform) = (nll / weight, uniform / weight);
    for e in [0.0, 0.1, 0.5] {
        let mut training = mixture.stages[0].training();
        training.label_smoothing = e;
        let (loss, _) = t.batch_loss_and_grads(&batch, &training).unwrap();
        let want = (1.0 - e) * nll + e * uniform;
        assert!(
            (loss as f64 - want).abs() < 1e-4 * want,
            "e = {e}: {loss} vs {want}"
        );
    }
    assert!(
        uniform > nll + 0.01,
        "the two terms differ, so the test tells smoothing apart"
    );
}

#[test]
fn per_example_normalisation_averages_each_examples_mean_loss() {
    let (_data, mixture, batch, mut t) = first_batch_and_trainer();
    let input = model::train::model_input(&batch, &t.model.cfg).unwrap();
    let token_losses = t.model.token_losses(&input).unwrap();
    let mut per_example = Vec::new();
    let (mut all, mut all_weight) = (0.0f64, 0.0f64);
    for seg in &batch.segments {
        let start = seg.row as usize * batch.seq_len + seg.start as usize;
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        for i in start..start + seg.len as usize {
            let w = input.loss_weights[i] as f64;
            sum += w * token_losses[i] as f64;
            weight += w;
        }
        per_example.push(sum / weight);
        all += sum;
        all_weight += weight;
    }
    let want_example = per_example.iter().sum::<f64>() / per_example.len() as f64;
    let want_token = all / all_weight;
    assert!(
        (want_example - want_token).abs() > 1e-4,
        "examples of different lengths tell the two apart"
    );
    let mut training = mixture.stages[0].training();
    for (norm, want) in [
        (mixtures::LossNorm::PerToken, want_token),
        (mixtures::LossNorm::PerExample, want_example),
    ] {
        training.loss_norm = norm;
        let (loss, _) = t.batch_loss_and_grads(&batch, &training).unwrap();
        assert!(
            (loss as f64 - want).abs() < 1e-5 * want,
            "{norm:?}: {loss} vs {want}"
        );
    }
}

#[test]
fn llm_dropout_is_deterministic_per_step_and_only_while_training() {
    let (_data, mixture, batch, mut t) = first_batch_and_trainer();
    let mut training = mixture.stages[0].training();
    let (plain, _) = t.batch_loss_and_grads(&batch, &training).unwrap();
    training.llm_dropout = 0.3;
    let (dropped, _) = t.batch_loss_and_grads(&batch, &training).unwrap();
    let (again, _) = t.batch_loss_and_grads(&batch, &training).unwrap();
    assert_ne!(plain, dropped, "dropout changes the loss");
    assert_eq!(
        dropped.to_bits(),
        again.to_bits(),
        "the same step drops the same units"
    );
    assert!(
        t.model.language_model.dropout.is_none(),
        "evaluation sees no dropout"
    );
    let input = model::train::model_input(&batch, &t.model.cfg).unwrap();
    let eval: f32 = {
        let losses = t.model.token_losses(&input).unwrap();
        let w: f32 = input.loss_weights.iter().sum();
        losses
            .iter()
            .zip(&input.loss_weights)
            .map(|(l, w)| l * w)
            .sum::<f32>()
            / w
    };
    assert!((eval - plain).abs() < 1e-4 * plain, "{eval} vs {plain}");
}

#[test]
fn a_nan_stops_the_run_names_the_batch_and_keeps_the_last_good_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let tokenizer = dataset(data.path());
    let mixture = spec(data.path(), TRAIN);
    let dev = model::device();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig {
        run_dir: Some(dir.path().to_path_buf()),
        checkpoint_every: 1,
        ..Default::default()
    };
    let mut t = Trainer::new(
        mixture.clone(),
        tiny_model(&tokenizer, 28),
        options(&tokenizer),
        TrainConfig {
            stop_after: Some(2),
            ..config.clone()
        },
    )
    .unwrap();
    run_all(&mut t);
    let checkpoints = dir.path().join("checkpoints");
    let good = latest_checkpoint(&checkpoints).unwrap().unwrap();
    let mut t = Trainer::resume(&good, mixture, options(&tokenizer), config, &dev).unwrap();
    t.model.language_model.visit_mut("", &mut |name, mut p| {
        if name == "norm.weight" {
            let n = p.shape()[0];
            p.copy_from(&vec![f32::NAN; n]);
        }
    });
    let err = t.run(&mut |_| {}).unwrap_err();
    match &err {
        TrainError::NonFinite {
            step,
            stage,
            origins,
            ..
        } => {
            assert_eq!(*step, 3);
            assert_eq!(stage, "one");
            assert!(
                origins.contains("train-") && origins.contains("row group"),
                "{origins}"
            );
            assert!(
                origins.contains("caption at") || origins.contains("colour at"),
                "{origins}"
            );
        }
        other => panic!("expected a NaN error, got {other}"),
    }
    println!("{err}");
    assert_eq!(
        latest_checkpoint(&checkpoints).unwrap().unwrap(),
        good,
        "no checkpoint after the bad step"
    );
}
