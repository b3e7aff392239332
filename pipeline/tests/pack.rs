//! Packing invariants over random example streams: every batch keeps the contract, examples never
//! see each other, positions restart, loss falls only on suffix targets, image slots point at
//! image tokens, rows are filled first-fit, every batch but the last holds the configured number
//! of examples, and batches are contiguous runs of the stream.

use pipeline::image::SquareImage;
use pipeline::pack::{PackConfig, PackError, Packer};
use pipeline::{Batch, Example, Location};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const IMG: u32 = 9;
const BOS: u32 = 2;
const EOS: u32 = 1;
const SEP: u32 = 3;
const PAD: u32 = 0;
const RES: usize = 2;
const PIXELS: usize = 3 * RES * RES;

/// Example `index` of a stream: `images` images of `n` tokens, then `<bos>` prefix "\n" suffix
/// `<eos>`. Its image `i` holds `index` in its first bytes and `i` in the rest, so a batch's
/// images can be traced back.
fn example(
    index: usize,
    images: usize,
    n: usize,
    prefix: usize,
    suffix: usize,
    rng: &mut StdRng,
) -> Example {
    let mut tokens = vec![IMG; images * n];
    tokens.push(BOS);
    tokens.extend((0..prefix).map(|_| rng.random_range(10..1000)));
    tokens.push(SEP);
    let prefix_len = tokens.len();
    tokens.extend((0..suffix).map(|_| rng.random_range(10..1000)));
    tokens.push(EOS);
    Example {
        tokens,
        prefix_len,
        images: (0..images)
            .map(|i| {
                let mut rgb = vec![i as u8; PIXELS];
                rgb[..8].copy_from_slice(&(index as u64).to_le_bytes());
                SquareImage::new(RES as u32, rgb).unwrap()
            })
            .collect(),
        image_starts: (0..images).map(|i| i * n).collect(),
        task_id: (index % 3) as u16,
        origin: Location::new("shard", index / 100, index % 100),
        truncated: false,
    }
}

fn random_config(rng: &mut StdRng, packing: bool) -> PackConfig {
    let tokens_per_image = rng.random_range(1..=6);
    PackConfig {
        examples: rng.random_range(1..=6),
        seq_len: rng.random_range(24..=64),
        max_images_per_row: rng.random_range(1..=3),
        packing,
        resolution: RES,
        tokens_per_image,
        pad_id: PAD,
    }
}

/// A random stream of examples that each fit a row on their own.
fn random_stream(rng: &mut StdRng, c: &PackConfig, len: usize) -> Vec<Example> {
    (0..len)
        .map(|index| {
            let images = rng.random_range(0..=c.max_images_per_row.min(2));
            let room = c.seq_len - images * c.tokens_per_image - 3;
            let prefix = rng.random_range(0..=room.min(12));
            let cap = rng.random_range(1..=20);
            let suffix = rng.random_range(0..=(room - prefix).min(cap));
            example(index, images, c.tokens_per_image, prefix, suffix, rng)
        })
        .collect()
}

fn pack_all(c: PackConfig, stream: &[Example]) -> Vec<Batch> {
    let mut packer = Packer::new(c).unwrap();
    let mut batches = Vec::new();
    for (i, ex) in stream.iter().enumerate() {
        let before = packer.pending();
        match packer.push(ex.clone()).unwrap() {
            Some(batch) => {
                assert_eq!(
                    batch.segments.len(),
                    before,
                    "a batch holds everything pushed before"
                );
                assert_eq!(packer.pending(), 1, "example {i} opens the next batch");
                batches.push(batch);
            }
            None => assert_eq!(packer.pending(), before + 1),
        }
    }
    batches.extend(packer.flush());
    assert!(packer.flush().is_none());
    batches
}

