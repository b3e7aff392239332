//! The schedule: proportions over windows, determinism, resumption, stages, epochs.

mod common;

use common::mixture;
use mixtures::{Mixture, Sampler, SamplerError, SamplerState};

const SKEWED: &[(&str, f64)] = &[
    ("caption", 0.37),
    ("vqa", 0.21),
    ("detect", 0.173),
    ("ocr", 0.11),
    ("refer", 0.0837),
    ("count", 0.03),
    ("rare", 0.0133),
];

fn tasks_of(sampler: Sampler) -> Vec<usize> {
    sampler.map(|d| d.task).collect()
}

/// Largest |count − window × share| over every window of `window` consecutive draws.
fn worst_deviation(draws: &[usize], shares: &[f64], window: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for (task, share) in shares.iter().enumerate() {
        let mut prefix = vec![0u32; draws.len() + 1];
        for (i, &d) in draws.iter().enumerate() {
            prefix[i + 1] = prefix[i] + u32::from(d == task);
        }
        for start in 0..=draws.len() - window {
            let count = (prefix[start + window] - prefix[start]) as f64;
            worst = worst.max((count - window as f64 * share).abs());
        }
    }
    worst
}

fn shares(weights: &[(&str, f64)]) -> Vec<f64> {
    // Task ids follow task names; the helper mixture's tasks are exactly these.
    let mut sorted = weights.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let total: f64 = sorted.iter().map(|(_, w)| w).sum();
    sorted.iter().map(|(_, w)| w / total).collect()
}

#[test]
fn proportions_hold_in_every_window_of_1000_and_100000() {
    for seed in [0, 7] {
        let draws = tasks_of(Sampler::new(&mixture(seed, &[(300_000, SKEWED)])).unwrap());
        assert_eq!(draws.len(), 300_000);
        let shares = shares(SKEWED);
        for window in [1_000, 100_000] {
            let worst = worst_deviation(&draws, &shares, window);
            assert!(
                worst < 2.0,
                "seed {seed}, window {window}: off by {worst} examples"
            );
        }
    }
}

#[test]
fn a_one_percent_task_appears_every_hundred_examples() {
    let weights = [("main", 99.0), ("rare", 1.0)];
    let draws = tasks_of(Sampler::new(&mixture(3, &[(100_000, &weights)])).unwrap());
    let rare = 1; // "main" < "rare"
    let at: Vec<usize> = draws
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == rare)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1000);
    assert!(at[0] < 100, "first rare example at {}", at[0]);
    assert!(
        at.windows(2).all(|w| w[1] - w[0] == 100),
        "gaps are exactly 100"
    );
}

#[test]
fn same_spec_same_schedule_and_seed_reorders_ties() {
    let weights = [("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)];
    let run = |seed| tasks_of(Sampler::new(&mixture(seed, &[(10_000, &weights)])).unwrap());
    assert_eq!(run(5), run(5));
    // Equal weights: each seed gives some order, and not every seed the same one.
    let firsts: Vec<Vec<usize>> = (0..8).map(|seed| run(seed)[..4].to_vec()).collect();
    assert!(
        firsts.iter().any(|f| f != &firsts[0]),
        "jitter never changed the order: {firsts:?}"
    );
    for first in &firsts {
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3], "every task once per round");
    }
}

#[test]
fn schedule_is_pinned() {
    // Fixed-point arithmetic: this exact sequence must come out on every machine.
    let weights = [("a", 0.5), ("b", 0.3), ("c", 0.2)];
    let draws = tasks_of(Sampler::new(&mixture(0, &[(20, &weights)])).unwrap());
    let letters: String = draws.iter().map(|&t| (b'a' + t as u8) as char).collect();
    assert_eq!(letters, "abacbaabcaabacbaabca");
}

/// A draw with its task named, comparable across mixtures whose task lists differ.
type Named = (usize, String, u64, u32, u64);

fn named(sampler: &Sampler, draws: impl IntoIterator<Item = mixtures::Draw>) -> Vec<Named> {
    let names = sampler.task_names();
    draws
        .into_iter()
        .map(|d| {
            (
                d.stage,
                names[d.task].clone(),
                d.example,
                d.epoch,
                d.position,
            )
        })
        .collect()
}

fn assert_same(got: &[Named], want: &[Named], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: first difference at {i}: {:?} vs {:?}",
            got[i], want[i]
        );
    }
}

