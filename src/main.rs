//! `paliforge`: one command-line tree; each command is a thin call into a crate.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    one_malloc_arena_per_core();
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

/// glibc gives threads that allocate arenas of their own (up to eight per core) and never
/// lends one arena's free memory to another, so the pipeline's reader, coordinator and worker
/// threads each kept their own high-water mark: `pipeline bench` with Gemma's tokenizer peaked
/// at 372 MiB, and at 223 MiB with one arena per core, at the same speed. Set before any thread
/// starts.
fn one_malloc_arena_per_core() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: mallopt only changes an allocator limit; no thread has allocated yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores.min(i32::MAX as usize) as i32);
        }
    }
}
