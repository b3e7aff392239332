//! Visual prompts: a box or a point drawn into the image before it is resized (the PaliGemma
//! paper found such marks work as well as describing the region in text).
//!
//! Coordinates are normalised to [0, 1] as `<loc>` tokens give them, and so are sizes, each
//! relative to its own axis: the square resize scales each axis by its own factor, so a line
//! `t` thick comes out `t * R` pixels on both axes whatever the image's aspect.

use image::{Rgb, RgbImage};

/// Outlines the box `[y0, x0, y1, x1]` with lines `thickness` thick (at least one pixel),
/// drawn inside the box. Coordinates outside [0, 1] are clipped.
pub fn draw_box(rgb: &mut RgbImage, box_yxyx: [f32; 4], colour: Rgb<u8>, thickness: f32) {
    let (w, h) = (rgb.width() as f32, rgb.height() as f32);
    let [y0, x0, y1, x1] = box_yxyx;
    let (top, bottom) = span(y0, y1, h);
    let (left, right) = span(x0, x1, w);
    let tx = pixels(thickness * w);
    let ty = pixels(thickness * h);
    fill(rgb, left, right, top, (top + ty).min(bottom), colour);
    fill(
        rgb,
        left,
        right,
        bottom.saturating_sub(ty).max(top),
        bottom,
        colour,
    );
    fill(rgb, left, (left + tx).min(right), top, bottom, colour);
    fill(
        rgb,
        right.saturating_sub(tx).max(left),
        right,
        top,
        bottom,
        colour,
    );
}

/// A filled dot of `radius` at `[y, x]`: a circle after the square resize.
pub fn draw_point(rgb: &mut RgbImage, point_yx: [f32; 2], colour: Rgb<u8>, radius: f32) {
    let (w, h) = (rgb.width() as f32, rgb.height() as f32);
    let (cy, cx) = (point_yx[0] * h, point_yx[1] * w);
    let (ry, rx) = ((radius * h).max(1.0), (radius * w).max(1.0));
    // `as` saturates and takes NaN to 0: no coordinate can index outside the image.
    let bounds = |c: f32, r: f32, size: f32| {
        (
            (c - r).clamp(0.0, size) as u32,
            (c + r).ceil().clamp(0.0, size) as u32,
        )
    };
    let (top, bottom) = bounds(cy, ry, h);
    let (left, right) = bounds(cx, rx, w);
    for y in top..bottom {
        for x in left..right {
            let (dy, dx) = ((y as f32 + 0.5 - cy) / ry, (x as f32 + 0.5 - cx) / rx);
            if dy * dy + dx * dx <= 1.0 {
                rgb.put_pixel(x, y, colour);
            }
        }
    }
}

/// The pixel range [start, end) covering the normalised interval, ends in either order.
fn span(a: f32, b: f32, size: f32) -> (u32, u32) {
    let to_pixel = |v: f32| (v.clamp(0.0, 1.0) * size) as u32;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (
        to_pixel(lo),
        to_pixel(hi).max(to_pixel(lo) + 1).min(size as u32),
    )
}

fn pixels(v: f32) -> u32 {
    (v.round() as u32).max(1)
}

fn fill(rgb: &mut RgbImage, x0: u32, x1: u32, y0: u32, y1: u32, colour: Rgb<u8>) {
    for y in y0..y1.min(rgb.height()) {
        for x in x0..x1.min(rgb.width()) {
            rgb.put_pixel(x, y, colour);
        }
    }
}
