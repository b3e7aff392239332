//! Property tests over random weights, schedules and states.

mod common;

use common::mixture;
use mixtures::{Part, Sampler, SamplerState, Template};
use proptest::prelude::*;

const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn weights() -> impl Strategy<Value = Vec<(&'static str, f64)>> {
    prop::collection::vec(0.001f64..1000.0, 1..=8).prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, w)| (NAMES[i], w))
            .collect()
    })
}

/// Something a pipeline may do to a sampler.
#[derive(Debug, Clone)]
enum Op {
    Draw(usize),
    EndEpoch(usize),
    SetEpochLen(usize, u64),
    Exhaust(usize),
    /// Draw one, then take it back (as a pipeline does when the row turns out not to exist).
    Undo,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (1usize..50).prop_map(Op::Draw),
        1 => (0usize..8).prop_map(Op::EndEpoch),
        1 => (0usize..8, 1u64..40).prop_map(|(t, n)| Op::SetEpochLen(t, n)),
        1 => (0usize..8).prop_map(Op::Exhaust),
        1 => Just(Op::Undo),
    ];
    prop::collection::vec(op, 1..30)
}

/// Applies `ops`, recording every draw and the state after each op.
fn apply(sampler: &mut Sampler, ops: &[Op], log: &mut Vec<String>) {
    let tasks = sampler.task_names().len();
    for op in ops {
        match *op {
            Op::Draw(n) => log.extend(sampler.by_ref().take(n).map(|d| format!("{d:?}"))),
            Op::EndEpoch(t) => sampler.end_epoch(t % tasks),
            Op::SetEpochLen(t, n) => sampler.set_epoch_len(t % tasks, n),
            Op::Exhaust(t) => sampler.exhaust(t % tasks),
            Op::Undo => {
                let before = sampler.state();
                sampler.draw();
                sampler.set_state(&before).unwrap();
                assert_eq!(sampler.state(), before);
            }
        }
        log.push(format!("{:?}", sampler.state()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_window_follows_the_weights(ws in weights(), seed in any::<u64>()) {
        let total: f64 = ws.iter().map(|(_, w)| w).sum();
        let draws: Vec<usize> = Sampler::new(&mixture(seed, &[(3000, &ws)])).unwrap().map(|d| d.task).collect();
        prop_assert_eq!(draws.len(), 3000);
        for (task, (_, w)) in ws.iter().enumerate() {
            let share = w / total;
            let mut prefix = vec![0u32; draws.len() + 1];
            for (i, &d) in draws.iter().enumerate() {
                prefix[i + 1] = prefix[i] + u32::from(d == task);
            }
            for window in [37usize, 500, 3000] {
                for start in 0..=draws.len() - window {
                    let count = (prefix[start + window] - prefix[start]) as f64;
                    let off = (count - window as f64 * share).abs();
                    prop_assert!(off < 3.0, "task {} share {} window {} at {}: off by {}", task, share, window, start, off);
                }
            }
        }
    }

    #[test]
    fn any_state_resumes_exactly(
        first in weights(),
        second in weights(),
        budgets in (1u64..400, 1u64..400),
        seed in any::<u64>(),
        before in ops(),
        after in ops(),
    ) {
        let m = mixture(seed, &[(budgets.0, &first), (budgets.1, &second)]);
        let mut whole = Sampler::new(&m).unwrap();
        let mut expected = Vec::new();
        apply(&mut whole, &before, &mut expected);
        let cut = expected.len();
        apply(&mut whole, &after, &mut expected);

        let mut head = Sampler::new(&m).unwrap();
        let mut got = Vec::new();
        apply(&mut head, &before, &mut got);
        let json = serde_json::to_string(&head.state()).unwrap();
        let state: SamplerState = serde_json::from_str(&json).unwrap();
        let mut resumed = Sampler::restore(&m, &state).unwrap();
        prop_assert_eq!(resumed.state(), head.state());
        apply(&mut resumed, &after, &mut got);
        prop_assert_eq!(&got[..cut], &expected[..cut]);
        prop_assert_eq!(&got[cut..], &expected[cut..]);
    }

    #[test]
    fn templates_round_trip_through_display(parts in prop::collection::vec(part(), 0..6)) {
        // Adjacent literals merge when parsed, so compare after one normalising pass.
        let text: String = parts.iter().map(|p| match p {
            Part::Literal(s) => s.replace('{', "{{").replace('}', "}}"),
            Part::Field { column, format: None } => format!("{{{column}}}"),
            Part::Field { column, format: Some(f) } => format!("{{{column}:{f}}}"),
        }).collect();
        let parsed = Template::parse(&text).unwrap();
        prop_assert_eq!(Template::parse(&parsed.to_string()).unwrap(), parsed.clone());
        let columns: Vec<&str> = parts.iter().filter_map(|p| match p {
            Part::Field { column, .. } => Some(column.as_str()),
            Part::Literal(_) => None,
        }).collect();
        for column in &columns {
            prop_assert!(parsed.columns().contains(column));
        }
        let rendered = parsed.render(|c, _| Ok::<_, ()>(format!("<{c}>"))).unwrap();
        prop_assert_eq!(rendered.matches('<').count() - text.matches('<').count(), columns.len());
    }
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        "[ a-z{}:<>]{1,8}".prop_map(Part::Literal),
        ("[a-z_]{1,6}", prop::option::of("[a-z]{1,4}"))
            .prop_map(|(column, format)| Part::Field { column, format }),
    ]
}
