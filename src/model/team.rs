//! The model side of a team step (see [`crate::pool::team`]): linear layers cut into column chunks, each
//! computed by rill's kernels into a member's scratch with exactly the bits the layer's own forward gives,
//! and committed into the section's output.

use std::ops::Range;

use crate::pool::team::{Abandoned, Member, Out, Shape};

use super::dense::{self, Dense};
use super::linear::{gelu_tanh, Activation, Linear};
use super::qlinear::silu;
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
        })
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
        let acts: Vec<Acts> = self.parts.iter().map(|(p, _, _)| p.prepare(x, m)).collect();
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
            let w = self.parts[0].0.tile_cols(tiles.clone()).len();
            let mut g = std::mem::take(scratch);
            self.columns(acts, x, m, 0, tiles.clone(), &mut g);
            let mut u = Vec::with_capacity(m * w);
            self.columns(
                acts,
                x,
                m,
                up,
                tiles.start + shift..tiles.end + shift,
                &mut u,
            );
            let f = match act {
                Activation::Silu => silu,
                Activation::GeluTanh => gelu_tanh,
            };
            g.iter_mut().zip(&u).for_each(|(g, &u)| *g = f(*g) * u);
            *scratch = g;
            return;
        }
        let (p, tiles) = &self.chunks[c];
        self.columns(acts, x, m, *p, tiles.clone(), scratch);
    }

    /// Part `p`'s columns of `tiles` for `m` rows into `scratch`, the bias added.
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
        let w = cols.len();
        scratch.resize(m * w, 0.0);
        // SAFETY: `scratch` holds `m` rows of `w` values, this member's own.
        unsafe { part.compute(&acts[p], x, m, tiles, scratch.as_mut_ptr(), w) };
        if let Some(b) = self.bias {
            let valid = cols.end.min(*width).saturating_sub(cols.start);
            for row in scratch.chunks_exact_mut(w) {
                for (y, b) in row[..valid].iter_mut().zip(&b[offset + cols.start..]) {
                    *y += b;
                }
            }
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
                unsafe { out.slice(at..at + cols.len()) }
                    .copy_from_slice(&scratch[r * cols.len()..][..cols.len()]);
            }
            return;
        }
        let (part, offset, width) = &self.parts[*p];
        let cols = part.tile_cols(tiles.clone());
        let valid = cols.end.min(*width).saturating_sub(cols.start);
        for r in 0..m {
            let at = r * self.out + offset + cols.start;
            // SAFETY: these columns of row `r` belong to chunk `c` alone.
            unsafe { out.slice(at..at + valid) }
                .copy_from_slice(&scratch[r * cols.len()..][..valid]);
        }
    }
}
