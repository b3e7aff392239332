//! `paliforge`: one command-line tree; each command is a thin call into a crate.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    ::model::one_malloc_arena_per_core();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
