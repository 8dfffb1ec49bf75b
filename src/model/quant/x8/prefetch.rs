//! Prefetch for the interleaved kernels ([`super::Interleaved`]): while a kernel computes one tile of output
//! columns, it brings the next tile's weights into the cache a slice at a time ([`Ahead`]), so that the next
//! tile's first pass does not wait on memory.

/// Over how many of a kernel's `steps` it fetches the next tile, for `m` activation rows. With one row a step
/// is short and the core waits on memory, so the fetches go out in the first quarter of the kernel and more of
/// them are in flight at once; with more rows each step has arithmetic to hide its few requests behind, and
/// they are spread over the whole kernel. Side by side on the 2-vCPU Xeon (`rill generate`, a random-weight
/// llama of 235 MB in Q4_K_M, one stream, 4 alternations): a burst before the kernel 83–86 tokens/s, the whole
/// kernel 79–82, the first half 81–86, the first quarter 83–85; eight streams of it over HTTP went from 275 with
/// the burst to 319–323 spread over the whole kernel. SmolLM2 Q4_1's eight streams (decode bench) were fastest
/// over the whole kernel (503–531 tokens/s capped at AVX2, against 467–487 for a half to an eighth).
pub(super) fn fetch_steps(steps: usize, m: usize) -> usize {
    if m == 1 {
        steps.div_ceil(4)
    } else {
        steps
    }
}

/// Whether the last pass over a tile prefetches the next tile's weights (`RILL_PREFETCH=0` turns it off, for
/// comparisons; the results are the same bits either way). Side by side in the decode bench on a 2-vCPU Xeon,
/// SmolLM2 Q4_1, three alternations each: prefetching the next tile's first group took one stream from 169–186
/// to 184–198 tokens/s and eight from 530–539 to 574–575 (capped at AVX2: 132–138 → 158–178 and 401–414 →
/// 438–456); prefetching the whole tile then took one stream from 192–209 to 207–227 and eight from 569–609 to
/// 614–636 (capped at AVX2: 156–188 → 209–225 and 460–473 → 470–483). Two and four tiles ahead, or a prefetch
/// every other cache line, were no better. Spreading the prefetches over the kernel's blocks ([`Ahead`]) instead
/// of a burst before it then took one stream from 198–238 to 203–253 and eight from 466–634 to 493–695 (both
/// kernel sets, two alternations each).
pub(super) fn prefetch_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RILL_PREFETCH").as_deref() != Ok("0"))
}

/// Weights for a kernel to bring into the cache while it computes: the next tile's, a slice at each of its
/// blocks, so that the requests overlap the arithmetic. Issued all at once before the kernel, the same
/// prefetches stalled it whenever they outnumbered the core's line-fill buffers: with eight activation rows
/// on AVX2 a quarter of the step's CPU time went to waiting in that burst.
#[derive(Clone, Copy)]
pub struct Ahead {
    /// Address of the region's first byte.
    start: usize,
    /// Bytes fetched per step.
    part: usize,
    /// Address past the region's last byte.
    end: usize,
}

impl Ahead {
    /// Nothing to fetch.
    pub const NONE: Ahead = Ahead {
        start: 0,
        part: 0,
        end: 0,
    };

    /// `region` (nothing when `None` or empty) spread over a kernel's `steps` fetch steps.
    pub(super) fn over<T>(region: Option<&[T]>, steps: usize) -> Self {
        match region {
            Some(r) if !r.is_empty() && steps > 0 => {
                let (start, bytes) = (r.as_ptr() as usize, std::mem::size_of_val(r));
                Ahead {
                    start,
                    part: bytes.div_ceil(steps),
                    end: start + bytes,
                }
            }
            _ => Ahead::NONE,
        }
    }

    /// Asks for the cache lines of step `b`'s slice of the region (a hint; it never faults).
    #[inline(always)]
    pub fn fetch(self, b: usize) {
        if self.part == 0 {
            return;
        }
        let lo = self.start + b * self.part;
        crate::model::prefetch::lines(lo, (lo + self.part).min(self.end));
    }
}
