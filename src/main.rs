//! `paliforge`: one command-line tree; each command is a thin call into a crate.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    pipeline::malloc::one_arena_per_core();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", causes(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: library errors often put their cause's text in
/// their own message too, and `{:#}` would print it twice.
fn causes(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Named {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let named = anyhow::Error::new(Named {
            path: "a/config.json".into(),
            source: io(),
        });
        assert_eq!(causes(&named), "a/config.json: no such file");
        let context = anyhow::Error::new(io()).context("loading the model");
        assert_eq!(causes(&context), "loading the model: no such file");
    }
}
