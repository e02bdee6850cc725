//! A global allocator that records the largest single allocation made in the test binary, so
//! that the property tests over untrusted bytes can assert that no input made a parser reserve
//! memory the input cannot back (a length field of 2^60 must be an error, not a 1 EiB `Vec`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the size of every allocation that succeeded.
pub struct Recording;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn record(ptr: *mut u8, size: usize) -> *mut u8 {
    if !ptr.is_null() {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
    ptr
}

// SAFETY: every call is forwarded unchanged to `System`; only sizes are recorded.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(unsafe { System.alloc(layout) }, layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(unsafe { System.realloc(ptr, layout, new_size) }, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// The largest allocation so far in this process, in bytes.
pub fn largest_allocation() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// The bound the parser tests hold every allocation to: far above what their inputs (a few MB
/// at most) and the tiny test models need, far below what a forged length field asks for.
pub const BOUND: usize = 256 << 20;

/// Fails when any allocation so far exceeded [`BOUND`].
pub fn assert_bounded(what: &str) {
    let largest = largest_allocation();
    assert!(largest <= BOUND, "{what}: an allocation of {largest} bytes (bound {BOUND})");
}
