#!/usr/bin/env bash
# Everything rill's tests need, then the tests: fetch the real models, make the GPT-2 fixtures, build, run the
# Rust test suite, then the official-SDK conformance suite against a real `rill serve`, the chat page in a
# browser, and a rehearsal of the GPU check on the CPU.
# Works on a fresh machine with Rust, Python 3 (pip) and Node (npm); safe to re-run (each step skips finished work).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== source rules"
# Every unsafe fn states its contract in a `# Safety` section; layers import downward only.
python3 scripts/check-source.py

echo "== models"
scripts/fetch-models.sh
python3 scripts/make-fixtures.py
python3 scripts/make-arch-fixtures.py

echo "== build"
cargo build --release --locked
# The quantized fixtures are written by rill's own `quantize` (deterministic; llama.cpp's goldens record them).
python3 scripts/make-arch-fixtures.py --quantize target/release/rill

echo "== cargo test"
cargo test --release --locked

if [ -x scripts/sdk-test.sh ]; then
  echo "== SDK conformance"
  scripts/sdk-test.sh
fi

echo "== chat page in a browser"
RILL_SDK_NO_BUILD=1 scripts/browser-test.sh

echo "== the GPU check's plumbing, rehearsed on the CPU"
# A random-weight copy of SmolLM2 from its header alone (what the GPU machine gets) must load and generate...
tmp="$(mktemp -d)"
py=python3
python3 -c 'import numpy' 2>/dev/null || py=.venv-fixtures-lite/bin/python
python3 scripts/gguf-random.py skeleton models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf "$tmp/skeleton.gguf"
"$py" scripts/gguf-random.py fill "$tmp/skeleton.gguf" "$tmp/random.gguf"
target/release/rill generate --model "$tmp/random.gguf" --prompt "Hello" --max-tokens 4 --temperature 0 >/dev/null
rm -rf "$tmp"
# ...and the parity step (servers, the comparison client) must run: here the CPU against itself.
GPU_CHECK_DEVICE=cpu GPU_CHECK_BIN=target/release GPU_CHECK_ONLY=parity OUT=target/gpu-check-rehearsal \
  scripts/gpu-check.sh >/dev/null || { cat target/gpu-check-rehearsal/gpu-check.log; exit 1; }
echo "ok"