/// Everything the contract promises about one batch, given the examples it holds (in order).
fn check_batch(b: &Batch, examples: &[&Example], c: &PackConfig) {
    b.validate().unwrap();
    assert_eq!(
        (b.seq_len, b.tokens_per_image),
        (c.seq_len, c.tokens_per_image)
    );
    assert_eq!(b.segments.len(), examples.len());
    assert!(examples.len() <= c.examples);
    // Rows are opened as needed: none is empty.
    for row in 0..b.rows as u32 {
        assert!(
            b.segments.iter().any(|s| s.row == row),
            "row {row} is empty"
        );
    }
    let at = |row: u32, t: usize| row as usize * c.seq_len + t;

    let mut covered = vec![false; b.rows * c.seq_len];
    for (seg, ex) in b.segments.iter().zip(examples) {
        assert_eq!(
            (seg.task_id, &seg.origin, seg.len as usize),
            (ex.task_id, &ex.origin, ex.len())
        );
        for t in 0..ex.len() {
            let i = at(seg.row, seg.start as usize + t);
            covered[i] = true;
            assert_eq!(b.tokens[i], ex.tokens[t]);
            assert_eq!(b.segment_ids[i], seg.id);
            assert_eq!(
                b.positions[i], t as u32,
                "positions restart at 0 per example"
            );
            assert_eq!(b.causal[i], t >= ex.prefix_len);
            // Loss only where the next token is a suffix token or <eos> of the same example.
            let target = t + 1 >= ex.prefix_len && t + 1 < ex.len();
            assert_eq!(b.loss_weights[i], if target { 1.0 } else { 0.0 });
        }
    }
    for (i, _) in covered.iter().enumerate().filter(|(_, c)| !**c) {
        assert_eq!(
            (b.tokens[i], b.segment_ids[i], b.positions[i]),
            (PAD, 0, 0),
            "padding at {i}"
        );
        assert!(!b.causal[i] && b.loss_weights[i] == 0.0);
    }
    let targets: usize = examples.iter().map(|ex| ex.len() - ex.prefix_len).sum();
    assert_eq!(b.target_tokens(), targets);

    // No attention across examples or into padding; the prefix-LM rule inside each example.
    let seg_of = |row: usize, t: usize| {
        b.segments.iter().zip(examples).find(|(s, _)| {
            s.row as usize == row && (s.start as usize..(s.start + s.len) as usize).contains(&t)
        })
    };
    for row in 0..b.rows {
        for i in 0..c.seq_len {
            for j in 0..c.seq_len {
                let expected = match (seg_of(row, i), seg_of(row, j)) {
                    (Some((si, ex)), Some((sj, _))) if si.id == sj.id => {
                        let (ti, tj) = (i - si.start as usize, j - si.start as usize);
                        tj <= ti || (ti < ex.prefix_len && tj < ex.prefix_len)
                    }
                    _ => false,
                };
                assert_eq!(b.attends(row, i, j), expected, "row {row}: {i} -> {j}");
            }
        }
    }

    // Image slots: one per image, on <image> tokens, in row-major order, pixels alongside.
    let images: usize = examples.iter().map(|ex| ex.images.len()).sum();
    assert_eq!(b.n_images(), images);
    assert!(
        b.image_slots
            .windows(2)
            .all(|w| (w[0].row, w[0].start) < (w[1].row, w[1].start))
    );
    for (k, slot) in b.image_slots.iter().enumerate() {
        let start = at(slot.row, slot.start as usize);
        assert!(
            b.tokens[start..start + c.tokens_per_image]
                .iter()
                .all(|&t| t == IMG)
        );
        let (seg, ex) = seg_of(slot.row as usize, slot.start as usize).unwrap();
        let which = ex
            .image_starts
            .iter()
            .position(|&s| s == (slot.start - seg.start) as usize)
            .unwrap();
        assert_eq!(b.image(k), ex.images[which].normalised().as_slice());
    }
    for row in 0..b.rows as u32 {
        let n = b.image_slots.iter().filter(|s| s.row == row).count();
        assert!(n <= c.max_images_per_row, "row {row} has {n} images");
    }
}

