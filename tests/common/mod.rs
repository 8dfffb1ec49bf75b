//! Helpers shared by the integration tests: fixture paths, golden files and engines over real models.
//! A missing model is a failure with instructions, never a silent skip.

#![allow(dead_code)]

pub mod tiny_llama;

use std::path::{Path, PathBuf};

use rill::engine::{EngineConfig, EngineHandle, GenRequest, SamplingParams};
use rill::load::{self, ModelLocator};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh folder under the system's temporary directory, `rill-NAME-PID`, removed when dropped (also when
/// its test fails and unwinds), so that test runs leave nothing behind. Derefs to its path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rill-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A path under `models/`, which must exist: the scripts make it.
pub fn model_path(rel: &str) -> PathBuf {
    let p = root().join("models").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh and scripts/make-fixtures.py (scripts/test.sh does both)",
        p.display()
    );
    p
}

pub fn golden(name: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Loads the model at `models/<rel>` (or any name the locator resolves) on the CPU, without an engine.
pub fn load(rel: &str) -> rill::load::Loaded {
    load_with(rel, None)
}

/// [`load`] serving a context of `ctx_size` positions (`None`: the model's default).
#[allow(dead_code)]
pub fn load_with(rel: &str, ctx_size: Option<usize>) -> rill::load::Loaded {
    let locator = ModelLocator {
        models_dir: root().join("models"),
        hub_cache: root().join("models/hf-cache"),
        offline: true,
    };
    if !Path::new(rel).exists() && !rel.contains('/') {
        model_path(rel);
    }
    load::load_with(
        &locator.resolve(rel).unwrap(),
        rel,
        &candle_core::Device::Cpu,
        &load::LoadOptions {
            ctx_size,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Starts an engine over the model at `models/<rel>` (or any name the locator resolves).
pub fn engine(rel: &str, config: EngineConfig) -> EngineHandle {
    let locator = ModelLocator {
        models_dir: root().join("models"),
        hub_cache: root().join("models/hf-cache"),
        offline: true,
    };
    if !Path::new(rel).exists() && !rel.contains('/') {
        model_path(rel);
    }
    let source = locator.resolve(rel).unwrap();
    let name = rel.to_string();
    EngineHandle::start(
        move || load::load(&source, &name, &candle_core::Device::Cpu),
        config,
    )
    .unwrap()
}

/// A greedy request for `n` tokens that does not stop at EOS.
pub fn greedy(prompt: Vec<u32>, n: usize) -> GenRequest {
    GenRequest {
        constraint: None,
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(n),
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        prompt_logprobs: None,
    }
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fixed seed: the same cases on every run (CI must not turn red on a case no one can reproduce);
/// `RILL_FUZZ_SEED=<n>` explores others.
fn fuzz_rng() -> proptest::test_runner::TestRng {
    let seed: u64 = std::env::var("RILL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &bytes)
}

/// A property-test runner of `cases` cases from [`fuzz_rng`]'s seed, keeping no failure files.
pub fn fuzz_runner(cases: u32) -> proptest::test_runner::TestRunner {
    let config = proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    };
    proptest::test_runner::TestRunner::new_with_rng(config, fuzz_rng())
}

/// Caps this test process's address space at `bytes` (or leaves a lower limit in place), so that an allocation
/// sized by a hostile value fails at once, failing the test, instead of exhausting the machine's memory. Only
/// the soft limit moves; the hard limit stays as it was.
#[allow(dead_code)]
pub fn cap_address_space(bytes: u64) {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the duration of each call.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut limit), 0);
            limit.rlim_cur = bytes.min(limit.rlim_max).min(limit.rlim_cur);
            assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &limit), 0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}
