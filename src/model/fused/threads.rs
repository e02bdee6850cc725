//! The matrix libraries' own threads (oneDNN's OpenMP pool, OpenBLAS's pthreads) share the cores
//! with rayon's workers, which run the passes between the products. After a product the
//! libraries' threads spin for a while by default, taking those cores: this module tells them to
//! sleep soon instead, by the variables each library reads when it is loaded.

/// How the libraries' own threads wait after a product, where the environment does not say:
/// they sleep soon instead of spinning on the cores where rayon's workers run the passes between
/// the products.
/// - oneDNN's OpenMP threads: `OMP_WAIT_POLICY=PASSIVE`. With GNU OpenMP's default they spin for
///   a while after each product; the bf16 forward pass on a 2-core AVX512-BF16 CPU was
///   1.12-1.33x faster passive (BENCHMARKS.md).
/// - OpenBLAS's threads: `OPENBLAS_THREAD_TIMEOUT=4`, 2^4 clock ticks of `sched_yield` before they
///   sleep, against 2^28 (about 0.1 s) by default; the f32 LN-tuning step spent 5 % of its time in
///   the kernel's scheduler before and 1.5 % after, and ran 1.01-1.11x faster (BENCHMARKS.md).
pub const QUIET_THREADS: [QuietThreads; 2] = [
    QuietThreads {
        variable: "OMP_WAIT_POLICY",
        value: "PASSIVE",
        key: "openmp wait",
        unset: "GNU OpenMP's default",
        means: "oneDNN's threads after a product",
    },
    QuietThreads {
        variable: "OPENBLAS_THREAD_TIMEOUT",
        value: "4",
        key: "blas wait",
        unset: "OpenBLAS's default",
        means: "2^n clock ticks OpenBLAS's threads yield before they sleep",
    },
];

/// One library's waiting, and how `dfdet info --system` names it.
pub struct QuietThreads {
    /// The environment variable the library reads when it is loaded.
    pub variable: &'static str,
    /// What dfdet sets it to where the environment leaves it unset.
    pub value: &'static str,
    /// `info --system`'s key for it.
    pub key: &'static str,
    /// What the library does when the variable is unset.
    pub unset: &'static str,
    /// What the value means.
    pub means: &'static str,
}

/// Sets [`QUIET_THREADS`] where the environment leaves them unset. GNU OpenMP reads its variable
/// once, when it is loaded, and this binary loads it at start (FFmpeg's libraries link it), so
/// setting it from inside comes too late: where one is unset, the program runs itself again with
/// them set (an `exec`: same process, arguments and streams). Call first thing in `main`.
/// Returns only if no new image was started.
pub fn restart_with_quiet_threads() {
    #[cfg(unix)]
    {
        let unset: Vec<_> = QUIET_THREADS.iter().filter(|q| std::env::var_os(q.variable).is_none()).collect();
        if unset.is_empty() {
            return;
        }
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        if let (Ok(exe), Some(arg0)) = (std::env::current_exe(), args.next()) {
            let mut command = std::process::Command::new(exe);
            command.arg0(arg0).args(args).envs(unset.iter().map(|q| (q.variable, q.value)));
            // `exec` returns only when it could not start the program; then it runs on as it is.
            let _ = command.exec();
        }
    }
}
