//! Attention for team steps (`crate::pool::team`): a cache read without candle's storage lock, and one work
//! item of [`super::attend_rows`] on its own, with the same arithmetic.

use candle_core::{CpuStorage, Result, Storage, Tensor};

use super::{attend_one, simd_rows, CacheData, CacheView, Scoring};

/// One sequence's keys or values of one layer, held for a team step (`crate::pool::team`): the cache's
/// whole buffer (`[kv_heads, allocated positions, head_dim]`, kept alive by this clone) and its address, read
/// without holding candle's storage lock, so a member that lost its CPU while reading blocks no one.
pub(crate) struct RawCache {
    keep: Tensor,
    data: RawData,
    hd: usize,
    head_stride: usize,
    pos_stride: usize,
}

#[derive(Clone, Copy)]
enum RawData {
    F32(*const f32, usize),
    F16(*const half::f16, usize),
}

// SAFETY: the pointers address the buffer of `keep`, which this value keeps alive. The values a step reads
// (earlier positions, and the step's own once their commit is seen) are not written while it reads them.
unsafe impl Send for RawCache {}
unsafe impl Sync for RawCache {}

impl RawCache {
    /// The buffer of `all` (a cache's whole buffer, f32 or f16 on the CPU).
    pub(crate) fn new(all: &Tensor, hd: usize) -> Result<Self> {
        let (storage, layout) = all.storage_and_layout();
        let (dims, stride) = (layout.dims(), layout.stride());
        if dims.len() != 3 || dims[2] != hd || stride[2] != 1 {
            candle_core::bail!("team attention: unexpected cache layout {layout:?}");
        }
        let at = layout.start_offset();
        let data = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => RawData::F32(v[at..].as_ptr(), v.len() - at),
            Storage::Cpu(CpuStorage::F16(v)) => RawData::F16(v[at..].as_ptr(), v.len() - at),
            _ => candle_core::bail!("attention needs an f32 or f16 CPU cache"),
        };
        let (head_stride, pos_stride) = (stride[0], stride[1]);
        drop(storage);
        Ok(Self {
            keep: all.clone(),
            data,
            hd,
            head_stride,
            pos_stride,
        })
    }

    /// The whole buffer, as the cache holds it.
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.keep
    }

    /// Head `head`'s first `positions` positions, as a view of one head (index it with head 0). Only those
    /// values are borrowed: later positions of the buffer may be written while this view is read.
    fn view(&self, head: usize, positions: usize) -> CacheView<'_> {
        let (at, len) = (
            head * self.head_stride,
            (positions - 1) * self.pos_stride + self.hd,
        );
        // SAFETY: see the type's `Send` / `Sync`: the buffer is alive for `&self`, `at + len` is inside it
        // (head and positions within the cache's shape), and these positions are written before this step
        // reads them and not again.
        let data = unsafe {
            match self.data {
                RawData::F32(p, total) => {
                    assert!(at + len <= total);
                    CacheData::F32(std::slice::from_raw_parts(p.add(at), len))
                }
                RawData::F16(p, total) => {
                    assert!(at + len <= total);
                    CacheData::F16(std::slice::from_raw_parts(p.add(at), len))
                }
            }
        };
        CacheView {
            data,
            len: positions,
            hd: self.hd,
            head_stride: 0,
            pos_stride: self.pos_stride,
        }
    }
}

/// Scratch for [`attend_item`], kept across items.
#[derive(Default)]
pub(crate) struct ItemScratch {
    scores: Vec<f32>,
    row: Vec<f32>,
}

/// One work item of [`attend_rows`] for a team step: the query heads `q` of kv head `kv` of a row at `pos`
/// over `k`, `v` (positions up to `pos` written), into `out`; the same arithmetic, so the same bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_item(
    q: &[f32],
    k: &RawCache,
    v: &RawCache,
    kv: usize,
    pos: usize,
    scoring: &Scoring,
    scratch: &mut ItemScratch,
    out: &mut [f32],
) {
    scratch.row.resize(k.hd, 0.0);
    attend_one(
        q,
        &k.view(kv, pos + 1),
        &v.view(kv, pos + 1),
        0,
        pos,
        scoring,
        &mut scratch.scores,
        &mut scratch.row,
        out,
        simd_rows(k.hd),
    );
}
