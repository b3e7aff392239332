//! Measurements for `paliforge pipeline bench`: peak memory, and the decode-only floor on the
//! same images, so the pipeline's speed can be read against what decoding alone allows.

use std::time::Instant;

use mixtures::Mixture;
use rayon::prelude::*;

use crate::PipelineError;
use crate::image::ImageProcessor;
use crate::source::{
    Cursor, FetchConfig, Fetcher, OpenSource, Reader, ShardSpec, SourceConfig, SourceItem,
};

/// The process's peak resident memory (VmHWM), in MiB; 0 where /proc is not there.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU time (user and system, every thread) the process has used so far, in seconds; 0 where
/// the system does not say. Read before and after a run, it gives the run's CPU cost: what a
/// change to the work moves, where the wall time also counts cores left idle.
pub fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given, and returns 0 when it did.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: filled above (and all-zero was already a valid rusage).
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub struct DecodeOnly {
    pub images: usize,
    pub images_per_s: f64,
}

/// Decodes (to full-size RGB into a reused buffer, nothing else) the first `max_images` images
/// of the stage's first source with an image column, on `threads` workers (0: every core).
pub fn decode_only(
    mixture: &Mixture,
    stage: usize,
    threads: usize,
    max_images: usize,
) -> Result<DecodeOnly, PipelineError> {
    let weights = mixture.stage_weights(stage).unwrap_or_default();
    let source = weights
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(task, _)| &mixture.sources[&mixture.tasks[task].source])
        .find(|s| !s.image_columns.is_empty())
        .ok_or_else(|| PipelineError::Config("the stage reads no images".into()))?;
    let config = SourceConfig {
        image_columns: source.image_columns.clone(),
        epochs: Some(1),
        shuffle: false,
        ..SourceConfig::new(source.data.clone())
    };
    let images = read_images(config, max_images)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    let started = Instant::now();
    let decoded: usize = pool.install(|| {
        images
            .par_iter()
            .map_init(ImageProcessor::new, |p, bytes| {
                let decoded = p.decode_rgb(bytes, None).map(|rgb| p.recycle(rgb));
                usize::from(decoded.is_ok())
            })
            .sum()
    });
    let seconds = started.elapsed().as_secs_f64();
    Ok(DecodeOnly {
        images: decoded,
        images_per_s: decoded as f64 / seconds,
    })
}

fn read_images(
    config: SourceConfig,
    max_images: usize,
) -> Result<Vec<bytes::Bytes>, PipelineError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Config(e.to_string()))?;
    runtime.block_on(async {
        let source = std::sync::Arc::new(OpenSource::open(config).await?);
        let reader = Reader {
            source,
            text_columns: Vec::new(),
            filter: None,
            shard: ShardSpec::default(),
            seed: 0,
            fetcher: Fetcher::new(FetchConfig::default()),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(reader.run(Cursor::default(), tx));
        let mut images = Vec::new();
        while let Some(item) = rx.recv().await {
            if let SourceItem::Row {
                item: Ok(record), ..
            } = item
            {
                images.extend(record.images.into_iter().map(|i| i.bytes));
            }
            if images.len() >= max_images {
                break;
            }
        }
        drop(rx);
        let _ = task.await;
        images.truncate(max_images);
        Ok(images)
    })
}