/// Draws `n`, saves the state through JSON, restores into `resumed_with`, and checks the next
/// `m` draws match an uninterrupted run over `resumed_with`.
fn check_resume(original: &Mixture, resumed_with: &Mixture, n: usize, m: usize) {
    let mut reference = Sampler::new(resumed_with).unwrap();
    let full = reference.by_ref().take(n + m).collect::<Vec<_>>();
    let full = named(&reference, full);
    let mut first = Sampler::new(original).unwrap();
    let head = first.by_ref().take(n).collect::<Vec<_>>();
    assert_same(&named(&first, head), &full[..n], "before saving");
    let json = serde_json::to_string(&first.state()).unwrap();
    let state: SamplerState = serde_json::from_str(&json).unwrap();
    let mut resumed = Sampler::restore(resumed_with, &state).unwrap();
    let tail = resumed.by_ref().take(m).collect::<Vec<_>>();
    assert_same(
        &named(&resumed, tail),
        &full[n..],
        &format!("resumed after {n}"),
    );
}

#[test]
fn resume_continues_exactly() {
    let m = mixture(11, &[(50_000, SKEWED)]);
    for n in [0, 1, 999, 12_345] {
        check_resume(&m, &m, n, 5_000);
    }
}

#[test]
fn resume_across_a_stage_boundary() {
    let later: &[(&str, f64)] = &[("caption", 1.0), ("detect", 3.0), ("ocr", 2.0)];
    let m = mixture(
        2,
        &[(1_000, SKEWED), (2_000, later), (500, &[("rare", 1.0)])],
    );
    for n in [998, 999, 1_000, 1_001, 2_999, 3_000] {
        check_resume(&m, &m, n, 400);
    }
    let draws: Vec<_> = Sampler::new(&m).unwrap().collect();
    assert_eq!(draws.len(), 3_500);
    assert!(draws[..1_000].iter().all(|d| d.stage == 0));
    assert!(draws[1_000..3_000].iter().all(|d| d.stage == 1));
    let rare = Sampler::new(&m).unwrap().task_id("rare").unwrap();
    assert!(
        draws[3_000..]
            .iter()
            .all(|d| d.stage == 2 && d.task == rare)
    );
}

#[test]
fn stage_switches_when_the_budget_is_spent() {
    let m = mixture(0, &[(3, &[("a", 1.0)]), (2, &[("b", 1.0)])]);
    let mut s = Sampler::new(&m).unwrap();
    let stage = |s: &Sampler| s.current_stage().map(|(i, stage)| (i, stage.name.clone()));
    assert_eq!(stage(&s), Some((0, "s0".into())));
    s.by_ref().take(3).for_each(drop);
    assert_eq!(stage(&s), Some((1, "s1".into())));
    assert_eq!(s.stage_examples(), 0);
    s.by_ref().take(2).for_each(drop);
    assert!(s.is_finished());
    assert_eq!(s.current_stage(), None);
    assert_eq!(s.draw(), None);
}

#[test]
fn appending_a_stage_continues_a_finished_run() {
    let stage1: &[(&str, f64)] = &[("caption", 2.0), ("vqa", 1.0)];
    let stage2: &[(&str, f64)] = &[("caption", 1.0), ("vqa", 1.0), ("ocr", 2.0)];
    let short = mixture(4, &[(1_000, stage1)]);
    let extended = mixture(4, &[(1_000, stage1), (3_000, stage2)]);
    check_resume(&short, &extended, 1_000, 3_000);

    // The counters carry over: caption's example indices continue where stage 1 left them.
    let mut run = Sampler::new(&short).unwrap();
    run.by_ref().for_each(drop);
    let state = run.state();
    assert_eq!(state.stage, 1);
    let mut next = Sampler::restore(&extended, &state).unwrap();
    let caption = next.task_id("caption").unwrap();
    let first = next.find(|d| d.task == caption).unwrap();
    assert_eq!(first.example, state.tasks["caption"].examples);
    assert_eq!(first.stage, 1);
}

#[test]
fn counters_track_examples_and_positions() {
    let m = mixture(0, &[(600, &[("a", 2.0), ("b", 1.0)])]);
    let mut s = Sampler::new(&m).unwrap();
    let draws: Vec<_> = s.by_ref().collect();
    for task in 0..2 {
        let mine: Vec<_> = draws.iter().filter(|d| d.task == task).collect();
        assert!(
            mine.iter()
                .enumerate()
                .all(|(i, d)| d.example == i as u64 && d.position == i as u64)
        );
        assert_eq!(s.counters(task).examples, mine.len() as u64);
    }
    assert_eq!(s.counters(0).examples, 400);
}

fn limited_mixture(epochs_a: &str, budget: &str) -> Mixture {
    Mixture::from_toml_str(&format!(
        r#"
        [sources.a]
        data = "a/*.parquet"
        {epochs_a}
        [sources.b]
        data = "b/*.parquet"
        [tasks.a]
        source = "a"
        prefix = "caption en"
        suffix = "{{caption}}"
        [tasks.b]
        source = "b"
        prefix = "caption en"
        suffix = "{{caption}}"
        [[stages]]
        name = "only"
        batch_size = 1
        budget = {budget}
        weights = {{ a = 1, b = 1 }}
        "#
    ))
    .unwrap()
}

