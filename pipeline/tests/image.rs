//! Image decoding, orientation, resize and normalisation against what PIL (hence Hugging Face's
//! SiglipImageProcessor) produces. Fixtures and expectations: tests/fixtures/images/, made by
//! its make_fixtures.py.

use std::path::PathBuf;

use pipeline::Reason;
use pipeline::image::{
    ImageError, ImageProcessor, Rgb, RgbImage, draw_box, draw_point, pixels_len,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What PIL decodes `name` to (`expected/<name>.png`).
fn expected(name: &str) -> RgbImage {
    let bytes = std::fs::read(dir().join("expected").join(format!("{name}.png"))).unwrap();
    image::load_from_memory(&bytes).unwrap().into_rgb8()
}

/// Back from [-1, 1] to 8-bit levels, channels last, to compare with 8-bit images.
fn to_levels(chw: &[f32], side: u32) -> Vec<f32> {
    let plane = (side * side) as usize;
    (0..plane)
        .flat_map(|i| (0..3).map(move |c| ((chw[c * plane + i] + 1.0) * 127.5).round()))
        .collect()
}

struct Diff {
    max: f32,
    mean: f32,
}

fn diff(ours: &[f32], theirs: &[u8]) -> Diff {
    assert_eq!(ours.len(), theirs.len());
    let d: Vec<f32> = ours
        .iter()
        .zip(theirs)
        .map(|(a, &b)| (a - f32::from(b)).abs())
        .collect();
    Diff {
        max: d.iter().copied().fold(0.0, f32::max),
        mean: d.iter().sum::<f32>() / d.len() as f32,
    }
}

fn image_diff(ours: &RgbImage, theirs: &RgbImage) -> Diff {
    assert_eq!(ours.dimensions(), theirs.dimensions());
    let ours: Vec<f32> = ours.as_raw().iter().map(|&v| f32::from(v)).collect();
    diff(&ours, theirs.as_raw())
}

#[test]
fn every_colour_type_decodes_to_what_pil_gives() {
    // Lossless formats must match exactly, and image-webp matches libwebp too; zune-jpeg and
    // PIL's libjpeg-turbo differ by a level or so (measured: 1, 1 and 3).
    let cases = [
        ("grey.png", 0.0),
        ("bilevel.png", 0.0),
        ("rgba.png", 0.0),
        ("grey-alpha.png", 0.0),
        ("palette.png", 0.0),
        ("rgb16.png", 0.0),
        ("grey16.png", 0.0),
        ("rgb.webp", 0.0),
        ("rgba.webp", 0.0),
        ("palette.gif", 0.0),
        ("rgb.bmp", 0.0),
        ("rgb.tiff", 0.0),
        ("lossy.webp", 0.0),
        ("grey.jpg", 2.0),
        ("cmyk.jpg", 2.0),
        ("chelsea-progressive.jpg", 4.0),
    ];
    let mut processor = ImageProcessor::new();
    for (name, tolerance) in cases {
        let ours = processor
            .decode_rgb(&fixture(name), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = image_diff(&ours, &expected(name));
        assert!(
            d.max <= tolerance,
            "{name}: max difference {} over {tolerance}",
            d.max
        );
    }
}

/// The quadrants' colours of the upright 64x32 orientation fixtures, at their centres.
fn assert_upright(rgb: &RgbImage, name: &str) {
    assert_eq!(rgb.dimensions(), (64, 32), "{name}");
    let quadrants = [
        ((16, 8), [255, 0, 0]),
        ((48, 8), [0, 255, 0]),
        ((16, 24), [0, 0, 255]),
        ((48, 24), [255, 255, 0]),
    ];
    for ((x, y), colour) in quadrants {
        let px = rgb.get_pixel(x, y).0;
        let far = px
            .iter()
            .zip(colour)
            .any(|(&a, b)| (i32::from(a) - b).abs() > 40);
        assert!(
            !far,
            "{name}: pixel ({x}, {y}) is {px:?}, expected {colour:?}"
        );
    }
}

#[test]
fn every_exif_orientation_is_applied() {
    let mut processor = ImageProcessor::new();
    for n in 1..=8 {
        let name = format!("orientation-{n}.jpg");
        assert_upright(&processor.decode_rgb(&fixture(&name), None).unwrap(), &name);
    }
    // PNG's eXIf chunk and WebP's EXIF chunk too.
    for name in ["orientation-6.png", "orientation-6.webp"] {
        assert_upright(&processor.decode_rgb(&fixture(name), None).unwrap(), name);
    }
}

#[test]
fn process_orients_then_resizes() {
    // Orientation 8 is stored rotated and tall: upright, red is top left.
    let chw = ImageProcessor::new()
        .process(&fixture("orientation-8.jpg"), 32)
        .unwrap();
    let levels = to_levels(&chw, 32);
    let top_left = &levels[(4 * 32 + 4) * 3..][..3];
    assert!(
        top_left[0] > 215.0 && top_left[1] < 40.0 && top_left[2] < 40.0,
        "{top_left:?}"
    );
}

#[test]
fn resize_matches_pil_bicubic() {
    // coffee.png is 300x200: to 224 shrinks one axis and stretches the other; to 64, both shrink.
    let mut processor = ImageProcessor::new();
    for side in [224, 64] {
        let chw = processor.process(&fixture("coffee.png"), side).unwrap();
        let d = diff(
            &to_levels(&chw, side),
            expected(&format!("coffee.png.{side}")).as_raw(),
        );
        assert!(
            d.max <= 1.0 && d.mean < 0.01,
            "{side}: max {} mean {}",
            d.max,
            d.mean
        );
    }
}

#[test]
fn jpeg_photo_matches_pil_closely() {
    // zune-jpeg and PIL's libjpeg-turbo differ by a level here and there (measured: max 3, mean
    // 0.18). Decoding DCT-scaled to 256 filters differently from bicubic 512 -> 224 (30, 1.27).
    let (max, mean) = if cfg!(feature = "turbojpeg") {
        (40.0, 2.0)
    } else {
        (4.0, 0.3)
    };
    let chw = ImageProcessor::new()
        .process(&fixture("astronaut.jpg"), 224)
        .unwrap();
    let d = diff(
        &to_levels(&chw, 224),
        expected("astronaut.jpg.224").as_raw(),
    );
    assert!(
        d.max <= max && d.mean < mean,
        "max {} mean {}",
        d.max,
        d.mean
    );
}

#[test]
fn output_is_channels_first_in_minus_one_one() {
    let mut processor = ImageProcessor::new();
    for (name, side) in [
        ("astronaut.jpg", 224),
        ("coffee.png", 448),
        ("orientation-1.jpg", 14),
    ] {
        let chw = processor.process(&fixture(name), side).unwrap();
        assert_eq!(chw.len(), pixels_len(side));
        assert!(chw.iter().all(|v| (-1.0..=1.0).contains(v)), "{name}");
        assert!(
            chw.iter().any(|&v| v < -0.5) && chw.iter().any(|&v| v > 0.5),
            "{name}: no contrast"
        );
    }
    // Grey comes out as three equal planes.
    let chw = processor.process(&fixture("grey.jpg"), 16).unwrap();
    let (r, gb) = chw.split_at(256);
    assert!(gb.chunks(256).all(|plane| plane == r));
    // The 8-bit square image that batches are assembled from normalises to the same values.
    let square = processor.square(&fixture("grey.jpg"), 16).unwrap();
    assert_eq!(square.side(), 16);
    assert_eq!(square.normalised(), chw);
}

#[test]
fn decode_then_resize_equals_process() {
    let mut processor = ImageProcessor::new();
    let bytes = fixture("coffee.png");
    let rgb = processor.decode_rgb(&bytes, Some(224)).unwrap();
    assert_eq!(
        processor.resize(&rgb, 224).unwrap().normalised(),
        processor.process(&bytes, 224).unwrap()
    );
}

#[test]
fn errors_say_corrupt_or_unsupported() {
    let mut processor = ImageProcessor::new();
    let mut png = fixture("coffee.png");
    let middle = png.len() / 2;
    png[middle] ^= 0x10; // inside the image data: its checksum no longer matches
    let cases = [
        (
            "truncated.jpg",
            fixture("truncated.jpg"),
            Reason::CorruptImage,
        ),
        (
            "truncated.png",
            fixture("truncated.png"),
            Reason::CorruptImage,
        ),
        (
            "JPEG headers only",
            fixture("astronaut.jpg")[..600].to_vec(),
            Reason::CorruptImage,
        ),
        ("PNG with a flipped bit", png, Reason::CorruptImage),
        (
            "garbage.bin",
            fixture("garbage.bin"),
            Reason::UnsupportedImageFormat,
        ),
        (
            "unsupported.ppm",
            fixture("unsupported.ppm"),
            Reason::UnsupportedImageFormat,
        ),
        ("empty", Vec::new(), Reason::UnsupportedImageFormat),
    ];
    for (name, bytes, reason) in cases {
        let error = processor.process(&bytes, 32).map(drop).expect_err(name);
        assert_eq!(error.reason(), reason, "{name}: {error}");
    }
    let error = ImageProcessor::new()
        .with_max_pixels(1000)
        .process(&fixture("coffee.png"), 32)
        .unwrap_err();
    assert!(
        matches!(
            error,
            ImageError::TooLarge {
                width: 300,
                height: 200,
                limit: 1000
            }
        ),
        "{error}"
    );
    assert_eq!(error.reason(), Reason::UnsupportedImageFormat);
}

#[test]
fn damaged_bytes_never_panic() {
    // Every fixture truncated at many lengths and with bytes flipped (a fixed pseudo-random
    // walk): each must decode or fail with an error, never panic, and never reach the guard
    // that turns a codec's panic into an error (that would be a codec bug worth knowing).
    let mut processor = ImageProcessor::new();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut tried = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py" || e == "md") || path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut variants: Vec<Vec<u8>> = (0..24)
            .map(|k| bytes[..bytes.len() * k / 24].to_vec())
            .collect();
        for _ in 0..40 {
            let mut flipped = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                flipped[at] ^= 1 << (next() % 8);
            }
            variants.push(flipped);
        }
        for variant in variants {
            for result in [
                processor.process(&variant, 24).map(drop),
                processor.decode_rgb(&variant, Some(8)).map(drop),
            ] {
                if let Err(ImageError::Corrupt(message)) = &result {
                    assert!(
                        !message.contains("panicked"),
                        "{}: {message}",
                        path.display()
                    );
                }
                tried += 1;
            }
        }
    }
    assert!(tried > 1000, "only {tried} variants");
}

