//! Progress bars that stay out of the way when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items (examples, rows...) with rate and ETA.
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}})"
    );
    bar.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    bar
}
