//! `tokenizer.json` read by the streaming loader is the tokenizer `tokenizers` itself reads:
//! same serialisation, same ids, for BPE files in both merge notations and for the model types
//! it hands back to `tokenizers`.

use pipeline::text::train_tokenizer;
use pipeline::tokenizer_file::{parse_bpe_streamed, parse_tokenizer, read_tokenizer};
use pipeline::word_tokenizer::word_tokenizer;
use tokenizers::{AddedToken, Tokenizer};

const TEXTS: [&str; 4] = [
    "a red circle left of a blue square",
    "answer en how many triangles are there?\n2",
    "détecte <loc0012><loc1023> zebra ; ünïcode",
    "caption en",
];

/// `json` loads as `tokenizers` loads it, streamed (`true`) or through `tokenizers`.
fn same_as_tokenizers(json: &str, streamed: bool) {
    assert_eq!(parse_bpe_streamed(json).is_some(), streamed);
    let reference: Tokenizer = json.parse().unwrap();
    let streamed = parse_tokenizer(json).unwrap();
    assert_eq!(
        streamed.to_string(false).unwrap(),
        reference.to_string(false).unwrap()
    );
    for text in TEXTS {
        let ids = |t: &Tokenizer| t.encode_fast(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids(&streamed), ids(&reference), "{text:?}");
    }
}

fn trained() -> Tokenizer {
    let mut tokenizer = train_tokenizer(TEXTS.into_iter(), 300).unwrap();
    // Added tokens beyond the vocabulary, special and not, in a known order.
    tokenizer
        .add_tokens([AddedToken::from("zebra", false).single_word(true)])
        .unwrap();
    tokenizer
}

#[test]
fn a_bpe_file_loads_as_tokenizers_loads_it() {
    same_as_tokenizers(&trained().to_string(false).unwrap(), true);
}

#[test]
fn older_space_separated_merges_load_too() {
    let mut json: serde_json::Value =
        serde_json::from_str(&trained().to_string(false).unwrap()).unwrap();
    let merges = json["model"]["merges"].as_array_mut().unwrap();
    assert!(!merges.is_empty());
    for merge in merges.iter_mut() {
        let pair = merge.as_array().unwrap();
        *merge = format!(
            "{} {}",
            pair[0].as_str().unwrap(),
            pair[1].as_str().unwrap()
        )
        .into();
    }
    same_as_tokenizers(&json.to_string(), true);
}

#[test]
fn other_models_and_unknown_shapes_go_through_tokenizers() {
    let words = word_tokenizer(TEXTS.into_iter(), 300).unwrap();
    same_as_tokenizers(&words.to_string(false).unwrap(), false);
    // A field this reader does not know: tokenizers' own reader decides.
    let mut json: serde_json::Value =
        serde_json::from_str(&trained().to_string(false).unwrap()).unwrap();
    json["model"]["something_new"] = serde_json::json!(null);
    let text = json.to_string();
    assert!(parse_bpe_streamed(&text).is_none());
    assert_eq!(
        parse_tokenizer(&text)
            .map(|t| t.get_vocab_size(true))
            .map_err(|e| e.contains("unknown field")),
        text.parse::<Tokenizer>()
            .map(|t| t.get_vocab_size(true))
            .map_err(|e| e.to_string().contains("unknown field")),
    );
}

#[test]
fn gemmas_tokenizer_loads_as_tokenizers_loads_it() {
    let Ok(path) = std::env::var("PALIFORGE_GEMMA_TOKENIZER") else {
        eprintln!("PALIFORGE_GEMMA_TOKENIZER is not set: skipping");
        return;
    };
    same_as_tokenizers(&std::fs::read_to_string(path).unwrap(), true);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("tokenizer.json");
    std::fs::write(&broken, "{\"model\": ").unwrap();
    for path in [broken, dir.path().join("missing.json")] {
        let message = read_tokenizer(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
