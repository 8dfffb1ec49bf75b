//! GPT-2's forward pass as a team step (see [`crate::pool::team`](mod@crate::pool::team) and the decoder's): every member runs the
//! layer norms and residual adds on its own copies; the matmuls (GELU applied inside the MLP's first), the
//! cache writes and attention are shared sections. The same kernels as [`super::Gpt2`]'s forward pass, so the
//! same bits. On the CPU with rill's own kernels, for steps of up to
//! [`crate::model::team::MAX_ROWS`] rows.

use std::sync::Arc;

use candle_core::op::{GeluErf, UnaryOpT};
use candle_core::Tensor;

use super::{gelu_new, map, Conv1D, Gpt2, Head, Stack};
use crate::model::attention::Scoring;
use crate::model::dense::{Dense, Post};
use crate::model::team::{
    each_row, finish, fits, gather, logit_rows, wanted, Caches, Input, Tiled,
};
use crate::model::{ModelError, SeqStep};
use crate::pool::team::{Abandoned, Member, Program};

/// One step: what every member reads.
struct Plan {
    stack: Arc<Stack>,
    /// `x0`: token and position embeddings.
    input: Input,
    heads: usize,
    d: usize,
    post: &'static Post,
}

fn gelu_erf(v: &mut [f32]) {
    map(v, GeluErf::f32)
}

fn own(c: &Conv1D) -> Option<&Dense> {
    match c {
        Conv1D::Own(d) => Some(d),
        Conv1D::Candle { .. } => None,
    }
}

/// The block's four weights on rill's kernel, if they are.
fn weights(stack: &Stack, i: usize) -> Option<[&Dense; 4]> {
    let b = &stack.blocks[i];
    Some([
        own(&b.c_attn)?,
        own(&b.attn_proj)?,
        own(&b.c_fc)?,
        own(&b.mlp_proj)?,
    ])
}

fn head(stack: &Stack) -> Option<&Dense> {
    match &stack.lm_head {
        Head::Own(d) => Some(d),
        Head::Candle(_) => None,
    }
}

/// Runs `batch` as a team step if it qualifies; `Ok(None)` leaves it to the fork-join path.
pub(super) fn forward(
    g: &Gpt2,
    batch: &mut [SeqStep<'_>],
    spans: &[(usize, usize)],
) -> Result<Option<Tensor>, ModelError> {
    let m: usize = spans.iter().map(|s| s.1).sum();
    if !g.wte.device().is_cpu() || !wanted(m) || !Caches::fit(batch) {
        return Ok(None);
    }
    let (d, heads) = (g.cfg.n_embd, g.cfg.n_head);
    let target = 8 * crate::pool::threads();
    let logit_rows = logit_rows(batch, spans);
    let mut shapes = Vec::new();
    for i in 0..g.stack.blocks.len() {
        let Some([c_attn, attn_proj, c_fc, mlp_proj]) = weights(&g.stack, i) else {
            return Ok(None);
        };
        shapes.push(Tiled::dense(c_attn, target, None).shape(m));
        shapes.extend(Caches::shapes(
            m,
            spans.len(),
            heads,
            heads,
            d / heads,
            target,
        ));
        for w in [attn_proj, c_fc, mlp_proj] {
            shapes.push(Tiled::dense(w, target, None).shape(m));
        }
    }
    let Some(lm_head) = head(&g.stack) else {
        return Ok(None);
    };
    shapes.push(Tiled::dense(lm_head, target, None).shape(logit_rows.len()));
    if !fits(&shapes) {
        return Ok(None);
    }
    let x0 = g.embed(batch)?.flatten_all()?.to_vec1()?;
    let plan = Plan {
        stack: g.stack.clone(),
        input: Input {
            x0,
            caches: Caches::reserve(batch, spans, heads, d / heads, target)?,
            logit_rows,
            target,
        },
        heads,
        d,
        post: if g.exact_gelu { &gelu_erf } else { &gelu_new },
    };
    let rows = plan.input.logit_rows.len();
    let step = crate::pool::team(Arc::new(plan), &shapes);
    Ok(Some(finish(step, batch, spans, rows)?))
}

impl Program for Plan {
    fn run(&self, mm: &mut Member<'_>) -> Result<(), Abandoned> {
        let (m, d, nh) = (self.input.caches.rows.len(), self.d, self.heads);
        let scoring = Scoring::plain(d / nh);
        let mut x = self.input.x0.clone();
        let mut h = vec![0f32; m * d];
        let (mut q, mut k, mut v) = (vec![0f32; m * d], vec![0f32; m * d], vec![0f32; m * d]);
        for (i, b) in self.stack.blocks.iter().enumerate() {
            let [c_attn, attn_proj, c_fc, mlp_proj] = weights(&self.stack, i).expect("checked");
            each_row(&x, &mut h, d, |x, o| b.ln_1.row(x, o));
            let qkv = Tiled::dense(c_attn, self.input.target, None).run(mm, &h, m)?;
            for (r, row) in qkv.chunks_exact(3 * d).enumerate() {
                q[r * d..][..d].copy_from_slice(&row[..d]);
                k[r * d..][..d].copy_from_slice(&row[d..2 * d]);
                v[r * d..][..d].copy_from_slice(&row[2 * d..]);
            }
            let att = self.input.caches.attend(mm, i, &q, &k, &v, nh, &scoring)?;
            let o = Tiled::dense(attn_proj, self.input.target, None).run(mm, att, m)?;
            x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
            each_row(&x, &mut h, d, |x, o| b.ln_2.row(x, o));
            let f = Tiled::dense(c_fc, self.input.target, Some(self.post)).run(mm, &h, m)?;
            let o = Tiled::dense(mlp_proj, self.input.target, None).run(mm, f, m)?;
            x.iter_mut().zip(o).for_each(|(x, o)| *x += o);
        }
        let last = gather(&x, &self.input.logit_rows, d);
        let mut normed = vec![0f32; last.len()];
        each_row(&last, &mut normed, d, |x, o| self.stack.ln_f.row(x, o));
        let lm_head = head(&self.stack).expect("checked");
        Tiled::dense(lm_head, self.input.target, None).run(
            mm,
            &normed,
            self.input.logit_rows.len(),
        )?;
        Ok(())
    }
}
