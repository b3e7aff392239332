//! The word-level tokenizer for small vocabularies: its fixed id layout, the demo's words in it,
//! and a stream that reads boxes with it refused where the spec asks for them.

use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;
use mixtures::Mixture;
use pipeline::demo::{self, DemoConfig};
use pipeline::format::{FormatConfig, Formatter, OverLength};
use pipeline::mixture::{RunOptions, stage_stream};
use pipeline::prepare::source_texts;
use pipeline::source::SourceConfig;
use pipeline::stream::StreamState;
use pipeline::text::{PaliTokenizer, TokenFamily, TokenizerError};
use pipeline::word_tokenizer::word_tokenizer;
use pipeline::{Location, Reason};
use serde_json::json;

const UNK: u32 = 3;

fn tokenizer(texts: &[&str], ids: usize) -> PaliTokenizer {
    PaliTokenizer::new(word_tokenizer(texts.iter().copied(), ids).unwrap()).unwrap()
}

#[test]
fn ids_follow_the_fixed_layout() {
    let tok = tokenizer(&["a red circle", "a blue circle?", "circle"], 300);
    let ids = tok.special();
    assert_eq!(
        (ids.pad, ids.eos, ids.bos, ids.sep, ids.image),
        (0, 1, 2, 4, 299)
    );
    assert_eq!(tok.vocab_size(), 300);
    assert_eq!(tok.inner().get_vocab_size(true), 300, "no gaps");
    // Most frequent first, ties alphabetical; then fillers up to <image>.
    let words: Vec<String> = (5..10)
        .map(|id| tok.inner().id_to_token(id).unwrap())
        .collect();
    assert_eq!(words, ["circle", "a", "?", "blue", "red"]);
    assert_eq!(tok.inner().id_to_token(10).unwrap(), "<unused0>");
    assert_eq!(tok.inner().id_to_token(298).unwrap(), "<unused288>");
    // No loc or seg tokens: optional, and absent.
    assert!(tok.loc_ids().is_none() && tok.seg_ids().is_none());

    assert_eq!(tok.encode("a red circle").unwrap(), [6, 9, 5]);
    assert_eq!(tok.encode("a green circle").unwrap(), [6, UNK, 5]);
    assert_eq!(
        tok.encode("<bos>a\n<image><eos>").unwrap(),
        [2, 6, 4, 299, 1]
    );
    assert_eq!(tok.decode(&[6, 8, 5]).unwrap(), "a blue circle");

    // Saved and loaded, the same ids.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    word_tokenizer(["a red circle"].into_iter(), 300)
        .unwrap()
        .save(&path, false)
        .unwrap();
    let loaded = PaliTokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.encode("a red circle").unwrap(), [5, 7, 6]);
    assert_eq!(loaded.special().image, 299);
}

#[test]
fn words_that_do_not_fit_are_left_out_rarest_first() {
    // 9 ids: the layout takes 6, so 3 words fit.
    let tok = tokenizer(&["x x x y y z w"], 9);
    assert_eq!(tok.encode("x y z w").unwrap(), [5, 6, UNK, 7]);
    assert_eq!(tok.special().image, 8, "<image> last");
    let err = word_tokenizer(["x"].into_iter(), 5).unwrap_err();
    assert!(err.to_string().contains("5 ids"), "{err}");
}

