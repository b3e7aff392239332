//! Formatting records into examples: the token layout and masks written out by hand, templates,
//! loc tokens, bad values and over-length policies.
//!
//! The tokenizer is `fixtures/text/wordlevel.json` (ids listed in fixtures/text/README.md), so
//! every expected id below can be checked by eye.

use pipeline::format::{FormatConfig, FormatError, Formatter, OverLength};
use pipeline::image::SquareImage;
use pipeline::pack::{PackConfig, Packer};
use pipeline::text::{PaliTokenizer, add_paligemma_tokens};
use pipeline::{BadInputStats, Example, ImageSlot, Location, Reason};
use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

const IMG: u32 = 1180;
const LOC0: u32 = 28;

fn tokenizer() -> PaliTokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/text/wordlevel.json"
    );
    let mut tok = Tokenizer::from_file(path).unwrap();
    add_paligemma_tokens(&mut tok).unwrap();
    PaliTokenizer::new(tok).unwrap()
}

/// 28px images with 14px patches: 4 tokens per image.
fn config(prefix: &str, suffix: &str, text_len: usize, over_length: OverLength) -> FormatConfig {
    FormatConfig {
        task_id: 7,
        prefix: prefix.into(),
        suffix: suffix.into(),
        resolution: 28,
        patch: 14,
        text_len,
        over_length,
    }
}

fn vqa(text_len: usize, over_length: OverLength) -> Formatter {
    Formatter::new(config(
        "answer en {question}",
        "{answer}",
        text_len,
        over_length,
    ))
    .unwrap()
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn image(level: u8) -> SquareImage {
    SquareImage::new(28, vec![level; 3 * 28 * 28]).unwrap()
}

fn origin(row: usize) -> Location {
    Location::new("shard-0.parquet", 2, row)
}

#[test]
fn token_layout_and_masks_by_hand() {
    let tok = tokenizer();
    assert_eq!(tok.special().sep, 3);
    assert_eq!(tok.special().image, IMG);
    let f = vqa(16, OverLength::Truncate);
    assert_eq!(f.tokens_per_image(), 4);

    let record = fields(json!({"question": "what colour is the circle?", "answer": "red"}));
    let ex = f
        .format(&record, vec![image(200)], origin(3), &tok)
        .unwrap();
    // 4 image tokens, <bos>, answer en what colour is the circle ?, "\n", red, <eos>
    let expected = [IMG, IMG, IMG, IMG, 2, 5, 6, 7, 8, 9, 10, 11, 12, 3, 13, 1];
    assert_eq!(ex.tokens, expected);
    assert_eq!(ex.prefix_len, 14);
    assert_eq!(ex.image_starts, [0]);
    assert_eq!((ex.task_id, ex.truncated), (7, false));
    assert_eq!(ex.origin, origin(3));

    let record = fields(json!({"question": "what colour is the square?", "answer": "blue"}));
    let ex2 = f.format(&record, vec![image(50)], origin(4), &tok).unwrap();
    assert_eq!(
        ex2.tokens,
        [IMG, IMG, IMG, IMG, 2, 5, 6, 7, 8, 9, 10, 16, 12, 3, 14, 1]
    );

    // Both in one row of 36: 16 + 16 tokens, then 4 of padding.
    let cfg = PackConfig {
        examples: 2,
        seq_len: 36,
        max_images_per_row: 2,
        packing: true,
        resolution: 28,
        tokens_per_image: 4,
        pad_id: 0,
    };
    let mut packer = Packer::new(cfg).unwrap();
    assert!(packer.push(ex).unwrap().is_none());
    assert!(packer.push(ex2).unwrap().is_none());
    let b = packer.flush().unwrap();
    b.validate().unwrap();

    #[rustfmt::skip]
    let tokens = [
        IMG, IMG, IMG, IMG, 2, 5, 6, 7, 8, 9, 10, 11, 12, 3, 13, 1,
        IMG, IMG, IMG, IMG, 2, 5, 6, 7, 8, 9, 10, 16, 12, 3, 14, 1,
        0, 0, 0, 0,
    ];
    #[rustfmt::skip]
    let segment_ids = [
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
        0, 0, 0, 0,
    ];
    #[rustfmt::skip]
    let positions = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        0, 0, 0, 0,
    ];
    let (f, t) = (false, true);
    #[rustfmt::skip]
    let causal = [
        f, f, f, f, f, f, f, f, f, f, f, f, f, f, t, t,
        f, f, f, f, f, f, f, f, f, f, f, f, f, f, t, t,
        f, f, f, f,
    ];
    // "\n" predicts the answer, the answer predicts <eos>; <eos> predicts nothing.
    #[rustfmt::skip]
    let loss_weights = [
        0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 0.,
        0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 1., 1., 0.,
        0., 0., 0., 0.,
    ];
    assert_eq!(b.tokens, tokens);
    assert_eq!(b.segment_ids, segment_ids);
    assert_eq!(b.positions, positions);
    assert_eq!(b.causal, causal);
    assert_eq!(b.loss_weights, loss_weights);
    assert_eq!(
        b.image_slots,
        [
            ImageSlot { row: 0, start: 0 },
            ImageSlot { row: 0, start: 16 }
        ]
    );
    assert_eq!(b.image(0), image(200).normalised().as_slice());
    assert_eq!(b.image(1), image(50).normalised().as_slice());
    let segs: Vec<_> = b
        .segments
        .iter()
        .map(|s| (s.row, s.id, s.start, s.len, s.task_id))
        .collect();
    assert_eq!(segs, [(0, 1, 0, 16, 7), (0, 2, 16, 16, 7)]);
    assert_eq!(b.target_tokens(), 4);

    // The prefix (images included) sees itself whole; the suffix is causal; nothing crosses
    // examples; padding sees nothing.
    assert!(b.attends(0, 0, 13) && b.attends(0, 13, 0) && b.attends(0, 4, 3));
    assert!(!b.attends(0, 3, 14) && !b.attends(0, 13, 14));
    assert!(
        b.attends(0, 14, 0)
            && b.attends(0, 14, 14)
            && !b.attends(0, 14, 15)
            && b.attends(0, 15, 14)
    );
    assert!(!b.attends(0, 16, 15) && !b.attends(0, 15, 16) && !b.attends(0, 20, 0));
    assert!(b.attends(0, 16, 29) && !b.attends(0, 16, 30));
    assert!(!b.attends(0, 33, 33) && !b.attends(0, 33, 0));
}

