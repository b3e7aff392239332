//! Throughput of the image stage on JPEGs like the benchmark dataset's: run by hand (ignored).
//!
//! ```text
//! python3 pipeline/tests/fixtures/images/make_fixtures.py --bench /tmp/paliforge-bench 400
//! cargo test --release -p pipeline --test image_bench -- --ignored --nocapture
//! cargo test --release -p pipeline --features turbojpeg --test image_bench -- --ignored --nocapture
//! ```
//!
//! `PALIFORGE_BENCH_IMAGES` names another folder of JPEGs. For decode + resize to 224 +
//! normalise, and for decode alone, on 1 and 2 threads, it prints the wall-clock images/s (the
//! median of 5 passes) and the CPU time per image, read from the kernel's per-thread run time.
//! On a shared machine the wall figures drop while the CPU figures hold; `waited` is the share
//! of time the workers were runnable but not running.

use std::cell::RefCell;
use std::time::Instant;

use pipeline::image::ImageProcessor;
use rayon::prelude::*;

const RESOLUTION: u32 = 224;

thread_local! {
    static PROCESSOR: RefCell<ImageProcessor> = RefCell::new(ImageProcessor::new());
}

/// (on-CPU, waiting to run) nanoseconds of all this process's threads.
fn scheduled_ns() -> (u64, u64) {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("schedstat")) else {
            continue;
        };
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
        total.0 += fields.next().unwrap();
        total.1 += fields.next().unwrap();
    }
    total
}

fn run(images: &[Vec<u8>], decode_only: bool) {
    images.par_iter().for_each(|bytes| {
        PROCESSOR.with_borrow_mut(|processor| {
            let done = if decode_only {
                processor.decode_rgb(bytes, Some(RESOLUTION)).map(drop)
            } else {
                processor
                    .square(bytes, RESOLUTION)
                    .map(|s| drop(s.normalised()))
            };
            done.expect("benchmark images decode");
        })
    });
}

#[test]
#[ignore = "a benchmark: run by hand with --release"]
fn image_throughput() {
    let dir = std::env::var("PALIFORGE_BENCH_IMAGES").unwrap_or("/tmp/paliforge-bench".into());
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e} (see this file's header)"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "jpeg"))
        .collect();
    paths.sort();
    let images: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let decoder = if cfg!(feature = "turbojpeg") {
        "libjpeg-turbo (DCT-scaled)"
    } else {
        "image (zune-jpeg)"
    };
    println!(
        "{} JPEGs from {dir}, {decoder}, to {RESOLUTION}px",
        images.len()
    );

    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (stage, decode_only) in [("decode+resize+normalise", false), ("decode only", true)] {
            pool.install(|| run(&images[..images.len().min(100)], decode_only)); // warm up
            let mut rates = Vec::new();
            let (cpu0, wait0) = scheduled_ns();
            for _ in 0..5 {
                let start = Instant::now();
                pool.install(|| run(&images, decode_only));
                rates.push(images.len() as f64 / start.elapsed().as_secs_f64());
            }
            let (cpu1, wait1) = scheduled_ns();
            rates.sort_by(f64::total_cmp);
            let cpu_us = (cpu1 - cpu0) as f64 / 1e3 / (5 * images.len()) as f64;
            let waited = (wait1 - wait0) as f64 / ((cpu1 - cpu0) + (wait1 - wait0)) as f64;
            println!(
                "{threads} thread(s), {stage:>23}: {:>5.0} images/s, {cpu_us:>4.0} µs CPU per image \
                 ({:.0} images/s per core), waited {:.0}%",
                rates[2],
                1e6 / cpu_us,
                100.0 * waited
            );
        }
    }
}
