//! Resolving a model name to files: a path (GGUF file or HF folder), a short name under the models directory,
//! or a HuggingFace repo id through `hf-hub` (the local cache when `HF_HUB_OFFLINE=1`, downloads otherwise).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::ModelError;

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
        match self.fetch_from_hub(name) {
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
    fn fetch_from_hub(&self, repo: &str) -> Result<ModelSource, ModelError> {
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
        // A vision projector beside a model is not a model of its own.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mmproj"))
        })
        .collect();
    ggufs.sort();
    match ggufs.as_slice() {
        [file] => Ok(ModelSource::Gguf {
            tokenizer: beside(file),
            file: file.clone(),
        }),
        [] => Err(ModelError::Invalid {
            path: path.display().to_string(),
            reason: "no config.json or .gguf file".into(),
        }),
        // Several quantizations of one model side by side is common; taking one silently would serve a model
        // the user may not have meant.
        several => Err(ModelError::SeveralGguf {
            path: path.display().to_string(),
            files: several
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        }),
    }
}

/// The distinct shard file names in a `model.safetensors.index.json`.
fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let v = read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| super::invalid(index, "no weight_map"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

pub(super) fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| super::invalid(path, e))
}