#[test]
fn text_only_and_multi_image_examples() {
    let tok = tokenizer();
    let f = Formatter::new(config(
        "caption en",
        "a {colour} circle",
        10,
        OverLength::Skip,
    ))
    .unwrap();
    let record = fields(json!({"colour": "blue"}));
    let ex = f.format(&record, vec![], origin(0), &tok).unwrap();
    assert_eq!(ex.tokens, [2, 18, 6, 3, 15, 14, 11, 1]);
    assert_eq!((ex.prefix_len, ex.image_starts.len()), (4, 0));

    let ex = f
        .format(
            &record,
            vec![image(128), image(255), image(0)],
            origin(0),
            &tok,
        )
        .unwrap();
    assert_eq!(ex.len(), 12 + 8);
    assert_eq!(ex.prefix_len, 12 + 4);
    assert_eq!(ex.image_starts, [0, 4, 8]);
    assert!(ex.tokens[..12].iter().all(|&t| t == IMG));
    assert_eq!(ex.tokens[12], 2);
}

#[test]
fn over_length_truncates_the_suffix_end_or_skips() {
    let tok = tokenizer();
    let record =
        fields(json!({"question": "what colour is the circle?", "answer": "red blue red"}));
    // Text: <bos> + 8 + "\n" = 10 of prefix, then 3 + <eos>: 14 in all.
    let full = vqa(14, OverLength::Skip)
        .format(&record, vec![image(128)], origin(0), &tok)
        .unwrap();
    assert_eq!(full.tokens[14..], [13, 14, 13, 1]);
    assert!(!full.truncated);

    let mut stats = BadInputStats::default();
    let cut = vqa(12, OverLength::Truncate)
        .format(&record, vec![image(128)], origin(0), &tok)
        .unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.len(), 4 + 12);
    assert_eq!(cut.tokens[14..], [13, 14], "the end (<eos> first) is cut");
    let targets = (0..cut.len()).filter(|&t| cut.loss_weight(t) > 0.0).count();
    assert_eq!(targets, 2);

    let skip = vqa(12, OverLength::Skip)
        .format(&record, vec![image(128)], origin(5), &tok)
        .unwrap_err();
    assert_eq!(skip.reason, Reason::OverLength);
    assert_eq!(skip.location, origin(5));
    stats.record_bad(skip);

    // One target at least: a prefix that fills the text length is skipped whatever the policy.
    let prefix_only = vqa(11, OverLength::Truncate)
        .format(&record, vec![], origin(6), &tok)
        .unwrap();
    assert_eq!(prefix_only.tokens[10..], [13]);
    for policy in [OverLength::Truncate, OverLength::Skip] {
        let err = vqa(10, policy)
            .format(&record, vec![], origin(6), &tok)
            .unwrap_err();
        assert_eq!(err.reason, Reason::OverLength);
        assert!(err.detail.contains("prefix"), "{}", err.detail);
        stats.record_bad(err);
    }
    assert_eq!(stats.count(Reason::OverLength), 3);
    assert_eq!(stats.bad(), 0, "over-length is a policy, not bad data");
}