#[test]
fn min_side_hint_is_kept() {
    // 512x512: libjpeg-turbo decodes at 2/8 (128) for a hint of 100; `image` at full size.
    let rgb = ImageProcessor::new()
        .decode_rgb(&fixture("astronaut.jpg"), Some(100))
        .unwrap();
    let expected_side = if cfg!(feature = "turbojpeg") {
        128
    } else {
        512
    };
    assert_eq!(rgb.dimensions(), (expected_side, expected_side));
}

#[cfg(feature = "turbojpeg")]
#[test]
fn dct_scaled_decode_agrees_with_full_decode() {
    // Measured: max 36, mean 1.19 (astronaut.jpg, 512 -> 256 at 4/8).
    let mut processor = ImageProcessor::new();
    for name in ["astronaut.jpg", "chelsea-progressive.jpg"] {
        let bytes = fixture(name);
        let full = processor.decode_rgb(&bytes, None).unwrap();
        let side = full.width().min(full.height()) / 2;
        let scaled = processor.process(&bytes, side).unwrap();
        let reference = processor.resize(&full, side).unwrap();
        let d = diff(&to_levels(&scaled, side), reference.rgb());
        assert!(
            d.max <= 48.0 && d.mean < 2.0,
            "{name}: max {} mean {}",
            d.max,
            d.mean
        );
    }
    // CMYK through libjpeg-turbo (CMYK out, converted here) matches PIL too.
    let d = image_diff(
        &processor.decode_rgb(&fixture("cmyk.jpg"), None).unwrap(),
        &expected("cmyk.jpg"),
    );
    assert!(d.max <= 1.0, "cmyk: {}", d.max);
}

