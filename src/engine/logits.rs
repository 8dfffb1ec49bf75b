//! A step's logits brought to the host. Only the rows that sequences read are copied, and a sequence that
//! picks the plain argmax (greedy, no penalty, no grammar, no log probabilities) gets just the id. On the CPU
//! the rows are read where the model left them and the argmax is the sampler's own ([`argmax`]: the first
//! of equal maxima), so eight greedy streams of a 49k vocabulary no longer copy 1.5 MB a step on the
//! generation thread while the pool's workers wait for the next step. On a GPU the argmax is computed on the
//! device (candle's argmax: of exactly equal maxima it may pick another than the host's first): 64 sequences
//! of a 50k vocabulary would otherwise copy and scan 13 MB per step on the host.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, D};

use super::sampler::argmax;
use crate::model::{CausalLm, ModelError, SeqStep};

/// What one sequence reads of its logit rows in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Nothing (a prompt chunk that is not the last, without prompt log probabilities).
    Nothing,
    /// Its last row, to sample from.
    Last,
    /// The argmax of its last row.
    LastArgmax,
    /// Every row (prompt log probabilities).
    All,
}

/// The rows fetched: `rows[r]` is row `r` of the step's logits, empty when not fetched; `ids[r]` its argmax
/// when that was all a sequence wanted of it and the logits were on a GPU.
pub(crate) struct HostLogits {
    pub rows: Vec<Vec<f32>>,
    pub ids: Vec<Option<u32>>,
}

/// Fetches `logits` (`[rows, vocab]`) for sequences whose rows come one after another, `wants[k]` being
/// sequence k's row count and what it reads.
pub(crate) fn fetch(logits: &Tensor, wants: &[(usize, Want)]) -> Result<HostLogits> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let (storage, layout) = logits.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(in_place(&v[start..end], logits.dim(1)?, wants));
        }
    }
    // Row selection needs contiguous rows (a no-op for the models' own outputs).
    selected(&logits.contiguous()?, wants)
}

/// The CPU case of [`fetch`]: `all` is the `[rows, vocab]` logits, row-major.
fn in_place(all: &[f32], vocab: usize, wants: &[(usize, Want)]) -> HostLogits {
    let n_rows = all.len() / vocab.max(1);
    let row = |r: usize| &all[r * vocab..(r + 1) * vocab];
    let (mut rows, mut ids) = (vec![Vec::new(); n_rows], vec![None; n_rows]);
    let mut start = 0;
    for &(n, want) in wants {
        let last = start + n - 1;
        match want {
            Want::Nothing => {}
            Want::Last => rows[last] = row(last).to_vec(),
            Want::LastArgmax => ids[last] = Some(argmax(row(last)) as u32),
            Want::All => (start..start + n).for_each(|r| rows[r] = row(r).to_vec()),
        }
        start += n;
    }
    HostLogits { rows, ids }
}

/// The GPU case of [`fetch`]: only the rows read, and argmax ids computed where the logits are.
fn selected(logits: &Tensor, wants: &[(usize, Want)]) -> Result<HostLogits> {
    let n_rows = logits.dim(0)?;
    let mut full: Vec<u32> = Vec::new();
    let mut argmax: Vec<u32> = Vec::new();
    let mut start = 0;
    for &(n, want) in wants {
        let last = (start + n - 1) as u32;
        match want {
            Want::Nothing => {}
            Want::Last => full.push(last),
            Want::LastArgmax => argmax.push(last),
            Want::All => full.extend((start..start + n).map(|r| r as u32)),
        }
        start += n;
    }
    let mut rows = vec![Vec::new(); n_rows];
    if full.len() == n_rows {
        rows = logits.to_vec2()?;
    } else if !full.is_empty() {
        let picked = logits.index_select(&Tensor::new(full.as_slice(), logits.device())?, 0)?;
        for (r, row) in full.iter().zip(picked.to_vec2()?) {
            rows[*r as usize] = row;
        }
    }
    let mut ids = vec![None; n_rows];
    if !argmax.is_empty() {
        let picked = logits.index_select(&Tensor::new(argmax.as_slice(), logits.device())?, 0)?;
        for (r, id) in argmax
            .iter()
            .zip(picked.argmax(D::Minus1)?.to_vec1::<u32>()?)
        {
            ids[*r as usize] = Some(id);
        }
    }
    Ok(HostLogits { rows, ids })
}

