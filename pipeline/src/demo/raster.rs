//! Draws a scene into an RGB image: each pixel's colour mixes the background and the shapes by
//! how much of the pixel they cover (4x4 samples), so edges stay clean at 56 pixels.

use image::RgbImage;
use rand::Rng;

use super::scene::{Object, Scene, Shape};

const SAMPLES: u32 = 4;

pub fn render(scene: &Scene, side: u32, rng: &mut impl Rng) -> RgbImage {
    let mut image = RgbImage::from_fn(side, side, |_, _| {
        let jitter = match scene.noise {
            0 => 0,
            n => rng.random_range(-i16::from(n)..=i16::from(n)),
        };
        let grey = (i16::from(scene.background) + jitter).clamp(0, 255) as u8;
        image::Rgb([grey; 3])
    });
    for object in &scene.objects {
        draw(&mut image, object);
    }
    image
}

fn draw(image: &mut RgbImage, object: &Object) {
    let side = image.width();
    let scale = f64::from(side);
    let [y0, x0, y1, x1] = object.bbox();
    // Only the pixels the bounding box touches can be covered.
    let first = |v: f64| ((v * scale).floor().max(0.0)) as u32;
    let last = |v: f64| ((v * scale).ceil().min(scale)) as u32;
    let colour = object.colour.rgb();
    for py in first(y0)..last(y1) {
        for px in first(x0)..last(x1) {
            let mut covered = 0;
            for sy in 0..SAMPLES {
                for sx in 0..SAMPLES {
                    let x = (f64::from(px) + (f64::from(sx) + 0.5) / f64::from(SAMPLES)) / scale;
                    let y = (f64::from(py) + (f64::from(sy) + 0.5) / f64::from(SAMPLES)) / scale;
                    covered += u32::from(inside(object, x, y));
                }
            }
            if covered > 0 {
                let alpha = f64::from(covered) / f64::from(SAMPLES * SAMPLES);
                let pixel = image.get_pixel_mut(px, py);
                for (channel, &target) in pixel.0.iter_mut().zip(&colour) {
                    *channel = (f64::from(*channel) * (1.0 - alpha) + f64::from(target) * alpha)
                        .round() as u8;
                }
            }
        }
    }
}

/// Whether the point `(x, y)` (fractions of the side) is inside the shape.
fn inside(object: &Object, x: f64, y: f64) -> bool {
    let half = object.size / 2.0;
    let (dx, dy) = (x - object.cx, y - object.cy);
    match object.shape {
        Shape::Circle => dx * dx + dy * dy <= half * half,
        Shape::Square => dx.abs() <= half && dy.abs() <= half,
        // Apex at the top centre, base along the bottom: the half-width grows from 0 to `half`.
        Shape::Triangle => {
            let down = (dy + half) / object.size;
            (0.0..=1.0).contains(&down) && dx.abs() <= down * half
        }
    }
}
