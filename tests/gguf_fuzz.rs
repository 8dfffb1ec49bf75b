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
    let mut runner = common::fuzz_runner(300);
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

/// Where the bytes after GGUF string `text` start in a file: the string is searched with its u64 length, so
/// that no longer string that starts alike matches.
fn after_string(bytes: &[u8], text: &str) -> usize {
    let mut pattern = (text.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(text.as_bytes());
    bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .unwrap_or_else(|| panic!("{text} not found"))
        + pattern.len()
}

/// Where the value of metadata entry `key` starts in a GGUF file's bytes: after the key and the u32 value type.
fn value_offset(bytes: &[u8], key: &str) -> usize {
    after_string(bytes, key) + 4
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

/// The corpus file rewritten with more metadata entries, in order and repeated keys kept (candle's writer still
/// places tensors 32 bytes apart).
fn with_entries(entries: &[(&str, Value)]) -> Vec<u8> {
    let good = common::tiny_llama::tiny_llama();
    let mut reader = std::fs::File::open(good).unwrap();
    let content = Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                content.tensor(&mut reader, n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let mut meta: Vec<(&str, &Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    meta.extend(entries.iter().map(|(k, v)| (*k, v)));
    let tensors: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &meta, &tensors).unwrap();
    out.into_inner()
}

/// Where tensor `name`'s data offset lies in a GGUF file's bytes: after its name (u64 length and bytes), its
/// dimension count, its u64 dimensions and its type.
fn tensor_offset_at(bytes: &[u8], name: &str) -> usize {
    let at = after_string(bytes, name);
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * dims + 4
}

/// A GGUF file whose layout is wrong loads as garbage or panics the parser unless it is refused: an alignment
/// of 0 (candle's parser divides by it), one that is not a power of two or not a u32 (llama.cpp refuses
/// both; repeated or NUL-ended keys read as candle reads them), a tensor whose data starts off the alignment, and
/// two tensors over the same bytes. Each is refused
/// with the file named and the reason given; the same file with a valid alignment loads.
#[test]
fn misplaced_gguf_layouts_are_refused() {
    let dir = common::TempDir::new("gguf-layout");
    let case = dir.join("case.gguf");
    let refusal = |bytes: &[u8]| {
        std::fs::write(&case, bytes).unwrap();
        load(&case).err()
    };
    let key = "general.alignment";
    assert_eq!(refusal(&with_entries(&[(key, Value::U32(32))])), None);
    for (value, reason) in [
        (Value::U32(0), "is 0, which is not a power of two"),
        (Value::U32(7), "is 7, which is not a power of two"),
        (Value::U64(32), "has GGUF value type 10; it must be a u32"),
        (Value::I32(-32), "has GGUF value type 5; it must be a u32"),
    ] {
        let err = refusal(&with_entries(&[(key, value.clone())]))
            .unwrap_or_else(|| panic!("{value:?} loaded"));
        assert!(
            err.contains("case.gguf") && err.contains(reason),
            "{value:?}: {err}"
        );
    }
    // candle's parser keeps the last of repeated keys and strips NULs that end a key: the check reads them so.
    let nul_key = format!("{key}\0");
    for entries in [
        vec![(key, Value::U32(32)), (key, Value::U32(0))],
        vec![(nul_key.as_str(), Value::U32(0))],
    ] {
        let err = refusal(&with_entries(&entries)).unwrap_or_else(|| panic!("{entries:?} loaded"));
        assert!(
            err.contains("is 0, which is not a power of two"),
            "{entries:?}: {err}"
        );
    }

    let bytes = std::fs::read(common::tiny_llama::tiny_llama()).unwrap();
    let offset = |b: &[u8], name: &str| {
        let at = tensor_offset_at(b, name);
        (at, u64::from_le_bytes(b[at..at + 8].try_into().unwrap()))
    };
    let (at, value) = offset(&bytes, "blk.0.attn_q.weight");
    let mut shifted = bytes.clone();
    shifted[at..at + 8].copy_from_slice(&(value + 1).to_le_bytes());
    let err = refusal(&shifted).expect("a misaligned tensor loaded");
    assert!(
        err.contains("not a multiple of the file's alignment 32"),
        "{err}"
    );

    let (_, first) = offset(&bytes, "blk.0.attn_k.weight");
    let mut doubled = bytes.clone();
    doubled[at..at + 8].copy_from_slice(&first.to_le_bytes());
    let err = refusal(&doubled).expect("overlapping tensors loaded");
    assert!(err.contains("overlap in the file"), "{err}");
}

/// A change to a GGUF tokenizer's metadata, as a corrupt or hostile file could carry.
#[derive(Debug, Clone)]
enum TokenizerEdit {
    /// Token `i`'s text replaced (empty, odd bytes, a duplicate of another's).
    Token(usize, String),
    /// Token `i`'s type set to any number.
    Type(usize, i32),
    /// Merge `i` replaced (no space, several, unknown pieces, empty).
    Merge(usize, String),
    /// An array cut to `len` entries.
    Cut(&'static str, usize),
    /// A special token id set to any number.
    Id(&'static str, u32),
    /// A string setting replaced.
    Setting(&'static str, String),
    /// An entry removed.
    Remove(&'static str),
}

fn tokenizer_edit(tokens: usize, merges: usize) -> impl Strategy<Value = TokenizerEdit> {
    use TokenizerEdit as E;
    let text = prop_oneof![
        Just(String::new()),
        "[ a-zĠ<>|]{0,6}",
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        Just("<|im_end|>".to_string()),
    ];
    let arrays = prop_oneof![
        Just("tokenizer.ggml.tokens"),
        Just("tokenizer.ggml.token_type"),
        Just("tokenizer.ggml.merges"),
    ];
    let ids = prop_oneof![
        Just("tokenizer.ggml.bos_token_id"),
        Just("tokenizer.ggml.eos_token_id"),
        Just("tokenizer.ggml.unknown_token_id"),
        Just("tokenizer.ggml.padding_token_id"),
    ];
    let settings = prop_oneof![Just("tokenizer.ggml.model"), Just("tokenizer.ggml.pre")];
    let names = prop_oneof![
        Just("gpt2"),
        Just("llama"),
        Just(""),
        Just("bert"),
        Just("smollm"),
        Just("llama-bpe"),
        Just("qwen2"),
        Just("gpt-2"),
    ];
    prop_oneof![
        (0..tokens, text.clone()).prop_map(|(i, t)| E::Token(i, t)),
        (0..tokens, any::<i32>()).prop_map(|(i, t)| E::Type(i, t)),
        (0..merges, text).prop_map(|(i, t)| E::Merge(i, t)),
        (arrays.clone(), 0..tokens).prop_map(|(k, n)| E::Cut(k, n)),
        (
            ids,
            prop_oneof![Just(u32::MAX), Just(tokens as u32), 0..tokens as u32 + 2]
        )
            .prop_map(|(k, v)| E::Id(k, v)),
        (settings, names).prop_map(|(k, v)| E::Setting(k, v.to_string())),
        arrays.prop_map(E::Remove),
    ]
}

fn edit(meta: &mut std::collections::HashMap<String, Value>, e: &TokenizerEdit) {
    use TokenizerEdit as E;
    let array = |meta: &mut std::collections::HashMap<String, Value>, k: &str| match meta.get_mut(k)
    {
        Some(Value::Array(v)) => Some(std::mem::take(v)),
        _ => None,
    };
    let mut set = |k: &str, i: usize, v: Value| {
        if let Some(mut a) = array(meta, k) {
            if i < a.len() {
                a[i] = v;
            }
            meta.insert(k.to_string(), Value::Array(a));
        }
    };
    match e {
        E::Token(i, t) => set("tokenizer.ggml.tokens", *i, Value::String(t.clone())),
        E::Type(i, t) => set("tokenizer.ggml.token_type", *i, Value::I32(*t)),
        E::Merge(i, t) => set("tokenizer.ggml.merges", *i, Value::String(t.clone())),
        E::Cut(k, n) => {
            if let Some(mut a) = array(meta, k) {
                a.truncate(*n);
                meta.insert(k.to_string(), Value::Array(a));
            }
        }
        E::Id(k, v) => {
            meta.insert(k.to_string(), Value::U32(*v));
        }
        E::Setting(k, v) => {
            meta.insert(k.to_string(), Value::String(v.clone()));
        }
        E::Remove(k) => {
            meta.remove(*k);
        }
    }
}

/// SmolLM2's GGUF tokenizer (49 152 tokens, their types, 48 900 BPE merges, special ids, model and split
/// names) with one to three edits of the kinds above, 150 cases: rill's own GGUF tokenizer builder
/// (`from_gguf`) returns a tokenizer or an error, never panics, within 20 s and the address-space cap; and what
/// it builds encodes and decodes a short text without panicking.
#[test]
fn corrupted_gguf_tokenizers_are_refused_cleanly() {
    cap_memory();
    let path = common::model_path("smollm2/SmolLM2-135M-Instruct-Q4_1.gguf");
    let meta = Content::read(&mut std::fs::File::open(&path).unwrap())
        .unwrap()
        .metadata;
    let count = |k: &str| match &meta[k] {
        Value::Array(v) => v.len(),
        _ => panic!("{k} is not an array"),
    };
    let (tokens, merges) = (
        count("tokenizer.ggml.tokens"),
        count("tokenizer.ggml.merges"),
    );
    rill::tokenizer::gguf::from_gguf(&meta).expect("the real tokenizer builds");
    let mut runner = common::fuzz_runner(150);
    let (built, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let edits = prop::collection::vec(tokenizer_edit(tokens, merges), 1..4);
    runner
        .run(&edits, |edits| {
            let mut m = meta.clone();
            edits.iter().for_each(|e| edit(&mut m, e));
            let t0 = Instant::now();
            match rill::tokenizer::gguf::from_gguf(&m) {
                Ok(tok) => {
                    let ids = tok.encode("Hello, world! <|im_end|> ĠĠ");
                    if let Ok(ids) = ids {
                        let _ = tok.decode(&ids, false);
                    }
                    built.set(built.get() + 1)
                }
                Err(_) => refused.set(refused.get() + 1),
            }
            prop_assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?} for {edits:?}",
                t0.elapsed()
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (built, refused) = (built.get(), refused.get());
    assert!(
        built > 20 && refused > 20,
        "{built} built, {refused} refused"
    );
}
