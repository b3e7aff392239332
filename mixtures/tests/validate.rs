//! Every validation error, with its key path, line and message.

use mixtures::{Mixture, Problem, SpecError, ValidationContext, ValidationError};

const BASE: &str = r#"
[sources.web]
data = "web/*.parquet"
image_columns = ["image"]
size = 1000

[sources.docs]
data = ["docs/a.parquet", "docs/b.parquet"]
image_columns = ["page"]
epochs = 2
size = 500

[tasks.caption]
source = "web"
prefix = "caption en"
suffix = "{caption}"

[tasks.ocr_en]
source = "docs"
prefix = "ocr"
suffix = "{text}"

[[stages]]
name = "one"
batch_size = 8
budget = { examples = 800 }
weights = { caption = 1, ocr_en = 1 }

[[stages]]
name = "two"
resolution = 448
batch_size = 8
budget = { examples = 100 }
weights = { caption = 1, ocr_en = 3 }
"#;

fn columns(source: &str) -> Option<Vec<String>> {
    let names: &[&str] = match source {
        "web" => &["image", "caption", "split"],
        "docs" => &["page", "text"],
        _ => return None,
    };
    Some(names.iter().map(|s| s.to_string()).collect())
}

/// The spec with `from` replaced by `to` (which must occur exactly once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(BASE.matches(from).count(), 1, "{from:?} must occur once");
    BASE.replace(from, to)
}

fn errors_with(text: &str, ctx: &ValidationContext) -> Vec<ValidationError> {
    let mixture = Mixture::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
    match mixture.validate(ctx) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.0,
    }
}

fn errors(text: &str) -> Vec<ValidationError> {
    errors_with(text, &ValidationContext::new().with_columns(&columns))
}

/// The single error of `text`, displayed.
fn only_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].to_string()
}

/// Each error of `text` as "key path: problem".
fn path_and_problem(text: &str) -> Vec<String> {
    errors(text)
        .iter()
        .map(|e| format!("{}: {}", e.path, e.problem))
        .collect()
}

/// 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    1 + text[..text.find(needle).expect(needle)]
        .matches('\n')
        .count()
}

#[test]
fn the_base_spec_is_valid() {
    assert_eq!(errors(BASE), []);
}

#[test]
fn unknown_task_in_weights_suggests_the_closest_name() {
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { caption = 1,\n  ocr = 3 }",
    );
    let line = line_of(&text, "ocr = 3");
    assert_eq!(
        only_error(&text),
        format!(
            "stages[1].weights.ocr (line {line}): no task named \"ocr\" (did you mean \"ocr_en\"?)"
        )
    );
}

#[test]
fn unknown_source_suggests() {
    let text = edit("source = \"docs\"", "source = \"doc\"");
    let line = line_of(&text, "source = \"doc\"");
    assert_eq!(
        only_error(&text),
        format!(
            "tasks.ocr_en.source (line {line}): no source named \"doc\" (did you mean \"docs\"?)"
        )
    );
}

#[test]
fn template_naming_a_missing_column() {
    let text = edit("suffix = \"{caption}\"", "suffix = \"{captoin}\"");
    let line = line_of(&text, "{captoin}");
    assert_eq!(
        only_error(&text),
        format!(
            "tasks.caption.suffix (line {line}): source \"web\" has no column \"captoin\" (did you mean \"caption\"?)"
        )
    );
    // Without the files' columns the template cannot be checked, and is not.
    assert_eq!(errors_with(&text, &ValidationContext::new()), []);
}

#[test]
fn renames_image_columns_and_filters_must_name_real_columns() {
    let text = edit(
        "size = 1000",
        "size = 1000\ncolumns = { caption = \"alt_text\" }",
    );
    assert_eq!(
        only_error(&text).split(" (line").next().unwrap(),
        "sources.web.columns.caption"
    );
    let text = edit(
        "size = 1000",
        "size = 1000\ncolumns = { cap = \"caption\" }",
    )
    .replace("suffix = \"{caption}\"", "suffix = \"{cap}\"");
    assert_eq!(errors(&text), [], "a rename makes the new name available");
    let text = edit("image_columns = [\"page\"]", "image_columns = [\"pages\"]");
    assert!(only_error(&text).starts_with("sources.docs.image_columns[0] (line"));
    assert!(
        only_error(&text)
            .ends_with("source \"docs\" has no column \"pages\" (did you mean \"page\"?)")
    );
    let text = edit(
        "prefix = \"ocr\"",
        "prefix = \"ocr\"\nfilter = { column = \"splitt\", equals = \"train\" }",
    );
    assert!(
        only_error(&text).contains("tasks.ocr_en.filter.column"),
        "{}",
        only_error(&text)
    );
}

