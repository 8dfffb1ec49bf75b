//! The decoder's forward pass as a team step (see [`crate::pool::team`](mod@crate::pool::team)): every member runs the layers'
//! serial work (norms, rotations, residual adds, the gated activation) on its own copies, and the matmuls,
//! the cache writes and attention as shared sections. Each value comes out of the same kernels as in
//! [`super::Decoder`]'s forward pass, so a step's logits have the same bits either way.
//!
//! Used on the CPU for steps of up to [`crate::model::team::MAX_ROWS`] rows (decoding, and short prompts), when every weight runs
//! on rill's kernels; `RILL_TEAM=0` turns it off.

use std::sync::Arc;

use candle_core::Tensor;

use super::{Decoder, DecoderConfig, Stack};
use crate::model::gate::gate_in_place;
use crate::model::linear::{Activation, Linear};
use crate::model::team::{
    each_row, finish, fits, gather, logit_rows, wanted, Caches, Input, Tiled,
};
use crate::model::{ModelError, SeqStep};
use crate::pool::team::{Abandoned, Member, Program, Shape};

/// One step: what every member reads.
struct Plan {
    stack: Arc<Stack>,
    input: Input,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    hidden: usize,
    act: Activation,
}

/// Runs `batch` as a team step if it qualifies; `Ok(None)` leaves it to the fork-join path.
pub(super) fn forward(
    dec: &Decoder,
    batch: &mut [SeqStep<'_>],
    spans: &[(usize, usize)],
) -> Result<Option<Tensor>, ModelError> {
    let m: usize = spans.iter().map(|s| s.1).sum();
    if !dec.device.is_cpu() || !wanted(m) || !Caches::fit(batch) {
        return Ok(None);
    }
    let cfg = &dec.cfg;
    let target = 8 * crate::pool::threads();
    let logit_rows = logit_rows(batch, spans);
    let Some(shapes) = shapes(&dec.stack, cfg, m, spans.len(), logit_rows.len(), target) else {
        return Ok(None);
    };
    if !fits(&shapes) {
        return Ok(None);
    }
    let ids: Vec<u32> = batch
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
    let x0 = dec.embed(&Tensor::new(ids.as_slice(), &dec.device)?)?;
    let plan = Plan {
        stack: dec.stack.clone(),
        hidden: x0.dim(1)?,
        input: Input {
            x0: x0.flatten_all()?.to_vec1()?,
            caches: Caches::reserve(batch, spans, cfg.n_kv_heads, cfg.head_dim, target)?,
            logit_rows,
            target,
        },
        heads: cfg.n_heads,
        kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        act: cfg.act,
    };
    let rows = plan.input.logit_rows.len();
    let step = crate::pool::team(Arc::new(plan), &shapes);
    let logits = finish(step, batch, spans, rows)?;
    Ok(Some(match cfg.final_softcap {
        Some(c) => ((logits / c as f64)?.tanh()? * c as f64)?,
        None => logits,
    }))
}

/// The gated layer as one section of `act(gate) * up` where its halves allow, else of its product.
fn gate_up<'a>(l: &'a Linear, target: usize, act: Activation) -> Option<Tiled<'a>> {
    Tiled::gated(l, target, act).or_else(|| Tiled::new(l, target))
}

/// The sections of a step of `m` rows of `seqs` sequences, in the order [`Program::run`] meets them; `None`
/// if a weight runs only on candle's kernels.
fn shapes(
    stack: &Stack,
    cfg: &DecoderConfig,
    m: usize,
    seqs: usize,
    logit_rows: usize,
    target: usize,
) -> Option<Vec<Shape>> {
    let mut shapes = Vec::new();
    for l in &stack.layers {
        shapes.push(Tiled::new(&l.wqkv, target)?.shape(m));
        let (h, kv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        shapes.extend(Caches::shapes(m, seqs, h, kv, hd, target));
        shapes.push(Tiled::new(&l.wo, target)?.shape(m));
        shapes.push(gate_up(&l.gate_up, target, cfg.act)?.shape(m));
        shapes.push(Tiled::new(&l.down, target)?.shape(m));
    }
    shapes.push(Tiled::new(&stack.output, target)?.shape(logit_rows));
    Some(shapes)
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
        let m = self.input.caches.rows.len();
        let (nh, nkv, hd, d) = (self.heads, self.kv_heads, self.head_dim, self.hidden);
        let (qw, kvw) = (nh * hd, nkv * hd);
        let tiled = |l| Tiled::new(l, self.input.target).expect("checked by shapes");
        let mut p = Rows {
            x: self.input.x0.clone(),
            h: vec![0f32; m * d],
            q: vec![0f32; m * qw],
            k: vec![0f32; m * kvw],
            v: vec![0f32; m * kvw],
            g: Vec::new(),
        };
        for (i, l) in self.stack.layers.iter().enumerate() {
            each_row(&p.x, &mut p.h, d, |x, o| l.attn_norm.row(x, o));
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
                let pos = self.input.caches.rows[r].1;
                rope.rotate_host(qr, pos);
                rope.rotate_host(kr, pos);
            }
            let att = self
                .input
                .caches
                .attend(mm, i, &p.q, &p.k, &p.v, nh, &l.scoring)?;
            let o = tiled(&l.wo).run(mm, att, m)?;
            residual(&mut p.x, o, l.post_attn_norm.as_ref(), d);
            each_row(&p.x, &mut p.h, d, |x, o| l.ffn_norm.row(x, o));
            let gate_up =
                gate_up(&l.gate_up, self.input.target, self.act).expect("checked by shapes");
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
        let last = gather(&p.x, &self.input.logit_rows, d);
        let mut normed = vec![0f32; last.len()];
        each_row(&last, &mut normed, d, |x, o| self.stack.norm.row(x, o));
        tiled(&self.stack.output).run(mm, &normed, self.input.logit_rows.len())?;
        Ok(())
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
        let at = g.len();
        g.extend_from_slice(gate);
        gate_in_place(&mut g[at..], up, act);
    }
}
