//! The `mixture check` preview table.

use mixtures::{Mixture, SummaryContext, summarize, summary_table};

const SPEC: &str = r#"
[sources.web]
data = "web/*.parquet"
image_columns = ["image"]
size = 1_000

[sources.pairs]
data = "pairs/*.parquet"
image_columns = ["images"]

[tasks.caption]
source = "web"
prefix = "caption en"
suffix = "{caption}"

[tasks.compare]
source = "pairs"
images = 2
prefix = "answer en {question}"
suffix = "{answer}"

[[stages]]
name = "pretrain"
text_len = 64
batch_size = 10
budget = { examples = 4_000 }
weights = { caption = 3, compare = 1 }

[[stages]]
name = "transfer"
recipe = "transfer"
resolution = 448
text_len = 32
budget = { epochs = 2, task = "caption" }
weights = { caption = 1 }
"#;

#[test]
fn expected_examples_epochs_and_tokens() {
    let mixture = Mixture::from_toml_str(SPEC).unwrap();
    let stages = summarize(&mixture, &SummaryContext::default());
    let caption = &stages[0].tasks[0];
    assert_eq!(
        (caption.task.as_str(), caption.weight, caption.examples),
        ("caption", 0.75, Some(3_000))
    );
    assert_eq!(caption.epochs, Some(3.0));
    assert_eq!(caption.tokens, Some(3_000 * (256 + 64)));
    let compare = &stages[0].tasks[1];
    assert_eq!(
        (compare.examples, compare.epochs),
        (Some(1_000), None),
        "pairs has no size"
    );
    assert_eq!(compare.tokens, Some(1_000 * (2 * 256 + 64)));
    // An epoch budget becomes examples once the source's rows are known.
    assert_eq!(stages[1].examples, Some(2_000));
    assert_eq!(stages[1].image_tokens, 1024);

    // Rows from the caller win over the spec's `size`.
    let rows = |source: &str| (source == "pairs").then_some(500);
    let ctx = SummaryContext {
        rows_of: Some(&rows),
        ..SummaryContext::default()
    };
    assert_eq!(summarize(&mixture, &ctx)[0].tasks[1].epochs, Some(2.0));
}

#[test]
fn table_lists_every_stage_and_task() {
    let mixture = Mixture::from_toml_str(SPEC).unwrap();
    let table = summary_table(&mixture, &SummaryContext::default());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "stage 0 \"pretrain\": 224px (256 image tokens), text 64, batch 10, 4,000 examples, lr 2e-5 rsqrt"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["task", "weight", "examples", "epochs", "tokens"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["caption", "75.0%", "3,000", "3.00", "960.0k"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["compare", "25.0%", "1,000", "?", "576.0k"]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["total", "100.0%", "4,000", "1.5M"]
    );
    assert!(lines[6].starts_with(
        "stage 1 \"transfer\": 448px (1024 image tokens), text 32, batch 256, 2 epochs of caption, lr 1e-5 cosine"
    ));
    // Columns line up: every cell of a column ends at the same place.
    let ends = |line: &str| line.find("%").unwrap();
    assert_eq!(ends(lines[2]), ends(lines[3]));

    let mut siglip = mixture.clone();
    siglip.stages[1].objective = mixtures::Objective::Siglip;
    let table = summary_table(&siglip, &SummaryContext::default());
    assert!(table.lines().nth(6).unwrap().starts_with(
        "stage 1 \"transfer\" (siglip: the image encoder alone): 448px (1024 image tokens)"
    ));
}

#[test]
fn shipped_quickstart_preview() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/quickstart.toml");
    let table = summary_table(
        &Mixture::from_path(path).unwrap(),
        &SummaryContext::default(),
    );
    assert_eq!(table.matches("\nstage ").count() + 1, 3);
    assert!(table.contains(
        "stage 1 \"reweight\": 112px (64 image tokens), text 48, batch 16, 768 examples, lr 1e-3 rsqrt (continues the stage before), packed"
    ));
    assert!(table.contains(
        "stage 2 \"transfer-vqa\": 112px (64 image tokens), text 48, batch 16, 256 examples, lr 1e-5 cosine"
    ));
}