#[test]
fn a_spent_source_drops_out_and_the_rest_take_its_share() {
    let m = limited_mixture("epochs = 2", "{ examples = 1000 }");
    let mut s = Sampler::new(&m).unwrap();
    s.set_epoch_len(0, 30);
    let draws: Vec<_> = s.by_ref().collect();
    assert_eq!(draws.len(), 1000);
    let a: Vec<_> = draws.iter().filter(|d| d.task == 0).collect();
    assert_eq!(a.len(), 60, "two passes of 30 rows");
    assert_eq!(
        (a[29].epoch, a[29].position, a[30].epoch, a[30].position),
        (0, 29, 1, 0)
    );
    // Up to a's last example both alternate; after it only b is drawn.
    let last_a = draws.iter().rposition(|d| d.task == 0).unwrap();
    assert!(last_a < 125, "a spent by {last_a}");
    assert_eq!(s.counters(0).epochs, 2);
    assert_eq!(
        s.counters(1).epochs,
        0,
        "b has no epoch length: passes end only when reported"
    );
}

#[test]
fn reported_epoch_ends_count_like_known_lengths() {
    let m = limited_mixture("epochs = 1", "{ examples = 100 }");
    let mut s = Sampler::new(&m).unwrap();
    let mut drawn = Vec::new();
    while let Some(d) = s.draw() {
        drawn.push(d.task);
        if d.task == 0 && d.position == 9 {
            s.end_epoch(0); // the reader just handed out its last row
        }
    }
    assert_eq!(drawn.iter().filter(|&&t| t == 0).count(), 10);
    assert_eq!(drawn.len(), 100);
}

#[test]
fn epoch_budget_ends_the_stage_after_n_passes() {
    let m = limited_mixture("", "{ epochs = 3, task = \"a\" }");
    let mut s = Sampler::new(&m).unwrap();
    s.set_epoch_len(0, 50);
    let draws: Vec<_> = s.by_ref().collect();
    assert_eq!(draws.iter().filter(|d| d.task == 0).count(), 150);
    assert_eq!(
        draws.last().unwrap().task,
        0,
        "the stage ends on a's last row"
    );
    assert!(s.is_finished());
}

#[test]
fn undo_a_draw_and_exhaust_the_task_like_the_pipeline_does() {
    let m = limited_mixture("", "{ examples = 100 }");
    let mut s = Sampler::new(&m).unwrap();
    let mut drawn = Vec::new();
    loop {
        let before = s.state();
        let Some(d) = s.draw() else { break };
        if d.task == 0 && d.example == 5 {
            // Task a's reader has no sixth row: take the draw back and drop a.
            s.set_state(&before).unwrap();
            s.exhaust(0);
            continue;
        }
        drawn.push(d.task);
    }
    assert_eq!(drawn.iter().filter(|&&t| t == 0).count(), 5);
    assert_eq!(drawn.len(), 100, "b fills the rest of the budget");
    assert!(s.state().tasks["a"].exhausted);
}

#[test]
fn epoch_seeds_differ_per_pass_and_task_and_are_stable() {
    let m = limited_mixture("", "{ examples = 10 }");
    let s = Sampler::new(&m).unwrap();
    let seeds = [s.epoch_seed(0, 0), s.epoch_seed(0, 1), s.epoch_seed(1, 0)];
    assert!(seeds[0] != seeds[1] && seeds[0] != seeds[2] && seeds[1] != seeds[2]);
    assert_eq!(Sampler::new(&m).unwrap().epoch_seed(0, 1), seeds[1]);
}

#[test]
fn restore_rejects_states_that_do_not_fit() {
    let m = mixture(0, &[(100, &[("a", 1.0), ("b", 1.0)])]);
    let mut state = Sampler::new(&m).unwrap().state();
    let mut far = state.clone();
    far.stage = 3;
    assert!(matches!(
        Sampler::restore(&m, &far),
        Err(SamplerError::StageOutOfRange {
            stage: 3,
            stages: 1
        })
    ));
    state.credits.remove("b");
    let err = Sampler::restore(&m, &state).unwrap_err();
    assert!(
        matches!(&err, SamplerError::StateMismatch { stage: 0, task } if task == "b"),
        "{err}"
    );
    let mut extra = Sampler::new(&m).unwrap().state();
    extra.credits.insert("zzz".into(), 0);
    let err = Sampler::restore(&m, &extra).unwrap_err();
    assert_eq!(
        err.to_string(),
        "state holds credit for task \"zzz\", which stage 0 does not weight"
    );
}
