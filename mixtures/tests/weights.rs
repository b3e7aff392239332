//! Proportional weights and loading by file type.

use mixtures::{Mixture, SpecError};

fn spec(weights: &str) -> Mixture {
    Mixture::from_toml_str(&format!(
        r#"
        [sources.small]
        data = "s"
        size = 100
        [sources.big]
        data = "b"
        size = 10_000
        [tasks.small]
        source = "small"
        prefix = "p"
        suffix = "{{s}}"
        [tasks.big]
        source = "big"
        prefix = "p"
        suffix = "{{s}}"
        [[stages]]
        name = "only"
        budget = {{ examples = 100_000 }}
        weights = {weights}
        "#
    ))
    .unwrap()
}

fn close(got: Vec<(String, f64)>, want: &[(&str, f64)]) {
    assert_eq!(got.len(), want.len());
    for ((task, w), (want_task, want_w)) in got.iter().zip(want) {
        assert_eq!(task, want_task);
        assert!((w - want_w).abs() < 1e-12, "{task}: {w} vs {want_w}");
    }
}

#[test]
fn proportional_to_size_with_cap_and_temperature() {
    close(
        spec("{ proportional = {} }").stage_weights(0).unwrap(),
        &[("big", 100.0 / 101.0), ("small", 1.0 / 101.0)],
    );
    close(
        spec("{ proportional = { cap = 1_000 } }")
            .stage_weights(0)
            .unwrap(),
        &[("big", 10.0 / 11.0), ("small", 1.0 / 11.0)],
    );
    // Temperature 2 takes square roots: 100 : 10.
    close(
        spec("{ proportional = { temperature = 2.0 } }")
            .stage_weights(0)
            .unwrap(),
        &[("big", 10.0 / 11.0), ("small", 1.0 / 11.0)],
    );
    // A tiny temperature approaches "only the largest" without overflowing.
    let sharp = spec("{ proportional = { temperature = 0.001 } }")
        .stage_weights(0)
        .unwrap();
    assert_eq!(sharp, [("big".to_string(), 1.0)]);
    close(
        spec("{ proportional = { tasks = [\"small\"] } }")
            .stage_weights(0)
            .unwrap(),
        &[("small", 1.0)],
    );
}

#[test]
fn explicit_weights_normalise_and_drop_zeros() {
    close(
        spec("{ big = 3, small = 1 }").stage_weights(0).unwrap(),
        &[("big", 0.75), ("small", 0.25)],
    );
    close(
        spec("{ big = 0, small = 2.5 }").stage_weights(0).unwrap(),
        &[("small", 1.0)],
    );
}

#[test]
fn files_load_by_extension() {
    assert!(matches!(
        Mixture::from_path("spec.yaml"),
        Err(SpecError::UnknownFormat { .. })
    ));
    let missing = Mixture::from_path("/nonexistent/spec.toml").unwrap_err();
    assert!(matches!(missing, SpecError::Io { .. }));
    assert!(
        missing.to_string().starts_with("/nonexistent/spec.toml: "),
        "{missing}"
    );
}
