//! Sources: every image layout, globs and folders, cursors that resume, sharding, and shards
//! served over HTTP with range requests by a real server on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use pipeline::Reason;
use pipeline::source::{
    Cursor, FetchConfig, Fetcher, OpenSource, Reader, ShardSpec, SourceConfig, SourceItem,
};

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([seed, x as u8 * 30, y as u8 * 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn hf_image_struct(bytes: Vec<Option<Vec<u8>>>, paths: Vec<Option<String>>) -> StructArray {
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let bytes: BinaryArray = bytes.iter().map(|b| b.as_deref()).collect();
    let paths: StringArray = paths.iter().map(|p| p.as_deref()).collect();
    StructArray::new(
        fields,
        vec![Arc::new(bytes) as ArrayRef, Arc::new(paths)],
        None,
    )
}

fn write_shard(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn text(values: impl IntoIterator<Item = String>) -> ArrayRef {
    Arc::new(values.into_iter().map(Some).collect::<StringArray>())
}

/// A row read (or skipped) and the cursor after it.
struct Item {
    item: Result<pipeline::Record, pipeline::BadInput>,
    after: Cursor,
}

/// Reads a source to its end; epoch ends are checked to follow each epoch's last row.
fn read_all(config: SourceConfig, shard: ShardSpec, start: Cursor) -> Vec<Item> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let source = Arc::new(OpenSource::open(config).await.unwrap());
        let reader = Reader {
            source,
            text_columns: vec![("text".into(), "text".into())],
            filter: None,
            shard,
            seed: 5,
            fetcher: Fetcher::new(FetchConfig {
                timeout_secs: 2.0,
                retries: 1,
                concurrency: 4,
            }),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(reader.run(start, tx));
        let mut items: Vec<Item> = Vec::new();
        while let Some(item) = rx.recv().await {
            match item {
                SourceItem::Row { item, after } => items.push(Item { item, after }),
                SourceItem::EpochEnd { after } => {
                    let last = items.last_mut().expect("an epoch has rows");
                    assert_eq!(after.epoch, last.after.epoch + 1);
                    // Resuming from the end of an epoch starts the next one.
                    last.after = after;
                }
            }
        }
        items
    })
}

fn texts(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| match &i.item {
            Ok(r) => r.fields["text"].as_str().unwrap().to_string(),
            Err(b) => format!("bad:{}", b.reason),
        })
        .collect()
}

fn one_epoch(data: &str) -> SourceConfig {
    SourceConfig {
        epochs: Some(1),
        shuffle: false,
        ..SourceConfig::new([data])
    }
}

#[test]
fn hf_struct_binary_path_and_list_layouts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    std::fs::write(dir.path().join("img/a.png"), png(7)).unwrap();
    let n = 4;
    let hf = hf_image_struct(
        vec![Some(png(1)), None, Some(png(3)), None],
        vec![
            None,
            Some("img/a.png".into()),
            Some("ignored-when-bytes".into()),
            Some("img/missing.png".into()),
        ],
    );
    let binary: BinaryArray = (0..n)
        .map(|i| Some(png(i as u8)))
        .collect::<Vec<_>>()
        .iter()
        .map(|b| b.as_deref())
        .collect();
    let paths = text((0..n).map(|_| "img/a.png".to_string()));
    let item = Arc::new(Field::new_list_field(DataType::Binary, true));
    let list_values: BinaryArray = (0..2 * n)
        .map(|i| Some(png(i as u8)))
        .collect::<Vec<_>>()
        .iter()
        .map(|b| b.as_deref())
        .collect();
    let list = ListArray::new(
        item,
        OffsetBuffer::from_lengths(vec![2; n]),
        Arc::new(list_values),
        None,
    );
    write_shard(
        &dir.path().join("s.parquet"),
        vec![
            ("text", text((0..n).map(|i| format!("row{i}")))),
            ("hf", Arc::new(hf)),
            ("raw", Arc::new(binary)),
            ("rel", paths),
            ("many", Arc::new(list)),
        ],
        3,
    );
    let mut config = one_epoch(dir.path().to_str().unwrap());
    config.image_columns = vec!["hf".into(), "raw".into(), "rel".into(), "many".into()];
    let items = read_all(config, ShardSpec::default(), Cursor::default());
    assert_eq!(texts(&items), ["row0", "row1", "row2", "bad:missing_file"]);
    let row1 = items[1].item.as_ref().unwrap();
    assert_eq!(row1.images.len(), 5, "hf + raw + rel + two list items");
    assert_eq!(
        row1.images[0].bytes,
        png(7),
        "the struct's path is read beside the shard"
    );
    assert_eq!(row1.images[1].bytes, png(1));
    assert_eq!(row1.images[3].bytes, png(2));
    assert_eq!(row1.images[4].bytes, png(3));
    assert_eq!(
        items[2].item.as_ref().unwrap().images[0].bytes,
        png(3),
        "bytes win over path"
    );
    let bad = items[3].item.as_ref().unwrap_err();
    assert_eq!(
        (
            bad.location.row_group,
            bad.location.row,
            bad.location.column.as_deref()
        ),
        (1, 0, Some("hf"))
    );
}

