//! Reading GGUF files: metadata lookups and tensors, with a load progress bar on a terminal.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use super::ModelError;

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
    progress: indicatif::ProgressBar,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| invalid(path, e))?;
        check_tensors(&content, len).map_err(|e| invalid(path, e))?;
        let progress =
            super::loader::progress_bar(content.tensor_infos.len() as u64, "loading tensors");
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            progress,
        })
    }

    /// A metadata value, or an error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| invalid(&self.path, format!("missing metadata `{key}`")))
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.meta(key)?.to_u32().map_err(|e| invalid(&self.path, e))
    }

    pub fn meta_f32(&self, key: &str) -> Result<f32, ModelError> {
        self.meta(key)?.to_f32().map_err(|e| invalid(&self.path, e))
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads one tensor onto `device`.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<Arc<QTensor>, ModelError> {
        let t = self
            .content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| invalid(&self.path, e))?;
        self.progress.inc(1);
        Ok(Arc::new(t))
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        self.progress.finish_and_clear();
    }
}

/// Every tensor's data must lie inside the file: a header that promises more (a corrupt or hostile file) is
/// refused before anything is allocated for it.
fn check_tensors(content: &Content, file_len: u64) -> Result<(), String> {
    for (name, t) in &content.tensor_infos {
        let elems = t
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
        let block = t.ggml_dtype.block_size() as u64;
        if elems % block != 0 {
            return Err(format!(
                "tensor `{name}`: {elems} elements are not whole {:?} blocks of {block}",
                t.ggml_dtype
            ));
        }
        let bytes = (elems / block).checked_mul(t.ggml_dtype.type_size() as u64);
        let end = bytes
            .and_then(|b| b.checked_add(t.offset))
            .and_then(|b| b.checked_add(content.tensor_data_offset));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(format!(
                    "tensor `{name}` ({:?}, {:?}) lies past the end of the {file_len}-byte file",
                    t.ggml_dtype, t.shape
                ))
            }
        }
    }
    Ok(())
}

pub(crate) fn invalid(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}