#[test]
fn bad_template_syntax() {
    let text = edit("prefix = \"caption en\"", "prefix = \"caption {lang\"");
    let line = line_of(&text, "caption {lang");
    assert_eq!(
        only_error(&text),
        format!(
            "tasks.caption.prefix (line {line}): bad template: at byte 8: '{{' is never closed (write '{{{{' for a literal brace)"
        )
    );
}

#[test]
fn sources_need_data_and_positive_limits() {
    let text = edit("data = \"web/*.parquet\"", "data = []");
    assert!(only_error(&text).starts_with("sources.web.data (line"));
    assert!(only_error(&text).ends_with("a source needs at least one file, glob or URL in `data`"));
    let text = edit("epochs = 2", "epochs = 0");
    assert!(only_error(&text).starts_with("sources.docs.epochs"));
    assert!(only_error(&text).ends_with("must be at least 1"));
}

#[test]
fn stages_need_unique_names() {
    let text = edit("name = \"two\"", "name = \"one\"");
    let line = line_of(&text, "name = \"one\"\nresolution");
    assert_eq!(
        only_error(&text),
        format!("stages[1].name (line {line}): stage name \"one\" is already used by stages[0]")
    );
    let text = edit("name = \"two\"", "name = \"\"");
    assert!(only_error(&text).ends_with("a name may not be empty"));
}

#[test]
fn a_mixture_needs_stages() {
    let head = &BASE[..BASE.find("[[stages]]").unwrap()];
    let text = format!("stages = []\n{head}");
    assert_eq!(
        only_error(&text),
        "stages (line 1): a mixture needs at least one stage"
    );
}

#[test]
fn weights_must_be_sensible() {
    let text = edit("weights = { caption = 1, ocr_en = 3 }", "weights = {}");
    let line = line_of(&text, "weights = {}");
    assert_eq!(
        only_error(&text),
        format!("stages[1].weights (line {line}): the stage weights no task")
    );
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { caption = -1, ocr_en = 3 }",
    );
    assert!(only_error(&text).starts_with("stages[1].weights.caption"));
    assert!(only_error(&text).ends_with("a weight must be a finite number >= 0, got -1"));
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { caption = 0, ocr_en = 0.0 }",
    );
    assert!(
        only_error(&text).ends_with("every weight is zero: the stage could never draw an example")
    );
    assert!(only_error(&text).starts_with("stages[1].weights (line"));
}

