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
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let content = Content::read(&mut reader).map_err(|e| invalid(path, e))?;
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

pub(crate) fn invalid(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}
