//! The system's OpenBLAS, loaded at run time (`libopenblas.so.0`, Debian's `libopenblas0`), as an
//! alternative to the `gemm` crate for the large f32 products. Loaded, not linked, so that the same
//! binary starts and runs on the pure-Rust path where the library is absent.
//!
//! OpenBLAS keeps its own thread pool; dfdet gives it as many threads as rayon has and calls it
//! only from outside rayon's workers, so that the two pools never run at once.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

use libloading::Library;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);
type GetText = unsafe extern "C" fn() -> *const c_char;

/// OpenBLAS's f32 product and its description.
pub struct Blas {
    sgemm: Sgemm,
    set_threads: Option<SetThreads>,
    /// `openblas_get_config()` and the kernel family it chose for this CPU.
    pub description: String,
    _library: Library,
}

/// The library names tried, in order.
const NAMES: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

impl Blas {
    fn load() -> Option<Self> {
        // SAFETY: OpenBLAS's initialisers only set up its tables and thread pool.
        let library = NAMES.iter().find_map(|n| unsafe { Library::new(n) }.ok())?;
        // SAFETY: the symbols are OpenBLAS's documented C functions, with these signatures.
        unsafe {
            let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
            let set_threads = library.get::<SetThreads>(b"openblas_set_num_threads\0").ok().map(|f| *f);
            let text = |name: &[u8]| {
                library.get::<GetText>(name).ok().map(|f| {
                    let p = f();
                    if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().trim().to_string() }
                })
            };
            let config = text(b"openblas_get_config\0").unwrap_or_else(|| "OpenBLAS".into());
            let core = text(b"openblas_get_corename\0").unwrap_or_default();
            let description = if core.is_empty() { config } else { format!("{config} ({core} kernels)") };
            Some(Self { sgemm, set_threads, description, _library: library })
        }
    }

    /// `out[m, n] = lhs[m, k] · rhs (+ out when `accumulate`)`: `lhs` row-major; `rhs` `[k, n]`
    /// with strides `(rs, cs)`, one of which must be 1 (a row-major matrix or a transposed one).
    /// Returns `false`, doing nothing, for other layouts or sizes past `c_int`.
    ///
    /// # Safety
    /// `lhs` holds `m·k` values, `rhs` spans its strides, `out` has room for `m·n` values (read
    /// only when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        lhs: *const f32,
        rhs: *const f32,
        rs: isize,
        cs: isize,
        out: *mut f32,
        accumulate: bool,
    ) -> bool {
        let Some((transposed, ld)) = rhs_layout(n, k, rs, cs) else { return false };
        let trans = if transposed { TRANS } else { NO_TRANS };
        let int = |v: usize| c_int::try_from(v).ok();
        let (Some(m), Some(n), Some(k), Some(ld)) = (int(m), int(n), int(k), int(ld)) else { return false };
        let threads = c_int::try_from(rayon::current_num_threads()).unwrap_or(1);
        // SAFETY: by the caller's contract; the leading dimensions are those of the layouts.
        unsafe {
            if let Some(set) = self.set_threads {
                set(threads);
            }
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                trans,
                m,
                n,
                k,
                1.0,
                lhs,
                k.max(1),
                rhs,
                ld,
                if accumulate { 1.0 } else { 0.0 },
                out,
                n.max(1),
            );
        }
        true
    }
}

/// How a BLAS-style call reads a `[k, n]` right operand with strides `(rs, cs)`: `(transposed,
/// leading dimension)` for a row-major matrix or a transposed one, `None` for any other layout.
pub(super) fn rhs_layout(n: usize, k: usize, rs: isize, cs: isize) -> Option<(bool, usize)> {
    match (rs, cs) {
        (rs, 1) if rs >= n.max(1) as isize => Some((false, rs as usize)),
        (1, cs) if cs >= k.max(1) as isize => Some((true, cs as usize)),
        _ => None,
    }
}

/// The system's OpenBLAS, if it can be loaded.
pub fn openblas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(Blas::load).as_ref()
}