#[test]
fn boxes_and_points_are_drawn_in_normalised_coordinates() {
    let white = Rgb([255, 255, 255]);
    let red = Rgb([255, 0, 0]);
    let mut rgb = RgbImage::from_pixel(100, 50, white);
    // Lines 2% thick: 2 pixels across on the 100-wide axis, 1 on the 50-high one.
    draw_box(&mut rgb, [0.2, 0.1, 0.8, 0.9], red, 0.02);
    for (x, y) in [(50, 10), (10, 25), (11, 25), (89, 25), (88, 25), (50, 39)] {
        assert_eq!(*rgb.get_pixel(x, y), red, "({x}, {y})");
    }
    for (x, y) in [
        (50, 11),
        (12, 25),
        (87, 25),
        (50, 25),
        (5, 5),
        (95, 45),
        (50, 40),
    ] {
        assert_eq!(*rgb.get_pixel(x, y), white, "({x}, {y})");
    }

    let mut rgb = RgbImage::from_pixel(100, 50, white);
    draw_point(&mut rgb, [0.5, 0.25], red, 0.1); // radius 10 across, 5 down
    assert_eq!(*rgb.get_pixel(25, 25), red);
    assert_eq!(*rgb.get_pixel(33, 25), red);
    assert_eq!(*rgb.get_pixel(25, 28), red);
    assert_eq!(*rgb.get_pixel(37, 25), white);
    assert_eq!(*rgb.get_pixel(25, 31), white);

    // Out of range, reversed or NaN coordinates clip; they never index outside the image.
    let mut rgb = RgbImage::from_pixel(10, 10, white);
    draw_box(&mut rgb, [1.5, -3.0, -1.0, f32::NAN], red, 5.0);
    draw_box(&mut rgb, [1.0, 1.0, 1.0, 1.0], red, 0.0);
    draw_point(&mut rgb, [f32::NAN, 2.0], red, f32::INFINITY);
    draw_point(&mut rgb, [-1.0, 1.0], red, -1.0);
}

#[test]
fn drawn_prompts_survive_the_resize() {
    let mut processor = ImageProcessor::new();
    let mut rgb = processor
        .decode_rgb(&fixture("coffee.png"), Some(64))
        .unwrap();
    draw_box(&mut rgb, [0.25, 0.25, 0.75, 0.75], Rgb([0, 0, 255]), 0.05);
    let levels = to_levels(&processor.resize(&rgb, 64).unwrap().normalised(), 64);
    // The top edge runs along rows 16-19 of 64, from column 16 to 47.
    let px = &levels[(17 * 64 + 32) * 3..][..3];
    assert!(px[0] < 30.0 && px[1] < 30.0 && px[2] > 225.0, "{px:?}");
}