/// Runs this module's device paths once on throwaway caches, so that a GPU server's first request loads no
/// kernel module of its own (row selection, argmax, index uploads): the model's own warm-up covers the forward
/// pass, not what the engine does with its logits. One step of a three-token prompt reading every row, a
/// sampled and a greedy sequence; then a longer prompt chunk nobody reads, as a first chat prompt is. Returns
/// the first step's rows and ids (for tests).
pub(crate) fn warm_up(
    model: &dyn CausalLm,
    kv_dtype: DType,
) -> std::result::Result<HostLogits, ModelError> {
    let (vocab, context) = (model.info().vocab_size, model.info().context_length);
    let long = context.min(32);
    if vocab < 3 || long < 4 {
        return Ok(HostLogits {
            rows: Vec::new(),
            ids: Vec::new(),
        });
    }
    let mut caches: Vec<_> = (0..3)
        .map(|_| model.new_cache().stored_as(kv_dtype))
        .collect();
    let prompt: Vec<u32> = (0..long as u32).map(|i| i % vocab as u32).collect();
    let got = {
        let [a, b, c] = caches.as_mut_slice() else {
            unreachable!("three caches")
        };
        let mut batch = [
            SeqStep::new(&prompt[..3], a),
            SeqStep::new(&prompt[1..2], b),
            SeqStep::new(&prompt[2..3], c),
        ];
        batch[0].all_logits = true;
        let logits = model.forward(&mut batch)?;
        selected(
            &logits,
            &[(3, Want::All), (1, Want::Last), (1, Want::LastArgmax)],
        )?
    };
    let mut fresh = model.new_cache().stored_as(kv_dtype);
    let logits = model.forward(&mut [SeqStep::new(&prompt, &mut fresh)])?;
    selected(&logits, &[(1, Want::Nothing)])?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelInfo, SeqCache};
    use candle_core::Device;
    use std::sync::Mutex;

    /// Both paths, the CPU's in place and the device's (run here on CPU tensors): rows read are copied, argmax
    /// rows give their id only (the first of equal maxima: row 2 is `[4, 4, 1]`), and rows nobody reads stay
    /// empty.
    #[test]
    fn logits_bring_only_what_is_read() -> Result<()> {
        let l = Tensor::new(
            &[
                [1f32, 3.0, 2.0],
                [0.0, -1.0, 5.0],
                [4.0, 4.0, 1.0],
                [7.0, 0.0, 1.0],
                [0.5, 0.25, 9.0],
            ],
            &Device::Cpu,
        )?;
        let all = l.to_vec2::<f32>()?;
        let wants = [
            (2, Want::Last),
            (1, Want::LastArgmax),
            (1, Want::Nothing),
            (1, Want::All),
        ];
        let empty = Vec::<f32>::new();
        let rows = vec![
            empty.clone(),
            all[1].clone(),
            empty.clone(),
            empty,
            all[4].clone(),
        ];
        // A view that is not contiguous takes the general path on the CPU.
        let wide = Tensor::cat(&[&l, &l.narrow(1, 0, 1)?], 1)?.narrow(1, 0, 3)?;
        assert!(!wide.is_contiguous());
        type Fetch = fn(&Tensor, &[(usize, Want)]) -> Result<HostLogits>;
        for (path, f, t) in [
            ("cpu", fetch as Fetch, &l),
            ("cpu, not contiguous", fetch, &wide),
            ("device", selected, &l),
        ] {
            let got = f(t, &wants)?;
            assert_eq!(got.rows, rows, "{path}");
            assert_eq!(got.ids, vec![None, None, Some(0), None, None], "{path}");
            assert_eq!(f(t, &[(5, Want::All)])?.rows, all, "{path}");
        }
        Ok(())
    }

    /// Gives each row the logits `[t, 2t, ..]` shifted so that token `(t + 1) % vocab` wins, and records the
    /// token counts (and whether all rows were asked for) of every pass.
    struct Scripted {
        info: ModelInfo,
        calls: Mutex<Vec<Vec<(usize, bool)>>>,
    }

    impl CausalLm for Scripted {
        fn forward(&self, batch: &mut [SeqStep<'_>]) -> std::result::Result<Tensor, ModelError> {
            let v = self.info.vocab_size;
            let mut rows = Vec::new();
            for s in batch.iter_mut() {
                let skip = s.tokens.len() - s.logit_rows();
                for &t in &s.tokens[skip..] {
                    let win = (t as usize + 1) % v;
                    rows.extend((0..v).map(|j| if j == win { 9.0 } else { j as f32 * 0.01 }));
                }
                s.cache.advance(s.tokens.len());
            }
            self.calls.lock().unwrap().push(
                batch
                    .iter()
                    .map(|s| (s.tokens.len(), s.all_logits))
                    .collect(),
            );
            let n = rows.len() / v;
            Ok(Tensor::from_vec(rows, (n, v), &Device::Cpu)?)
        }
        fn new_cache(&self) -> SeqCache {
            SeqCache::new(1)
        }
        fn info(&self) -> &ModelInfo {
            &self.info
        }
    }

    /// The warm-up goes through every fetch path: rows of a prompt read whole, a sampled row, a device argmax,
    /// and a longer prompt chunk nobody reads.
    #[test]
    fn warm_up_takes_every_fetch_path() {
        let m = Scripted {
            info: ModelInfo {
                name: "s".into(),
                arch: "s".into(),
                quantization: "F32".into(),
                vocab_size: 8,
                context_length: 64,
                n_params: 0,
                kv_bytes_per_token: 0,
            },
            calls: Mutex::new(Vec::new()),
        };
        let got = warm_up(&m, DType::F32).unwrap();
        assert_eq!(
            *m.calls.lock().unwrap(),
            vec![vec![(3, true), (1, false), (1, false)], vec![(32, false)]]
        );
        assert_eq!(got.rows.iter().filter(|r| r.len() == 8).count(), 4);
        assert!(got.rows[4].is_empty());
        assert_eq!(got.ids, vec![None, None, None, None, Some(3)]);
    }
}
