//! Loading a model: resolve a name to files ([`resolve`]), read the format (a GGUF file in [`gguf`], a
//! HuggingFace folder in [`hf`]), pick the architecture and device, and build the model, its tokenizer and its
//! chat template. Sits between the engine (which runs what this returns) and the model layer (which knows
//! nothing of files).

pub mod gguf;
pub mod hf;
pub mod quantize;
pub mod resolve;

use std::path::Path;

use candle_core::Device;

use crate::model::{CausalLm, ModelError};
use crate::tokenizer::{ChatTemplate, TextTokenizer};

pub use resolve::{ModelLocator, ModelSource};

/// Everything the generation thread needs to serve a model.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    pub chat: ChatTemplate,
}

/// Choices made when a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Most positions per sequence (prompt and answer). `None`: the model's own context, or for a LongRoPE
    /// model (Phi-3 / 3.5 128k) its pretrained short one; a larger context switches such a model to its long
    /// rotary factors.
    pub ctx_size: Option<usize>,
    /// The type a safetensors checkpoint's matrices are kept and multiplied in.
    pub dtype: WeightDtype,
}

/// `--dtype`: the type of a safetensors checkpoint's matrices once loaded (GGUF files keep their own types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightDtype {
    /// The checkpoint's own f32, f16 or bf16 on the CPU (rill's kernel reads each directly, and half-width
    /// weights halve the bytes a decode step reads); on a GPU the same for large matrices, f32 for small ones
    /// (see `hf::matrix_dtype`).
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

/// Loads a resolved model with its tokenizer and chat template; `name` labels it in logs and responses.
pub fn load(source: &ModelSource, name: &str, device: &Device) -> Result<Loaded, ModelError> {
    load_with(source, name, device, &LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(
    source: &ModelSource,
    name: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Loaded, ModelError> {
    let (mut loaded, path) = match source {
        ModelSource::Gguf { file, tokenizer } => (
            gguf::load(file, tokenizer.as_deref(), name, device, opts)?,
            file,
        ),
        ModelSource::HfFolder { dir, weights } => {
            (hf::load(dir, weights, name, device, opts)?, dir)
        }
    };
    let rows = loaded.model.info().vocab_size;
    loaded
        .tokenizer
        .fit_rows(rows)
        .map_err(|e| invalid(path, e))?;
    Ok(loaded)
}

/// The compute device `--device` names. `cuda` and `metal` must open and run a first operation, or the error
/// says why not; `auto` takes the first GPU of this build that does, and otherwise the CPU, saying so in the log.
pub fn device(name: &str) -> Result<Device, ModelError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            open_gpu(Gpu::Cuda).map_err(|e| ModelError::Device(format!("--device cuda: {e}")))
        }
        "metal" => {
            open_gpu(Gpu::Metal).map_err(|e| ModelError::Device(format!("--device metal: {e}")))
        }
        "auto" => Ok(auto_device()),
        other => Err(ModelError::Unsupported(format!(
            "device `{other}` (use cpu, cuda, metal or auto)"
        ))),
    }
}

/// The GPU kinds rill can be built for.
#[derive(Debug, Clone, Copy)]
enum Gpu {
    Cuda,
    Metal,
}

impl Gpu {
    fn name(self) -> &'static str {
        match self {
            Gpu::Cuda => "cuda",
            Gpu::Metal => "metal",
        }
    }

    /// Whether this binary was built with the cargo feature for it.
    fn built_in(self) -> bool {
        match self {
            Gpu::Cuda => candle_core::utils::cuda_is_available(),
            Gpu::Metal => candle_core::utils::metal_is_available(),
        }
    }
}

/// `--device auto`: the first GPU that opens, else the CPU.
fn auto_device() -> Device {
    for gpu in [Gpu::Cuda, Gpu::Metal].into_iter().filter(|g| g.built_in()) {
        match open_gpu(gpu) {
            Ok(d) => {
                tracing::info!("--device auto: running on {}", gpu.name());
                return d;
            }
            Err(e) => tracing::warn!("--device auto: no usable {} GPU ({e})", gpu.name()),
        }
    }
    tracing::info!("--device auto: running on the CPU");
    Device::Cpu
}

/// Opens GPU 0 of a kind and runs one small operation on it: a driver can hand out a context and still fail at
/// the first use (a machine whose driver sees no usable GPU), and that should fail here, not in a request.
fn open_gpu(gpu: Gpu) -> Result<Device, String> {
    if !gpu.built_in() {
        return Err(format!(
            "this rill was built without {0} support (build it with `cargo build --release --features {0}`)",
            gpu.name()
        ));
    }
    let open = move || -> candle_core::Result<Device> {
        let d = match gpu {
            Gpu::Cuda => Device::new_cuda(0)?,
            Gpu::Metal => Device::new_metal(0)?,
        };
        candle_core::Tensor::ones(4, candle_core::DType::F32, &d)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok(d)
    };
    match std::panic::catch_unwind(open) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(format!("no usable GPU: {e}")),
        Err(p) => Err(format!(
            "no usable GPU: {}",
            crate::panic::message(p.as_ref()).unwrap_or("the driver panicked")
        )),
    }
}

/// A chat template from its source (if any) and the tokenizer's special tokens.
fn chat_template(
    source: Option<String>,
    tokenizer: &TextTokenizer,
    file: &Path,
) -> Result<ChatTemplate, ModelError> {
    ChatTemplate::new(
        source,
        tokenizer.bos_token.as_deref(),
        tokenizer.eos_token.as_deref(),
    )
    .map_err(|e| invalid(file, e))
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}]")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// A file's problem as a [`ModelError`] naming the file.
pub(crate) fn invalid(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// An error from building a model out of `file`'s tensors, naming the file unless it already names one.
pub(crate) fn in_file(file: &Path) -> impl Fn(ModelError) -> ModelError + '_ {
    move |e| match e {
        ModelError::Invalid { .. } | ModelError::Io { .. } => e,
        other => invalid(file, other),
    }
}
