//! The decoder's forward pass as a team step (see [`crate::pool::team`]): every member runs the layers'
//! serial work (norms, rotations, residual adds, the gated activation) on its own copies, and the matmuls,
//! the cache writes and attention as shared sections. Each value comes out of the same kernels as in
//! [`super::Decoder`]'s forward pass, so a step's logits have the same bits either way.
//!
//! Used on the CPU for steps of up to [`MAX_ROWS`] rows (decoding, and short prompts), when every weight runs
//! on rill's kernels; `RILL_TEAM=0` turns it off.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::{Decoder, Stack};
use crate::model::attention::{attend_item, ItemScratch, RawCache};
use crate::model::linear::{gelu_tanh, Activation};
use crate::model::qlinear::silu;
use crate::model::team::Tiled;
use crate::model::{ModelError, SeqStep};
use crate::pool::team::{Abandoned, Member, Program, Shape};

/// Most rows a team step takes: its section outputs grow with the rows, and big batches keep every thread
/// busy in fork-join sections anyway.
pub const MAX_ROWS: usize = 16;
/// Most values of section outputs one team step may hold (64 MB).
const MAX_BUFFER: usize = 16 << 20;

/// One step: what every member reads.
struct Plan {
    stack: Arc<Stack>,
    /// The new tokens' embeddings, `[rows, hidden]`.
    x0: Vec<f32>,
    /// Each row's sequence and position.
    rows: Vec<(usize, usize)>,
    /// Each sequence's rows, `(start, len)`.
    spans: Vec<(usize, usize)>,
    /// Rows whose logits the step returns.
    logit_rows: Vec<usize>,
    /// Each sequence's keys and values, layer by layer, with this step's positions reserved.
    kv: Vec<Vec<(RawCache, RawCache)>>,
    kv_dtype: DType,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    hidden: usize,
    act: Activation,
    /// Chunks per section.
    target: usize,
}

