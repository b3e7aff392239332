//! Decoding with the `image` crate: every format and colour type it reads, to RGB 8-bit.
//!
//! Colour follows PIL's `convert("RGB")`, which Hugging Face's processors call: alpha is dropped
//! (not composited), palettes expanded, grey repeated. 16-bit samples are scaled (v / 257), where
//! PIL clips 16-bit grey to 255.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{ColorType, DynamicImage, ImageDecoder, ImageReader, RgbImage};

use super::{ImageError, check_size};

/// Decodes into `pixels` (reused: most images are RGB or grey 8-bit), with `scratch` for grey.
/// The orientation is the one given (a JPEG's, already read from its markers) or the file's.
pub(super) fn decode(
    bytes: &[u8],
    orientation: Option<Orientation>,
    mut pixels: Vec<u8>,
    scratch: &mut Vec<u8>,
    max_pixels: u64,
) -> Result<(RgbImage, Orientation), ImageError> {
    let format = image::guess_format(bytes)?;
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format).into_decoder()?;
    // A malformed EXIF block loses its orientation, not the image.
    let orientation = match orientation {
        Some(known) => known,
        None => decoder.orientation().unwrap_or(Orientation::NoTransforms),
    };
    let (width, height) = decoder.dimensions();
    check_size(width, height, max_pixels)?;
    let area = width as usize * height as usize;
    let rgb = match decoder.color_type() {
        ColorType::Rgb8 => {
            pixels.resize(3 * area, 0);
            decoder.read_image(&mut pixels)?;
            RgbImage::from_raw(width, height, pixels)
        }
        ColorType::L8 => {
            scratch.resize(area, 0);
            decoder.read_image(scratch)?;
            pixels.resize(3 * area, 0);
            for (rgb, &v) in pixels.chunks_exact_mut(3).zip(scratch.iter()) {
                rgb.copy_from_slice(&[v, v, v]);
            }
            RgbImage::from_raw(width, height, pixels)
        }
        _ => Some(DynamicImage::from_decoder(decoder)?.into_rgb8()),
    };
    let rgb =
        rgb.ok_or_else(|| ImageError::Corrupt("decoded size differs from the header".into()))?;
    Ok((rgb, orientation))
}
