//! JPEG through libjpeg-turbo (the `turbojpeg` feature): faster than zune-jpeg, and able to
//! decode at n/8 of the size inside the inverse DCT when the caller will shrink the image anyway.

use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

use super::{ImageError, check_size};

pub(super) struct Turbo(Decompressor);

impl Turbo {
    /// `None` if libjpeg-turbo cannot start (out of memory): JPEGs then go through `image`.
    pub fn new() -> Option<Self> {
        Decompressor::new().ok().map(Turbo)
    }

    /// `Ok(None)` where libjpeg-turbo fails, even on a warning such as "extraneous bytes before
    /// marker" that PIL shrugs off: the `image` path then decides.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        min_side: Option<u32>,
        mut pixels: Vec<u8>,
        scratch: &mut Vec<u8>,
        max_pixels: u64,
    ) -> Result<Option<RgbImage>, ImageError> {
        let Ok(header) = self.0.read_header(bytes) else {
            return Ok(None);
        };
        let (width, height) = (header.width as u32, header.height as u32);
        let eighths = match min_side {
            Some(side) if !header.is_lossless => dct_scale_eighths(width, height, side),
            _ => 8,
        };
        let scale = ScalingFactor::new(eighths as usize, 8);
        if self.0.set_scaling_factor(scale).is_err() {
            return Ok(None);
        }
        let (width, height) = (scale.scale(header.width), scale.scale(header.height));
        check_size(width as u32, height as u32, max_pixels)?;

        // libjpeg-turbo converts grey and YCbCr to RGB itself, but CMYK only to CMYK.
        let cmyk = matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK);
        let format = if cmyk {
            PixelFormat::CMYK
        } else {
            PixelFormat::RGB
        };
        let target = if cmyk { &mut *scratch } else { &mut pixels };
        target.resize(width * height * format.size(), 0);
        let image = Image {
            pixels: &mut target[..],
            width,
            pitch: width * format.size(),
            height,
            format,
        };
        if self.0.decompress(bytes, image).is_err() {
            return Ok(None);
        }
        if cmyk {
            cmyk_to_rgb(scratch, &mut pixels);
        }
        Ok(RgbImage::from_raw(width as u32, height as u32, pixels))
    }
}

/// The smallest DCT scale n/8 (libjpeg-turbo decodes at n/8 of the size, for less work) that
/// keeps the shorter side at least `min_side`; 8 (no scaling) when none does.
fn dct_scale_eighths(width: u32, height: u32, min_side: u32) -> u32 {
    let short = u64::from(width.min(height));
    (1..8)
        .find(|n| (short * u64::from(*n)).div_ceil(8) >= u64::from(min_side))
        .unwrap_or(8)
}

/// PIL's conversion, on CMYK as Adobe stores it (inverted), which PIL assumes for every JPEG.
fn cmyk_to_rgb(cmyk: &[u8], rgb: &mut Vec<u8>) {
    // PIL's rounded a * b / 255 in integers.
    fn mul_div_255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    rgb.clear();
    rgb.extend(cmyk.chunks_exact(4).flat_map(|px| {
        let ink = |v: u8| 255 - u32::from(v); // PIL's C, M, Y or K
        let white = u32::from(px[3]); // 255 - K
        [0, 1, 2].map(|c| (white - mul_div_255(ink(px[c]), white)) as u8)
    }));
}

#[cfg(test)]
mod tests {
    use super::{cmyk_to_rgb, dct_scale_eighths};

    #[test]
    fn dct_scale_keeps_the_short_side() {
        assert_eq!(dct_scale_eighths(640, 480, 224), 4); // 240
        assert_eq!(dct_scale_eighths(640, 400, 224), 5); // 250: 4/8 would give 200
        assert_eq!(dct_scale_eighths(4000, 3000, 224), 1); // 375
        assert_eq!(dct_scale_eighths(300, 200, 224), 8);
        assert_eq!(dct_scale_eighths(448, 448, 224), 4);
        assert_eq!(dct_scale_eighths(449, 449, 224), 4); // 225 (rounded up, as libjpeg does)
    }

    #[test]
    fn cmyk_converts_as_pil_does() {
        // Stored inverted: 255 is no ink. No ink is white, full K is black whatever C, M, Y are;
        // full cyan alone leaves green and blue.
        let mut rgb = Vec::new();
        cmyk_to_rgb(
            &[
                255, 255, 255, 255, 0, 0, 0, 0, 0, 255, 255, 255, 128, 255, 255, 128,
            ],
            &mut rgb,
        );
        assert_eq!(rgb, [255, 255, 255, 0, 0, 0, 0, 255, 255, 64, 128, 128]);
    }
}
