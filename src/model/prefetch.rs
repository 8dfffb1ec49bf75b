//! The cache hint the CPU kernels share: ask for a span of memory ahead of its use.

/// Asks for every cache line of the addresses `start..end` to be brought into the cache. A hint: it never
/// faults, so the addresses need not be valid; nothing happens off x86-64.
#[inline(always)]
pub(crate) fn lines(start: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut line = start & !63;
        while line < end {
            // SAFETY: a prefetch is a hint that never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, end);
}