#[test]
fn proportional_weights_need_sizes_and_a_positive_temperature() {
    let proportional = "weights = { proportional = { cap = 800, temperature = 2.0 } }";
    assert_eq!(
        errors(&edit("weights = { caption = 1, ocr_en = 3 }", proportional)),
        []
    );
    let text =
        edit("weights = { caption = 1, ocr_en = 3 }", proportional).replace("size = 500\n", "");
    assert!(
        only_error(&text).ends_with("proportional weights need `size` (rows) of source \"docs\"")
    );
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { proportional = { temperature = 0.0 } }",
    );
    assert!(only_error(&text).contains("stages[1].weights.proportional.temperature"));
    assert!(only_error(&text).ends_with("must be in (0, ∞), got 0"));
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { proportional = { tasks = [\"captoin\"] } }",
    );
    assert!(only_error(&text).contains("stages[1].weights.proportional.tasks[0]"));
    assert!(only_error(&text).ends_with("no task named \"captoin\" (did you mean \"caption\"?)"));
}

#[test]
fn resolution_must_be_a_multiple_of_the_patch() {
    let text = edit("resolution = 448", "resolution = 450");
    let line = line_of(&text, "resolution = 450");
    assert_eq!(
        only_error(&text),
        format!(
            "stages[1].resolution (line {line}): resolution 450 is not a multiple of the patch size 14"
        )
    );
    // The patch size comes from the model: 224 and 448 suit /14 and /16, not /20.
    assert_eq!(
        errors_with(BASE, &ValidationContext::new().with_patch_size(16)),
        []
    );
    let ctx = ValidationContext::new().with_patch_size(20);
    let problems: Vec<Problem> = errors_with(BASE, &ctx)
        .into_iter()
        .map(|e| e.problem)
        .collect();
    assert_eq!(
        problems,
        [
            Problem::Resolution {
                resolution: 224,
                patch: 20
            },
            Problem::Resolution {
                resolution: 448,
                patch: 20
            }
        ]
    );
}

#[test]
fn text_length_must_hold_the_prefix() {
    // "caption en" is two words: bos + 2 + separator + 1 suffix token + eos = 6.
    let text = edit("resolution = 448", "resolution = 448\ntext_len = 5");
    let line = line_of(&text, "text_len = 5");
    assert_eq!(
        only_error(&text),
        format!(
            "stages[1].text_len (line {line}): text length 5 is too short for task \"caption\": bos + prefix (2 tokens) + separator + one suffix token + eos need 6"
        )
    );
    assert_eq!(
        errors(&edit("resolution = 448", "resolution = 448\ntext_len = 6")),
        []
    );
    // A real tokenizer (here: one token per byte) can make the prefix longer.
    let bytes = |s: &str| s.len();
    let ctx = ValidationContext::new().with_prefix_tokens(&bytes);
    let text = edit("resolution = 448", "resolution = 448\ntext_len = 12");
    let problems: Vec<Problem> = errors_with(&text, &ctx)
        .into_iter()
        .map(|e| e.problem)
        .collect();
    assert_eq!(
        problems,
        [Problem::TextTooShort {
            task: "caption".into(),
            text_len: 12,
            prefix: 10,
            needed: 14
        }]
    );
    // A task's own cap is checked where it is set.
    let text = edit(
        "prefix = \"caption en\"",
        "prefix = \"caption en\"\nmax_text_len = 4",
    );
    assert!(
        only_error(&text).starts_with("tasks.caption.max_text_len"),
        "{}",
        only_error(&text)
    );
}

#[test]
fn images_per_example_must_fit_the_cap() {
    let text = edit("resolution = 448", "resolution = 448\nmax_images = 1")
        .replace("prefix = \"ocr\"", "prefix = \"ocr\"\nimages = 2");
    assert!(
        only_error(&text)
            .ends_with("task \"ocr_en\" has 2 images per example, over this stage's cap of 1")
    );
}

#[test]
fn a_siglip_stage_pairs_one_image_with_one_text_in_batches_without_prefix_lm_knobs() {
    let siglip = |extra: &str| {
        edit(
            "name = \"two\"",
            &format!("name = \"two\"\nobjective = \"siglip\"\n{extra}"),
        )
    };
    assert!(errors(&siglip("")).is_empty(), "{:#?}", errors(&siglip("")));
    let text = siglip("packing = true\ntrain = { freeze_vit = false, label_smoothing = 0.1 }")
        .replace(
            "batch_size = 8\nbudget = { examples = 100 }",
            "batch_size = 1\nbudget = { examples = 100 }",
        )
        .replace("prefix = \"ocr\"", "prefix = \"ocr\"\nimages = 2");
    let messages = path_and_problem(&text);
    assert_eq!(
        messages,
        [
            "stages[1].packing: a siglip stage pairs one image with one text per row: packing must be off",
            "stages[1].batch_size: a siglip stage needs at least 2 examples per batch (the others are each pair's negatives), got 1",
            "stages[1].train.freeze_vit: a siglip stage trains the image encoder and a text tower at the stage's rate: `freeze_vit`, a prefix-LM knob, does not apply",
            "stages[1].train.label_smoothing: a siglip stage trains the image encoder and a text tower at the stage's rate: `label_smoothing`, a prefix-LM knob, does not apply",
            "stages[1].weights.ocr_en: a siglip stage needs one image per example; task \"ocr_en\" has 2",
        ]
    );
    let unknown = Mixture::from_toml_str(&edit(
        "name = \"two\"",
        "name = \"two\"\nobjective = \"clip\"",
    ));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown variant `clip`")
    );
}

