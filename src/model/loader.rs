//! Finding and loading a model: a path (GGUF file or HF folder), a short name under the models directory, or a
//! HuggingFace repo id resolved through `hf-hub` (the local cache when `HF_HUB_OFFLINE=1`, downloads otherwise).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;

use super::gguf::GgufFile;
use super::{gpt2::Gpt2, llama, llama::Llama, CausalLm, ModelError};
use crate::engine::Loaded;
use crate::tokenizer::{gguf::from_gguf, ChatTemplate, TextTokenizer};

/// Where a model's files are, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file, with a `tokenizer.json` beside it if there is one.
    Gguf {
        file: PathBuf,
        tokenizer: Option<PathBuf>,
    },
    /// A HuggingFace-layout folder: `config.json`, safetensors (one file or shards), `tokenizer.json`.
    HfFolder { dir: PathBuf, weights: Vec<PathBuf> },
}

/// Where to look for models, from the command line or the environment.
#[derive(Debug, Clone)]
pub struct ModelLocator {
    /// Folder of short-named models (`models/<name>`).
    pub models_dir: PathBuf,
    /// The HuggingFace hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub hub_cache: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl ModelLocator {
    /// The locator described by the environment, with `models_dir` as the short-name folder.
    pub fn from_env(models_dir: PathBuf) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let hub_cache = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_hub::Cache::from_env().path().clone());
        let offline = env("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"));
        Self {
            models_dir,
            hub_cache,
            offline,
        }
    }

    /// Resolves `name` to files: an existing path, then `models_dir/name`, then a hub repo id.
    pub fn resolve(&self, name: &str) -> Result<ModelSource, ModelError> {
        let as_path = Path::new(name);
        if as_path.exists() {
            return source_from_path(as_path);
        }
        let short = self.models_dir.join(name);
        if short.exists() {
            return source_from_path(&short);
        }
        let mut looked = vec![
            format!("path {}", as_path.display()),
            format!("models folder {}", short.display()),
        ];
        let repo_dir = self
            .hub_cache
            .join(format!("models--{}", name.replace('/', "--")));
        looked.push(format!("hub cache {}", repo_dir.display()));
        match self.from_hub(name) {
            Ok(src) => Ok(src),
            Err(ModelError::NotFound { .. }) => Err(ModelError::NotFound {
                name: name.into(),
                looked,
            }),
            // An unreachable hub (an offline machine, a mistyped name): still say where rill looked locally.
            Err(ModelError::Hub(e)) => {
                looked.push(format!("the hub ({e})"));
                Err(ModelError::NotFound {
                    name: name.into(),
                    looked,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// A repo's files from the hub cache, downloading missing ones unless offline.
    fn from_hub(&self, repo: &str) -> Result<ModelSource, ModelError> {
        let fetch = |file: &str| -> Result<Option<PathBuf>, ModelError> {
            if self.offline {
                return Ok(hf_hub::Cache::new(self.hub_cache.clone())
                    .model(repo.to_string())
                    .get(file));
            }
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_cache_dir(self.hub_cache.clone())
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .build()
                .map_err(|e| ModelError::Hub(e.to_string()))?;
            match api.model(repo.to_string()).get(file) {
                Ok(p) => Ok(Some(p)),
                Err(hf_hub::api::sync::ApiError::RequestError(e))
                    if e.to_string().contains("404") =>
                {
                    Ok(None)
                }
                Err(e) => Err(ModelError::Hub(format!("{repo}/{file}: {e}"))),
            }
        };
        let Some(config) = fetch("config.json")? else {
            return Err(ModelError::NotFound {
                name: repo.into(),
                looked: vec![],
            });
        };
        let dir = config.parent().expect("a file has a parent").to_path_buf();
        for extra in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            fetch(extra)?;
        }
        let weights = match fetch("model.safetensors")? {
            Some(p) => vec![p],
            None => {
                let index =
                    fetch("model.safetensors.index.json")?.ok_or_else(|| ModelError::Invalid {
                        path: dir.display().to_string(),
                        reason: "no safetensors weights".into(),
                    })?;
                let mut files = Vec::new();
                for shard in shard_names(&index)? {
                    files.push(fetch(&shard)?.ok_or_else(|| ModelError::Invalid {
                        path: shard.clone(),
                        reason: "missing shard".into(),
                    })?);
                }
                files
            }
        };
        Ok(ModelSource::HfFolder { dir, weights })
    }
}

/// A GGUF file, or a folder holding either HF files or a GGUF file.
fn source_from_path(path: &Path) -> Result<ModelSource, ModelError> {
    let beside = |p: &Path| {
        p.parent()
            .map(|d| d.join("tokenizer.json"))
            .filter(|t| t.exists())
    };
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => Ok(ModelSource::Gguf {
                file: path.into(),
                tokenizer: beside(path),
            }),
            _ => Err(ModelError::Unsupported(format!(
                "{}: expected a .gguf file or a model folder",
                path.display()
            ))),
        };
    }
    if path.join("config.json").exists() {
        let weights = if path.join("model.safetensors").exists() {
            vec![path.join("model.safetensors")]
        } else if path.join("model.safetensors.index.json").exists() {
            shard_names(&path.join("model.safetensors.index.json"))?
                .into_iter()
                .map(|s| path.join(s))
                .collect()
        } else {
            return Err(ModelError::Invalid {
                path: path.display().to_string(),
                reason: "no model.safetensors or index".into(),
            });
        };
        return Ok(ModelSource::HfFolder {
            dir: path.into(),
            weights,
        });
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    ggufs.sort();
    match ggufs.into_iter().next() {
        Some(file) => Ok(ModelSource::Gguf {
            tokenizer: beside(&file),
            file,
        }),
        None => Err(ModelError::Invalid {
            path: path.display().to_string(),
            reason: "no config.json or .gguf file".into(),
        }),
    }
}

/// The distinct shard file names in a `model.safetensors.index.json`.
fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| super::gguf::invalid(index, "no weight_map"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| super::gguf::invalid(path, e))
}

/// The compute device: CUDA or Metal when built with that feature and asked for, else the CPU.
pub fn device(name: &str) -> Result<Device, ModelError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        "metal" => Ok(Device::new_metal(0)?),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0)?
        } else if candle_core::utils::metal_is_available() {
            Device::new_metal(0)?
        } else {
            Device::Cpu
        }),
        other => Err(ModelError::Unsupported(format!(
            "device `{other}` (use cpu, cuda, metal or auto)"
        ))),
    }
}

