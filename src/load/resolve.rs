//! Resolving a model name to files: a path (GGUF file or HF folder), a short name under the models directory,
//! or a HuggingFace repo id through `hf-hub` (the local cache when `HF_HUB_OFFLINE=1`, downloads otherwise).

use std::path::{Path, PathBuf};
use std::time::Duration;

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
        // A path that does not exist (`/models/typo.gguf`, `./x`) is not a hub name: asking the hub would only
        // turn a typo into a network error.
        if !is_repo_id(name) {
            return Err(ModelError::NotFound {
                name: name.into(),
                looked,
            });
        }
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

    /// A repo's files from the hub cache, downloading missing ones unless offline. Before the first download
    /// the hub must answer within [`hub_timeout`]; when it does not, the cached files are used as they are (a
    /// missing optional file is skipped, a missing required one is an error naming the hub's silence).
    fn fetch_from_hub(&self, repo: &str) -> Result<ModelSource, ModelError> {
        // `None` until the hub is first needed, then whether it answered.
        let hub: std::cell::RefCell<Option<Result<(), String>>> = Default::default();
        let fetch = |file: &str| -> Result<Option<PathBuf>, ModelError> {
            let cached = hf_hub::Cache::new(self.hub_cache.clone())
                .model(repo.to_string())
                .get(file);
            if self.offline || cached.is_some() {
                return Ok(cached);
            }
            let api = hf_hub::api::sync::ApiBuilder::from_env()
                .with_cache_dir(self.hub_cache.clone())
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .build()
                .map_err(|e| ModelError::Hub(e.to_string()))?;
            let api = api.model(repo.to_string());
            let answered = hub
                .borrow_mut()
                .get_or_insert_with(|| {
                    hub_answers(&api.url(file)).inspect_err(|e| {
                        tracing::warn!(
                            "the hub did not answer ({e}); using what the cache holds of {repo}"
                        )
                    })
                })
                .is_ok();
            if !answered {
                return Ok(None);
            }
            match api.get(file) {
                Ok(p) => Ok(Some(p)),
                Err(hf_hub::api::sync::ApiError::RequestError(e))
                    if e.to_string().contains("404") =>
                {
                    Ok(None)
                }
                Err(e) => Err(ModelError::Hub(format!("{repo}/{file}: {e}"))),
            }
        };
        // A required file that is missing: the hub's silence when it did not answer, else `otherwise`.
        let missing = |otherwise: ModelError| match hub.borrow().clone() {
            Some(Err(e)) => ModelError::Hub(e),
            _ => otherwise,
        };
        let Some(config) = fetch("config.json")? else {
            return Err(missing(ModelError::NotFound {
                name: repo.into(),
                looked: vec![],
            }));
        };
        let dir = config.parent().expect("a file has a parent").to_path_buf();
        // Needed by every folder rill loads; a silent hub is named when the cache lacks it.
        fetch("tokenizer.json")?.ok_or_else(|| {
            missing(ModelError::Invalid {
                path: dir.display().to_string(),
                reason: "no tokenizer.json".into(),
            })
        })?;
        for extra in [
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
        ] {
            fetch(extra)?;
        }
        let weights = match fetch("model.safetensors")? {
            Some(p) => vec![p],
            None => {
                let index = fetch("model.safetensors.index.json")?.ok_or_else(|| {
                    missing(ModelError::Invalid {
                        path: dir.display().to_string(),
                        reason: "no safetensors weights".into(),
                    })
                })?;
                let mut files = Vec::new();
                for shard in shard_names(&index)? {
                    files.push(fetch(&shard)?.ok_or_else(|| {
                        missing(ModelError::Invalid {
                            path: shard.clone(),
                            reason: "missing shard".into(),
                        })
                    })?);
                }
                files
            }
        };
        Ok(ModelSource::HfFolder { dir, weights })
    }
}

/// How long the hub may take to connect and to answer before rill gives up on it: `RILL_HUB_TIMEOUT_SECS`,
/// else 20 s.
fn hub_timeout() -> Duration {
    let default = Duration::from_secs(20);
    let Ok(v) = std::env::var("RILL_HUB_TIMEOUT_SECS") else {
        return default;
    };
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(3600.0)),
        _ => {
            tracing::warn!(
                "RILL_HUB_TIMEOUT_SECS={v:?} is not a number of seconds above 0; waiting 20 s"
            );
            default
        }
    }
}

/// Asks the hub for `url`'s headers, saying so in the log: any HTTP answer (even a 404 or a 401) shows the hub is
/// there; no answer within [`hub_timeout`], name lookup and redirects included, is an error. The request runs
/// on a thread of its own, since the client bounds neither the lookup nor the sum of its redirects; one that
/// hangs is left behind. The downloads that follow have no such limit.
fn hub_answers(url: &str) -> Result<(), String> {
    let timeout = hub_timeout();
    tracing::info!("asking the hub for {url}");
    let (tx, rx) = std::sync::mpsc::channel();
    let request = url.to_string();
    std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .timeout(timeout)
            .build();
        let _ = tx.send(match agent.head(&request).call() {
            Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
            Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        });
    });
    let silent = |why: String| {
        format!(
            "no answer within {} s ({why}); RILL_HUB_TIMEOUT_SECS waits longer",
            timeout.as_secs_f64()
        )
    };
    match rx.recv_timeout(timeout) {
        Ok(answer) => answer.map_err(silent),
        Err(_) => Err(silent(format!("{url}: still waiting"))),
    }
}

/// A GGUF file, or a folder holding either HF files or a GGUF file.
fn source_from_path(path: &Path) -> Result<ModelSource, ModelError> {
    let beside = |p: &Path| {
        p.parent()
            .map(|d| d.join("tokenizer.json"))
            .filter(|t| t.exists())
    };
    if !path.is_file() && !path.is_dir() {
        return Err(ModelError::Unsupported(format!(
            "{}: expected a .gguf file or a model folder, not a device, pipe or socket",
            path.display()
        )));
    }
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

/// Whether `name` can be a hub repo id: `name` or `owner/name`, each part of letters, digits, `-`, `_` and `.`,
/// neither starting nor ending with `-` or `.`, without `--` or `..`, at most 96 characters (the hub's rules).
pub fn is_repo_id(name: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| part_ok(p))
}

/// The distinct shard file names in a `model.safetensors.index.json`, each a relative path inside the model's
/// folder (a name with `..` or a root would read a file outside it).
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
    let outside = |n: &String| {
        n.is_empty()
            || !Path::new(n)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if let Some(bad) = names.iter().find(|n| outside(n)) {
        return Err(super::invalid(
            index,
            format!("shard `{bad}` is not a file inside the model's folder"),
        ));
    }
    Ok(names)
}

pub(super) fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| super::invalid(path, e))
}

#[cfg(test)]
mod tests {
    use super::is_repo_id;

    #[test]
    fn repo_ids_follow_the_hub_rules_and_paths_are_not_repo_ids() {
        for ok in [
            "gpt2",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "org/model.v1_2",
            "rill-fixtures/tiny-gpt2",
        ] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in [
            "",
            "/abs/model.gguf",
            "./model",
            "../model",
            "a/b/c",
            "org/",
            "-org/m",
            "org/m.",
            "a--b/c",
            "a/b..c",
            "a b",
            "~/models/x",
        ] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }
}