/// Runs `batch` as a team step if it qualifies; `Ok(None)` leaves it to the fork-join path.
pub(super) fn forward(
    dec: &Decoder,
    batch: &mut [SeqStep<'_>],
    spans: &[(usize, usize)],
) -> Result<Option<Tensor>, ModelError> {
    let m: usize = spans.iter().map(|s| s.1).sum();
    let threads = crate::pool::threads();
    if !dec.device.is_cpu()
        || threads < 2
        || m == 0
        || m > MAX_ROWS
        || !crate::pool::team::enabled()
        || batch
            .iter()
            .any(|s| !matches!(s.cache.dtype(), DType::F32 | DType::F16))
    {
        return Ok(None);
    }
    let logit_rows: Vec<usize> = batch
        .iter()
        .zip(spans)
        .flat_map(|(b, &(s, l))| s + l - b.logit_rows()..s + l)
        .collect();
    let cfg = &dec.cfg;
    let mut plan = Plan {
        stack: dec.stack.clone(),
        x0: Vec::new(),
        rows: Vec::with_capacity(m),
        spans: spans.to_vec(),
        logit_rows,
        kv: Vec::with_capacity(batch.len()),
        kv_dtype: batch[0].cache.dtype(),
        heads: cfg.n_heads,
        kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        hidden: 0,
        act: cfg.act,
        target: 8 * threads,
    };
    let Some(shapes) = plan.shapes(m) else {
        return Ok(None);
    };
    if shapes.iter().map(|s| s.out).sum::<usize>() > MAX_BUFFER
        || batch.iter().any(|s| s.cache.dtype() != plan.kv_dtype)
    {
        return Ok(None);
    }
    let ids: Vec<u32> = batch
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
    let x0 = dec.embed(&ids)?;
    plan.hidden = x0.dim(1)?;
    plan.x0 = x0.flatten_all()?.to_vec1()?;
    for (s, (seq, &(_, len))) in batch.iter_mut().zip(spans).enumerate() {
        let pos = seq.cache.len();
        plan.rows.extend((0..len).map(|r| (s, pos + r)));
        let layers = seq
            .cache
            .reserve(len, cfg.n_kv_heads, cfg.head_dim)?
            .iter()
            .map(|(k, v)| {
                Ok((
                    RawCache::new(k, cfg.head_dim)?,
                    RawCache::new(v, cfg.head_dim)?,
                ))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        plan.kv.push(layers);
    }
    let n_out = plan.logit_rows.len();
    let step = crate::pool::team(Arc::new(plan), &shapes);
    let logits = step.output(step.len() - 1).to_vec();
    for (seq, &(_, len)) in batch.iter_mut().zip(spans) {
        seq.cache.advance(len);
    }
    let vocab = logits.len() / n_out;
    let logits = Tensor::from_vec(logits, (n_out, vocab), &dec.device)?;
    Ok(Some(match cfg.final_softcap {
        Some(c) => ((logits / c as f64)?.tanh()? * c as f64)?,
        None => logits,
    }))
}

impl Plan {
    /// The sections of a step of `m` rows, in the order [`Program::run`] meets them; `None` if a weight
    /// runs only on candle's kernels.
    fn shapes(&self, m: usize) -> Option<Vec<Shape>> {
        let mut shapes = Vec::new();
        for l in &self.stack.layers {
            shapes.push(Tiled::new(&l.wqkv, self.target)?.shape(m));
            shapes.push(Shape {
                out: 0,
                chunks: self.spans.len(),
            });
            shapes.push(Shape {
                out: m * self.heads * self.head_dim,
                chunks: self.attention_chunks(m),
            });
            shapes.push(Tiled::new(&l.wo, self.target)?.shape(m));
            shapes.push(self.gate_up(&l.gate_up)?.shape(m));
            shapes.push(Tiled::new(&l.down, self.target)?.shape(m));
        }
        shapes.push(Tiled::new(&self.stack.output, self.target)?.shape(self.logit_rows.len()));
        Some(shapes)
    }

    /// The gated layer as one section of `act(gate) * up` where its halves allow, else of its product.
    fn gate_up<'a>(&self, l: &'a crate::model::linear::Linear) -> Option<Tiled<'a>> {
        Tiled::gated(l, self.target, self.act).or_else(|| Tiled::new(l, self.target))
    }

    fn attention_chunks(&self, m: usize) -> usize {
        (m * self.kv_heads).min(self.target)
    }

    /// Writes sequence `s`'s new keys and values of `layer` (`k`, `v`: every row's, after rotation) into
    /// its cache at the reserved positions, laid out and converted as [`crate::model::SeqCache::append`]
    /// stores them.
    fn write_kv(&self, layer: usize, s: usize, k: &[f32], v: &[f32]) {
        let (start, len) = self.spans[s];
        let (nkv, hd) = (self.kv_heads, self.head_dim);
        let pos = self.rows[start].1;
        let scatter = |src: &[f32]| {
            let mut t = vec![0f32; len * nkv * hd];
            for r in 0..len {
                let row = &src[(start + r) * nkv * hd..][..nkv * hd];
                for h in 0..nkv {
                    t[(h * len + r) * hd..][..hd].copy_from_slice(&row[h * hd..][..hd]);
                }
            }
            t
        };
        let (kc, vc) = &self.kv[s][layer];
        for (src, cache) in [(k, kc), (v, vc)] {
            let t = Tensor::from_vec(scatter(src), (nkv, len, hd), &candle_core::Device::Cpu)
                .and_then(|t| t.to_dtype(self.kv_dtype))
                .and_then(|t| cache.tensor().slice_set(&t, 1, pos));
            t.expect("writing into positions reserved in the cache");
        }
    }
}

/// A member's private values, row after row.
struct Rows {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
}

impl Program for Plan {
    fn run(&self, mm: &mut Member<'_>) -> Result<(), Abandoned> {
        let m = self.rows.len();
        let (nh, nkv, hd, d) = (self.heads, self.kv_heads, self.head_dim, self.hidden);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let group = nh / nkv;
        let tiled = |l| Tiled::new(l, self.target).expect("checked by shapes");
        let mut p = Rows {
            x: self.x0.clone(),
            h: vec![0f32; m * d],
            q: vec![0f32; m * qw],
            k: vec![0f32; m * kvw],
            v: vec![0f32; m * kvw],
            g: Vec::new(),
        };
        let items = RefCell::new(ItemScratch::default());
        for (i, l) in self.stack.layers.iter().enumerate() {
            norm_rows(&l.attn_norm, &p.x, &mut p.h, d);
            let wqkv = tiled(&l.wqkv);
            let qkv = wqkv.run(mm, &p.h, m)?;
            let rope = &self.stack.ropes[l.rope];
            for (r, row) in qkv.chunks_exact(wqkv.out()).enumerate() {
                let (qr, kr, vr) = (
                    &mut p.q[r * qw..][..qw],
                    &mut p.k[r * kvw..][..kvw],
                    &mut p.v[r * kvw..][..kvw],
                );
                qr.copy_from_slice(&row[..qw]);
                kr.copy_from_slice(&row[qw..qw + kvw]);
                vr.copy_from_slice(&row[qw + kvw..qw + 2 * kvw]);
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    qn.forward_host(qr);
                    kn.forward_host(kr);
                }
                let pos = self.rows[r].1;
                rope.rotate_host(qr, pos);
                rope.rotate_host(kr, pos);
            }
            let (k, v) = (&p.k, &p.v);
            mm.section(|_, _| {}, |s, _, _| self.write_kv(i, s, k, v))?;
            let n_items = m * nkv;
            let chunks = self.attention_chunks(m);
            let span = |c: usize| c * n_items / chunks..(c + 1) * n_items / chunks;
            let q = &p.q;
            let att = mm.section(
                |c, scratch| {
                    let its = span(c);
                    scratch.resize(its.len() * group * hd, 0.0);
                    let mut sc = items.borrow_mut();
                    for (j, item) in its.enumerate() {
                        let (row, kvh) = (item / nkv, item % nkv);
                        let (seq, pos) = self.rows[row];
                        let (kc, vc) = &self.kv[seq][i];
                        let qh = &q[row * qw + kvh * group * hd..][..group * hd];
                        let out = &mut scratch[j * group * hd..][..group * hd];
                        attend_item(qh, kc, vc, kvh, pos, &l.scoring, &mut sc, out);
                    }
                },
                |c, scratch, out| {
                    let its = span(c);
                    // SAFETY: items `its` own these outputs (item (row, kv head) is `group` heads of a row).
                    unsafe { out.slice(its.start * group * hd..its.end * group * hd) }
                        .copy_from_slice(scratch)
                },
            )?;
            let o = tiled(&l.wo).run(mm, att, m)?;
            residual(&mut p.x, o, l.post_attn_norm.as_ref(), d);
            norm_rows(&l.ffn_norm, &p.x, &mut p.h, d);
            let gate_up = self.gate_up(&l.gate_up).expect("checked by shapes");
            let gu = gate_up.run(mm, &p.h, m)?;
            let g = if gate_up.is_gated() {
                gu
            } else {
                glu(gu, &mut p.g, gate_up.out() / 2, self.act);
                &p.g
            };
            let down = tiled(&l.down).run(mm, g, m)?;
            residual(&mut p.x, down, l.post_ffn_norm.as_ref(), d);
        }
        let last: Vec<f32> = self
            .logit_rows
            .iter()
            .flat_map(|&r| p.x[r * d..(r + 1) * d].iter().copied())
            .collect();
        let mut normed = vec![0f32; last.len()];
        norm_rows(&self.stack.norm, &last, &mut normed, d);
        tiled(&self.stack.output).run(mm, &normed, self.logit_rows.len())?;
        Ok(())
    }
}

