#!/usr/bin/env bash
# Everything rill's tests need, then the tests: fetch the real models, make the GPT-2 fixtures, build, run the
# Rust test suite, then the official-SDK conformance suite against a real `rill serve`.
# Works on a fresh machine with Rust, Python 3 (pip) and Node (npm); safe to re-run (each step skips finished work).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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
