//! An image resized to the stage's square resolution, kept as 8-bit RGB until its batch is
//! assembled: a quarter of the memory of the `[3, R, R]` f32 it becomes there, while examples
//! wait in windows and batches.

use std::mem::MaybeUninit;

/// x / 127.5 - 1, as f32 arithmetic gives it.
#[inline(always)]
fn normalise(x: u8) -> f32 {
    f32::from(x) / 127.5 - 1.0
}

/// `R x R` pixels, 8-bit RGB, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SquareImage {
    side: u32,
    rgb: Vec<u8>,
}

impl SquareImage {
    /// `None` unless `rgb` holds exactly `3 * side * side` bytes.
    pub fn new(side: u32, rgb: Vec<u8>) -> Option<Self> {
        (rgb.len() == 3 * side as usize * side as usize).then_some(SquareImage { side, rgb })
    }

    pub fn side(&self) -> u32 {
        self.side
    }

    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// Appends the `[3, R, R]` values of the batch contract: channels first, x / 127.5 - 1.
    pub fn normalise_onto(&self, chw: &mut Vec<f32>) {
        let plane = self.rgb.len() / 3;
        // One pass over the pixels, three planes written at once, straight into the spare
        // capacity: no zero-fill of 600 KiB an image first.
        chw.reserve(3 * plane);
        let (r, rest) = chw.spare_capacity_mut()[..3 * plane].split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        split_planes(&self.rgb, r, g, b);
        // SAFETY: `rgb` holds exactly `plane` pixels (see `new`), so the loop initialised all
        // `3 * plane` values past the old length.
        unsafe { chw.set_len(chw.len() + 3 * plane) };
    }

    /// The `[3, R, R]` values alone (see [`normalise_onto`](Self::normalise_onto)).
    pub fn normalised(&self) -> Vec<f32> {
        let mut chw = Vec::with_capacity(self.rgb.len());
        self.normalise_onto(&mut chw);
        chw
    }
}

type Plane<'a> = &'a mut [MaybeUninit<f32>];

/// Interleaved RGB bytes to three normalised planes. Compiled twice, plainly and for AVX2 (twice
/// as fast: the packer does this for every image of every batch, on one thread), the latter
/// chosen at run time where the CPU has it.
fn split_planes(rgb: &[u8], r: Plane, g: Plane, b: Plane) {
    #[inline(always)]
    fn generic(rgb: &[u8], r: Plane, g: Plane, b: Plane) {
        for (((px, r), g), b) in rgb.chunks_exact(3).zip(r).zip(g).zip(b) {
            r.write(normalise(px[0]));
            g.write(normalise(px[1]));
            b.write(normalise(px[2]));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2(rgb: &[u8], r: Plane, g: Plane, b: Plane) {
            generic(rgb, r, g, b)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature `avx2` is compiled for.
            return unsafe { avx2(rgb, r, g, b) };
        }
    }
    generic(rgb, r, g, b)
}

#[cfg(test)]
mod tests {
    use super::{SquareImage, normalise};

    #[test]
    fn normalises_to_minus_one_one() {
        assert_eq!(normalise(0), -1.0);
        assert_eq!(normalise(255), 1.0);
        assert_eq!(normalise(127), 127.0 / 127.5 - 1.0);
        // HF's arithmetic: rescale by 1/255, then (x - 0.5) / 0.5, differs by an ulp at most.
        for i in 0..=255u8 {
            let v = normalise(i);
            let hf = ((f64::from(i) / 255.0) as f32 - 0.5) / 0.5;
            assert!((v - hf).abs() <= 2.0 * f32::EPSILON, "{i}: {v} vs {hf}");
        }
    }

    #[test]
    fn channels_come_first() {
        // Red, green, blue, white.
        let rgb = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        let image = SquareImage::new(2, rgb).unwrap();
        #[rustfmt::skip]
        assert_eq!(image.normalised(), [
            1.0, -1.0, -1.0, 1.0, // red
            -1.0, 1.0, -1.0, 1.0, // green
            -1.0, -1.0, 1.0, 1.0, // blue
        ]);
        assert!(SquareImage::new(2, vec![0; 3]).is_none(), "wrong length");
    }

    #[test]
    fn the_vectorised_planes_match_pixel_by_pixel() {
        // Big enough for whole vector blocks, odd-sized for a remainder, every byte value.
        let side = 37;
        let rgb: Vec<u8> = (0..3 * side * side).map(|i| (i * 97 % 256) as u8).collect();
        let chw = SquareImage::new(side as u32, rgb.clone())
            .unwrap()
            .normalised();
        let plane = side * side;
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                assert_eq!(
                    chw[c * plane + i],
                    normalise(px[c]),
                    "pixel {i} channel {c}"
                );
            }
        }
    }
}
