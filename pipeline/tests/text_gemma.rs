//! The real PaliGemma tokenizer (Gemma's vocabulary, under Gemma's terms, so never committed).
//! Runs when PALIFORGE_GEMMA_TOKENIZER names the file `scripts/make_gemma_tokenizer.sh` writes:
//!
//!   scripts/make_gemma_tokenizer.sh /tmp/gemma/tokenizer.json
//!   PALIFORGE_GEMMA_TOKENIZER=/tmp/gemma/tokenizer.json cargo test -p pipeline --test text_gemma
//!
//! Expected ids come from Python's `tokenizers` 0.23.3 on the same file (the reference
//! pipeline's tokenizer, whose ids match transformers' PaliGemmaProcessor).

use pipeline::Location;
use pipeline::format::{FormatConfig, Formatter, OverLength};
use pipeline::text::PaliTokenizer;
use serde_json::json;
use std::sync::OnceLock;

/// Loaded once per test binary (a 13 MB file); `None` when the variable is unset.
fn gemma() -> Option<&'static PaliTokenizer> {
    static TOKENIZER: OnceLock<Option<PaliTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let Ok(path) = std::env::var("PALIFORGE_GEMMA_TOKENIZER") else {
                eprintln!(
                    "PALIFORGE_GEMMA_TOKENIZER is not set: skipping the Gemma tokenizer checks"
                );
                return None;
            };
            Some(PaliTokenizer::from_file(path).unwrap())
        })
        .as_ref()
}

#[test]
fn special_ids_match_paligemma() {
    let Some(tok) = gemma() else { return };
    let ids = tok.special();
    assert_eq!(
        (ids.pad, ids.eos, ids.bos, ids.sep, ids.image),
        (0, 1, 2, 108, 257152)
    );
    assert_eq!(tok.loc_ids().unwrap(), (256000..257024).collect::<Vec<_>>());
    assert_eq!(tok.seg_ids().unwrap(), (257024..257152).collect::<Vec<_>>());
    assert_eq!(tok.vocab_size(), 257153);
    assert_eq!(tok.encode("<loc0123><loc0456>").unwrap(), [256123, 256456]);
}

#[test]
fn sentences_match_the_reference_ids() {
    let Some(tok) = gemma() else { return };
    let cases: [(&str, &[u32]); 8] = [
        (
            "answer en what colour is the car?",
            &[13072, 659, 1212, 10164, 603, 573, 1226, 235336],
        ),
        ("caption es", &[21209, 875]),
        ("detect coin ; cat", &[39208, 15005, 2161, 4401]),
        (
            "<loc0053><loc0072><loc0215><loc0190> coin ; <loc0100><loc0200><loc0300><loc0400> cat",
            &[
                256053, 256072, 256215, 256190, 15005, 2161, 235248, 256100, 256200, 256300,
                256400, 4401,
            ],
        ),
        (
            "un gato sobre la mesa, ¿verdad?",
            &[549, 43141, 4343, 683, 20432, 235269, 6742, 139303, 235336],
        ),
        (
            "naïve café 🐱 x",
            &[556, 236370, 524, 18688, 235248, 242993, 1141],
        ),
        (
            "  two  spaces\nand a line",
            &[139, 9721, 139, 46633, 108, 639, 476, 2017],
        ),
        ("<seg012><image><bos>", &[257036, 257152, 2]),
    ];
    for (text, expected) in cases {
        assert_eq!(tok.encode(text).unwrap(), expected, "{text:?}");
        assert_eq!(tok.decode(expected).unwrap(), text);
    }
}

#[test]
fn formatted_example_matches_the_reference_layout() {
    let Some(tok) = gemma() else { return };
    // peer_pipeline.py's build_sequence: [<image>] * 256 + <bos> + prefix + "\n" + suffix + <eos>.
    let f = Formatter::new(FormatConfig {
        task_id: 0,
        prefix: "{prefix}".into(),
        suffix: "{suffix}".into(),
        resolution: 224,
        patch: 14,
        text_len: 64,
        over_length: OverLength::Truncate,
    })
    .unwrap();
    let record = json!({"prefix": "detect coin ; cat", "suffix": "caption es"});
    let ex = f
        .format(
            record.as_object().unwrap(),
            vec![pipeline::image::SquareImage::new(224, vec![0; 3 * 224 * 224]).unwrap()],
            Location::default(),
            tok,
        )
        .unwrap();
    let mut expected = vec![257152; 256];
    expected.extend([2, 39208, 15005, 2161, 4401, 108, 21209, 875, 1]);
    assert_eq!(ex.tokens, expected);
    assert_eq!(ex.prefix_len, 256 + 6);
}