fn norm_rows(norm: &crate::model::norm::RmsNorm, x: &[f32], out: &mut [f32], d: usize) {
    for (x, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        norm.row(x, o);
    }
}

/// `x += post(h)` row by row (`post`: a branch's output norm, if the family has one).
fn residual(x: &mut [f32], h: &[f32], post: Option<&crate::model::norm::RmsNorm>, d: usize) {
    let mut tmp = vec![0f32; d];
    for (x, h) in x.chunks_exact_mut(d).zip(h.chunks_exact(d)) {
        let h = match post {
            Some(n) => {
                n.row(h, &mut tmp);
                &tmp[..]
            }
            None => h,
        };
        x.iter_mut().zip(h).for_each(|(x, h)| *x += h);
    }
}

/// `g[r, i] = act(gu[r, i]) * gu[r, half + i]`, as the forward pass's gated activation computes it.
fn glu(gu: &[f32], g: &mut Vec<f32>, half: usize, act: Activation) {
    g.clear();
    for row in gu.chunks_exact(2 * half) {
        let (gate, up) = row.split_at(half);
        match act {
            Activation::Silu => g.extend(gate.iter().zip(up).map(|(&a, &u)| silu(a) * u)),
            Activation::GeluTanh => g.extend(gate.iter().zip(up).map(|(&a, &u)| gelu_tanh(a) * u)),
        }
    }
}
