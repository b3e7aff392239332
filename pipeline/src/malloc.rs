//! glibc's malloc, set for a process that allocates and frees large buffers at a steady rate
//! (row groups, decoded images, batches, tensors). Process-wide: a binary calls these at its
//! edge; a library never does. No effect off glibc.

/// One malloc arena per core. glibc gives threads arenas of their own (up to eight per core)
/// and never lends one arena's free memory to another, so every pipeline thread kept its own
/// high-water mark: `pipeline bench` with Gemma's tokenizer peaked at 372 MiB, and at 226 MiB
/// with one arena per core, at the same speed. Call first thing in `main`, before other threads
/// start.
pub fn one_arena_per_core() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator limit.
    unsafe {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        libc::mallopt(libc::M_ARENA_MAX, cores.min(64) as i32);
    }
}

/// Serves every allocation under 32 MiB (glibc's ceiling) from the heap and keeps up to `keep`
/// bytes of freed memory there for the next one, growing the heap `top_pad` bytes beyond each
/// need if given. glibc's default maps a large buffer afresh and unmaps it on free, so every batch,
/// row group or tensor costs a page fault and a kernel zero-fill per 4 KiB page on first touch.
pub fn keep_freed(keep: usize, top_pad: Option<usize>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        let clamp = |bytes: usize| bytes.min(i32::MAX as usize) as i32;
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, clamp(keep));
        if let Some(pad) = top_pad {
            libc::mallopt(libc::M_TOP_PAD, clamp(pad));
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (keep, top_pad);
}
