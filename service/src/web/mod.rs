//! The web page: one self-contained HTML file (styles, script and charts inline), embedded in
//! the binary. Nothing to build, nothing fetched from elsewhere.

pub const PAGE: &str = include_str!("index.html");
