//! A step's logits brought to the host. On the CPU every row is already there. On a GPU only the rows that
//! sequences read are copied, and a sequence that picks the plain argmax (greedy, no penalty, no grammar, no
//! log probabilities) gets just the id, computed on the device (candle's argmax: of exactly equal maxima it
//! may pick another than the host's first): 64 sequences of a 50k vocabulary would otherwise copy and scan
//! 13 MB per step on the host.

use candle_core::{Result, Tensor, D};

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
    let n_rows = logits.dim(0)?;
    if logits.device().is_cpu() {
        return Ok(HostLogits {
            rows: logits.to_vec2()?,
            ids: vec![None; n_rows],
        });
    }
    selected(logits, wants)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// On the CPU every row comes back, whatever the sequences want, and no id is picked for them.
    #[test]
    fn cpu_logits_come_back_whole() -> Result<()> {
        let l = Tensor::new(
            &[[1f32, 3.0, 2.0], [0.0, -1.0, 5.0], [4.0, 4.0, 1.0]],
            &Device::Cpu,
        )?;
        let got = fetch(&l, &[(2, Want::LastArgmax), (1, Want::Nothing)])?;
        assert_eq!(got.rows, l.to_vec2::<f32>()?);
        assert_eq!(got.ids, vec![None; 3]);
        Ok(())
    }

    /// The device path, run on CPU tensors: rows read are copied, argmax rows give their id only, and rows
    /// nobody reads stay empty.
    #[test]
    fn device_logits_bring_only_what_is_read() -> Result<()> {
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
        let got = selected(&l, &wants)?;
        let empty = Vec::<f32>::new();
        assert_eq!(
            got.rows,
            vec![
                empty.clone(),
                all[1].clone(),
                empty.clone(),
                empty,
                all[4].clone()
            ]
        );
        assert_eq!(got.ids, vec![None, None, Some(0), None, None]);
        let got = selected(&l, &[(5, Want::All)])?;
        assert_eq!(got.rows, all);
        Ok(())
    }
}
