//! Hostile model files: a GGUF whose header is corrupted (random bytes, absurd counts, sizes, offsets and
//! string lengths, a file cut short) is refused with an error naming the file, never a panic or an
//! allocation the file cannot back, and quickly. The corpus is the tiny llama GGUF made by the tests, so
//! every case starts from a file that loads.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

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
    let good = common::tiny_llama::tiny_llama();
    let bytes = std::fs::read(good).unwrap();
    load(good).expect("the corpus file loads");
    // The header: everything before the tensor data (metadata and tensor infos).
    let header = candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(&bytes))
        .unwrap()
        .tensor_data_offset as usize;
    let dir = std::env::temp_dir().join(format!("rill-gguf-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
            let t0 = Instant::now();
            match load(&case) {
                Ok(()) => loaded.set(loaded.get() + 1),
                Err(e) => {
                    prop_assert!(e.contains("case.gguf") || e.contains("tokenizer"), "{e}");
                    refused.set(refused.get() + 1);
                }
            }
            prop_assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?} for {m:?}",
                t0.elapsed()
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (refused, loaded) = (refused.get(), loaded.get());
    assert!(refused > 100, "{refused} refused, {loaded} loaded");
    std::fs::remove_dir_all(&dir).ok();
}
