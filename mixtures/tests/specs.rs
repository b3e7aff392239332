//! The specs shipped in `mixtures/specs/` parse, validate and run.

use std::path::{Path, PathBuf};

use mixtures::{Budget, Mixture, Recipe, Sampler, Schedule, ValidationContext, Warmup};

fn spec(name: &str) -> Mixture {
    Mixture::from_path(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("specs")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "json"))
        .collect();
    files.sort();
    files
}

/// The demo dataset's columns, as `paliforge demo-data` writes them.
fn demo_columns(source: &str) -> Option<Vec<String>> {
    let columns: &[&str] = match source {
        "scenes" => &[
            "image",
            "caption",
            "question",
            "answer",
            "detect_label",
            "objects",
        ],
        "pairs" => &["images", "question", "answer"],
        _ => return None,
    };
    Some(columns.iter().map(|c| c.to_string()).collect())
}

/// A shipped spec that must validate against the demo dataset's columns.
fn demo_spec(name: &str) -> Mixture {
    let mixture = spec(name);
    mixture
        .validate(&ValidationContext::new().with_columns(&demo_columns))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    mixture
}

#[test]
fn every_shipped_spec_parses_validates_and_round_trips_through_json() {
    let files = shipped();
    assert!(files.len() >= 3, "{files:?}");
    for path in files {
        let mixture =
            Mixture::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        mixture
            .validate(&ValidationContext::new())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        assert_eq!(
            Mixture::from_json_str(&mixture.to_json()).unwrap(),
            mixture,
            "{}",
            path.display()
        );
        Sampler::new(&mixture).unwrap();
    }
}

#[test]
fn quickstart_fits_the_demo_data_and_runs_its_three_stages() {
    let mixture = demo_spec("quickstart.toml");
    assert_eq!(mixture.stages.len(), 3);
    // The demo's images are 112 px: no stage asks for tokens without detail.
    assert!(mixture.stages.iter().all(|s| s.resolution() == 112));
    assert_eq!(mixture.images_per_example("compare"), 2);
    assert_eq!(mixture.images_per_example("caption"), 1);

    let mut sampler = Sampler::new(&mixture).unwrap();
    let detect = sampler.task_id("detect").unwrap();
    let draws: Vec<_> = sampler.by_ref().collect();
    let per_stage = |stage| draws.iter().filter(|d| d.stage == stage).count();
    assert_eq!(
        [per_stage(0), per_stage(1), per_stage(2)],
        [11_200, 768, 256]
    );
    // Stage 2 is re-weighted toward detection: 2 of 5 parts instead of 3 of 10.
    let detect_share = |stage| {
        draws
            .iter()
            .filter(|d| d.stage == stage && d.task == detect)
            .count()
    };
    assert_eq!(detect_share(0), 11_200 * 3 / 10);
    assert_eq!(detect_share(1), 768 * 2 / 5);
    assert_eq!(mixture.stages[2].training().lr, 1e-5);
    // Rows sized for the two-image task hold two one-image examples: every stage packs.
    assert!(mixture.stages.iter().all(|s| s.packing()));
}

/// The encoder-first experiment differs from the quickstart's first stage only by the siglip
/// stage before it, so that the README's comparison holds.
#[test]
fn encoder_first_is_a_siglip_stage_then_the_quickstarts_first_stage() {
    let mixture = demo_spec("encoder_first.toml");
    let quickstart = spec("quickstart.toml");
    let [siglip, pretrain] = &mixture.stages[..] else {
        panic!("two stages")
    };
    assert_eq!(siglip.objective, mixtures::Objective::Siglip);
    assert_eq!(
        mixture.stage_weights(0).unwrap(),
        [("caption".to_string(), 1.0)]
    );
    assert_eq!(pretrain, &quickstart.stages[0]);
    assert_eq!(mixture.tasks, quickstart.tasks);
    assert_eq!(mixture.sources, quickstart.sources);
}

#[test]
fn paligemma_stages_follow_the_paper() {
    let mixture = spec("paligemma_stage1_2.toml");
    let shape: Vec<(u32, u32, u64)> = mixture
        .stages
        .iter()
        .map(|s| match s.budget {
            Budget::Examples(n) => (s.resolution(), s.text_len(), n),
            Budget::Epochs { .. } => panic!("pretraining budgets are in examples"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            (224, 128, 1_000_000_000),
            (448, 512, 50_000_000),
            (896, 512, 10_000_000)
        ]
    );
    for stage in &mixture.stages {
        let training = stage.training();
        assert_eq!(training.schedule, Schedule::Rsqrt);
        assert!(!training.freeze_vit);
    }
    assert_eq!(mixture.stages[0].image_tokens(14), 256);
    assert_eq!(mixture.stages[2].image_tokens(14), 4096);
}

#[test]
fn transfer_uses_the_papers_recipe() {
    let mixture = spec("transfer.toml");
    let stage = &mixture.stages[0];
    assert_eq!(stage.recipe, Recipe::Transfer);
    assert_eq!(stage.resolution(), 224);
    assert!(matches!(&stage.budget, Budget::Epochs { epochs: 3, task } if task == "answer"));
    let training = stage.training();
    assert_eq!(
        training,
        Recipe::Transfer.defaults(),
        "the spec spells out the defaults"
    );
    assert_eq!(training.lr, 1e-5);
    assert_eq!(
        (
            training.label_smoothing,
            training.llm_dropout,
            training.weight_decay
        ),
        (0.0, 0.0, 0.0)
    );
    assert!(!training.freeze_vit);
    assert_eq!(training.warmup, Warmup::Fraction(0.05));
}

#[test]
fn the_readme_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let mixture = Mixture::from_toml_str(example).unwrap_or_else(|e| panic!("{e}"));
    mixture
        .validate(&ValidationContext::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mixture.stages.len(), 3);
    let mut sampler = Sampler::new(&mixture).unwrap();
    assert_eq!(sampler.by_ref().take(1000).count(), 1000);
}