#[test]
fn impossible_budgets() {
    let text = edit("budget = { examples = 100 }", "budget = { examples = 0 }");
    assert!(only_error(&text).starts_with("stages[1].budget.examples"));
    let text = edit("budget = { examples = 100 }", "budget = { examples = 5 }");
    assert!(only_error(&text).ends_with("a budget of 5 examples is less than one batch of 8"));
    let text = edit(
        "budget = { examples = 100 }",
        "budget = { epochs = 1, task = \"ocr\" }",
    );
    assert!(only_error(&text).ends_with("no task named \"ocr\" (did you mean \"ocr_en\"?)"));
    let text = edit(
        "budget = { examples = 100 }",
        "budget = { epochs = 3, task = \"ocr_en\" }",
    );
    assert!(
        only_error(&text)
            .ends_with("the budget asks for 3 epochs but source \"docs\" allows only 2")
    );
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { ocr_en = 3 }",
    )
    .replace(
        "budget = { examples = 100 }",
        "budget = { epochs = 1, task = \"caption\" }",
    );
    assert!(only_error(&text).ends_with(
        "the budget counts epochs of task \"caption\", which has no weight in this stage"
    ));
    // docs allows 2 epochs of 500 rows: a stage drawing only from it cannot reach 1,500.
    let text = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { ocr_en = 3 }",
    )
    .replace(
        "budget = { examples = 100 }",
        "budget = { examples = 1_500 }",
    );
    assert!(only_error(&text).ends_with(
        "the budget of 1500 examples exceeds the 1000 that the sources' epoch limits allow"
    ));
}

#[test]
fn training_knobs_in_range() {
    let text = edit(
        "budget = { examples = 100 }",
        "budget = { examples = 100 }\ntrain = { lr = 0.0, image_lr_scale = 0.0, label_smoothing = 1.0, llm_dropout = -0.1, warmup = { fraction = 1.5 } }",
    );
    let messages = path_and_problem(&text);
    assert_eq!(
        messages,
        [
            "stages[1].train.lr: must be in (0, ∞), got 0",
            "stages[1].train.image_lr_scale: must be in (0, ∞), got 0",
            "stages[1].train.label_smoothing: must be in [0, 1), got 1",
            "stages[1].train.llm_dropout: must be in [0, 1), got -0.1",
            "stages[1].train.warmup.fraction: must be in [0, 1], got 1.5",
        ]
    );
}

#[test]
fn timescale_and_cooldown_need_the_rsqrt_schedule() {
    let messages = |train: &str| -> Vec<String> {
        let text = edit(
            "budget = { examples = 100 }",
            &format!("budget = {{ examples = 100 }}\ntrain = {train}"),
        );
        errors(&text).iter().map(|e| e.to_string()).collect()
    };
    assert!(
        messages("{ timescale = 10_000 }").is_empty(),
        "rsqrt by default"
    );
    assert!(messages("{ schedule = \"rsqrt\", timescale = 1 }").is_empty());
    let wrong = messages("{ schedule = \"cosine\", timescale = 10_000 }");
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert!(
        wrong[0].contains("stages[1].train.timescale")
            && wrong[0].ends_with(
                "only the rsqrt schedule has a timescale; this stage's schedule is cosine"
            ),
        "{wrong:?}"
    );
    let cooldown = messages("{ schedule = \"linear\", cooldown = 50 }");
    assert!(
        cooldown.len() == 1
            && cooldown[0].contains("stages[1].train.cooldown")
            && cooldown[0].ends_with(
                "only the rsqrt schedule has a cooldown; this stage's schedule is linear"
            ),
        "{cooldown:?}"
    );
    assert!(messages("{ cooldown = 50 }").is_empty(), "rsqrt by default");
    let zero = messages("{ timescale = 0 }");
    assert_eq!(zero.len(), 1, "{zero:?}");
    assert!(
        zero[0].contains("stages[1].train.timescale") && zero[0].ends_with("must be at least 1"),
        "{zero:?}"
    );
}

#[test]
fn a_stage_continues_only_an_rsqrt_schedule_before_it_and_takes_its_knobs() {
    let second = |train: &str| {
        path_and_problem(&edit(
            "budget = { examples = 100 }",
            &format!("budget = {{ examples = 100 }}\ntrain = {train}"),
        ))
    };
    assert!(second("{ continues = true, cooldown = 10 }").is_empty());
    assert_eq!(
        second("{ continues = true, lr = 1e-4, warmup = { steps = 5 }, vit_warmup = { steps = 5 } }"),
        ["lr", "warmup", "vit_warmup"].map(|knob| format!(
            "stages[1].train.{knob}: a stage that continues the one before it takes `{knob}` from it: leave `{knob}` out, or drop `continues`"
        ))
    );
    let after_cosine = edit(
        "budget = { examples = 800 }",
        "budget = { examples = 800 }\ntrain = { schedule = \"cosine\" }",
    )
    .replace(
        "budget = { examples = 100 }",
        "budget = { examples = 100 }\ntrain = { continues = true }",
    );
    assert_eq!(
        path_and_problem(&after_cosine),
        [
            "stages[1].train.continues: the stage before, \"one\", runs a cosine schedule: only rsqrt, without an end, can be continued"
        ]
    );
    let first = edit(
        "budget = { examples = 800 }",
        "budget = { examples = 800 }\ntrain = { continues = true }",
    );
    assert_eq!(
        path_and_problem(&first),
        ["stages[0].train.continues: the first stage has no schedule before it to continue"]
    );
}

