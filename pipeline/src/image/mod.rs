//! Images: encoded bytes to the `[3, R, R]` f32 pixels of the batch contract, as Hugging Face's
//! SiglipImageProcessor computes them (PIL decode, `convert("RGB")`, EXIF orientation, bicubic
//! to R x R, x / 127.5 - 1, channels first).
//!
//! JPEG, PNG, WebP, GIF, BMP and TIFF decode through the `image` crate; with the `turbojpeg`
//! feature, JPEG goes through libjpeg-turbo, decoded DCT-scaled when the target is much smaller.

mod decode;
mod draw;
mod error;
mod jpeg;
mod resize;
mod square;
#[cfg(feature = "turbojpeg")]
mod turbo;

use std::panic::{AssertUnwindSafe, catch_unwind};

use image::metadata::Orientation;
pub use image::{Rgb, RgbImage};

pub use draw::{draw_box, draw_point};
pub use error::ImageError;
pub use square::SquareImage;

/// The number of f32 values of one image at `resolution`: `3 * R * R`.
pub fn pixels_len(resolution: u32) -> usize {
    3 * resolution as usize * resolution as usize
}

/// Per-thread image state: a resizer and buffers reused from one image to the next (and the
/// libjpeg-turbo decompressor with that feature). Cheap to make; make one per worker thread.
pub struct ImageProcessor {
    resize: resize::Resize,
    /// The decoded image's buffer, kept between images.
    pixels: Vec<u8>,
    /// Grey or CMYK samples before they become RGB.
    scratch: Vec<u8>,
    max_pixels: u64,
    #[cfg(feature = "turbojpeg")]
    turbo: Option<turbo::Turbo>,
}

impl Default for ImageProcessor {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageProcessor {
    /// Images over this many decoded pixels are refused (64 Mpx: 192 MiB as RGB).
    pub const DEFAULT_MAX_PIXELS: u64 = 1 << 26;

    pub fn new() -> Self {
        ImageProcessor {
            resize: resize::Resize::new(),
            pixels: Vec::new(),
            scratch: Vec::new(),
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            #[cfg(feature = "turbojpeg")]
            turbo: turbo::Turbo::new(),
        }
    }

    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// Decodes, orients and resizes to `resolution` squared.
    pub fn square(&mut self, bytes: &[u8], resolution: u32) -> Result<SquareImage, ImageError> {
        let rgb = self.decode_rgb(bytes, Some(resolution))?;
        let square = self.resize.run(&rgb, resolution);
        self.recycle(rgb);
        square
    }

    /// Decodes, orients, resizes to `resolution` squared and normalises: `[3, R, R]` in [-1, 1].
    pub fn process(&mut self, bytes: &[u8], resolution: u32) -> Result<Vec<f32>, ImageError> {
        Ok(self.square(bytes, resolution)?.normalised())
    }

    /// Decodes to upright RGB 8-bit, for previews, re-encoding and visual prompts. With a hint,
    /// a JPEG may come out smaller (DCT scaling, `turbojpeg` feature) but keeps its shorter side
    /// at least `min_side_hint`. Its buffer is the one last given to [`recycle`](Self::recycle).
    pub fn decode_rgb(
        &mut self,
        bytes: &[u8],
        min_side_hint: Option<u32>,
    ) -> Result<RgbImage, ImageError> {
        let buffer = std::mem::take(&mut self.pixels);
        self.decode(bytes, min_side_hint, buffer)
    }

    /// Takes back a decoded image the caller is done with, for the next decode to fill: no
    /// allocation and no zero-fill of a fresh buffer per image.
    pub fn recycle(&mut self, rgb: RgbImage) {
        self.pixels = rgb.into_raw();
    }

    /// The second half of [`square`](Self::square), for an image already decoded (and drawn on).
    pub fn resize(&mut self, rgb: &RgbImage, resolution: u32) -> Result<SquareImage, ImageError> {
        self.resize.run(rgb, resolution)
    }

    fn decode(
        &mut self,
        bytes: &[u8],
        min_side: Option<u32>,
        buffer: Vec<u8>,
    ) -> Result<RgbImage, ImageError> {
        // The codecs are third-party code fed untrusted bytes: a panic in one is a bad image,
        // not the end of a training run.
        catch_unwind(AssertUnwindSafe(|| {
            self.decode_unguarded(bytes, min_side, buffer)
        }))
        .unwrap_or_else(|_| Err(ImageError::Corrupt("the decoder panicked".into())))
    }

    fn decode_unguarded(
        &mut self,
        bytes: &[u8],
        min_side: Option<u32>,
        buffer: Vec<u8>,
    ) -> Result<RgbImage, ImageError> {
        // A JPEG's completeness and orientation come from its markers, whichever decoder runs.
        let jpeg_orientation = match jpeg::is_jpeg(bytes).then(|| jpeg::markers(bytes)) {
            Some(markers) if !markers.complete => {
                return Err(ImageError::Corrupt(
                    "truncated JPEG: no end-of-image marker".into(),
                ));
            }
            markers => markers.map(|m| m.orientation()),
        };
        #[cfg(feature = "turbojpeg")]
        let buffer = match (&mut self.turbo, jpeg_orientation) {
            (Some(turbo), Some(orientation)) => {
                match turbo.decode(bytes, min_side, buffer, &mut self.scratch, self.max_pixels)? {
                    Some(rgb) => return Ok(orient(rgb, orientation)),
                    None => Vec::new(), // libjpeg-turbo refused it: `image` decides
                }
            }
            _ => buffer,
        };
        #[cfg(not(feature = "turbojpeg"))]
        let _ = min_side; // only libjpeg-turbo decodes smaller
        let (rgb, orientation) = decode::decode(
            bytes,
            jpeg_orientation,
            buffer,
            &mut self.scratch,
            self.max_pixels,
        )?;
        Ok(orient(rgb, orientation))
    }
}

fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt(format!(
            "empty image ({width}x{height})"
        )));
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    Ok(())
}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let mut image = image::DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    image.into_rgb8()
}
