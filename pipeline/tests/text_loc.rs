//! Location tokens: binning as the reference generator does it, rendering, and parsing back.

use pipeline::loc::{Detection, LocBox, bin, parse_detections, render_detections, unbin};

fn det(coords: [f64; 4], label: &str) -> Detection {
    let [y0, x0, y1, x1] = coords;
    Detection {
        bbox: LocBox { y0, x0, y1, x1 },
        label: label.into(),
    }
}

#[test]
fn bins_round_half_to_even_and_clamp() {
    assert_eq!((bin(0.0), bin(1.0)), (0, 1023));
    assert_eq!((bin(-0.2), bin(1.7)), (0, 1023));
    assert_eq!(bin(0.1), 102); // 102.3
    assert_eq!(bin(0.2), 205); // 204.6
    // Exact halves go to the even bin, as Python's round() in the reference data generator.
    assert_eq!(bin(0.5 / 1023.0), 0);
    assert_eq!(bin(1.5 / 1023.0), 2);
    assert_eq!(bin(2.5 / 1023.0), 2);
    assert_eq!(bin(0.5), 512); // 511.5
    for b in 0..1024 {
        assert_eq!(bin(unbin(b)), b);
    }
}

#[test]
fn renders_like_the_reference_dataset() {
    // make_dataset.py: f"<loc{a:04d}><loc{b:04d}><loc{c:04d}><loc{d:04d}> {lab}", joined by " ; ".
    let boxes = [
        det([0.0518, 0.0704, 0.2102, 0.1857], "coin"),
        det([0.0, 0.5, 1.0, 0.75], "cat"),
    ];
    assert_eq!(
        boxes[0].bbox.render(),
        "<loc0053><loc0072><loc0215><loc0190>"
    );
    assert_eq!(
        render_detections(&boxes),
        "<loc0053><loc0072><loc0215><loc0190> coin ; <loc0000><loc0512><loc1023><loc0767> cat"
    );
    assert_eq!(render_detections(&[]), "");
    assert_eq!(
        render_detections(&[det([0.0, 0.0, 1.0, 1.0], "")]),
        "<loc0000><loc0000><loc1023><loc1023>"
    );
}

#[test]
fn round_trips() {
    // Text -> detections -> text is exact.
    let text = "<loc0053><loc0072><loc0215><loc0190> coin ; <loc0001><loc0999><loc1023><loc0000> a red cat";
    let parsed = parse_detections(text);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1].label, "a red cat");
    assert_eq!(
        parsed[1].bbox,
        LocBox {
            y0: 1.0 / 1023.0,
            x0: 999.0 / 1023.0,
            y1: 1.0,
            x1: 0.0
        }
    );
    assert_eq!(render_detections(&parsed), text);

    // Coordinates -> text -> coordinates is within half a bin.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let boxes: Vec<Detection> = (0..200)
        .map(|i| det([next(), next(), next(), next()], &format!("thing {i}")))
        .collect();
    let back = parse_detections(&render_detections(&boxes));
    assert_eq!(back.len(), boxes.len());
    for (a, b) in boxes.iter().zip(&back) {
        assert_eq!(a.label, b.label);
        for (u, v) in a.bbox.coords().iter().zip(b.bbox.coords()) {
            assert!((u - v).abs() <= 0.5 / 1023.0 + 1e-12, "{u} -> {v}");
        }
    }
}

#[test]
fn malformed_parts_are_skipped() {
    let ok = "<loc0001><loc0002><loc0003><loc0004> dog";
    let cases = [
        "",
        "no boxes here",
        "<loc0001><loc0002><loc0003> three",
        "<loc0001><loc0002><loc0003><loc1024> out of range",
        "<loc0001><loc0002><loc0003><loc004> short",
        "<loc0001><loc0002><loc0003><locabcd> letters",
        "<loc0001><loc0002><loc0003><loc+123> sign",
        "<loc0001><loc0002><loc0003><loc0004><loc0005> five",
        "<loc0001><loc0002> <loc0003><loc0004> spaced",
        "label first <loc0001><loc0002><loc0003><loc0004>",
        "<loc0001><loc0002><loc0003><loc0004",
        "<loc0001><loc0002><loc0003><loc00é4>",
    ];
    for bad in cases {
        assert_eq!(parse_detections(bad), [], "{bad:?}");
        // A malformed part does not spoil its neighbours.
        let mixed = format!("{ok} ; {bad} ; {ok}");
        let parsed = parse_detections(&mixed);
        assert_eq!(parsed.len(), 2, "{mixed:?}");
        assert!(
            parsed
                .iter()
                .all(|d| d.label == "dog" && d.bbox.y0 == 1.0 / 1023.0)
        );
    }
    // Generated text often stops mid-way or runs on: keep what is whole.
    let parsed = parse_detections("<loc0010><loc0020><loc0030><loc0040> cat ; <loc0010><loc00");
    assert_eq!(
        parsed,
        [det(
            [10.0 / 1023.0, 20.0 / 1023.0, 30.0 / 1023.0, 40.0 / 1023.0],
            "cat"
        )]
    );
    let parsed = parse_detections("  <loc0010><loc0020><loc0030><loc0040>   cat  <eos>");
    assert_eq!(parsed[0].label, "cat  <eos>");
}