#[test]
fn nulls_wrong_types_and_missing_columns_are_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let images: BinaryArray = vec![Some(png(0).as_slice()), None, Some(&[1, 2][..])]
        .into_iter()
        .collect();
    let numbers: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]));
    write_shard(
        &dir.path().join("a.parquet"),
        vec![
            ("text", text(["x", "y", "z"].map(String::from))),
            ("image", Arc::new(images)),
            ("n", numbers),
        ],
        10,
    );
    let mut config = one_epoch(dir.path().join("a.parquet").to_str().unwrap());
    config.image_columns = vec!["image".into()];
    let items = read_all(config.clone(), ShardSpec::default(), Cursor::default());
    assert_eq!(texts(&items), ["x", "bad:null_value", "z"]);
    config.image_columns = vec!["n".into()];
    assert_eq!(
        texts(&read_all(
            config.clone(),
            ShardSpec::default(),
            Cursor::default()
        )),
        ["bad:wrong_type"; 3]
    );
    config.image_columns = vec!["nope".into()];
    let items = read_all(config, ShardSpec::default(), Cursor::default());
    assert_eq!(texts(&items), ["bad:missing_column"; 3]);
    assert_eq!(
        items[0]
            .item
            .as_ref()
            .unwrap_err()
            .location
            .column
            .as_deref(),
        Some("nope")
    );
}

fn numbered_shards(dir: &Path, shards: usize, rows: usize, per_group: usize) {
    for s in 0..shards {
        let images: BinaryArray = (0..rows).map(|_| Some(&b"x"[..])).collect();
        write_shard(
            &dir.join(format!("train-{s:02}.parquet")),
            vec![
                ("text", text((0..rows).map(|r| format!("{s}/{r}")))),
                ("image", Arc::new(images)),
            ],
            per_group,
        );
    }
}

#[test]
fn globs_cursors_and_sharding() {
    let dir = tempfile::tempdir().unwrap();
    numbered_shards(dir.path(), 3, 10, 4);
    std::fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
    let glob = format!("{}/train-*.parquet", dir.path().display());
    let config = SourceConfig {
        epochs: Some(2),
        ..SourceConfig::new([glob.as_str()])
    };
    let all = read_all(config.clone(), ShardSpec::default(), Cursor::default());
    assert_eq!(all.len(), 60, "two epochs of 30 rows");
    let (first, second) = (texts(&all[..30]), texts(&all[30..]));
    let mut sorted = first.clone();
    sorted.sort();
    let mut expected: Vec<String> = (0..3)
        .flat_map(|s| (0..10).map(move |r| format!("{s}/{r}")))
        .collect();
    expected.sort();
    assert_eq!(sorted, expected, "an epoch visits every row once");
    assert_ne!(first, second, "the second epoch is reshuffled");

    // Resuming from any item's cursor yields exactly the items after it.
    for k in [0, 1, 7, 29, 30, 41] {
        let resumed = read_all(config.clone(), ShardSpec::default(), all[k].after);
        assert_eq!(
            texts(&resumed),
            texts(&all[k + 1..]),
            "resume after item {k}"
        );
    }

    // Three ranks split an epoch without overlap and cover it all.
    let mut union = Vec::new();
    for rank in 0..3 {
        let part = texts(&read_all(
            SourceConfig {
                epochs: Some(1),
                ..config.clone()
            },
            ShardSpec {
                rank,
                world_size: 3,
            },
            Cursor::default(),
        ));
        assert!(!part.is_empty());
        union.extend(part);
    }
    union.sort();
    assert_eq!(union, expected);
}

#[test]
fn truncated_and_missing_shards() {
    let dir = tempfile::tempdir().unwrap();
    numbered_shards(dir.path(), 2, 5, 5);
    let bytes = std::fs::read(dir.path().join("train-01.parquet")).unwrap();
    std::fs::write(
        dir.path().join("train-01.parquet"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let items = read_all(
        one_epoch(dir.path().to_str().unwrap()),
        ShardSpec::default(),
        Cursor::default(),
    );
    assert_eq!(items.len(), 5, "the good shard is read");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let source = runtime
        .block_on(OpenSource::open(one_epoch(dir.path().to_str().unwrap())))
        .unwrap();
    assert_eq!(
        source.unreadable.len(),
        1,
        "the truncated shard is reported, once"
    );
    let bad = &source.unreadable[0];
    assert_eq!(bad.reason, Reason::UnreadableParquet);
    assert!(bad.location.shard.ends_with("train-01.parquet"), "{bad}");

    let missing = runtime.block_on(OpenSource::open(one_epoch(&format!(
        "{}/nothing-*.parquet",
        dir.path().display()
    ))));
    let message = missing.err().unwrap().to_string();
    assert!(
        message.contains("nothing-*.parquet") && message.contains("no Parquet files"),
        "{message}"
    );
}

/// Serves `dir` over HTTP on loopback; tower-http's ServeDir answers HEAD and range requests.
fn serve(dir: &Path, runtime: &tokio::runtime::Runtime) -> SocketAddr {
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn shards_and_image_urls_over_http() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    for i in 0..3u8 {
        std::fs::write(dir.path().join(format!("img/{i}.png")), png(i)).unwrap();
    }
    let server = tokio::runtime::Runtime::new().unwrap();
    let addr = serve(dir.path(), &server);
    let urls = text((0..4).map(|i| format!("http://{addr}/img/{i}.png")));
    write_shard(
        &dir.path().join("remote.parquet"),
        vec![
            ("text", text((0..4).map(|i| format!("r{i}")))),
            ("url", urls),
        ],
        2,
    );

    let mut config = one_epoch(&format!("http://{addr}/remote.parquet"));
    config.image_columns = vec!["url".into()];
    let items = read_all(config, ShardSpec::default(), Cursor::default());
    assert_eq!(texts(&items), ["r0", "r1", "r2", "bad:unreachable_url"]);
    assert_eq!(items[2].item.as_ref().unwrap().images[0].bytes, png(2));
    assert!(
        items[0]
            .item
            .as_ref()
            .unwrap()
            .location
            .shard
            .starts_with("http://")
    );
    let detail = &items[3].item.as_ref().unwrap_err().detail;
    assert!(detail.contains("404"), "{detail}");
}
