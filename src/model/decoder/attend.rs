//! A decoder layer's attention once Q, K and V are computed: on the host for the CPU, through the batched
//! kernels of [`gpu`] or candle's operations on other devices.

use candle_core::Tensor;

use super::super::attention;
use super::super::gpu;
use super::super::norm::RmsNorm;
use super::super::qlinear::with_f32_rows;
use super::super::SeqStep;
use super::Decoder;

impl Decoder {
    /// On the CPU: every row, prompt or decode, is normalized and rotated on the host at its position and
    /// attends through [`attention::attend_rows`], so each position is computed the same way whatever the batch.
    pub(super) fn attention_host(
        &self,
        layer: usize,
        qkv: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let l = &self.stack.layers[layer];
        let rope = &self.stack.ropes[l.rope];
        let (hd, nh, nkv) = (self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads);
        let width = (nh + 2 * nkv) * hd;
        let mut rows = Vec::new();
        with_f32_rows(qkv, |all| rows = all.to_vec())?;
        let mut queries = Vec::with_capacity(spans.len());
        let mut kvs = Vec::with_capacity(spans.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let pos = seq.cache.len();
            let mut q = Vec::with_capacity(len * nh * hd);
            let (mut k, mut v) = (vec![0f32; len * nkv * hd], vec![0f32; len * nkv * hd]);
            for r in 0..len {
                let row = &mut rows[(start + r) * width..(start + r + 1) * width];
                let (qr, rest) = row.split_at_mut(nh * hd);
                let (kr, vr) = rest.split_at_mut(nkv * hd);
                if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                    qn.forward_host(qr);
                    kn.forward_host(kr);
                }
                rope.rotate_host(qr, pos + r);
                rope.rotate_host(kr, pos + r);
                q.extend_from_slice(qr);
                // The cache is `[kv_heads, positions, head_dim]`: scatter this row's heads.
                for h in 0..nkv {
                    let at = (h * len + r) * hd;
                    k[at..at + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
                    v[at..at + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
                }
            }
            let k = Tensor::from_vec(k, (nkv, len, hd), qkv.device())?;
            let v = Tensor::from_vec(v, (nkv, len, hd), qkv.device())?;
            kvs.push(seq.cache.append(layer, &k, &v)?);
            queries.push(q);
        }
        attention::attend_rows_tensor(&queries, &kvs, nh, &l.scoring)
    }

    /// On other devices: the batched kernels of [`gpu`] when the step has them, else candle's tensor ops, one
    /// sequence at a time.
    pub(super) fn attention_tensors(
        &self,
        layer: usize,
        qkv: &Tensor,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        gpu: Option<&gpu::Step>,
    ) -> candle_core::Result<Tensor> {
        let l = &self.stack.layers[layer];
        let rope = &self.stack.ropes[l.rope];
        let (hd, nh, nkv) = (self.cfg.head_dim, self.cfg.n_heads, self.cfg.n_kv_heads);
        let (q, k, v) = (
            qkv.narrow(1, 0, nh * hd)?,
            qkv.narrow(1, nh * hd, nkv * hd)?,
            qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?,
        );
        let normed = |t: Tensor, norm: &Option<RmsNorm>, n: usize| -> candle_core::Result<Tensor> {
            match norm {
                Some(norm) => {
                    let rows = t.dim(0)?;
                    norm.forward(&t.contiguous()?.reshape((rows * n, hd))?)?
                        .reshape((rows, n * hd))
                }
                None => Ok(t),
            }
        };
        let (q, k) = (normed(q, &l.q_norm, nh)?, normed(k, &l.k_norm, nkv)?);
        if let Some(step) = gpu {
            return step.attend(layer, (&q, &k, &v), Some(rope), &l.scoring);
        }
        let mut parts = Vec::with_capacity(spans.len());
        for (seq, &(start, len)) in batch.iter_mut().zip(spans) {
            let pos = seq.cache.len();
            let heads = |t: &Tensor, n: usize| {
                t.narrow(0, start, len)?
                    .reshape((len, n, hd))?
                    .transpose(0, 1)
            };
            let q = rope.rotate(&heads(&q, nh)?, pos)?;
            let k = rope.rotate(&heads(&k, nkv)?, pos)?;
            let v = heads(&v, nkv)?.contiguous()?;
            let (k, v) = seq.cache.append(layer, &k, &v)?;
            parts.push(attention::causal_attention(&q, &k, &v, &l.scoring)?);
        }
        Tensor::cat(&parts, 0)
    }
}