fn loc_ids(bins: [u32; 4]) -> [u32; 4] {
    bins.map(|b| LOC0 + b)
}

#[test]
fn boxes_render_as_loc_tokens() {
    let tok = tokenizer();
    let f = Formatter::new(config(
        "detect {label}",
        "{box:loc} {label}",
        64,
        OverLength::Skip,
    ))
    .unwrap();
    // 0.1 -> 102.3 -> 102; 0.2 -> 204.6 -> 205; 0.5 -> 511.5 -> 512 (half to even); 1.2 clamps.
    let record = fields(json!({"label": "cat", "box": [0.1, 0.2, 0.5, 1.2]}));
    let ex = f.format(&record, vec![], origin(0), &tok).unwrap();
    let suffix = &ex.tokens[ex.prefix_len..];
    assert_eq!(suffix[..4], loc_ids([102, 205, 512, 1023]));
    assert_eq!(suffix[4..], [19, 1]);

    let record = fields(
        json!({"label": "dog", "box": {"x1": 0.0, "y1": 1.0, "x0": -3, "y0": 0.25, "score": 0.9}}),
    );
    let ex = f.format(&record, vec![], origin(0), &tok).unwrap();
    assert_eq!(
        ex.tokens[ex.prefix_len..ex.prefix_len + 4],
        loc_ids([256, 0, 1023, 0])
    );

    // A list of boxes, joined by " ; ".
    let f = Formatter::new(config("detect", "{boxes:loc}", 64, OverLength::Skip)).unwrap();
    let record =
        fields(json!({"boxes": [[0, 0, 1, 1], {"y0": 0.5, "x0": 0.5, "y1": 0.75, "x1": 1}]}));
    let ex = f.format(&record, vec![], origin(0), &tok).unwrap();
    let mut expected = loc_ids([0, 0, 1023, 1023]).to_vec();
    expected.push(21);
    expected.extend(loc_ids([512, 512, 767, 1023]));
    expected.push(1);
    assert_eq!(ex.tokens[ex.prefix_len..], expected);
}

#[test]
fn detections_render_boxes_then_labels() {
    let tok = tokenizer();
    let f = Formatter::new(config(
        "detect cat ; dog",
        "{objects:detections}",
        64,
        OverLength::Skip,
    ))
    .unwrap();
    let record = fields(json!({"objects": [
        {"box": [0.1, 0.2, 0.5, 1.0], "label": "cat"},
        {"y0": 0, "x0": 0, "y1": 0.5, "x1": 0.5, "label": " dog "},
    ]}));
    let ex = f.format(&record, vec![], origin(0), &tok).unwrap();
    let expected_text =
        "<loc0102><loc0205><loc0512><loc1023> cat ; <loc0000><loc0000><loc0512><loc0512> dog";
    let mut expected = tok.encode(expected_text).unwrap();
    expected.push(1);
    assert_eq!(ex.tokens[ex.prefix_len..], expected);
    assert_eq!(
        expected[..6],
        [LOC0 + 102, LOC0 + 205, LOC0 + 512, LOC0 + 1023, 19, 21]
    );

    let empty = fields(json!({"objects": []}));
    let ex = f.format(&empty, vec![], origin(0), &tok).unwrap();
    assert_eq!(
        ex.tokens[ex.prefix_len..],
        [1],
        "no objects: an empty target"
    );
}

fn bad(formatter: &Formatter, record: Value) -> (Reason, Option<String>, String) {
    let err = formatter
        .format(&fields(record), vec![], origin(9), &tokenizer())
        .unwrap_err();
    assert_eq!((err.location.row, err.location.row_group), (9, 2));
    (err.reason, err.location.column, err.detail)
}