/// Replays placements: each example went to the first opened row with room at that moment (a new
/// row when none had room), and a batch was closed only once it held `c.examples` examples.
fn check_first_fit(batches: &[Batch], held: &[Vec<&Example>], c: &PackConfig) {
    let fits = |(tokens, images): (usize, usize), ex: &Example| {
        tokens + ex.len() <= c.seq_len && images + ex.images.len() <= c.max_images_per_row
    };
    for (k, (b, examples)) in batches.iter().zip(held).enumerate() {
        let mut used: Vec<(usize, usize)> = Vec::new();
        for (seg, ex) in b.segments.iter().zip(examples) {
            let first = used.iter().position(|&u| fits(u, ex)).unwrap_or_else(|| {
                used.push((0, 0));
                used.len() - 1
            });
            assert_eq!(
                first, seg.row as usize,
                "batch {k}: {} skipped an earlier row",
                seg.origin
            );
            assert_eq!(used[first].0, seg.start as usize);
            used[first].0 += ex.len();
            used[first].1 += ex.images.len();
        }
        assert_eq!(used.len(), b.rows, "batch {k}: rows opened");
        if held.get(k + 1).is_some() {
            assert_eq!(examples.len(), c.examples, "batch {k} was closed early");
        }
    }
}

/// The batches' examples, concatenated, are exactly the stream, in order.
fn check_contiguous<'a>(batches: &[Batch], stream: &'a [Example]) -> Vec<Vec<&'a Example>> {
    let mut next = 0;
    let mut per_batch = Vec::new();
    for b in batches {
        assert!(!b.segments.is_empty());
        let held: Vec<&Example> = stream[next..next + b.segments.len()].iter().collect();
        for (seg, ex) in b.segments.iter().zip(&held) {
            assert_eq!(
                seg.origin, ex.origin,
                "batches hold contiguous runs in stream order"
            );
        }
        next += held.len();
        per_batch.push(held);
    }
    assert_eq!(next, stream.len(), "every example is in some batch");
    per_batch
}

#[test]
fn packed_batches_keep_every_invariant() {
    let (mut packed, mut unpacked) = (0, 0);
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let c = random_config(&mut rng, true);
        let len = rng.random_range(1..60);
        let stream = random_stream(&mut rng, &c, len);
        let batches = pack_all(c, &stream);
        let held = check_contiguous(&batches, &stream);
        for (b, examples) in batches.iter().zip(&held) {
            check_batch(b, examples, &c);
        }
        check_first_fit(&batches, &held, &c);
        // Batches keep their number of examples; packing saves rows, never more than a row
        // per example.
        assert_eq!(
            batches.len(),
            stream.len().div_ceil(c.examples),
            "seed {seed}"
        );
        let rows: usize = batches.iter().map(|b| b.rows).sum();
        assert!(rows <= stream.len(), "seed {seed}");
        (packed, unpacked) = (packed + rows, unpacked + stream.len());
    }
    assert!(
        packed * 4 < unpacked * 3,
        "packing saves rows: {packed} vs {unpacked}"
    );
}

#[test]
fn unpacked_batches_hold_one_example_per_row() {
    for seed in 100..130 {
        let mut rng = StdRng::seed_from_u64(seed);
        let c = random_config(&mut rng, false);
        let len = rng.random_range(1..30);
        let stream = random_stream(&mut rng, &c, len);
        let batches = pack_all(c, &stream);
        assert_eq!(batches.len(), stream.len().div_ceil(c.examples));
        for (b, held) in batches.iter().zip(check_contiguous(&batches, &stream)) {
            check_batch(b, &held, &c);
            assert_eq!(b.rows, held.len());
            for (r, seg) in b.segments.iter().enumerate() {
                assert_eq!((seg.row as usize, seg.id, seg.start), (r, 1, 0));
            }
        }
    }
}

