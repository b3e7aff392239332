//! Why an image could not be used, in the two kinds the bad-input policy counts apart.

use crate::bad_input::Reason;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Bytes of a known format that its decoder rejects: corrupt or truncated.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// Bytes in no format paliforge decodes, or a feature of one that it lacks.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// Larger than the processor's pixel limit (a decompression bomb, or a mistake).
    #[error("image of {width}x{height} pixels is over the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
}

impl ImageError {
    /// How the bad-input policy counts it. An oversized image is data paliforge chooses not to
    /// take, like an unknown format, rather than damaged data.
    pub fn reason(&self) -> Reason {
        match self {
            ImageError::Corrupt(_) => Reason::CorruptImage,
            ImageError::Unsupported(_) | ImageError::TooLarge { .. } => {
                Reason::UnsupportedImageFormat
            }
        }
    }
}

impl From<image::ImageError> for ImageError {
    fn from(e: image::ImageError) -> Self {
        use image::ImageError as E;
        match e {
            // Over a decoder's own allocation limit counts as oversized, like `TooLarge`.
            E::Unsupported(_) | E::Limits(_) => ImageError::Unsupported(e.to_string()),
            // I/O on an in-memory slice only fails at its end: truncated data.
            E::Decoding(_) | E::IoError(_) | E::Parameter(_) | E::Encoding(_) => {
                ImageError::Corrupt(e.to_string())
            }
        }
    }
}