#[test]
fn bad_values_name_their_column() {
    let f = vqa(64, OverLength::Truncate);
    let column = |c: &str| Some(c.to_string());
    let (reason, col, _) = bad(&f, json!({"question": "what colour?"}));
    assert_eq!((reason, col), (Reason::MissingColumn, column("answer")));
    let (reason, col, _) = bad(&f, json!({"question": null, "answer": "red"}));
    assert_eq!((reason, col), (Reason::NullValue, column("question")));
    for wrong in [json!(["red"]), json!({"text": "red"})] {
        let (reason, col, detail) = bad(&f, json!({"question": "what?", "answer": wrong}));
        assert_eq!((reason, col), (Reason::WrongType, column("answer")));
        assert!(
            detail.contains("red"),
            "the detail shows the value: {detail}"
        );
    }

    let f = Formatter::new(config("detect", "{box:loc}", 64, OverLength::Skip)).unwrap();
    for malformed in [
        json!([0.1, 0.2, 0.3]),
        json!([0.1, 0.2, 0.3, "0.4"]),
        json!({"y0": 0.1, "x0": 0.2, "y1": 0.3}),
        json!("0.1 0.2 0.3 0.4"),
        json!([]),
        json!([[0, 0, 1, 1], [0, 0, 1]]),
    ] {
        let (reason, col, _) = bad(&f, json!({ "box": malformed }));
        assert_eq!(
            (reason, col),
            (Reason::BadTemplateValue, column("box")),
            "{malformed}"
        );
    }
    let (reason, _, _) = bad(&f, json!({"box": null}));
    assert_eq!(reason, Reason::NullValue);

    let f = Formatter::new(config(
        "detect",
        "{objects:detections}",
        64,
        OverLength::Skip,
    ))
    .unwrap();
    for malformed in [
        json!({"box": [0, 0, 1, 1], "label": "cat"}),
        json!([{"box": [0, 0, 1, 1]}]),
        json!([{"box": [0, 0, 1, 1], "label": 3}]),
        json!([{"box": [0, 0, 1], "label": "cat"}]),
        json!([[0, 0, 1, 1]]),
    ] {
        let (reason, col, _) = bad(&f, json!({ "objects": malformed }));
        assert_eq!(
            (reason, col),
            (Reason::BadTemplateValue, column("objects")),
            "{malformed}"
        );
    }
}

#[test]
fn plain_values_print_numbers_and_keep_literal_braces() {
    let tok = tokenizer();
    let f = Formatter::new(config("{{what}} is {n}", "{x}", 64, OverLength::Skip)).unwrap();
    let ex = f
        .format(&fields(json!({"n": 3, "x": 2.5})), vec![], origin(0), &tok)
        .unwrap();
    let mut expected = vec![2];
    expected.extend(tok.encode("{what} is 3\n2.5").unwrap());
    expected.push(1);
    assert_eq!(ex.tokens, expected);
    assert_eq!(
        tok.decode(&ex.tokens).unwrap(),
        "<bos> { what } is 3 \n 2 . 5 <eos>"
    );
}

#[test]
fn bad_templates_and_settings_are_config_errors() {
    for (prefix, message) in [
        ("answer {question", "never closed"),
        ("answer question}", "without a matching"),
        ("answer {}", "empty field"),
        ("answer {a{b}", "never closed"),
        ("answer {question:bbox}", "unknown format"),
    ] {
        let err = Formatter::new(config(prefix, "{answer}", 64, OverLength::Skip)).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Template {
                    which: "prefix",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(message), "{prefix}: {err}");
    }
    let err = Formatter::new(FormatConfig {
        resolution: 30,
        ..config("a", "b", 64, OverLength::Skip)
    });
    assert_eq!(
        err.unwrap_err(),
        FormatError::Resolution {
            resolution: 30,
            patch: 14
        }
    );
    let err = Formatter::new(config("a", "b", 2, OverLength::Skip));
    assert_eq!(err.unwrap_err(), FormatError::TextLen(2));

    let f = Formatter::new(FormatConfig {
        resolution: 224,
        ..config("a", "b", 8, OverLength::Skip)
    })
    .unwrap();
    assert_eq!(f.tokens_per_image(), 256);
    let f = Formatter::new(FormatConfig {
        resolution: 896,
        ..config("a", "b", 8, OverLength::Skip)
    })
    .unwrap();
    assert_eq!(f.tokens_per_image(), 4096);
}

#[test]
fn examples_feed_the_packer_unchanged() {
    let tok = tokenizer();
    let f = vqa(16, OverLength::Truncate);
    let record = fields(json!({"question": "what colour is the circle?", "answer": "red"}));
    let ex: Example = f
        .format(&record, vec![image(160)], origin(1), &tok)
        .unwrap();
    let cfg = PackConfig {
        examples: 2,
        seq_len: 20,
        max_images_per_row: 1,
        packing: false,
        resolution: 28,
        tokens_per_image: f.tokens_per_image(),
        pad_id: tok.special().pad,
    };
    let mut packer = Packer::new(cfg).unwrap();
    packer.push(ex.clone()).unwrap();
    let b = packer.flush().unwrap();
    assert_eq!(b.tokens[..16], ex.tokens);
    assert!(b.tokens[16..].iter().all(|&t| t == 0));
    assert_eq!(b.segments[0].origin, origin(1));
}
