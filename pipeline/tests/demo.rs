//! The demo dataset: byte-identical for the same arguments (whatever the thread count), and
//! what each row says is true of the scene the generator drew: answers, boxes and pixels are
//! checked against the scene description, not against the generator's own strings.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use indicatif::ProgressBar;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pipeline::demo::{self, DemoConfig, DemoImageFormat, DemoSplit, Scene, Shape};
use pipeline::writer::Manifest;

fn small(seed: u64) -> DemoConfig {
    DemoConfig {
        seed,
        train_rows: 150,
        test_rows: 40,
        pair_train_rows: 30,
        pair_test_rows: 10,
        image_size: 48,
        format: DemoImageFormat::Jpeg { quality: 90 },
        rows_per_row_group: 16,
        rows_per_shard: 64,
    }
}

fn generate(dir: &Path, config: &DemoConfig, threads: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| demo::generate_with_progress(dir, config, &ProgressBar::hidden()))
        .unwrap();
}

/// Every file under `dir` by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(name, fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn read_split(dir: &Path, split: &str) -> Vec<RecordBatch> {
    let manifest = Manifest::read(dir).unwrap();
    manifest.verify(dir).unwrap();
    let mut batches = Vec::new();
    for path in manifest.shard_paths(dir, split) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    batch
        .column_by_name(column)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

fn shape_named(name: &str) -> Shape {
    Shape::ALL
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("no shape {name:?}"))
}

/// The answer the scene implies, worked out here from the objects alone.
fn expected_answer(scene: &Scene, question: &str) -> String {
    let words: Vec<&str> = question.trim_end_matches('?').split(' ').collect();
    match words.as_slice() {
        ["what", "colour", "is", "the", shape] => {
            let matching: Vec<_> = scene
                .objects
                .iter()
                .filter(|o| o.shape.name() == *shape)
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "{question:?} asked of a scene without exactly one {shape}"
            );
            matching[0].colour.name().to_string()
        }
        ["how", "many", plural, "are", "there"] => {
            let shape = plural.strip_suffix('s').unwrap();
            scene
                .objects
                .iter()
                .filter(|o| o.shape.name() == shape)
                .count()
                .to_string()
        }
        ["where", "is", "the", colour, shape] => {
            let matching: Vec<_> = scene
                .objects
                .iter()
                .filter(|o| o.shape.name() == *shape && o.colour.name() == *colour)
                .collect();
            assert_eq!(matching.len(), 1, "{question:?} must name one object");
            ["left", "middle", "right"][(matching[0].cx * 3.0).floor() as usize].to_string()
        }
        _ => panic!("unexpected question {question:?}"),
    }
}

#[test]
fn the_same_arguments_give_the_same_bytes_on_any_number_of_threads() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(a.path(), &small(7), 1);
    generate(b.path(), &small(7), 3);
    generate(c.path(), &small(8), 2);
    let (a, b, c) = (files(a.path()), files(b.path()), files(c.path()));
    assert!(
        a.contains_key("scenes/train-00002.parquet") && a.contains_key("pairs/test-00000.parquet")
    );
    assert!(a.contains_key("README.md") && a.contains_key("scenes/manifest.json"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs between runs");
    }
    assert_ne!(
        a["scenes/train-00000.parquet"], c["scenes/train-00000.parquet"],
        "another seed, other data"
    );
}