#[test]
fn every_error_is_collected_and_listed_one_per_line() {
    let text = edit("source = \"docs\"", "source = \"doc\"")
        .replace("resolution = 448", "resolution = 450")
        .replace(
            "weights = { caption = 1, ocr_en = 3 }",
            "weights = { caption = 1, ocr = 3 }",
        );
    let mixture = Mixture::from_toml_str(&text).unwrap();
    let errors = mixture.validate(&ValidationContext::new()).unwrap_err();
    assert_eq!(errors.len(), 3);
    let listing = errors.to_string();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("tasks.ocr_en.source"));
    assert!(lines[1].starts_with("stages[1].resolution"));
    assert!(lines[2].starts_with("stages[1].weights.ocr"));
}

#[test]
fn json_specs_validate_without_lines() {
    let mixture = Mixture::from_toml_str(&edit("resolution = 448", "resolution = 450")).unwrap();
    let json = Mixture::from_json_str(&mixture.to_json()).unwrap();
    assert_eq!(json, mixture);
    let errors = json.validate(&ValidationContext::new()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "stages[1].resolution: resolution 450 is not a multiple of the patch size 14"
    );
}

#[test]
fn parse_errors_name_the_line() {
    let text = edit("size = 1000", "size = 1000\nshards = 3");
    let line = line_of(&text, "shards");
    match Mixture::from_toml_str(&text).unwrap_err() {
        SpecError::Toml {
            line: Some(l),
            message,
        } => {
            assert_eq!(l, line);
            assert!(message.starts_with("unknown field `shards`"), "{message}");
        }
        other => panic!("{other}"),
    }
    let bad_budget = edit("budget = { examples = 100 }", "budget = { epochs = 2 }");
    let message = Mixture::from_toml_str(&bad_budget).unwrap_err().to_string();
    assert!(
        message.contains("a budget in `epochs` needs `task`"),
        "{message}"
    );
    let mixed = edit(
        "weights = { caption = 1, ocr_en = 3 }",
        "weights = { caption = 1, proportional = { temperature = 2.0 } }",
    );
    let message = Mixture::from_toml_str(&mixed).unwrap_err().to_string();
    assert!(
        message.contains("`proportional` cannot be mixed with per-task weights"),
        "{message}"
    );
    let json =
        r#"{"sources": {"a": {"data": "x"}, "a": {"data": "y"}}, "tasks": {}, "stages": []}"#;
    let message = Mixture::from_json_str(json).unwrap_err().to_string();
    assert!(message.contains("duplicate name \"a\""), "{message}");
}

#[test]
fn visual_prompts_name_one_real_column_and_a_sane_thickness() {
    let with = |prompt: &str| {
        edit(
            "suffix = \"{caption}\"",
            &format!("suffix = \"{{caption}}\"\nvisual_prompt = {prompt}"),
        )
    };
    assert_eq!(errors(&with("{ box = \"caption\" }")), []);
    assert_eq!(
        errors(&with(
            "{ point = \"split\", colour = [0, 0, 255], thickness = 0.1 }"
        )),
        []
    );
    let error = only_error(&with("{ box = \"regoin\" }"));
    assert!(
        error.starts_with("tasks.caption.visual_prompt.box (line"),
        "{error}"
    );
    assert!(error.contains("no column \"regoin\""), "{error}");
    let error = only_error(&with("{ box = \"caption\", point = \"split\" }"));
    assert!(
        error.starts_with("tasks.caption.visual_prompt (line"),
        "{error}"
    );
    assert!(
        error.ends_with("exactly one of `box` or `point` (a column name)"),
        "{error}"
    );
    assert!(only_error(&with("{ colour = [255, 0, 0] }")).contains("exactly one of"));
    let error = only_error(&with("{ box = \"caption\", thickness = 0 }"));
    assert!(
        error.starts_with("tasks.caption.visual_prompt.thickness"),
        "{error}"
    );
}
