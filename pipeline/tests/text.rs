//! The tokenizer wrapper and the tokenizer trainer: special ids, single-token PaliGemma tokens,
//! exact round trips, and load errors that say which file and which token.

use std::sync::OnceLock;

use pipeline::text::{
    PaliTokenizer, TokenFamily, TokenizerError, add_paligemma_tokens, train_tokenizer,
};
use serde_json::Value;
use tokenizers::Tokenizer;

/// Captions and questions in the demo data's style, with a little variety.
fn corpus() -> Vec<String> {
    let colours = ["red", "green", "blue", "yellow", "purple", "orange"];
    let shapes = ["circle", "square", "triangle", "star"];
    let places = ["left of", "right of", "above", "below"];
    let mut texts = Vec::new();
    for (i, a) in colours.iter().enumerate() {
        for (j, s) in shapes.iter().enumerate() {
            let (b, t, p) = (
                colours[(i + j + 1) % 6],
                shapes[(i + 2 * j + 1) % 4],
                places[(i + j) % 4],
            );
            texts.push(format!("a {a} {s} {p} a {b} {t}"));
            texts.push(format!("answer en what colour is the {s}?"));
            texts.push(format!("how many {s}s are there?\n{}", i + j));
            texts.push(format!(
                "<loc{:04}><loc{:04}><loc0512><loc1023> {a} {s}",
                i * 100,
                j * 200
            ));
        }
    }
    texts
}

/// Trained once per test binary: training is the slow part.
fn trained() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let texts = corpus();
        train_tokenizer(texts.iter().map(String::as_str), 400).unwrap()
    })
}

fn pali() -> PaliTokenizer {
    PaliTokenizer::new(trained().clone()).unwrap()
}

#[test]
fn trained_tokenizer_has_gemma_special_ids() {
    let tok = pali();
    let ids = tok.special();
    assert_eq!((ids.pad, ids.eos, ids.bos), (0, 1, 2));
    assert_eq!(tok.encode("\n").unwrap(), [ids.sep]);
    assert!(ids.sep > 2);

    // <loc>, <seg>, <image> follow the trained vocabulary, in Gemma's order.
    let base = tok.loc_ids().unwrap()[0];
    assert!(
        base <= 400,
        "the BPE part holds at most vocab_size ids: {base}"
    );
    assert_eq!(
        tok.loc_ids().unwrap(),
        (base..base + 1024).collect::<Vec<_>>()
    );
    assert_eq!(
        tok.seg_ids().unwrap(),
        (base + 1024..base + 1152).collect::<Vec<_>>()
    );
    assert_eq!(ids.image, base + 1152);
    assert_eq!(tok.vocab_size(), base as usize + 1153);
}

#[test]
fn paligemma_tokens_stay_single_tokens() {
    let tok = pali();
    let loc = tok.loc_ids().unwrap();
    assert_eq!(
        tok.encode("<loc0123><loc0456>").unwrap(),
        [loc[123], loc[456]]
    );
    let seg = tok.seg_ids().unwrap();
    assert_eq!(
        tok.encode("<seg000><seg127><seg042>").unwrap(),
        [seg[0], seg[127], seg[42]]
    );
    let ids = tok.special();
    assert_eq!(
        tok.encode("<image><image><bos>").unwrap(),
        [ids.image, ids.image, ids.bos]
    );

    // Inside text, and next to it without spaces.
    let text = "x<loc0001><loc0002><loc0003><loc1023> red circle ; <loc0000>";
    let encoded = tok.encode(text).unwrap();
    let locs: Vec<u32> = encoded
        .iter()
        .copied()
        .filter(|id| loc.contains(id))
        .collect();
    assert_eq!(locs, [loc[1], loc[2], loc[3], loc[1023], loc[0]]);
    // Not a token: out of range or malformed loc tokens are plain text.
    for text in ["<loc1024>", "<loc123>", "<loc 0001>"] {
        let ids = tok.encode(text).unwrap();
        assert!(
            ids.len() > 1 && ids.iter().all(|id| !loc.contains(id)),
            "{text}: {ids:?}"
        );
    }
}

#[test]
fn encode_decode_round_trips_exactly() {
    let tok = pali();
    let mut texts = corpus();
    texts.extend(
        [
            "a violet hexagon, unseen in training!",
            "naïve café 🐱 — ¿qué?",
            "  two  spaces\tand a tab\nand lines\n\n",
            "<loc0053><loc0072><loc0215><loc0190> coin ; <loc0100><loc0200><loc0300><loc0400> cat",
            "<image><bos>answer en why?\n<eos>",
            "",
        ]
        .map(String::from),
    );
    for text in &texts {
        let ids = tok.encode(text).unwrap();
        assert_eq!(&tok.decode(&ids).unwrap(), text, "{ids:?}");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&refs).unwrap();
    for (text, ids) in texts.iter().zip(batch) {
        assert_eq!(ids, tok.encode(text).unwrap());
    }
    // Training learned merges: common words take fewer tokens than bytes.
    assert!(
        tok.encode("answer en what colour is the circle?")
            .unwrap()
            .len()
            < 12
    );
}

