//! What paliforge reads from a JPEG's markers itself, before either decoder runs: the EXIF
//! orientation (libjpeg-turbo ignores it) and whether the data is complete (zune-jpeg, inside
//! `image`, fills a truncated image with grey where PIL, hence Hugging Face, refuses it).

use image::metadata::Orientation;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const APP1: u8 = 0xE1;

pub(super) struct Markers<'a> {
    /// The TIFF structure of an APP1 "Exif" segment.
    pub exif: Option<&'a [u8]>,
    /// An end-of-image marker follows the first scan.
    pub complete: bool,
}

impl Markers<'_> {
    pub fn orientation(&self) -> Orientation {
        self.exif
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms)
    }
}

pub(super) fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, SOI, 0xFF])
}

/// Walks the segments before the first scan. Malformed headers are left to the decoders, which
/// say what is wrong; here they just end the walk.
pub(super) fn markers(bytes: &[u8]) -> Markers<'_> {
    let mut exif = None;
    let mut pos = 2;
    loop {
        // A marker is 0xFF (any number of them: fill bytes) then its code.
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&code) = bytes.get(pos) else { break };
        pos += 1;
        if code == SOI || (0xD0..=0xD7).contains(&code) || code == 0x01 {
            continue; // standalone markers: no length
        }
        if code == EOI {
            break;
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(segment) = bytes.get(pos + 2..pos + len.max(2)) else {
            break;
        };
        if code == APP1 && exif.is_none() {
            exif = segment.strip_prefix(b"Exif\0\0");
        }
        if code == SOS {
            // Entropy-coded data never holds 0xFF 0xD9 (a data 0xFF is followed by 0x00), so
            // one after the scan starts is the end-of-image marker: look from the end.
            let scans = &bytes[pos..];
            let complete = scans.windows(2).rev().any(|w| w == [0xFF, EOI]);
            return Markers { exif, complete };
        }
        pos += len.max(2);
    }
    Markers {
        exif,
        complete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_to_the_scan() {
        let app1 = [&[0xFF, APP1, 0, 12][..], b"Exif\0\0MM\0*"].concat();
        let head = [&[0xFF, SOI][..], &app1, &[0xFF, 0xFF, SOS, 0, 2]].concat();
        let body = [0x12, 0xFF, 0x00, 0x34];
        let done = [&head[..], &body, &[0xFF, EOI]].concat();
        let cut = [&head[..], &body].concat();
        assert_eq!(markers(&done).exif, Some(&b"MM\0*"[..]));
        assert!(markers(&done).complete);
        assert!(!markers(&cut).complete);
        // A length running past the end stops the walk without a panic.
        assert!(!markers(&[0xFF, SOI, 0xFF, APP1, 0xFF, 0xFF, 1]).complete);
    }
}