#[test]
fn images_per_row_cap_opens_new_rows() {
    let mut rng = StdRng::seed_from_u64(7);
    let c = PackConfig {
        examples: 4,
        seq_len: 100,
        max_images_per_row: 2,
        packing: true,
        resolution: RES,
        tokens_per_image: 4,
        pad_id: PAD,
    };
    // Five one-image examples of 10 tokens: tokens would fit one row, images do not.
    let stream: Vec<Example> = (0..5).map(|i| example(i, 1, 4, 2, 1, &mut rng)).collect();
    let batches = pack_all(c, &stream);
    let rows: Vec<Vec<u32>> = batches
        .iter()
        .map(|b| b.segments.iter().map(|s| s.row).collect())
        .collect();
    assert_eq!(rows, [vec![0, 0, 1, 1], vec![0]]);
    // Text-only examples are not held back by the cap.
    let mut packer = Packer::new(c).unwrap();
    for i in 0..2 {
        assert!(
            packer
                .push(example(i, 1, 4, 2, 1, &mut rng))
                .unwrap()
                .is_none()
        );
    }
    assert!(
        packer
            .push(example(2, 0, 4, 2, 1, &mut rng))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        packer
            .flush()
            .unwrap()
            .segments
            .iter()
            .map(|s| s.row)
            .collect::<Vec<_>>(),
        [0, 0, 0]
    );
}

#[test]
fn examples_that_cannot_fit_are_errors_not_panics() {
    let mut rng = StdRng::seed_from_u64(3);
    let c = PackConfig {
        examples: 4,
        seq_len: 16,
        max_images_per_row: 1,
        packing: true,
        resolution: RES,
        tokens_per_image: 2,
        pad_id: PAD,
    };
    let mut packer = Packer::new(c).unwrap();
    packer.push(example(0, 1, 2, 3, 3, &mut rng)).unwrap();

    let long = example(1, 0, 2, 8, 8, &mut rng);
    let err = packer.push(long).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::TooBig {
                len: 19,
                seq_len: 16,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("shard row group 0 row 1"), "{err}");
    let err = packer.push(example(2, 2, 2, 1, 1, &mut rng)).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::TooBig {
                images: 2,
                max_images: 1,
                ..
            }
        ),
        "{err}"
    );

    let mut wrong_pixels = example(3, 1, 2, 1, 1, &mut rng);
    let side = RES as u32 + 1;
    wrong_pixels.images[0] = SquareImage::new(side, vec![0; PIXELS * 9 / 4]).unwrap();
    assert!(matches!(
        packer.push(wrong_pixels).unwrap_err(),
        PackError::Malformed { .. }
    ));
    let mut image_in_suffix = example(4, 1, 2, 1, 1, &mut rng);
    image_in_suffix.image_starts[0] = 4;
    assert!(matches!(
        packer.push(image_in_suffix).unwrap_err(),
        PackError::Malformed { .. }
    ));

    // Rejected examples leave the packer as it was.
    assert_eq!(packer.pending(), 1);
    let b = packer.flush().unwrap();
    assert_eq!(b.segments.len(), 1);
    b.validate().unwrap();

    for bad in [
        PackConfig { examples: 0, ..c },
        PackConfig { seq_len: 0, ..c },
    ] {
        assert!(matches!(
            Packer::new(bad).unwrap_err(),
            PackError::Config(_)
        ));
    }
}

#[test]
fn a_full_batch_waits_for_the_next_example() {
    let mut rng = StdRng::seed_from_u64(11);
    let c = PackConfig {
        examples: 1,
        seq_len: 10,
        max_images_per_row: 1,
        packing: true,
        resolution: RES,
        tokens_per_image: 2,
        pad_id: 5,
    };
    let mut packer = Packer::new(c).unwrap();
    assert!(packer.flush().is_none());
    assert!(
        packer
            .push(example(0, 0, 2, 3, 3, &mut rng))
            .unwrap()
            .is_none()
    ); // 10 tokens: full
    let b = packer
        .push(example(1, 0, 2, 1, 1, &mut rng))
        .unwrap()
        .unwrap();
    assert_eq!(b.segments.len(), 1);
    assert_eq!(b.segments[0].origin, Location::new("shard", 0, 0));
    let last = packer.flush().unwrap();
    assert_eq!(last.segments[0].origin, Location::new("shard", 0, 1));
    assert_eq!(last.tokens[5..], [5; 5], "padding uses the configured id");
}