#[test]
fn scene_rows_say_what_the_scene_shows() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(3);
    generate(dir.path(), &config, 2);
    let scenes = dir.path().join("scenes");
    let manifest = Manifest::read(&scenes).unwrap();
    assert_eq!(manifest.splits["train"].rows, 150);
    assert_eq!(
        manifest.splits["train"]
            .shards
            .iter()
            .map(|s| s.rows)
            .collect::<Vec<_>>(),
        [64, 64, 22]
    );

    let mut kinds = HashSet::new();
    let mut index = 0;
    for batch in read_split(&scenes, "train") {
        let images = batch.column_by_name("image").unwrap().as_struct();
        let bytes = images.column_by_name("bytes").unwrap().as_binary::<i32>();
        let (captions, questions, answers, labels) = (
            strings(&batch, "caption"),
            strings(&batch, "question"),
            strings(&batch, "answer"),
            strings(&batch, "detect_label"),
        );
        let objects = batch.column_by_name("objects").unwrap().as_list::<i32>();
        for r in 0..batch.num_rows() {
            let scene = demo::scene_at(config.seed, DemoSplit::Train, index);
            assert!((1..=3).contains(&scene.objects.len()));

            // Caption: the objects left to right.
            let mut ordered = scene.objects.clone();
            ordered.sort_by(|a, b| a.cx.total_cmp(&b.cx));
            let phrases: Vec<String> = ordered
                .iter()
                .map(|o| format!("a {} {}", o.colour.name(), o.shape.name()))
                .collect();
            assert_eq!(captions[r], phrases.join(" left of "), "row {index}");

            assert_eq!(
                answers[r],
                expected_answer(&scene, &questions[r]),
                "row {index}: {:?}",
                questions[r]
            );
            kinds.insert(questions[r].split(' ').next().unwrap().to_string());

            // Detection: exactly the boxes of the label's shape, inside the image.
            let label = shape_named(&labels[r]);
            let boxes = objects.value(r);
            let boxes = boxes.as_struct();
            let corner = |name: &str| {
                boxes
                    .column_by_name(name)
                    .unwrap()
                    .as_primitive::<Float64Type>()
                    .clone()
            };
            let (y0, x0, y1, x1) = (corner("y0"), corner("x0"), corner("y1"), corner("x1"));
            let box_labels: Vec<String> = boxes
                .column_by_name("label")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().into())
                .collect();
            let of_label: Vec<_> = ordered.iter().filter(|o| o.shape == label).collect();
            assert_eq!(boxes.len(), of_label.len(), "row {index}");
            for (k, object) in of_label.iter().enumerate() {
                let h = object.size / 2.0;
                assert_eq!(
                    [y0.value(k), x0.value(k), y1.value(k), x1.value(k)],
                    [object.cy - h, object.cx - h, object.cy + h, object.cx + h]
                );
                assert!(0.0 <= y0.value(k) && y0.value(k) < y1.value(k) && y1.value(k) <= 1.0);
                assert!(0.0 <= x0.value(k) && x0.value(k) < x1.value(k) && x1.value(k) <= 1.0);
                assert_eq!(box_labels[k], label.name());
            }

            // Pixels: each shape is drawn where the description puts it, in its colour.
            let image = image::load_from_memory(bytes.value(r)).unwrap().to_rgb8();
            assert_eq!(image.dimensions(), (config.image_size, config.image_size));
            for object in &scene.objects {
                // A point well inside every shape (for the triangle, below its centre).
                let side = f64::from(config.image_size);
                let (x, y) = (object.cx * side, (object.cy + object.size / 4.0) * side);
                let pixel = image.get_pixel(x as u32, y as u32).0;
                let distance: i32 = pixel
                    .iter()
                    .zip(object.colour.rgb())
                    .map(|(&p, c)| (i32::from(p) - i32::from(c)).abs())
                    .sum();
                assert!(distance < 90, "row {index}: {object:?} drawn as {pixel:?}");
            }
            index += 1;
        }
    }
    assert_eq!(index, 150);
    assert_eq!(
        kinds,
        HashSet::from(["what".into(), "how".into(), "where".into()]),
        "all question kinds"
    );
}

#[test]
fn pair_rows_compare_counts_and_test_rows_are_not_train_rows() {
    let dir = tempfile::tempdir().unwrap();
    let config = small(5);
    generate(dir.path(), &config, 2);
    let mut answers = HashSet::new();
    let mut index = 0;
    for batch in read_split(&dir.path().join("pairs"), "train") {
        let images = batch.column_by_name("images").unwrap().as_list::<i32>();
        let (questions, given) = (strings(&batch, "question"), strings(&batch, "answer"));
        for r in 0..batch.num_rows() {
            let (first, second, shape) = demo::pair_at(config.seed, DemoSplit::Train, index);
            assert_eq!(
                questions[r],
                format!("which image has more {}s?", shape.name())
            );
            let (a, b) = (first.count(shape), second.count(shape));
            assert_ne!(a, b, "row {index}");
            assert_eq!(
                given[r],
                if a > b { "first" } else { "second" },
                "row {index}"
            );
            answers.insert(given[r].clone());
            let pair = images.value(r);
            let bytes = pair
                .as_struct()
                .column_by_name("bytes")
                .unwrap()
                .as_binary::<i32>();
            assert_eq!(bytes.len(), 2);
            for image in bytes.iter() {
                let image = image::load_from_memory(image.unwrap()).unwrap();
                assert_eq!(
                    (image.width(), image.height()),
                    (config.image_size, config.image_size)
                );
            }
            index += 1;
        }
    }
    assert_eq!(index, 30);
    assert_eq!(answers.len(), 2, "both answers occur");

    let scenes = dir.path().join("scenes");
    let images = |split: &str| -> HashSet<Vec<u8>> {
        read_split(&scenes, split)
            .iter()
            .flat_map(|b| {
                let images = b.column_by_name("image").unwrap().as_struct();
                let bytes = images.column_by_name("bytes").unwrap().as_binary::<i32>();
                bytes
                    .iter()
                    .map(|v| v.unwrap().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (train, test) = (images("train"), images("test"));
    assert_eq!((train.len(), test.len()), (150, 40), "every image distinct");
    assert!(train.is_disjoint(&test));
    assert_ne!(
        demo::scene_at(5, DemoSplit::Train, 0),
        demo::scene_at(5, DemoSplit::Test, 0)
    );
}

#[test]
fn png_images_and_the_readme_describe_the_columns() {
    let dir = tempfile::tempdir().unwrap();
    let config = DemoConfig {
        format: DemoImageFormat::Png,
        train_rows: 5,
        test_rows: 2,
        ..small(1)
    };
    generate(dir.path(), &config, 1);
    let batch = &read_split(&dir.path().join("scenes"), "train")[0];
    let images = batch.column_by_name("image").unwrap().as_struct();
    let bytes = images.column_by_name("bytes").unwrap().as_binary::<i32>();
    assert!(bytes.value(0).starts_with(b"\x89PNG"));
    assert!(
        images
            .column_by_name("path")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .ends_with(".png")
    );
    let readme = fs::read_to_string(dir.path().join("README.md")).unwrap();
    for column in [
        "`image`",
        "`caption`",
        "`question`",
        "`answer`",
        "`detect_label`",
        "`objects`",
        "`images`",
    ] {
        assert!(readme.contains(column), "README lacks {column}");
    }
}
