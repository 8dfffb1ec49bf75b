//! Re-quantizing a GGUF file (`rill quantize`): every 2-D weight to the type a mix names, the way llama.cpp's
//! quantizer assigns types (the K-quant mixes keep the value projections and the MLP's down projection of some
//! layers, and the output head, at higher precision), with candle's reference quantizers. Vectors stay f32.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::invalid;
use crate::model::ModelError;

/// A target weight mix, named as llama.cpp names its file types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q2_k")]
    Q2K,
    #[value(name = "q3_k_m")]
    Q3KM,
    #[value(name = "q4_k_m")]
    Q4KM,
    #[value(name = "q5_k_m")]
    Q5KM,
    #[value(name = "q6_k")]
    Q6K,
}

impl Mix {
    /// The type of tensor `name` (2-D, `cols` wide) in a model of `n_layers` layers.
    pub fn type_for(self, name: &str, cols: usize, n_layers: usize) -> GgmlDType {
        use GgmlDType as T;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        // llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third between.
        let more_bits = layer.is_some_and(|i| {
            i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2
        });
        let sensitive = name.contains("attn_v.") || name.contains("ffn_down.");
        let output = name == "output.weight";
        let want = match self {
            Self::F16 => T::F16,
            Self::Bf16 => T::BF16,
            Self::Q8_0 => T::Q8_0,
            Self::Q4_0 => T::Q4_0,
            Self::Q4_1 => T::Q4_1,
            Self::Q5_0 => T::Q5_0,
            Self::Q5_1 => T::Q5_1,
            Self::Q6K => T::Q6K,
            Self::Q2K if output => T::Q6K,
            Self::Q2K if sensitive => T::Q3K,
            Self::Q2K => T::Q2K,
            Self::Q3KM if output => T::Q6K,
            Self::Q3KM if name.contains("attn_v.") && layer.is_some_and(|i| i < 2) => T::Q5K,
            Self::Q3KM if sensitive || name.contains("attn_output.") => T::Q4K,
            Self::Q3KM => T::Q3K,
            Self::Q4KM | Self::Q5KM if output || (sensitive && more_bits) => T::Q6K,
            Self::Q4KM => T::Q4K,
            Self::Q5KM => T::Q5K,
        };
        // Rows that are not whole blocks of the wanted type fall back, as llama.cpp's do.
        if cols.is_multiple_of(want.block_size()) {
            want
        } else if cols.is_multiple_of(32) {
            T::Q8_0
        } else {
            T::F16
        }
    }
}

/// What [`quantize`] wrote.
#[derive(Debug)]
pub struct Report {
    pub tensors: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Reads `input` (a GGUF file of any weight types), writes `output` with `mix`'s types and the same metadata.
pub fn quantize(input: &Path, output: &Path, mix: Mix) -> Result<Report, ModelError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| ModelError::Io {
            path: p.clone(),
            source,
        }
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(input).map_err(io(input))?);
    let content = super::gguf::read_content(&mut file).map_err(|e| invalid(input, e))?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let n_layers = content
        .metadata
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(1) as usize;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| invalid(input, e))?;
        let q = match *t.shape().dims() {
            [_, cols] => {
                let dtype = mix.type_for(name, cols, n_layers);
                if t.dtype() == dtype {
                    t
                } else {
                    QTensor::quantize(&t.dequantize(&Device::Cpu)?, dtype)?
                }
            }
            _ if t.dtype() == GgmlDType::F32 => t,
            _ => QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::F32)?,
        };
        tensors.push((name.clone(), q));
    }
    // candle's writer places tensors 32 bytes apart whatever the input declared: another alignment copied over
    // would misplace every tensor (a declared 32 is kept, so outputs stay byte for byte what they were).
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "general.alignment" || matches!(v, gguf_file::Value::U32(32))
        })
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let mut sorted_meta = metadata;
    sorted_meta.sort_by_key(|(k, _)| *k);
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = output.with_extension("gguf.part");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
    gguf_file::write(&mut out, &sorted_meta, &refs).map_err(|e| invalid(output, e))?;
    drop(out);
    std::fs::rename(&tmp, output).map_err(io(output))?;
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(Report {
        tensors: tensors.len(),
        bytes_in: len(input),
        bytes_out: len(output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quant_mixes_keep_sensitive_tensors_wider() {
        let n = 16;
        assert_eq!(
            Mix::Q4KM.type_for("blk.0.attn_q.weight", 256, n),
            GgmlDType::Q4K
        );
        assert_eq!(
            Mix::Q4KM.type_for("blk.0.attn_v.weight", 256, n),
            GgmlDType::Q6K
        );
        assert_eq!(
            Mix::Q4KM.type_for("blk.3.ffn_down.weight", 256, n),
            GgmlDType::Q4K
        );
        assert_eq!(
            Mix::Q4KM.type_for("blk.4.ffn_down.weight", 256, n),
            GgmlDType::Q6K
        );
        assert_eq!(
            Mix::Q4KM.type_for("blk.15.attn_v.weight", 256, n),
            GgmlDType::Q6K
        );
        assert_eq!(Mix::Q4KM.type_for("output.weight", 256, n), GgmlDType::Q6K);
        assert_eq!(
            Mix::Q4KM.type_for("blk.0.attn_q.weight", 64, n),
            GgmlDType::Q8_0
        );
        assert_eq!(
            Mix::Q5KM.type_for("blk.1.attn_k.weight", 512, n),
            GgmlDType::Q5K
        );
    }
}
