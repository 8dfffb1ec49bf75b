//! The model side of a team step (see [`crate::pool::team`](mod@crate::pool::team)): linear layers cut into column chunks, each
//! computed by rill's kernels into a member's scratch with exactly the bits the layer's own forward gives,
//! and committed into the section's output.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::pool::team::{Abandoned, Member, Out, Shape, Step};

use super::attention::{attend_item, ItemScratch, RawCache, Scoring};
use super::{ModelError, SeqStep};

use super::dense::{self, Dense, Post};
use super::gate::gate_in_place;
use super::linear::{Activation, Linear};
use super::quant::q4_1::BlockQ8_1;
use super::quant::q4_1x8::{Q4Kx8, Q4_1x8};
use super::quant::q6_kx8::{ActHalves, Q6Kx8};
use super::quant::q8_0x8::{ActQ8_0Sum, Q8_0x8};
use super::quant::x8::{Interleaved, Kernel};

/// One weight a team step can compute tile by tile.
pub enum Part<'a> {
    Q4_1(&'a Interleaved<Q4_1x8>),
    Q8_0(&'a Interleaved<Q8_0x8>),
    Q4K(&'a Interleaved<Q4Kx8>),
    Q6K(&'a Interleaved<Q6Kx8>),
    Dense(&'a Dense),
}

/// A layer's parts with their output widths, and the bias added to the product.
pub type Parts<'a> = (Vec<(Part<'a>, usize)>, Option<&'a [f32]>);

/// Activation rows as one part's kernel reads them.
pub enum Acts {
    Q8_1(Vec<BlockQ8_1>),
    Q6(Vec<ActHalves>),
    Q8_0(Vec<ActQ8_0Sum>),
    /// The dense kernel reads the f32 rows themselves.
    Float,
}

impl Part<'_> {
    fn tiles(&self) -> usize {
        match self {
            Part::Q4_1(p) => p.tiles(),
            Part::Q8_0(p) => p.tiles(),
            Part::Q4K(p) => p.tiles(),
            Part::Q6K(p) => p.tiles(),
            Part::Dense(d) => d.tiles(),
        }
    }

    fn tile_cols(&self, tiles: Range<usize>) -> Range<usize> {
        match self {
            Part::Q4_1(p) => p.tile_cols(tiles),
            Part::Q8_0(p) => p.tile_cols(tiles),
            Part::Q4K(p) => p.tile_cols(tiles),
            Part::Q6K(p) => p.tile_cols(tiles),
            Part::Dense(d) => dense::tile_cols(tiles, d.out_dim()),
        }
    }

    fn prepare(&self, x: &[f32], m: usize) -> Acts {
        match self {
            Part::Q4_1(p) => Acts::Q8_1(p.prepare(x, m)),
            Part::Q4K(p) => Acts::Q8_1(p.prepare(x, m)),
            Part::Q8_0(p) => Acts::Q8_0(p.prepare(x, m)),
            Part::Q6K(p) => Acts::Q6(p.prepare(x, m)),
            Part::Dense(_) => Acts::Float,
        }
    }

    /// The columns of `tiles` for `m` rows into `dst`, rows `ld` apart.
    ///
    /// # Safety
    /// `dst` valid for `m` rows of the tiles' columns, `ld` apart, written by this thread alone; `acts` from
    /// this part's [`Self::prepare`] of `x`.
    unsafe fn compute(
        &self,
        acts: &Acts,
        x: &[f32],
        m: usize,
        tiles: Range<usize>,
        dst: *mut f32,
        ld: usize,
    ) {
        let k = Kernel::detect();
        match (self, acts) {
            (Part::Q4_1(p), Acts::Q8_1(a)) => p.tiles_into(k, a, m, tiles, dst, ld),
            (Part::Q4K(p), Acts::Q8_1(a)) => p.tiles_into(k, a, m, tiles, dst, ld),
            (Part::Q8_0(p), Acts::Q8_0(a)) => p.tiles_into(k, a, m, tiles, dst, ld),
            (Part::Q6K(p), Acts::Q6(a)) => p.tiles_into(k, a, m, tiles, dst, ld),
            (Part::Dense(d), Acts::Float) => d.tiles_into(x, m, tiles, dst, ld),
            _ => unreachable!("activations prepared by another part"),
        }
    }
}

/// A linear layer as the chunks of one team section: its parts side by side in the output, each cut into
/// ranges of column tiles.
pub struct Tiled<'a> {
    /// Each part, where its columns start in the output, and how many it has.
    parts: Vec<(Part<'a>, usize, usize)>,
    bias: Option<&'a [f32]>,
    /// (part, tiles) of each chunk.
    chunks: Vec<(usize, Range<usize>)>,
    out: usize,
    /// A gated layer (`[gate; up]`) whose chunks each compute matching gate and up columns and commit
    /// `act(gate) * up`: the up columns' part, and how many tiles they are past the gate's.
    gated: Option<(usize, usize, Activation)>,
    /// An element-wise activation on the outputs (GPT-2's GELU), as the dense kernel's `post` applies it.
    post: Option<&'a Post>,
}

impl<'a> Tiled<'a> {
    /// `l` in about `target` chunks, or `None` when one of its parts runs only on candle's kernels.
    pub fn new(l: &'a Linear, target: usize) -> Option<Self> {
        let (found, bias) = l.team_parts()?;
        let total: usize = found.iter().map(|(p, _)| p.tiles()).sum();
        let (mut parts, mut chunks, mut offset) = (Vec::new(), Vec::new(), 0);
        for (i, (part, width)) in found.into_iter().enumerate() {
            let tiles = part.tiles();
            let n = ((target * tiles + total / 2) / total.max(1)).clamp(1, tiles.max(1));
            chunks.extend((0..n).map(|c| (i, c * tiles / n..(c + 1) * tiles / n)));
            parts.push((part, offset, width));
            offset += width;
        }
        Some(Self {
            parts,
            bias,
            chunks,
            out: offset,
            gated: None,
            post: None,
        })
    }

    /// A dense weight (with its bias), then `post` on the outputs, in about `target` chunks.
    pub fn dense(d: &'a Dense, target: usize, post: Option<&'a Post>) -> Self {
        let tiles = d.tiles();
        let n = target.clamp(1, tiles.max(1));
        Self {
            parts: vec![(Part::Dense(d), 0, d.out_dim())],
            bias: None,
            chunks: (0..n)
                .map(|c| (0, c * tiles / n..(c + 1) * tiles / n))
                .collect(),
            out: d.out_dim(),
            gated: None,
            post,
        }
    }

    /// A stacked `[gate; up]` layer whose section outputs `act(x·gateᵀ) * (x·upᵀ)` (`[m, out / 2]`), the
    /// gate and up columns of a chunk computed together; `None` unless the halves fall on tile boundaries
    /// (one part of even width in whole tiles, or two parts of equal width).
    pub fn gated(l: &'a Linear, target: usize, act: Activation) -> Option<Self> {
        let (found, bias) = l.team_parts()?;
        let whole = |p: &Part<'_>, w: usize| p.tile_cols(0..p.tiles()).end == w;
        let (gate_tiles, up, shift) = match found.as_slice() {
            [(p, w)] if whole(p, *w) && w % 32 == 0 => (p.tiles() / 2, 0, p.tiles() / 2),
            [(p, w), (q, v)] if w == v && whole(p, *w) && whole(q, *v) => (p.tiles(), 1, 0),
            _ => return None,
        };
        let half = found.iter().map(|(_, w)| w).sum::<usize>() / 2;
        let n = target.clamp(1, gate_tiles.max(1));
        let chunks = (0..n)
            .map(|c| (0, c * gate_tiles / n..(c + 1) * gate_tiles / n))
            .collect();
        let mut offset = 0;
        let parts = found
            .into_iter()
            .map(|(p, w)| {
                offset += w;
                (p, offset - w, w)
            })
            .collect();
        Some(Self {
            parts,
            bias,
            chunks,
            out: half,
            gated: Some((up, shift, act)),
            post: None,
        })
    }

    /// The section's shape for `m` rows.
    pub fn shape(&self, m: usize) -> Shape {
        Shape {
            out: m * self.out,
            chunks: self.chunks.len(),
        }
    }

    /// Output width.
    pub fn out(&self) -> usize {
        self.out
    }

    /// Whether the section outputs the gated activation (see [`Self::gated`]).
    pub fn is_gated(&self) -> bool {
        self.gated.is_some()
    }

    /// One section: `x` (`m` rows) through the layer; returns `[m, out]`, every value with the bits of
    /// [`Linear::forward`].
    pub fn run<'s>(
        &self,
        member: &mut Member<'s>,
        x: &[f32],
        m: usize,
    ) -> Result<&'s [f32], Abandoned> {
        // A member catching up finds the section finished and prepares nothing.
        let acts: Vec<Acts> = match member.next_is_done() {
            true => Vec::new(),
            false => self.parts.iter().map(|(p, _, _)| p.prepare(x, m)).collect(),
        };
        member.section(
            |c, scratch| self.work(&acts, x, m, c, scratch),
            |c, scratch, out| self.commit(m, c, scratch, out),
        )
    }

    /// Chunk `c` into `scratch`: `m` rows of its tiles' columns, the bias added (and for a gated layer,
    /// the gated activation of its gate and up columns).
    fn work(&self, acts: &[Acts], x: &[f32], m: usize, c: usize, scratch: &mut Vec<f32>) {
        if let Some((up, shift, act)) = self.gated {
            let (_, tiles) = &self.chunks[c];
            let n = m * self.parts[0].0.tile_cols(tiles.clone()).len();
            // Gate columns, then the matching up columns after them in the same scratch.
            self.columns(acts, x, m, 0, tiles.clone(), scratch);
            let ups = tiles.start + shift..tiles.end + shift;
            self.columns(acts, x, m, up, ups, scratch);
            let (g, u) = scratch.split_at_mut(n);
            gate_in_place(g, u, act);
            scratch.truncate(n);
            return;
        }
        let (p, tiles) = &self.chunks[c];
        self.columns(acts, x, m, *p, tiles.clone(), scratch);
    }

    /// Part `p`'s columns of `tiles` for `m` rows appended to `scratch`, the bias added.
    fn columns(
        &self,
        acts: &[Acts],
        x: &[f32],
        m: usize,
        p: usize,
        tiles: Range<usize>,
        scratch: &mut Vec<f32>,
    ) {
        let (part, offset, width) = &self.parts[p];
        let cols = part.tile_cols(tiles.clone());
        let (w, at) = (cols.len(), scratch.len());
        scratch.resize(at + m * w, 0.0);
        let ours = &mut scratch[at..];
        // SAFETY: `ours` holds `m` rows of `w` values, this member's own.
        unsafe { part.compute(&acts[p], x, m, tiles, ours.as_mut_ptr(), w) };
        if let Some(b) = self.bias {
            let valid = cols.end.min(*width).saturating_sub(cols.start);
            for row in ours.chunks_exact_mut(w) {
                for (y, b) in row[..valid].iter_mut().zip(&b[offset + cols.start..]) {
                    *y += b;
                }
            }
        }
        if let Some(post) = self.post {
            ours.chunks_exact_mut(w).for_each(post);
        }
    }

    /// Writes chunk `c`'s columns (padding columns of K-quant weights left out) of every row.
    fn commit(&self, m: usize, c: usize, scratch: &[f32], out: &Out) {
        let (p, tiles) = &self.chunks[c];
        if self.gated.is_some() {
            let cols = self.parts[0].0.tile_cols(tiles.clone());
            for r in 0..m {
                let at = r * self.out + cols.start;
                // SAFETY: these columns of row `r` belong to chunk `c` alone.
                unsafe { out.write(at, &scratch[r * cols.len()..][..cols.len()]) };
            }
            return;
        }
        let (part, offset, width) = &self.parts[*p];
        let cols = part.tile_cols(tiles.clone());
        let valid = cols.end.min(*width).saturating_sub(cols.start);
        for r in 0..m {
            let at = r * self.out + offset + cols.start;
            // SAFETY: these columns of row `r` belong to chunk `c` alone.
            unsafe { out.write(at, &scratch[r * cols.len()..][..valid]) };
        }
    }
}

