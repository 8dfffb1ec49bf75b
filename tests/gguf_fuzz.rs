//! Hostile model files: a GGUF whose header is corrupted (random bytes, absurd counts, sizes, offsets and
//! string lengths, a file cut short; and every numeric metadata value set to values no model has) is refused
//! with an error naming the file, never a panic or an allocation the file cannot back, and quickly. The
//! corpus is the tiny llama GGUF made by the tests, so every case starts from a file that loads. The test
//! process's address space is capped (8 GiB), so a memory bomb aborts the test instead of exhausting the
//! machine.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use proptest::prelude::*;
use rill::load::{self, ModelSource};

fn load(file: &Path) -> Result<(), String> {
    let source = ModelSource::Gguf {
        file: file.to_path_buf(),
        tokenizer: Some(common::tiny_llama::tiny_llama().with_file_name("tokenizer.json")),
    };
    load::load(&source, "fuzz", &Device::Cpu)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Caps this process's address space at 8 GiB, far above what loading the tiny model takes (see
/// [`common::cap_address_space`]).
fn cap_memory() {
    common::cap_address_space(8 << 30);
}

/// Loads `file` and checks the outcome: loaded, or refused with an error naming the file (or the tokenizer
/// beside it), within 20 s.
fn load_cleanly(file: &Path, what: &str) -> Result<bool, String> {
    let t0 = Instant::now();
    let loaded = match load(file) {
        Ok(()) => true,
        Err(e) if e.contains("case.gguf") || e.contains("tokenizer") => false,
        Err(e) => return Err(format!("{what}: an error that does not name the file: {e}")),
    };
    match t0.elapsed() < Duration::from_secs(20) {
        true => Ok(loaded),
        false => Err(format!("{what}: took {:?}", t0.elapsed())),
    }
}

/// A corruption of the file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Random bytes at random places of the header.
    Flip(Vec<(usize, u8)>),
    /// A little-endian integer somewhere in the header replaced by an absurd one.
    Absurd { at: usize, value: u64 },
    /// The file cut short.
    Truncate(usize),
}

fn mutation(header: usize, len: usize) -> impl Strategy<Value = Mutation> {
    let absurd = prop_oneof![
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1u64 << 40),
        Just(1u64 << 32),
        Just(u32::MAX as u64),
        Just(0u64),
        any::<u64>(),
    ];
    prop_oneof![
        prop::collection::vec((0..header, any::<u8>()), 1..8).prop_map(Mutation::Flip),
        (0..header, absurd).prop_map(|(at, value)| Mutation::Absurd { at, value }),
        (0..len).prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match m {
        Mutation::Flip(flips) => flips.iter().for_each(|&(i, v)| b[i] = v),
        Mutation::Absurd { at, value } => {
            let end = (at + 8).min(b.len());
            b[*at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
        }
        Mutation::Truncate(n) => b.truncate(*n),
    }
    b
}

#[test]
fn corrupted_gguf_files_are_refused_cleanly() {
    cap_memory();
    let good = common::tiny_llama::tiny_llama();
    let bytes = std::fs::read(good).unwrap();
    load(good).expect("the corpus file loads");
    // The header: everything before the tensor data (metadata and tensor infos).
    let header = Content::read(&mut std::io::Cursor::new(&bytes))
        .unwrap()
        .tensor_data_offset as usize;
    let dir = common::TempDir::new("gguf-fuzz-random");
    let case = dir.join("case.gguf");
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        common::fuzz_rng(),
    );
    let (refused, loaded) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&mutation(header, bytes.len()), |m| {
            std::fs::write(&case, apply(&bytes, &m)).unwrap();
            match load_cleanly(&case, &format!("{m:?}")) {
                Ok(true) => loaded.set(loaded.get() + 1),
                Ok(false) => refused.set(refused.get() + 1),
                Err(e) => prop_assert!(false, "{e}"),
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (refused, loaded) = (refused.get(), loaded.get());
    assert!(refused > 100, "{refused} refused, {loaded} loaded");
}

/// Where the value of metadata entry `key` starts in a GGUF file's bytes: after the key (its u64 length and
/// bytes, searched with the length so that no longer key that starts alike matches) and the u32 value type.
fn value_offset(bytes: &[u8], key: &str) -> usize {
    let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .unwrap_or_else(|| panic!("{key} not found"));
    at + pattern.len() + 4
}

/// Every numeric metadata value of the corpus file (layer and head counts, widths, context, norm epsilon,
/// rotary base) set in turn to zero, one, three, 2^16, 2^31 and u32::MAX, or for floats to 0, -1, NaN,
/// infinity and 1e30: each file loads or is refused cleanly, and none takes memory it cannot back.
#[test]
fn absurd_metadata_values_are_refused_cleanly() {
    cap_memory();
    let good = common::tiny_llama::tiny_llama();
    let bytes = std::fs::read(good).unwrap();
    let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    let dir = common::TempDir::new("gguf-fuzz-values");
    let case = dir.join("case.gguf");
    let (mut cases, mut refused) = (0, 0);
    let mut keys: Vec<_> = content.metadata.iter().collect();
    keys.sort_by_key(|(k, _)| k.as_str());
    for (key, value) in keys {
        let variants: Vec<Vec<u8>> = match value {
            Value::U32(_) => [0u32, 1, 3, 1 << 16, 1 << 31, u32::MAX]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            Value::F32(_) => [0f32, -1.0, f32::NAN, f32::INFINITY, 1e30]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            _ => continue,
        };
        let at = value_offset(&bytes, key);
        for v in variants {
            let mut b = bytes.clone();
            b[at..at + v.len()].copy_from_slice(&v);
            std::fs::write(&case, &b).unwrap();
            let what = format!("{key} = {v:?}");
            refused += usize::from(!load_cleanly(&case, &what).unwrap_or_else(|e| panic!("{e}")));
            cases += 1;
        }
    }
    // Eight numeric entries in the corpus file (see `tests/common/tiny_llama.rs`).
    assert!(
        cases >= 40 && refused >= 20,
        "{cases} cases, {refused} refused"
    );
}