/// Loads a resolved model with its tokenizer and chat template; `name` labels it in logs and responses.
pub fn load(source: &ModelSource, name: &str, device: &Device) -> Result<Loaded, ModelError> {
    match source {
        ModelSource::Gguf { file, tokenizer } => {
            load_gguf(file, tokenizer.as_deref(), name, device)
        }
        ModelSource::HfFolder { dir, weights } => load_hf(dir, weights, name, device),
    }
}

fn load_gguf(
    file: &Path,
    tok_json: Option<&Path>,
    name: &str,
    device: &Device,
) -> Result<Loaded, ModelError> {
    let g = GgufFile::open(file)?;
    let arch = g.meta_str("general.architecture").unwrap_or("").to_string();
    if !llama::ARCHITECTURES.contains(&arch.as_str()) {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture `{arch}` (rill runs {:?})",
            file.display(),
            llama::ARCHITECTURES
        )));
    }
    let tokenizer = match tok_json {
        Some(t) => TextTokenizer::from_file(t, None),
        None => from_gguf(&g),
    }
    .map_err(|e| super::gguf::invalid(file, e))?;
    let template = g.meta_str("tokenizer.chat_template").map(str::to_string);
    let chat = ChatTemplate::new(
        template,
        tokenizer.bos_token.as_deref(),
        tokenizer.eos_token.as_deref(),
    )
    .map_err(|e| super::gguf::invalid(file, e))?;
    let model: Box<dyn CausalLm> = Box::new(Llama::load(g, name, device)?);
    Ok(Loaded {
        model,
        tokenizer,
        chat,
    })
}

fn load_hf(
    dir: &Path,
    weights: &[PathBuf],
    name: &str,
    device: &Device,
) -> Result<Loaded, ModelError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    if model_type != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "safetensors model_type `{model_type}` (rill runs gpt2 safetensors and llama-family GGUF files)"
        )));
    }
    let tok_config = Some(dir.join("tokenizer_config.json"))
        .filter(|p| p.exists())
        .map(|p| read_json(&p))
        .transpose()?;
    let tok_path = dir.join("tokenizer.json");
    let mut tokenizer = TextTokenizer::from_file(&tok_path, tok_config.as_ref())
        .map_err(|e| super::gguf::invalid(&tok_path, e))?;
    for id in eos_ids_from_config(&config) {
        if !tokenizer.eos_ids.contains(&id) {
            tokenizer.eos_ids.push(id);
        }
    }
    let template = tok_config
        .as_ref()
        .and_then(ChatTemplate::source_from_config);
    let chat = ChatTemplate::new(
        template,
        tokenizer.bos_token.as_deref(),
        tokenizer.eos_token.as_deref(),
    )
    .map_err(|e| super::gguf::invalid(&tok_path, e))?;
    let model: Box<dyn CausalLm> = Box::new(Gpt2::load(&config_path, weights, name, device)?);
    Ok(Loaded {
        model,
        tokenizer,
        chat,
    })
}

/// `eos_token_id` from config.json: a number or a list.
fn eos_ids_from_config(config: &Value) -> Vec<u32> {
    match config.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().map(|n| n as u32))
            .collect(),
        _ => vec![],
    }
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
