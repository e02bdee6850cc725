//! Process-wide memory: allocator settings and the peak resident set size.
//!
//! A forward and backward pass of ViT-L/14 allocates and frees tens of activation buffers of
//! 4-70 MB per layer. glibc's malloc hands blocks that large to `mmap` and gives them back to the
//! kernel on `free`, so every new buffer is faulted in and zeroed page by page again: on an
//! LN-tuning step at mini-batch 4 that was about 1.3 s of 9.3 (BENCHMARKS.md). Keeping freed memory in
//! the heap for reuse removes it; the peak stays the same because the buffers are reused, not
//! added. mimalloc (default options) was slower still on the same step, so this tunes the
//! allocator that is already there instead of replacing it.

/// Tells glibc's malloc to serve large blocks from the heap and to keep freed memory for reuse.
/// Call once, first thing in `main`, before any thread starts. A no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tunables; called before other threads exist.
    unsafe {
        // Blocks up to 1 GiB come from the heap (the default moves between 128 KiB and 32 MiB).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        // Never shrink the heap on free (-1 disables trimming, mallopt(3)) ...
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        // ... and grow it in steps of 256 MiB.
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Peak resident set size since the last [`reset_peak_rss`], in MiB (Linux; 0 elsewhere).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Resets the peak RSS counter (Linux: writing 5 to `clear_refs`), so that each measured
/// setting gets its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