#[test]
fn loc_and_seg_tokens_are_asked_for_by_name() {
    let tok = tokenizer(&["detect circle"], 300);
    let err = tok
        .require(
            TokenFamily::Loc,
            "task detect's suffix writes boxes with them",
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TokenizerError::NoFamily {
                family: TokenFamily::Loc,
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    for part in [
        "(in memory)",
        "<loc0000>..<loc1023>",
        "but task detect's suffix writes boxes with them",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }

    tok.check_text("detect circle <loc> <loc123> <loc1024> <seg128>")
        .unwrap();
    let err = tok
        .check_text("<loc0012><loc0034><loc0056><loc0078> circle")
        .unwrap_err();
    assert!(err.to_string().contains("<loc0012>"), "{err}");
    let err = tok.check_text("mask <seg042>").unwrap_err();
    assert!(
        matches!(
            &err,
            TokenizerError::NoFamily {
                family: TokenFamily::Seg,
                ..
            }
        ),
        "{err}"
    );
}

fn small_demo(dir: &Path) {
    let config = DemoConfig {
        train_rows: 120,
        test_rows: 40,
        pair_train_rows: 20,
        pair_test_rows: 10,
        image_size: 28,
        ..DemoConfig::default()
    };
    demo::generate_with_progress(dir, &config, &ProgressBar::hidden()).unwrap();
}

fn split(dir: &Path, source: &str, split: &str, image: &str) -> SourceConfig {
    SourceConfig {
        image_columns: vec![image.to_string()],
        ..SourceConfig::new([dir
            .join(source)
            .join(format!("{split}-*.parquet"))
            .display()
            .to_string()])
    }
}

#[test]
fn the_demo_words_fit_a_300_id_model_and_boxes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    small_demo(d);
    let templates = ["caption en", "answer en", "detect"];
    let sources = |name: &str| {
        [
            split(d, "scenes", name, "image"),
            split(d, "pairs", name, "images"),
        ]
    };
    let train = source_texts(&sources("train"), &templates).unwrap();
    let tok = Arc::new(tokenizer(
        &train.iter().map(String::as_str).collect::<Vec<_>>(),
        300,
    ));
    // Held-out text is made of the same few words.
    let test = source_texts(&sources("test"), &[]).unwrap();
    assert!(test.iter().any(|t| t.contains("which image has more")));
    for text in &test {
        let ids = tok.encode(text).unwrap();
        assert!(!ids.contains(&UNK), "{text:?}: {ids:?}");
    }

    let spec = |suffix: &str| {
        let data = split(d, "scenes", "train", "image").data;
        let spec = serde_json::json!({
            "sources": { "scenes": { "data": data, "image_columns": ["image"] } },
            "tasks": { "detect": { "source": "scenes", "prefix": "detect {detect_label}",
                                   "suffix": suffix } },
            "stages": [{ "name": "s", "resolution": 28, "text_len": 32, "batch_size": 4,
                         "budget": { "examples": 8 }, "weights": { "detect": 1 } }],
        });
        Mixture::from_json_str(&spec.to_string()).unwrap()
    };
    let options = RunOptions::new(tok.clone());
    let Err(err) = stage_stream(
        &spec("{objects:detections}"),
        0,
        &options,
        StreamState::default(),
    ) else {
        panic!("a detection suffix streamed without loc tokens");
    };
    let message = err.to_string();
    for part in [
        "tasks.detect.suffix",
        "(in memory)",
        "<loc0000>..<loc1023>",
        "\"{objects:detections}\" writes boxes",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    // The same task answering in words streams.
    let batches = stage_stream(&spec("{detect_label}"), 0, &options, StreamState::default())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let examples: usize = batches.iter().map(|b| b.batch.segments.len()).sum();
    assert_eq!(examples, 8);
}

#[test]
fn a_row_whose_text_writes_loc_tokens_is_bad_input_naming_the_tokenizer() {
    let tok = tokenizer(&["detect circle"], 300);
    let config = |suffix: &str| FormatConfig {
        task_id: 0,
        prefix: "detect {label}".into(),
        suffix: suffix.into(),
        resolution: 28,
        patch: 14,
        text_len: 32,
        over_length: OverLength::Skip,
    };
    let words = Formatter::new(config("{answer}")).unwrap();
    assert_eq!(words.loc_template(), None);
    assert_eq!(
        Formatter::new(config("{box:loc}")).unwrap().loc_template(),
        Some("suffix")
    );

    // Boxes already written as text in the data: nothing the template could have known.
    let row = json!({"label": "circle", "answer": "<loc0100><loc0200><loc0300><loc0400> circle"});
    let origin = Location::new("scenes/train-00000.parquet", 1, 7);
    let bad = words
        .format(row.as_object().unwrap(), vec![], origin.clone(), &tok)
        .unwrap_err();
    assert_eq!(
        (bad.reason, &bad.location),
        (Reason::BadTemplateValue, &origin)
    );
    for part in [
        "(in memory)",
        "the text has <loc0100>",
        "no <loc0000>..<loc1023> tokens",
    ] {
        assert!(bad.detail.contains(part), "{part}: {}", bad.detail);
    }
    let row = json!({"label": "circle", "answer": "circle"});
    words
        .format(row.as_object().unwrap(), vec![], origin, &tok)
        .unwrap();
}
