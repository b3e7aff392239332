//! Human-readable views of batches for `paliforge pipeline preview`: each example's text with
//! its prefix and suffix marked, its masks in a compact form, and its images written as PNG.

use std::fmt::Write;
use std::path::Path;

use crate::PipelineError;
use crate::batch::Batch;
use crate::text::PaliTokenizer;

/// One description per example of `batch`, in order; images go to `out` as PNG.
pub fn describe(
    batch: &Batch,
    tokenizer: &PaliTokenizer,
    task_names: &[String],
    out: &Path,
) -> Result<Vec<String>, PipelineError> {
    let ids = tokenizer.special();
    let mut texts = Vec::new();
    for seg in &batch.segments {
        let row = seg.row as usize;
        let range = row * batch.seq_len + seg.start as usize
            ..row * batch.seq_len + (seg.start + seg.len) as usize;
        let tokens = &batch.tokens[range.clone()];
        let causal = &batch.causal[range.clone()];
        let weights = &batch.loss_weights[range.clone()];
        let n_image = tokens.iter().filter(|t| **t == ids.image).count();
        let prefix_end = causal.iter().position(|c| *c).unwrap_or(tokens.len());
        let decode = |t: &[u32]| {
            tokenizer
                .decode(t)
                .map_err(|e| PipelineError::Config(e.to_string()))
        };
        let prefix = decode(&tokens[n_image..prefix_end])?;
        let suffix = decode(&tokens[prefix_end..])?;
        let task = task_names
            .get(seg.task_id as usize)
            .map_or("?", String::as_str);
        let mut text = String::new();
        let _ = writeln!(text, "── example (task {task}) from {}", seg.origin);
        let _ = writeln!(text, "   prefix  │{}│", prefix.replace('\n', "⏎"));
        let _ = writeln!(text, "   suffix  │{}│", suffix.replace('\n', "⏎"));
        let _ = writeln!(
            text,
            "   tokens  {} = {n_image} image + {} prefix + {} suffix, row {row} at {}",
            tokens.len(),
            prefix_end - n_image,
            tokens.len() - prefix_end,
            seg.start
        );
        let _ = writeln!(
            text,
            "   attend  {}",
            run_length(causal.iter().map(|c| if *c { 'c' } else { 'F' }))
        );
        let _ = writeln!(
            text,
            "   loss    {}",
            run_length(weights.iter().map(|w| if *w > 0.0 { '1' } else { '0' }))
        );
        for (i, slot) in batch.image_slots.iter().enumerate() {
            let start = slot.start as usize;
            if slot.row == seg.row
                && start >= seg.start as usize
                && start < (seg.start + seg.len) as usize
            {
                let name = format!("row{row}-pos{start}.png");
                let path = out.join(&name);
                save_png(batch.image(i), batch.resolution, &path)?;
                let _ = writeln!(
                    text,
                    "   image   {}x{} → {}",
                    batch.resolution,
                    batch.resolution,
                    path.display()
                );
            }
        }
        texts.push(text);
    }
    Ok(texts)
}

/// `FFFFccc` as `F×4 c×3`.
fn run_length(symbols: impl Iterator<Item = char>) -> String {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for s in symbols {
        match runs.last_mut() {
            Some((c, n)) if *c == s => *n += 1,
            _ => runs.push((s, 1)),
        }
    }
    runs.iter()
        .map(|(c, n)| format!("{c}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `[3, R, R]` image in [-1, 1] as 8-bit RGB.
pub fn to_rgb(chw: &[f32], resolution: usize) -> image::RgbImage {
    let plane = resolution * resolution;
    image::RgbImage::from_fn(resolution as u32, resolution as u32, |x, y| {
        let i = y as usize * resolution + x as usize;
        let px = |c: usize| {
            ((chw[c * plane + i] + 1.0) * 127.5)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    })
}

/// A `[3, R, R]` image in [-1, 1] as PNG bytes.
pub fn png_bytes(chw: &[f32], resolution: usize) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    to_rgb(chw, resolution)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding into memory cannot fail");
    out.into_inner()
}

/// A `[3, R, R]` image in [-1, 1] as an 8-bit PNG file.
fn save_png(chw: &[f32], resolution: usize, path: &Path) -> Result<(), PipelineError> {
    to_rgb(chw, resolution)
        .save(path)
        .map_err(|e| PipelineError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}