#[test]
fn saved_tokenizer_loads_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    trained().save(&path, false).unwrap();
    let loaded = PaliTokenizer::from_file(&path).unwrap();
    let tok = pali();
    assert_eq!(loaded.special(), tok.special());
    assert_eq!(loaded.loc_ids(), tok.loc_ids());
    for text in corpus() {
        assert_eq!(loaded.encode(&text).unwrap(), tok.encode(&text).unwrap());
    }
}

/// The trained tokenizer's JSON with one added token removed.
fn without_token(token: &str) -> String {
    let mut json: Value = serde_json::from_str(&trained().to_string(false).unwrap()).unwrap();
    let added = json["added_tokens"].as_array_mut().unwrap();
    let before = added.len();
    added.retain(|t| t["content"] != token);
    assert_eq!(added.len(), before - 1, "{token} was an added token");
    json.to_string()
}

#[test]
fn load_errors_name_the_file_and_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope/tokenizer.json");
    let err = PaliTokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let garbled = dir.path().join("garbled.json");
    std::fs::write(&garbled, "{\"model\": 3").unwrap();
    let err = PaliTokenizer::from_file(&garbled).unwrap_err();
    assert!(err.to_string().contains("garbled.json"), "{err}");

    let path = dir.path().join("partial.json");
    std::fs::write(&path, without_token("<image>")).unwrap();
    let err = PaliTokenizer::from_file(&path).unwrap_err();
    let TokenizerError::MissingToken { tokenizer, token } = &err else {
        panic!("<image>: {err}");
    };
    assert_eq!(
        (tokenizer.as_str(), token.as_str()),
        (path.to_str().unwrap(), "<image>")
    );
    assert!(err.to_string().contains("partial.json"), "{err}");
    // Loc and seg tokens are optional, but all or none: some missing is a broken tokenizer.
    for (token, family, count) in [
        ("<loc0500>", TokenFamily::Loc, 1024),
        ("<seg127>", TokenFamily::Seg, 128),
    ] {
        std::fs::write(&path, without_token(token)).unwrap();
        let err = PaliTokenizer::from_file(&path).unwrap_err();
        let TokenizerError::PartialFamily {
            tokenizer,
            family: named,
            present,
            missing,
        } = &err
        else {
            panic!("{token}: {err}");
        };
        assert_eq!(
            (tokenizer.as_str(), *named, *present, missing.as_str()),
            (path.to_str().unwrap(), family, count - 1, token)
        );
        assert!(
            err.to_string().contains("partial.json") && err.to_string().contains(token),
            "{err}"
        );
    }
    // Trained specials stay in the BPE vocabulary; without their added-token entry the
    // pre-tokenizer splits them, and loading says so.
    for token in ["<bos>", "<pad>"] {
        let path = dir.path().join("split.json");
        std::fs::write(&path, without_token(token)).unwrap();
        let err = PaliTokenizer::from_file(&path).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::NotSingleToken { text, .. } if text == token),
            "{err}"
        );
        assert!(err.to_string().contains("split.json"), "{err}");
    }
}

fn wordlevel(with_newline: bool) -> Tokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/text/wordlevel.json"
    );
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    if !with_newline {
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["content"] != "\n");
    }
    let mut tok: Tokenizer = json.to_string().parse().unwrap();
    add_paligemma_tokens(&mut tok).unwrap();
    tok
}

#[test]
fn tokens_that_would_split_are_rejected() {
    // The word-level fixture only keeps "\n" as a token because it is an added token.
    assert_eq!(
        PaliTokenizer::new(wordlevel(true)).unwrap().special().sep,
        3
    );
    let err = PaliTokenizer::new(wordlevel(false)).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::NotSingleToken { text, ids, .. } if text == "\n" && ids.is_empty()),
        "{err}"
    );

    // In the vocabulary but not an added token: the model would split it.
    for token in ["<image>", "<loc0500>"] {
        let mut json: Value =
            serde_json::from_str(&wordlevel(true).to_string(false).unwrap()).unwrap();
        json["model"]["vocab"][token] = 5000.into();
        json["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["content"] != token);
        let tok: Tokenizer = json.to_string().parse().unwrap();
        let err = PaliTokenizer::new(tok).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::NotSingleToken { text, expected, .. } if text == token && expected == &[5000]),
            "{err}"
        );
    }
}