/// The sequences of a team step and their caches: each row's sequence and position, each sequence's rows, and
/// its keys and values layer by layer with this step's positions reserved.
pub struct Caches {
    pub rows: Vec<(usize, usize)>,
    spans: Vec<(usize, usize)>,
    kv: Vec<Vec<(RawCache, RawCache)>>,
    dtype: DType,
    kv_heads: usize,
    head_dim: usize,
    /// Chunks of an attention section.
    target: usize,
}

impl Caches {
    /// Whether every cache in `batch` can take a team step (f32 or f16, all alike).
    pub fn fit(batch: &[SeqStep<'_>]) -> bool {
        let dtype = batch.first().map(|s| s.cache.dtype());
        matches!(dtype, Some(DType::F32 | DType::F16))
            && batch.iter().all(|s| Some(s.cache.dtype()) == dtype)
    }

    /// Reserves the new positions of every sequence in its cache (see [`crate::model::SeqCache::reserve`]).
    pub fn reserve(
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
        target: usize,
    ) -> Result<Self, ModelError> {
        let mut c = Self {
            rows: Vec::new(),
            spans: spans.to_vec(),
            kv: Vec::with_capacity(batch.len()),
            dtype: batch[0].cache.dtype(),
            kv_heads,
            head_dim,
            target,
        };
        for (s, (seq, &(_, len))) in batch.iter_mut().zip(spans).enumerate() {
            let pos = seq.cache.len();
            c.rows.extend((0..len).map(|r| (s, pos + r)));
            let layers = seq
                .cache
                .reserve(len, kv_heads, head_dim, &candle_core::Device::Cpu)?
                .iter()
                .map(|(k, v)| Ok((RawCache::new(k, head_dim)?, RawCache::new(v, head_dim)?)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            c.kv.push(layers);
        }
        Ok(c)
    }

    /// The two sections of one layer's attention for `m` rows and `heads` query heads: the cache write,
    /// then attention.
    pub fn shapes(
        m: usize,
        spans: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        target: usize,
    ) -> [Shape; 2] {
        [
            Shape {
                out: 0,
                chunks: spans,
            },
            Shape {
                out: m * heads * head_dim,
                chunks: (m * kv_heads).min(target),
            },
        ]
    }

    /// Writes every sequence's new keys and values of `layer` (`k`, `v`: `[rows, kv_heads * head_dim]`,
    /// rotated) into the reserved positions, one chunk per sequence, laid out and converted as
    /// [`crate::model::SeqCache::append`] stores them; then attends every row's query heads `q`
    /// (`[rows, heads * head_dim]`) over its cache. Returns `[rows, heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend<'s>(
        &self,
        mm: &mut Member<'s>,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        scoring: &Scoring,
    ) -> Result<&'s [f32], Abandoned> {
        // The rows are laid out and converted in `work`; the commit is only the copy into the cache.
        let built = RefCell::new(None);
        mm.section(
            |s, _| *built.borrow_mut() = Some((s, self.rows_of(s, k), self.rows_of(s, v))),
            |s, _, _| {
                let built = built.borrow();
                let Some((b, k, v)) = built.as_ref().filter(|b| b.0 == s) else {
                    unreachable!("a commit follows its own chunk's work")
                };
                self.write(layer, *b, k, v)
            },
        )?;
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let (group, qw) = (heads / nkv, heads * hd);
        let n_items = self.rows.len() * nkv;
        let chunks = n_items.min(self.target);
        let span = |c: usize| c * n_items / chunks..(c + 1) * n_items / chunks;
        let scratch_items = RefCell::new(ItemScratch::default());
        mm.section(
            |c, scratch| {
                let its = span(c);
                scratch.resize(its.len() * group * hd, 0.0);
                let mut sc = scratch_items.borrow_mut();
                for (j, item) in its.enumerate() {
                    let (row, kvh) = (item / nkv, item % nkv);
                    let (seq, pos) = self.rows[row];
                    let (kc, vc) = &self.kv[seq][layer];
                    let qh = &q[row * qw + kvh * group * hd..][..group * hd];
                    let out = &mut scratch[j * group * hd..][..group * hd];
                    attend_item(qh, kc, vc, kvh, pos, scoring, &mut sc, out);
                }
            },
            |c, scratch, out| {
                let its = span(c);
                // SAFETY: items `its` own these outputs (item (row, kv head) is `group` heads of a row).
                unsafe { out.write(its.start * group * hd, scratch) }
            },
        )
    }

    /// Sequence `s`'s new rows of `src` (`[rows, kv_heads * head_dim]`) as its cache stores them:
    /// `[kv_heads, len, head_dim]` in the cache's type.
    fn rows_of(&self, s: usize, src: &[f32]) -> Tensor {
        let (start, len) = self.spans[s];
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let mut t = vec![0f32; len * nkv * hd];
        for r in 0..len {
            let row = &src[(start + r) * nkv * hd..][..nkv * hd];
            for h in 0..nkv {
                t[(h * len + r) * hd..][..hd].copy_from_slice(&row[h * hd..][..hd]);
            }
        }
        Tensor::from_vec(t, (nkv, len, hd), &Device::Cpu)
            .and_then(|t| t.to_dtype(self.dtype))
            .expect("a host tensor of the cache's shape")
    }

    /// Writes sequence `s`'s new keys and values of `layer` (from [`Self::rows_of`]) into its reserved
    /// positions.
    fn write(&self, layer: usize, s: usize, k: &Tensor, v: &Tensor) {
        let pos = self.rows[self.spans[s].0].1;
        let (kc, vc) = &self.kv[s][layer];
        for (t, cache) in [(k, kc), (v, vc)] {
            cache
                .tensor()
                .slice_set(t, 1, pos)
                .expect("writing into positions reserved in the cache");
        }
    }
}

/// The rows of a batch whose logits a step returns ([`SeqStep::logit_rows`] of each sequence's last rows).
pub fn logit_rows(batch: &[SeqStep<'_>], spans: &[(usize, usize)]) -> Vec<usize> {
    batch
        .iter()
        .zip(spans)
        .flat_map(|(b, &(s, l))| s + l - b.logit_rows()..s + l)
        .collect()
}

/// Ends a team step: the caches advance past the new positions, and the last section's output (`rows`
/// logit rows) becomes the logits tensor.
pub fn finish(
    step: Arc<Step>,
    batch: &mut [SeqStep<'_>],
    spans: &[(usize, usize)],
    rows: usize,
) -> Result<Tensor, ModelError> {
    let logits = Step::into_last(step);
    for (seq, &(_, len)) in batch.iter_mut().zip(spans) {
        seq.cache.advance(len);
    }
    let vocab = logits.len() / rows.max(1);
    Ok(Tensor::from_vec(logits, (rows, vocab), &Device::Cpu)?)
}

/// Most rows a team step takes: its section outputs grow with the rows, and big batches keep every thread
/// busy in fork-join sections anyway.
pub const MAX_ROWS: usize = 16;
/// Most values of section outputs one team step may hold (64 MB).
const MAX_BUFFER: usize = 16 << 20;

/// Whether team steps may run a batch of `m` rows now: team steps on, a pool with workers, at most
/// [`MAX_ROWS`] rows.
pub fn wanted(m: usize) -> bool {
    crate::pool::team::enabled() && crate::pool::threads() > 1 && (1..=MAX_ROWS).contains(&m)
}

/// Whether a step of `shapes` stays within the buffer a team step may hold.
pub fn fits(shapes: &[Shape]) -> bool {
    shapes.iter().map(|s| s.out).sum::<usize>() <= MAX_BUFFER
}

/// What every member of a team step reads besides the weights.
pub struct Input {
    /// The new rows' embeddings, `[rows, hidden]`.
    pub x0: Vec<f32>,
    pub caches: Caches,
    /// Rows whose logits the step returns.
    pub logit_rows: Vec<usize>,
    /// Chunks per section.
    pub target: usize,
}

/// `f(row, out)` for each `d`-value row of `x` and the matching row of `out` (a norm, on a member's copies).
pub fn each_row(x: &[f32], out: &mut [f32], d: usize, f: impl Fn(&[f32], &mut [f32])) {
    for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        f(x, o);
    }
}

/// The `d`-value rows `rows` of `x`, one after the other (the rows a step returns logits for).
pub fn gather(x: &[f32], rows: &[usize], d: usize) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| x[r * d..(r + 1) * d].iter().copied())
        .collect()
}
